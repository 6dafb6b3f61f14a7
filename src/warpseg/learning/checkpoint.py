"""Self-describing checkpoints: loading one rebuilds its model without knowing its class."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from warpseg.errors import InputError

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "method", "model", "preprocessing", "state_dict", "training")


def save_checkpoint(path: str | Path, *, method: str, model: torch.nn.Module, preprocessing: dict,
                    training: dict, extra: dict | None = None) -> Path:
    """Write ``{format_version, method, model: {class, config}, preprocessing, state_dict, training}``.

    Written to a temporary file and renamed, so a crash never leaves a half-written checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "method": method,
        "model": {"class": type(model).__name__, "config": dict(model.config)},
        "preprocessing": dict(preprocessing),
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "training": dict(training),
        **(extra or {}),
    }
    return write_checkpoint_payload(path, payload)


def write_checkpoint_payload(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write a checkpoint's contents to a temporary file and rename it, so a crash never leaves half a file."""
    path = Path(path)
    temporary = path.with_name(path.name + ".partial")
    torch.save(payload, temporary)
    temporary.replace(path)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents, checked; a clear error for files that are not warpseg checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such weights file; check the --weights path")
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for foreign or corrupt files
        raise InputError(f"{path}: not a readable warpseg checkpoint ({type(error).__name__}); "
                         "give a .pt file written by `warpseg train`") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise InputError(f"{path}: not a warpseg checkpoint (missing {', '.join(missing)}); "
                         "give a .pt file written by `warpseg train`")
    if payload["format_version"] > FORMAT_VERSION:
        raise InputError(f"{path}: checkpoint format {payload['format_version']} is newer than this "
                         f"warpseg understands ({FORMAT_VERSION}); upgrade napari-warpseg")
    return payload


def build_model(payload: dict[str, Any]) -> torch.nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (in eval mode)."""
    from warpseg.models import (AtlasIstn, Brbs, LinearDeformable, NiceTrans, NiceTranseg, PcRegRt, SegmentationUNet,
                                VoxelMorph)

    MODEL_CLASSES = {model_class.__name__: model_class for model_class in
                     (NiceTrans, NiceTranseg, SegmentationUNet, VoxelMorph, LinearDeformable, PcRegRt, Brbs, AtlasIstn)}
    class_name = payload["model"]["class"]
    if class_name not in MODEL_CLASSES:
        raise InputError(f"checkpoint model {class_name!r} is unknown to this warpseg version")
    model = MODEL_CLASSES[class_name](**payload["model"]["config"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


@functools.lru_cache(maxsize=4)
def _cached_model(path: str, modified: float, device: str):
    payload = read_checkpoint(path)
    model = build_model(payload).to(device)
    payload = {key: value for key, value in payload.items() if key != "state_dict"}
    return model, payload


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model (eval mode, on ``device``) and the checkpoint's description (without weights).

    Models are cached per file, modification time and device, so repeated registrations do not
    reload them; callers must not modify the returned model.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise InputError(f"{path}: no such weights file; check the --weights path")
    return _cached_model(str(path), path.stat().st_mtime, device)
