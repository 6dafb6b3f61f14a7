"""BRBS: better registration to learn better few-shot segmentation, 2D and 3D.

METHODS.md §5 (He et al., TNNLS). One module holds both networks, so one checkpoint does:

* ``registration``: a diffeomorphic :class:`VoxelMorph`; its stationary velocity ``v`` gives the
  forward field ``phi = exp(v)`` (atlas to image) and the inverse ``phi^-1 = exp(-v)`` (image to
  atlas), the pair the bidirectional-consistency (BiC) training terms use;
* ``segmenter``: a :class:`SegmentationUNet`, the product of BRBS;
* space-style sampling (S3P, :func:`space_style_sample`): new labelled images made by interpolating
  learned velocities (space) and image appearances brought into atlas space (style).

``forward(moving, fixed)`` registers and segments both images. Training passes ``sampling`` (the
random weights, drawn by the caller) and ``moving_labels``: the forward then also generates images
from the detached fields and segments them, all in one pass.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from warpseg.models.blocks import check_image_pair, check_ndim
from warpseg.models.segmentation_unet import SegmentationUNet
from warpseg.models.voxelmorph import VoxelMorph
from warpseg.spatial import warp_image


@dataclass(frozen=True)
class SpaceStyleSampling:
    """Random weights of one S3P draw (rows are convex weights; column 0 is the atlas itself).

    Shapes
    ------
    space_weights, style_weights: ``(K, T + 1)`` for K generated images from T targets;
    ``mix``: gamma of the mixed image ``gamma * X_0 + (1 - gamma) * X_1`` (None: no mixed image).
    """

    space_weights: torch.Tensor
    style_weights: torch.Tensor
    mix: float | None = None

    @classmethod
    def draw(cls, generator: torch.Generator, count: int, targets: int, mix: bool = True) -> "SpaceStyleSampling":
        """Uniform (Dirichlet(1)) space and style weights over the atlas and ``targets``; gamma ~ U(0, 1)."""
        def dirichlet() -> torch.Tensor:
            draws = -torch.log(torch.rand(count, targets + 1, generator=generator).clamp(min=1e-12))
            return draws / draws.sum(dim=1, keepdim=True)

        space, style = dirichlet(), dirichlet()
        return cls(space, style, float(torch.rand(1, generator=generator)) if mix else None)


def space_style_sample(atlas: torch.Tensor, atlas_onehot: torch.Tensor, targets: torch.Tensor,
                       velocities: torch.Tensor, integrate: Callable[[torch.Tensor], torch.Tensor],
                       sampling: SpaceStyleSampling) -> tuple[torch.Tensor, torch.Tensor]:
    """Labelled images from interpolated deformations (space) and interpolated appearances (style).

    ``velocities[t]`` maps the atlas to ``targets[t]``. Styles live in atlas space: the atlas and each
    target pulled back by its inverse field ``exp(-v_t)``. Image ``k`` is its style mix warped by
    ``exp(sum_t a_kt v_t)`` (column 0, the atlas, has zero velocity), its labels the atlas one-hot
    warped by the same field: a soft label map that matches the image up to registration error.

    Shapes
    ------
    atlas ``(1, 1, *S)``; atlas_onehot ``(1, L, *S)``; targets ``(T, 1, *S)``; velocities
    ``(T, ndim, *S)``; returns images ``(K, 1, *S)`` and soft labels ``(K, L, *S)``.
    """
    styles = torch.cat([atlas, warp_image(targets, integrate(-velocities), padding="border")])
    space, style = sampling.space_weights.to(velocities), sampling.style_weights.to(velocities)
    mixed_styles = torch.einsum("kt,tc...->kc...", style, styles)
    displacement = integrate(torch.einsum("kt,tc...->kc...", space[:, 1:], velocities))
    images = warp_image(mixed_styles, displacement, padding="border")
    labels = warp_image(atlas_onehot.expand(len(displacement), *atlas_onehot.shape[1:]), displacement,
                        padding="border")
    return images, labels


class Brbs(nn.Module):
    """Diffeomorphic registration net + segmentation net + space-style sampling (module docstring).

    Parameters
    ----------
    ndim : 2 or 3.
    num_labels : segmentation classes including background.
    segmentation_channels : encoder widths of the segmentation U-Net.
    encoder, decoder : widths of the registration U-Net (as :class:`VoxelMorph`).
    integration_steps : scaling-and-squaring steps (at least 1: the inverse needs a velocity).

    Shapes
    ------
    ``forward(moving, fixed)``: ``fixed`` ``(B, 1, *S)``, ``moving`` the same or ``(1, 1, *S)`` (one
    atlas to B images), ``S`` multiples of :attr:`size_multiple`. Returns ``displacement``,
    ``inverse_displacement``, ``velocity`` ``(B, ndim, *S)``, and logits ``moving_segmentation``
    ``(B_moving, L, *S)`` and ``fixed_segmentation`` ``(B, L, *S)``. With ``sampling`` and
    ``moving_labels`` ``(1, 1, *S)`` (the training pass) ``moving_segmentation`` is the first
    atlas's ``(1, L, *S)``, ``fixed_segmentation`` carries no gradient, and the outputs add
    ``generated_images`` ``(K, 1, *S)``, ``generated_labels`` ``(K, L, *S)`` and their logits
    ``generated_segmentation``, and with ``sampling.mix`` the ``mixed_image`` ``(1, 1, *S)`` and its
    ``mixed_segmentation``.
    """

    def __init__(self, ndim: int = 2, num_labels: int = 5, segmentation_channels: Sequence[int] = (16, 32, 64, 64),
                 encoder: Sequence[int] = (16, 32, 32, 32), decoder: Sequence[int] = (32, 32, 32, 32, 32, 16, 16),
                 integration_steps: int = 7) -> None:
        super().__init__()
        if integration_steps < 1:
            raise ValueError("BRBS registers by a velocity field (its inverse is exp(-v)): integration_steps must be "
                             f">= 1, got {integration_steps}")
        self.ndim, self.num_labels = check_ndim(ndim), int(num_labels)
        self.registration = VoxelMorph(ndim, 1, encoder=encoder, decoder=decoder, integration_steps=integration_steps)
        self.segmenter = SegmentationUNet(ndim, self.num_labels, 1, segmentation_channels)
        self.size_multiple = math.lcm(self.segmenter.size_multiple, self.registration.size_multiple)

    @property
    def config(self) -> dict:
        """Constructor arguments: ``Brbs(**model.config)`` rebuilds this architecture."""
        registration = self.registration.config
        return {"ndim": self.ndim, "num_labels": self.num_labels,
                "segmentation_channels": list(self.segmenter.channels), "encoder": registration["encoder"],
                "decoder": registration["decoder"], "integration_steps": registration["integration_steps"]}

    def segment(self, image: torch.Tensor) -> torch.Tensor:
        """Label logits of the segmenter: ``(B, 1, *S)`` to ``(B, num_labels, *S)``."""
        return self.segmenter(image)["segmentation"]

    def integrate(self, velocity: torch.Tensor) -> torch.Tensor:
        """``exp(v)`` as a displacement ``(B, ndim, *S)``; ``integrate(-v)`` is its inverse."""
        return self.registration.velocity_to_displacement(velocity)

    def register(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        """Forward and inverse fields of ``moving`` (batch 1 or B) to ``fixed`` ``(B, 1, *S)``."""
        moving = moving.expand_as(fixed) if moving.shape[0] == 1 else moving
        check_image_pair(moving, fixed, ndim=self.ndim, in_channels=1, size_multiple=self.size_multiple)
        velocity = self.registration.unet(moving, fixed)
        return {"velocity": velocity, "displacement": self.integrate(velocity),
                "inverse_displacement": self.integrate(-velocity)}

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, *, moving_labels: torch.Tensor | None = None,
                sampling: SpaceStyleSampling | None = None) -> dict:
        outputs = self.register(moving, fixed)
        if sampling is not None:
            return {**outputs, **self._sampled_outputs(moving[:1], moving_labels, fixed, outputs["velocity"], sampling)}
        moving_logits, fixed_logits = self.segment(torch.cat([moving, fixed])).split([len(moving), len(fixed)])
        return {**outputs, "moving_segmentation": moving_logits, "fixed_segmentation": fixed_logits}

    def _sampled_outputs(self, atlas: torch.Tensor, atlas_labels: torch.Tensor | None, targets: torch.Tensor,
                         velocities: torch.Tensor, sampling: SpaceStyleSampling) -> dict:
        """The training pass: images generated from the detached fields, and every segmentation.

        The targets' segmentation is computed without gradients: training uses it only as their
        semantic regions.
        """
        with torch.no_grad():
            outputs = {"fixed_segmentation": self.segment(targets),
                       **self._generate(atlas, atlas_labels, targets, velocities.detach(), sampling)}
        images = [atlas, outputs["generated_images"]] + ([outputs["mixed_image"]] if "mixed_image" in outputs else [])
        logits = self.segment(torch.cat(images)).split([len(image) for image in images])
        outputs["moving_segmentation"], outputs["generated_segmentation"] = logits[0], logits[1]
        if len(logits) > 2:
            outputs["mixed_segmentation"] = logits[2]
        return outputs

    def _generate(self, atlas: torch.Tensor, atlas_labels: torch.Tensor | None, targets: torch.Tensor,
                  velocities: torch.Tensor, sampling: SpaceStyleSampling) -> dict:
        if atlas_labels is None:
            raise ValueError("space-style sampling needs moving_labels (the atlas label map)")
        onehot = torch.movedim(nn.functional.one_hot(atlas_labels[:1, 0].long(), self.num_labels), -1, 1).to(atlas)
        images, labels = space_style_sample(atlas, onehot, targets, velocities, self.integrate, sampling)
        generated = {"generated_images": images, "generated_labels": labels}
        if sampling.mix is not None and len(images) >= 2:
            generated["mixed_image"] = sampling.mix * images[:1] + (1 - sampling.mix) * images[1:2]
        return generated
