"""VoxelMorph-style U-Net: the learned baseline (unsupervised LNCC + diffusion)."""
from __future__ import annotations

from warpseg.methods.learned import LearnedRegistration


class VoxelMorphRegistration(LearnedRegistration):
    name = "vxm"
    description = "VoxelMorph-style U-Net baseline (LNCC + diffusion), one forward pass."
