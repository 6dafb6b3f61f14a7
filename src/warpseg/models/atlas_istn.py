"""Atlas-ISTN: an image transformer (segmentation) and a spatial transformer to a learned atlas, 2D and 3D.

Sinclair et al., "Atlas-ISTN: joint segmentation, registration and atlas construction with
image-and-spatial transformer networks" (METHODS.md §7; slides ``atlas-istn_slides.txt``).

* **ITN**: a U-Net (:class:`~warpseg.models.SegmentationUNet`) from the image to label logits;
  its softmax ``ŷ`` is what the STN sees.
* **STN**: from ``ŷ`` and the atlas label map ``y^a`` (probabilities, one channel per label), a
  similarity transform ``T = M_t R_θ D_s`` (translation, rotation, per-axis scaling regressed by a
  small conv encoder with global pooling, :class:`SimilarityHead`) and a stationary velocity field
  ``v``, ``φ = exp(v)`` by scaling and squaring. ``v`` comes from a VoxelMorph U-Net
  (:class:`~warpseg.models.VoxelMorph`, integrated at half resolution) that sees ``ŷ`` beside the
  atlas already moved into image space by ``T``, so the deformable part only models what the
  similarity leaves.

Transforms (image and atlas share one voxel grid; warps are ``data(x + u(x))``):

* image voxel ``x`` -> atlas point ``Φ⁻¹(x) = T(φ(x))``: ``image_to_atlas`` ``= a(x) + A u(x)``
  (``A, a``: the matrix and displacement of ``T``, ``u = exp(v) - id``). Warping atlas data by it
  gives ``y^a ∘ Φ⁻¹`` on the image grid (the paper's atlas-to-segmentation direction);
* atlas voxel ``y`` -> image point ``Φ(y) = exp(-v)(T⁻¹ y)``: ``atlas_to_image``. Warping image data
  by it gives ``ŷ ∘ Φ`` (or ``x ∘ Φ``) on the atlas grid (segmentation-to-atlas).

The atlas (image and label probabilities) lives in the model as buffers, so one checkpoint holds
both: ``atlas_image`` float16, ``atlas_label_levels`` uint8 (probabilities × 255).

Deviations: the slides do not say how the affine parameters are regressed or bounded. Here they
are bounded by tanh (shift ±0.5 of the half extent, rotation ±45°, scale ×/÷ 1.5) and predicted in
centred, isotropically normalised coordinates (as NICE-Trans), zero-initialised (identity).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from warpseg.errors import InputError
from warpseg.models.blocks import ConvActivation, apply_linear, check_ndim, max_pool_layer, resize_displacement
from warpseg.models.nice_trans import normalised_to_voxel_affine
from warpseg.models.segmentation_unet import SegmentationUNet
from warpseg.models.voxelmorph import VoxelMorph
from warpseg.spatial import affine_displacement, compose_displacements, warp_image

MAX_SHIFT, MAX_ANGLE, MAX_LOG_SCALE = 0.5, math.pi / 4, math.log(1.5)


def rotation_matrix(angles: torch.Tensor, ndim: int) -> torch.Tensor:
    """Rotation from one angle (2D) or three angles about the axes 0, 1, 2 (3D, applied x then y then z).

    Shapes
    ------
    angles ``(B, 1)`` in 2D, ``(B, 3)`` in 3D (radians); returns ``(B, ndim, ndim)``.
    """
    rotation = torch.eye(ndim, dtype=angles.dtype, device=angles.device).expand(angles.shape[0], ndim, ndim)
    planes = [(0, 1)] if ndim == 2 else [(1, 2), (0, 2), (0, 1)]
    for index, (first, second) in enumerate(planes):
        cos, sin = torch.cos(angles[:, index]), torch.sin(angles[:, index])
        plane = torch.eye(ndim, dtype=angles.dtype, device=angles.device).repeat(angles.shape[0], 1, 1)
        plane[:, first, first], plane[:, second, second] = cos, cos
        plane[:, first, second], plane[:, second, first] = -sin, sin
        rotation = plane @ rotation
    return rotation


def similarity_matrix(parameters: torch.Tensor, ndim: int) -> torch.Tensor:
    """``T = M_t R_θ D_s`` from raw parameters, in centred normalised coordinates.

    ``parameters`` hold ``ndim`` shifts, 1 (2D) or 3 (3D) angles and ``ndim`` log-scales, each
    bounded by tanh; zero parameters give the identity.

    Shapes
    ------
    parameters ``(B, P)`` with ``P = 2 * ndim + (1 if ndim == 2 else 3)``; returns ``(B, ndim, ndim + 1)``.
    """
    angles = 1 if ndim == 2 else 3
    shift = MAX_SHIFT * torch.tanh(parameters[:, :ndim])
    angle = MAX_ANGLE * torch.tanh(parameters[:, ndim: ndim + angles])
    scale = torch.exp(MAX_LOG_SCALE * torch.tanh(parameters[:, ndim + angles:]))
    linear = rotation_matrix(angle, ndim) @ torch.diag_embed(scale)
    return torch.cat([linear, shift[:, :, None]], dim=2)


def invert_affine(matrix: torch.Tensor) -> torch.Tensor:
    """The inverse of ``x -> A x + b``.

    Shapes
    ------
    matrix ``(B, ndim, ndim + 1)``; returns ``(B, ndim, ndim + 1)``.
    """
    ndim = matrix.shape[1]
    inverse = torch.linalg.inv(matrix[:, :, :ndim])
    return torch.cat([inverse, -(inverse @ matrix[:, :, ndim:])], dim=2)


class SimilarityHead(nn.Module):
    """Conv encoder, global average pooling and two linear layers to the parameters of ``T``.

    Shapes
    ------
    input ``(B, in_channels, *S)``; output ``(B, P)`` raw parameters (see :func:`similarity_matrix`).
    """

    def __init__(self, ndim: int, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        widths = [in_channels] + list(channels)
        self.encoder = nn.ModuleList([ConvActivation(ndim, widths[i], widths[i + 1]) for i in range(len(channels))])
        self.pool = max_pool_layer(ndim)(2)
        self.hidden = nn.Sequential(nn.Linear(widths[-1], widths[-1]), nn.LeakyReLU(0.2))
        self.parameters_out = nn.Linear(widths[-1], 2 * ndim + (1 if ndim == 2 else 3))
        nn.init.zeros_(self.parameters_out.weight)
        nn.init.zeros_(self.parameters_out.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        for level, conv in enumerate(self.encoder):
            features = conv(features if level == 0 else self.pool(features))
        pooled = features.mean(dim=tuple(range(2, features.dim())))
        return self.parameters_out(self.hidden(pooled))


class SpatialTransformer(nn.Module):
    """The STN: similarity transform and stationary velocity field from ``ŷ`` and the atlas labels.

    With ``downsize = f > 1`` both inputs are average-pooled by ``f`` first: ``T`` is predicted in
    normalised coordinates (the same map on any grid) and ``v`` on the coarse grid, integrated
    there and the displacements upsampled. Label maps are smooth, so this costs little accuracy
    and saves most of the STN's time in 3D.

    Shapes
    ------
    ``forward(segmentation, atlas_labels)``: both ``(B, num_labels, *S)`` probabilities (image
    space and atlas space, one grid; ``S`` multiples of ``f``). Returns ``affine`` ``(B, ndim,
    ndim + 1)`` (image voxel -> atlas voxel), ``velocity`` ``(B, ndim, *S / f)`` (coarse voxel
    units), ``image_to_atlas`` and ``atlas_to_image`` displacements ``(B, ndim, *S)`` (module docstring).
    """

    def __init__(self, ndim: int, num_labels: int, affine_channels: Sequence[int], encoder: Sequence[int],
                 decoder: Sequence[int], integration_steps: int, downsize: int = 1) -> None:
        super().__init__()
        self.ndim, self.downsize = ndim, int(downsize)
        self.similarity = SimilarityHead(ndim, 2 * num_labels, affine_channels)
        self.deformable = VoxelMorph(ndim, in_channels=num_labels, encoder=encoder, decoder=decoder,
                                     integration_steps=integration_steps)

    def forward(self, segmentation: torch.Tensor, atlas_labels: torch.Tensor) -> dict[str, torch.Tensor]:
        shape = segmentation.shape[2:]
        if self.downsize > 1:
            pool = F.avg_pool2d if self.ndim == 2 else F.avg_pool3d
            segmentation, atlas_labels = (pool(x, self.downsize) for x in (segmentation, atlas_labels))
        coarse_shape = segmentation.shape[2:]
        normalised = similarity_matrix(self.similarity(torch.cat([segmentation, atlas_labels], dim=1)), self.ndim)
        coarse_matrix = normalised_to_voxel_affine(normalised, coarse_shape)
        atlas_in_image = warp_image(atlas_labels, affine_displacement(coarse_matrix, coarse_shape), padding="border")
        velocity = self.deformable.unet(atlas_in_image, segmentation)
        matrix = normalised_to_voxel_affine(normalised, shape)
        return {"affine": matrix, "velocity": velocity, **self.displacements(matrix, velocity, shape)}

    def displacements(self, matrix: torch.Tensor, velocity: torch.Tensor, shape: Sequence[int]
                      ) -> dict[str, torch.Tensor]:
        """``image_to_atlas`` and ``atlas_to_image`` on the grid ``shape`` from ``T`` (on that grid) and ``v``."""
        forward, backward = (resize_displacement(self.deformable.velocity_to_displacement(field), shape)
                             for field in (velocity, -velocity))
        image_to_atlas = affine_displacement(matrix, shape) + apply_linear(matrix[:, :, :self.ndim], forward)
        atlas_to_image = compose_displacements(backward, affine_displacement(invert_affine(matrix), shape))
        return {"image_to_atlas": image_to_atlas, "atlas_to_image": atlas_to_image}


class AtlasIstn(nn.Module):
    """ITN + STN + the atlas they were trained with (see the module docstring).

    Parameters
    ----------
    ndim : 2 or 3.
    num_labels : label classes, background included.
    atlas_shape : spatial shape of the atlas (the training grid); a multiple of :attr:`size_multiple`.
    itn_channels : U-Net widths of the ITN.
    affine_channels : encoder widths of the similarity head.
    stn_encoder, stn_decoder : widths of the velocity U-Net (VoxelMorph's layout).
    integration_steps : scaling-and-squaring steps (7).
    stn_downsize : the STN works on a grid this many times coarser (1: full resolution; 2 suits 3D).

    Shapes
    ------
    ``forward(image, atlas_labels=None)``: image ``(B, 1, *S)``; the atlas labels ``(B|1, L, *S)``
    default to the stored atlas (then ``S`` must be ``atlas_shape``). Returns ``segmentation``
    (ITN logits ``(B, L, *S)``), ``probabilities`` (their softmax), the STN outputs and
    ``warped_atlas`` ``(B, L, *S)``: the atlas label probabilities on the image grid. The STN sees
    the probabilities detached: as in the paper, registration losses train the STN only and the
    segmentation loss the ITN only.
    """

    def __init__(self, ndim: int = 2, num_labels: int = 5, atlas_shape: Sequence[int] = (160, 192),
                 itn_channels: Sequence[int] = (16, 32, 64, 64), affine_channels: Sequence[int] = (16, 32, 32, 32, 32),
                 stn_encoder: Sequence[int] = (16, 32, 32, 32), stn_decoder: Sequence[int] = (32, 32, 32, 32, 16, 16),
                 integration_steps: int = 7, stn_downsize: int = 1) -> None:
        super().__init__()
        self.ndim, self.num_labels = check_ndim(ndim), int(num_labels)
        self.atlas_shape = tuple(int(size) for size in atlas_shape)
        if len(self.atlas_shape) != ndim:
            raise ValueError(f"atlas_shape {atlas_shape} has not {ndim} sizes")
        self.widths = {"itn_channels": [int(c) for c in itn_channels],
                       "affine_channels": [int(c) for c in affine_channels],
                       "stn_encoder": [int(c) for c in stn_encoder], "stn_decoder": [int(c) for c in stn_decoder]}
        self.integration_steps, self.stn_downsize = int(integration_steps), int(stn_downsize)
        self.itn = SegmentationUNet(ndim, num_labels, channels=itn_channels)
        self.stn = SpatialTransformer(ndim, num_labels, affine_channels, stn_encoder, stn_decoder, integration_steps,
                                      stn_downsize)
        self.size_multiple = max(self.itn.size_multiple, self.stn_downsize * 8)
        if any(size % self.size_multiple for size in self.atlas_shape):
            raise ValueError(f"atlas_shape {self.atlas_shape} is not a multiple of {self.size_multiple}")
        self.register_buffer("atlas_image", torch.zeros((1, 1) + self.atlas_shape, dtype=torch.float16))
        self.register_buffer("atlas_label_levels", torch.zeros((1, self.num_labels) + self.atlas_shape,
                                                               dtype=torch.uint8))

    @property
    def config(self) -> dict:
        """Constructor arguments: ``AtlasIstn(**model.config)`` rebuilds this architecture."""
        return {"ndim": self.ndim, "num_labels": self.num_labels, "atlas_shape": list(self.atlas_shape),
                **{key: list(value) for key, value in self.widths.items()},
                "integration_steps": self.integration_steps, "stn_downsize": self.stn_downsize}

    def set_atlas(self, image: torch.Tensor, probabilities: torch.Tensor) -> None:
        """Store an atlas: image ``(1, 1, *atlas_shape)`` and label probabilities ``(1, L, *atlas_shape)``."""
        expected = (1, self.num_labels) + self.atlas_shape
        if tuple(probabilities.shape) != expected or tuple(image.shape) != (1, 1) + self.atlas_shape:
            raise InputError(f"atlas of shapes {tuple(image.shape)} and {tuple(probabilities.shape)}; expected "
                             f"{(1, 1) + self.atlas_shape} and {expected}")
        self.atlas_image.copy_(image.detach().to(torch.float16))
        self.atlas_label_levels.copy_((probabilities.detach().clamp(0, 1) * 255).round().to(torch.uint8))

    def atlas_probabilities(self) -> torch.Tensor:
        """The stored atlas label probabilities ``(1, L, *atlas_shape)`` as floats summing to 1."""
        levels = self.atlas_label_levels.float()
        return levels / levels.sum(dim=1, keepdim=True).clamp(min=1.0)

    def forward(self, image: torch.Tensor, atlas_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.itn(image)["segmentation"]
        probabilities = torch.softmax(logits, dim=1)
        return {"segmentation": logits, "probabilities": probabilities,
                **self.transform(probabilities.detach(), atlas_labels)}

    def transform(self, probabilities: torch.Tensor, atlas_labels: torch.Tensor | None = None,
                  stn: SpatialTransformer | None = None) -> dict:
        """The STN outputs for ITN probabilities ``(B, L, *S)``, and ``warped_atlas`` ``(B, L, *S)``.

        ``stn`` replaces the model's own STN (test-time refinement optimises a copy).
        """
        atlas_labels = self.atlas_probabilities() if atlas_labels is None else atlas_labels
        if atlas_labels.shape[1:] != probabilities.shape[1:]:
            raise InputError(f"atlas labels {tuple(atlas_labels.shape)} and segmentation "
                             f"{tuple(probabilities.shape)} must share labels and grid; fit the atlas to the image grid")
        atlas_labels = atlas_labels.to(probabilities).expand(probabilities.shape[0], *atlas_labels.shape[1:])
        outputs = (stn or self.stn)(probabilities, atlas_labels)
        outputs["warped_atlas"] = warp_image(atlas_labels, outputs["image_to_atlas"], padding="border")
        return outputs
