"""Registration networks (2D and 3D): NICE-Trans and the VoxelMorph baseline.

Every model takes ``forward(moving, fixed)`` with images ``(B, C, *S)`` whose spatial sizes are
multiples of ``model.size_multiple`` and returns a dict holding at least ``displacement``
``(B, ndim, *S)`` in voxel units of the fixed grid (warp: ``moving(x + u(x))``). Every model
records its constructor arguments in ``model.config``, so ``type(model)(**model.config)`` rebuilds it.
"""
from warpseg.models.nice_trans import NiceTrans
from warpseg.models.swin import SwinBlockPair
from warpseg.models.voxelmorph import VoxelMorph

__all__ = ["NiceTrans", "SwinBlockPair", "VoxelMorph"]
