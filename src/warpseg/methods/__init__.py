"""Registry of registration and segmentation methods: every method is reachable by its name."""
from __future__ import annotations

from warpseg.errors import InputError
from warpseg.methods.base import FINISH, MethodOutput, Progress, RegistrationInput, RegistrationMethod
from warpseg.methods.segmenter import SegmentationMethod, SegmentationOutput
from warpseg.methods.sitk_affine import SitkAffine
from warpseg.methods.sitk_bspline import SitkBspline
from warpseg.methods.sitk_demons import SitkDemons
from warpseg.methods.ants_syn import AntsSyn
from warpseg.methods.brbs import BrbsRegistration, BrbsSegmentation
from warpseg.methods.atlas_istn import AtlasIstnRegistration, AtlasIstnSegmentation
from warpseg.methods.atlas_propagation import AtlasPropagation
from warpseg.methods.identity import Identity
from warpseg.methods.lindef import LinearDeformableRegistration
from warpseg.methods.nir import NeuralFieldRegistration
from warpseg.methods.learned_segmentation import SegmentationUNetSegmentation
from warpseg.methods.nice_trans import NiceTransAffineRegistration, NiceTransRegistration
from warpseg.methods.nice_transeg import NiceTransegRegistration, NiceTransegSegmentation
from warpseg.methods.pcreg_rt import PcRegRtRegistration, PcRegRtSegmentation
from warpseg.methods.voxelmorph import VoxelMorphRegistration

METHODS: dict[str, type[RegistrationMethod]] = {
    method.name: method for method in (Identity, SitkAffine, SitkBspline, SitkDemons, AntsSyn,
                                       NiceTransRegistration, NiceTransAffineRegistration, NiceTransegRegistration,
                                       VoxelMorphRegistration,
                                       LinearDeformableRegistration, NeuralFieldRegistration,
                                       PcRegRtRegistration, BrbsRegistration, AtlasIstnRegistration)
}

SEGMENTATION_METHODS: dict[str, type[SegmentationMethod]] = {
    method.name: method for method in (AtlasPropagation, NiceTransegSegmentation, SegmentationUNetSegmentation,
                                       PcRegRtSegmentation, BrbsSegmentation, AtlasIstnSegmentation)
}


def available_methods(ndim: int | None = None) -> list[str]:
    """Names of the methods that can run here: requirements installed, and (for learned methods)
    shipped weights for ``ndim`` dimensions when ``ndim`` is given."""
    names = []
    for name, method in METHODS.items():
        if method.missing_requirements():
            continue
        if ndim is not None and method.needs_weights and not method.has_shipped_weights(ndim):
            continue
        names.append(name)
    return names


def get_method(name: str) -> type[RegistrationMethod]:
    """The registration method class called ``name``; a clear error when it is unknown or not installed."""
    return _installed(METHODS, name, "method")


def get_segmenter(name: str) -> type[SegmentationMethod]:
    """The segmentation method class called ``name``; a clear error when it is unknown or not installed."""
    return _installed(SEGMENTATION_METHODS, name, "segmentation method")


def _installed(registry: dict[str, type], name: str, kind: str) -> type:
    if name not in registry:
        raise InputError(f"unknown {kind} {name!r}; choose one of: {', '.join(registry)}")
    method = registry[name]
    missing = method.missing_requirements()
    if missing:
        hint = " (pip install 'napari-warpseg[ants]')" if "ants" in missing else ""
        raise InputError(f"{kind} {name!r} needs {', '.join(missing)}; install it{hint}")
    return method


__all__ = ["FINISH", "METHODS", "SEGMENTATION_METHODS", "available_methods", "get_method", "get_segmenter",
           "MethodOutput", "Progress", "RegistrationInput", "RegistrationMethod", "SegmentationMethod",
           "SegmentationOutput"]
