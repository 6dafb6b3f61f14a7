"""Linear + deformable CNN with fold-free deformations (Christodoulidis et al., 2018), 2D and 3D.

Architecture (METHODS.md §3; slides ``linear-deformable-cnn_slides.txt``)
---------------------------------------------------------------------------
* **Encoder** on the concatenated pair: 5 dilated 3x3(x3) convs (dilations 1, 1, 2, 3, 5, the
  Fibonacci rates that avoid gridding), each followed by instance norm and LeakyReLU; the input and
  the outputs of all layers are concatenated (multi-resolution feature merging). No pooling: every
  layer works at full resolution, so :attr:`LinearDeformable.size_multiple` is 1.
* **Linear branch** (LRB): average pooling (to a 4^n grid by default; 1 cell is the paper's global
  pooling) and a linear layer to ``ndim * (ndim + 1)`` parameters, zero-initialised (identity affine).
* **Deformable branch** (DRB): squeeze-and-excitation, 3x3(x3) convs with instance norm and
  LeakyReLU, and a last conv whose ``2 * sigmoid`` gives the *spatial gradients* ``g_d`` of the
  sampling grid, in (0, 2) per axis (1 = unchanged spacing; its weights are tiny, so ``g`` starts
  at 1: the identity).
* **Warp**: the deformable grid first, then the affine applied to its coordinates:
  ``x -> A (x + v(x)) + t`` (the affine maps the deformable grid's output, as in the paper's
  ``Transformer3d``; the same order as NICE-Trans).

From spatial gradients to a displacement on our convention
----------------------------------------------------------
The paper's grid is ``G_d(p) = sum_{i <= p_d} g_d(i)`` along axis ``d``. Our displacements are
backward, in voxel units, zero for the identity (``moving(x + u(x))``). We take
``v_d = cumsum_d(g_d - 1)`` minus its mean along each line of axis ``d``:

* consecutive samples along axis ``d`` are ``g_d`` apart, in (0, 2): the grid is strictly
  monotonic along every axis (no self-crossing of grid lines), as in the paper;
* ``g = 1`` gives ``v = 0`` exactly (the identity), whatever the boundary;
* boundary handling: subtracting the line mean anchors each line's centroid at the line centre,
  instead of anchoring the first voxel (the plain cumsum), so the drift accumulated along a line
  is split between both ends rather than piled up on the far end. Samples may leave the image near
  the borders; the warp reads zeros there. Global shifts belong to the linear branch.

Why monotone grid lines are not enough, and what guarantees det(J) > 0
----------------------------------------------------------------------
Monotonicity puts a positive number on the Jacobian's diagonal, but the off-diagonal terms
``d v_d / d x_e`` are *sums* along a whole line of differences of ``g_d`` between neighbouring
lines, so they grow with the distance from the anchor and ``det(J)`` can be negative (a random
network folds easily; see ``tests/test_lindef.py``). We therefore rescale the deformable field,
per pair, by the largest ``s <= 1`` that keeps ``I + s J_v`` (its central-difference Jacobian,
the stencil of :func:`warpseg.spatial.jacobian_determinant`) strictly row diagonally dominant with
a margin of ``1 - DIAGONAL_DOMINANCE``. By Gershgorin's theorem every such matrix has
``det > 0``; trained networks rarely need ``s < 1`` (``dominance_scale`` reports it). Scaling by
``s`` keeps every grid spacing ``1 + s (g - 1)`` in (0, 2). The linear part of the affine is
``exp(tanh(M))`` (matrix exponential), whose determinant ``e^{trace}`` is positive, and the
central-difference Jacobian of the full transform is exactly ``A (I + s J_v)``: the whole
transform has ``det(J) > 0`` at every voxel of the model grid, whatever the weights.

Deviations from the paper, and why
----------------------------------
* The dominance rescaling above (the paper assumes monotone grid lines suffice).
* The affine's linear part is ``exp(tanh(M))`` and its translation ``tanh(t)`` (in the centred,
  isotropically normalised coordinates of :func:`~warpseg.models.nice_trans.normalised_to_voxel_affine`),
  instead of a plain linear activation: no reflections or singular matrices, bounded outputs.
* Small by default (CPU training on 2 cores): encoder widths 16 (paper 32..128), decoder 32-16-16
  (paper 128-64-32-32-32), squeeze-and-excitation reduction 4.
* Replicate padding in every conv. With zero padding the network's output differs systematically
  in the border columns, and the cumulative sum integrates that difference along the whole column
  into a shear of several voxels: in the zero-padded checkpoint we inspected, every voxel that needed
  the fold-free rescaling lay in the last column.
* ``dominance_penalty`` (default 100): a training term on the voxels whose diagonal-dominance
  excess passes the margin, so the network learns to need no rescaling (in our training runs ``s``
  stayed at 0.96-1); without it the rescaling shrank the whole field to a quarter and nothing was learned.
* The linear branch pools to a 4^n grid, not to one cell. Globally averaged instance-normalised
  features carry almost nothing about the pair, so the paper's branch learned one dataset-wide
  affine (a 3-7 % zoom on our data) that lowered held-out Dice. Even pooled to a grid it learned
  such a bias here, so the shipped weights are the paper's "w/o affine" variant
  (``--model-option affine=false``); see README.
* Training adds the usual diffusion regulariser (σ = 1), on the deformable stage only.
* The loss (``loss_terms`` output): ``alpha |A - A_I|_1 + beta |Phi - Phi_I|_1`` with
  ``alpha = beta = 1e-6`` summed over elements (as a Keras activity regulariser does), averaged
  over the batch; ``A`` the normalised affine ``[L | t]`` and ``Phi`` the spatial gradients.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from warpseg.models.blocks import (
    LEAKY_SLOPE, apply_linear, check_image_pair, check_ndim, conv_layer, displacement_head,
)
from warpseg.models.nice_trans import identity_affine, normalised_to_voxel_affine
from warpseg.spatial import affine_displacement, identity_grid

DIAGONAL_DOMINANCE = 0.9
"""Largest allowed ``sum_e |J_de| - J_dd`` (off-diagonal minus diagonal part of ``J_v``) per row."""


def instance_norm_layer(ndim: int) -> type[nn.Module]:
    """``nn.InstanceNorm2d`` or ``nn.InstanceNorm3d``."""
    return (nn.InstanceNorm2d, nn.InstanceNorm3d)[check_ndim(ndim) - 2]


class ConvNormActivation(nn.Sequential):
    """A replicate-padded (dilated) 3x3(x3) convolution, instance norm and LeakyReLU(0.2).

    Shapes
    ------
    input ``(B, in_channels, *S)``; output ``(B, out_channels, *S)``.
    """

    def __init__(self, ndim: int, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__(
            conv_layer(ndim)(in_channels, out_channels, 3, padding=dilation, dilation=dilation,
                             padding_mode="replicate"),
            instance_norm_layer(ndim)(out_channels),
            nn.LeakyReLU(LEAKY_SLOPE),
        )


class DilatedEncoder(nn.Module):
    """Dilated convs in sequence; the input and every layer's output are concatenated.

    Shapes
    ------
    input ``(B, in_channels, *S)``; output ``(B, out_channels, *S)`` with
    ``out_channels = in_channels + sum(widths)``.
    """

    def __init__(self, ndim: int, in_channels: int, widths: Sequence[int], dilations: Sequence[int]) -> None:
        super().__init__()
        if len(widths) != len(dilations):
            raise ValueError(f"encoder widths {list(widths)} and dilations {list(dilations)} differ in length")
        inputs = [in_channels] + list(widths[:-1])
        self.layers = nn.ModuleList(
            [ConvNormActivation(ndim, i, o, d) for i, o, d in zip(inputs, widths, dilations)])
        self.out_channels = in_channels + sum(widths)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        outputs = [pair]
        for layer in self.layers:
            outputs.append(layer(outputs[-1]))
        return torch.cat(outputs, dim=1)


class LinearBranch(nn.Module):
    """Average pooling to a ``pooled_size`` grid and a linear layer to an affine in normalised coordinates.

    The output is ``[exp(tanh(M)) | tanh(t)]``; the layer is zero-initialised (identity).
    ``pooled_size = 1`` is the paper's global average pooling. The pooled features are divided by
    the square root of their number: Adam moves every weight by about the learning rate per step,
    so without it the affine of a wide layer swings by tens of units within a few steps.

    Shapes
    ------
    input ``(B, channels, *S)``; output ``(B, ndim, ndim + 1)`` (see
    :func:`~warpseg.models.nice_trans.normalised_to_voxel_affine`).
    """

    def __init__(self, ndim: int, channels: int, pooled_size: int = 1) -> None:
        super().__init__()
        self.ndim = ndim
        self.pool = (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)[ndim - 2](pooled_size)
        self.parameters_out = nn.Linear(channels * pooled_size ** ndim, ndim * (ndim + 1))
        nn.init.zeros_(self.parameters_out.weight)
        nn.init.zeros_(self.parameters_out.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(features).flatten(1)
        pooled = pooled / pooled.shape[1] ** 0.5
        params = torch.tanh(self.parameters_out(pooled)).view(-1, self.ndim, self.ndim + 1)
        linear = torch.linalg.matrix_exp(params[:, :, :self.ndim])
        return torch.cat([linear, params[:, :, self.ndim:]], dim=2)


class SqueezeExcitation(nn.Module):
    """Channel re-weighting: global pooling, bottleneck, sigmoid gates (Hu et al. 2018).

    Shapes
    ------
    input ``(B, channels, *S)``; output the same.
    """

    def __init__(self, ndim: int, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        conv = conv_layer(ndim)
        self.gate = nn.Sequential(conv(channels, hidden, 1), nn.ReLU(), conv(hidden, channels, 1), nn.Sigmoid())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.mean(dim=tuple(range(2, features.dim())), keepdim=True)
        return features * self.gate(pooled)


class DeformableBranch(nn.Module):
    """Squeeze-and-excitation, conv + instance norm + LeakyReLU layers, and ``2 * sigmoid`` gradients.

    Shapes
    ------
    input ``(B, channels, *S)``; output ``(B, ndim, *S)`` spatial gradients in (0, 2) (1 at
    initialisation).
    """

    def __init__(self, ndim: int, channels: int, widths: Sequence[int], reduction: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [SqueezeExcitation(ndim, channels, reduction)]
        for width in widths:
            layers.append(ConvNormActivation(ndim, channels, width))
            channels = width
        self.features = nn.Sequential(*layers)
        self.gradient_head = displacement_head(ndim, channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return 2.0 * torch.sigmoid(self.gradient_head(self.features(features)))


def gradients_to_displacement(gradients: torch.Tensor) -> torch.Tensor:
    """Integrate spatial gradients along their axes into a line-centred displacement.

    ``v_d = cumsum_d(g_d - 1) - mean_d(cumsum_d(g_d - 1))``: samples along axis ``d`` are ``g_d``
    apart and each line keeps its centroid (see the module docstring).

    Shapes
    ------
    gradients ``(B, ndim, *S)`` in (0, 2); returns ``(B, ndim, *S)`` in voxel units.
    """
    components = []
    for axis in range(gradients.shape[1]):
        offsets = torch.cumsum(gradients[:, axis] - 1.0, dim=axis + 1)
        components.append(offsets - offsets.mean(dim=axis + 1, keepdim=True))
    return torch.stack(components, dim=1)


def displacement_jacobian(displacement: torch.Tensor) -> torch.Tensor:
    """``d u_i / d x_j`` by central differences (one-sided at the borders), as
    :func:`warpseg.spatial.jacobian_determinant` computes them.

    Shapes
    ------
    displacement ``(B, ndim, *S)``; returns ``(B, ndim, ndim, *S)`` indexed ``[b, i, j]``.
    """
    ndim = displacement.shape[1]
    rows = []
    for component in range(ndim):
        field = displacement[:, component]
        rows.append(torch.stack([
            torch.gradient(field, dim=axis + 1)[0] if field.shape[axis + 1] > 1 else torch.zeros_like(field)
            for axis in range(ndim)], dim=1))
    return torch.stack(rows, dim=1)


def enforce_diagonal_dominance(displacement: torch.Tensor,
                               dominance: float = DIAGONAL_DOMINANCE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scale a displacement so that ``I + J_u`` is row diagonally dominant at every voxel.

    With ``r_d = sum_{e != d} |J_de| - J_dd`` per row and voxel, the scale is
    ``s = min(1, dominance / max r)`` per batch element, so ``1 + s J_dd - s sum_{e != d} |J_de|
    >= 1 - dominance > 0``: by Gershgorin's theorem ``det(I + s J_u) > 0`` everywhere.

    Shapes
    ------
    displacement ``(B, ndim, *S)``; returns the scaled displacement ``(B, ndim, *S)``, the
    scales ``(B,)`` (1 where nothing was needed) and the unscaled excess ``r`` ``(B, ndim, *S)``.
    """
    if not 0.0 < dominance < 1.0:
        raise ValueError(f"dominance must lie in (0, 1), got {dominance}")
    jacobian = displacement_jacobian(displacement)
    diagonal = torch.diagonal(jacobian, dim1=1, dim2=2)  # (B, *S, ndim)
    off_diagonal = jacobian.abs().sum(dim=2) - torch.movedim(diagonal.abs(), -1, 1)
    excess = off_diagonal - torch.movedim(diagonal, -1, 1)  # r_d, (B, ndim, *S)
    worst = excess.flatten(1).amax(dim=1)
    scale = dominance / worst.clamp(min=dominance)
    return displacement * scale.view(-1, *([1] * (displacement.dim() - 1))), scale, excess


class LinearDeformable(nn.Module):
    """Linear + deformable registration CNN (see the module docstring).

    Parameters
    ----------
    ndim : 2 or 3 spatial dimensions.
    in_channels : channels of each image; the encoder sees ``2 * in_channels``.
    encoder : width of each dilated encoder layer.
    dilations : dilation of each encoder layer (the paper's Fibonacci 1, 1, 2, 3, 5).
    decoder : widths of the deformable branch's conv layers before its gradient head.
    se_reduction : squeeze-and-excitation bottleneck ratio.
    affine : predict the linear branch; False gives the paper's "w/o affine" variant.
    affine_penalty : alpha, weight of ``|A - A_I|_1`` in ``loss_terms``.
    deformable_penalty : beta, weight of ``|Phi - Phi_I|_1`` in ``loss_terms``.
    affine_pooling : the linear branch pools the features to this many cells per axis (1: the paper's
        global average pooling).
    dominance_penalty : weight of ``mean max(0, r - DIAGONAL_DOMINANCE)`` in ``loss_terms``, which
        teaches the network to stay where no fold-free rescaling is needed.

    Shapes
    ------
    ``forward(moving, fixed)``: both ``(B, in_channels, *S)``. Returns a dict:

    * ``displacement`` ``(B, ndim, *S)``: the full transform in voxel units of the fixed grid;
    * ``affine`` ``(B, ndim, ndim + 1)``: the affine on voxel coordinates;
    * ``spatial_gradients`` ``(B, ndim, *S)``: the deformable branch's output, in (0, 2);
    * ``deformable_grid`` ``(B, ndim, *S)``: voxel coordinates ``x + v(x)`` of the deformable stage;
    * ``dominance_scale`` ``(B,)``: the fold-free rescaling of ``v`` (1: none was needed);
    * ``deformable_displacement`` ``(B, ndim, *S)``: ``v``, the deformable stage alone (training
      regularises its smoothness, not the affine's);
    * ``loss_terms``: ``{"affine_penalty", "deformable_penalty", "dominance_penalty"}`` scalars for training.
    """

    def __init__(self, ndim: int = 2, in_channels: int = 1, encoder: Sequence[int] = (16, 16, 16, 16, 16),
                 dilations: Sequence[int] = (1, 1, 2, 3, 5), decoder: Sequence[int] = (32, 16, 16),
                 se_reduction: int = 4, affine: bool = True, affine_penalty: float = 1e-6,
                 deformable_penalty: float = 1e-6, affine_pooling: int = 4, dominance_penalty: float = 100.0) -> None:
        super().__init__()
        self.ndim = check_ndim(ndim)
        self.in_channels = int(in_channels)
        self.encoder_widths, self.dilations = [int(w) for w in encoder], [int(d) for d in dilations]
        self.decoder_widths, self.se_reduction = [int(w) for w in decoder], int(se_reduction)
        self.affine = bool(affine)
        self.affine_penalty, self.deformable_penalty = float(affine_penalty), float(deformable_penalty)
        self.affine_pooling, self.dominance_penalty = int(affine_pooling), float(dominance_penalty)
        self.size_multiple = 1
        self.encoder = DilatedEncoder(self.ndim, 2 * self.in_channels, self.encoder_widths, self.dilations)
        channels = self.encoder.out_channels
        self.linear_branch = LinearBranch(self.ndim, channels, self.affine_pooling) if self.affine else None
        self.deformable_branch = DeformableBranch(self.ndim, channels, self.decoder_widths, self.se_reduction)

    @property
    def config(self) -> dict:
        """Constructor arguments: ``LinearDeformable(**model.config)`` rebuilds this architecture."""
        return {"ndim": self.ndim, "in_channels": self.in_channels, "encoder": list(self.encoder_widths),
                "dilations": list(self.dilations), "decoder": list(self.decoder_widths),
                "se_reduction": self.se_reduction, "affine": self.affine,
                "affine_penalty": self.affine_penalty, "deformable_penalty": self.deformable_penalty,
                "affine_pooling": self.affine_pooling, "dominance_penalty": self.dominance_penalty}

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        check_image_pair(moving, fixed, ndim=self.ndim, in_channels=self.in_channels,
                         size_multiple=self.size_multiple)
        features = self.encoder(torch.cat([moving, fixed], dim=1))
        gradients = self.deformable_branch(features)
        deformable, scale, excess = enforce_diagonal_dominance(gradients_to_displacement(gradients))
        batch, shape = moving.shape[0], fixed.shape[2:]
        identity = identity_affine(batch, self.ndim, features)
        normalised = self.linear_branch(features) if self.linear_branch is not None else identity
        affine = normalised_to_voxel_affine(normalised, shape)
        displacement = affine_displacement(affine, shape) + apply_linear(affine[:, :, :self.ndim], deformable)
        grid = identity_grid(shape, device=deformable.device, dtype=deformable.dtype)
        loss_terms = {
            "affine_penalty": self.affine_penalty * (normalised - identity).abs().sum() / batch,
            "deformable_penalty": self.deformable_penalty * (gradients - 1.0).abs().sum() / batch,
            "dominance_penalty": self.dominance_penalty * (excess - DIAGONAL_DOMINANCE).clamp(min=0).mean(),
        }
        return {"displacement": displacement, "affine": affine, "spatial_gradients": gradients,
                "deformable_grid": grid.unsqueeze(0) + deformable, "deformable_displacement": deformable,
                "dominance_scale": scale,
                "loss_terms": loss_terms}
