"""Networks (2D and 3D): NICE-Trans, NICE-Transeg, the linear + deformable CNN, the VoxelMorph baseline,
a plain segmentation U-Net, and the few-shot pairs PC-Reg-RT and BRBS (a segmentation and a registration net each).

Every model takes ``forward(moving, fixed)`` with images ``(B, C, *S)`` whose spatial sizes are
multiples of ``model.size_multiple`` and returns a dict holding at least ``displacement``
``(B, ndim, *S)`` in voxel units of the fixed grid (warp: ``moving(x + u(x))``). Every model
records its constructor arguments in ``model.config``, so ``type(model)(**model.config)`` rebuilds it.
A model may also return ``loss_terms``, a dict of scalar tensors that training adds to its loss.
Segmentation networks add label logits ``(B, num_labels, *S)``: NICE-Transeg returns
``moving_segmentation`` and ``fixed_segmentation``; ``SegmentationUNet.forward(image)`` returns
``segmentation``. PC-Reg-RT and BRBS return ``moving_segmentation`` and ``fixed_segmentation`` too, and
segment one image with ``model.segment(image)``.
"""
from warpseg.models.brbs import Brbs
from warpseg.models.atlas_istn import AtlasIstn
from warpseg.models.lindef import LinearDeformable
from warpseg.models.nice_trans import NiceTrans
from warpseg.models.nice_transeg import NiceTranseg
from warpseg.models.pcreg_rt import PcRegRt
from warpseg.models.segmentation_unet import SegmentationUNet
from warpseg.models.swin import SwinBlockPair
from warpseg.models.voxelmorph import VoxelMorph

__all__ = ["AtlasIstn", "Brbs", "LinearDeformable", "NiceTrans", "NiceTranseg", "PcRegRt", "SegmentationUNet", "SwinBlockPair",
           "VoxelMorph"]
