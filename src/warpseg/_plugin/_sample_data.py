"""npe2 sample data: a moving/fixed pair of synthetic brains with tissue labels (2D or 3D)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import napari.types

LAYER_NAMES = {"moving": "moving", "moving_labels": "moving labels",
               "fixed": "fixed", "fixed_labels": "fixed labels"}
IMAGE_STYLE = {"moving": {"colormap": "magenta", "blending": "additive"},
               "fixed": {"colormap": "green", "blending": "additive"}}


def brain_pair_2d() -> list[napari.types.FullLayerData]:
    """One axial slice of two synthetic subjects, with CSF / grey / white matter labels."""
    return brain_pair(2)


def brain_pair_3d() -> list[napari.types.FullLayerData]:
    """Two synthetic subjects on different grids (2 mm, and 1.5 mm oblique), with labels."""
    return brain_pair(3)


def brain_pair(ndim: int) -> list[napari.types.FullLayerData]:
    """Layer data tuples in the order moving, moving labels, fixed, fixed labels."""
    from warpseg._plugin._layers import volume_to_layer_data
    from warpseg.samples import sample_pair

    pair = sample_pair(ndim)
    return [volume_to_layer_data(pair[key], name=name, **IMAGE_STYLE.get(key, {}))
            for key, name in LAYER_NAMES.items()]
