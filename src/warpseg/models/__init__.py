"""Registration networks (2D and 3D): NICE-Trans, the linear + deformable CNN and the VoxelMorph baseline.

Every model takes ``forward(moving, fixed)`` with images ``(B, C, *S)`` whose spatial sizes are
multiples of ``model.size_multiple`` and returns a dict holding at least ``displacement``
``(B, ndim, *S)`` in voxel units of the fixed grid (warp: ``moving(x + u(x))``). Every model
records its constructor arguments in ``model.config``, so ``type(model)(**model.config)`` rebuilds it.
A model may also return ``loss_terms``, a dict of scalar tensors that training adds to its loss.
"""
from warpseg.models.lindef import LinearDeformable
from warpseg.models.nice_trans import NiceTrans
from warpseg.models.swin import SwinBlockPair
from warpseg.models.voxelmorph import VoxelMorph

__all__ = ["LinearDeformable", "NiceTrans", "SwinBlockPair", "VoxelMorph"]
