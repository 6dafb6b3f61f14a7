"""Swin-Transformer blocks for 2D and 3D feature maps (Liu et al. 2021, as used by NICE-Trans).

A :class:`SwinBlockPair` is a regular-window block followed by a shifted-window block. Feature maps
of any size are accepted: they are zero-padded to a multiple of the window inside the pair and
cropped back, and an attention mask keeps padded tokens out of every real token's attention (so the
result does not depend on the padding). Along an axis shorter than the window, the window shrinks to
the axis and is not shifted.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

MASKED = -1e4
"""Attention logit added between tokens that must not see each other."""


def cached(cache: dict, key: tuple, build) -> torch.Tensor | None:
    """``cache[key]``, built by ``build()`` on first use outside inference mode.

    Building outside inference mode keeps the cached tensor usable by a later training step even
    if it was first needed under ``torch.inference_mode()``.
    """
    if key not in cache:
        with torch.inference_mode(False):
            cache[key] = build()
    return cache[key]


def window_partition(tokens: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """Cut a channels-last map into non-overlapping windows.

    Shapes
    ------
    tokens ``(B, *S, C)`` with ``S[d]`` a multiple of ``window[d]``;
    returns ``(B * n_windows, prod(window), C)``, windows in row-major order.
    """
    batch, *spatial, channels = tokens.shape
    ndim = len(spatial)
    split = [batch]
    for size, width in zip(spatial, window):
        split += [size // width, width]
    order = [0] + [1 + 2 * d for d in range(ndim)] + [2 + 2 * d for d in range(ndim)] + [2 * ndim + 1]
    windows = tokens.reshape(*split, channels).permute(order)
    return windows.reshape(-1, math.prod(window), channels)


def window_merge(windows: torch.Tensor, window: Sequence[int], spatial: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`.

    Shapes
    ------
    windows ``(B * n_windows, prod(window), C)``; returns ``(B, *spatial, C)``.
    """
    ndim = len(spatial)
    counts = [size // width for size, width in zip(spatial, window)]
    channels = windows.shape[-1]
    tokens = windows.reshape(-1, *counts, *window, channels)
    order = [0]
    for d in range(ndim):
        order += [1 + d, 1 + ndim + d]
    return tokens.permute(order + [2 * ndim + 1]).reshape(-1, *spatial, channels)


def relative_position_index(window: Sequence[int], table_window: int) -> torch.Tensor:
    """Index into a relative-position bias table for every pair of tokens in a window.

    The table covers offsets ``-(table_window - 1) .. table_window - 1`` along each axis, so any
    window no larger than ``table_window`` can use it.

    Shapes
    ------
    returns ``(prod(window), prod(window))`` int64.
    """
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)
    offsets = coords[:, :, None] - coords[:, None, :] + (table_window - 1)
    span = 2 * table_window - 1
    strides = torch.tensor([span ** (len(window) - 1 - d) for d in range(len(window))])
    return (offsets * strides.view(-1, 1, 1)).sum(0)


def attention_mask(valid: Sequence[int], padded: Sequence[int], window: Sequence[int],
                   shift: Sequence[int], device=None) -> torch.Tensor | None:
    """Additive attention mask for (shifted) windows of a zero-padded map, or None if none is needed.

    Tokens may attend to each other only if both are real (not padding) and, after the cyclic shift,
    both come from the same side of the wrap-around seam along every axis.

    Shapes
    ------
    returns ``(n_windows, prod(window), prod(window))`` float or None.
    """
    if tuple(valid) == tuple(padded) and not any(shift):
        return None
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, device=device) for size in padded],
                                      indexing="ij"))
    labels = torch.zeros(padded, dtype=torch.long, device=device)
    for d, amount in enumerate(shift):
        labels += (grid[d] < amount).long() << d
    is_padding = torch.zeros(padded, dtype=torch.bool, device=device)
    for d, size in enumerate(valid):
        is_padding |= grid[d] >= size
    labels[is_padding] = -1
    if any(shift):
        labels = torch.roll(labels, [-s for s in shift], dims=list(range(len(padded))))
    groups = window_partition(labels[None, ..., None], window)[..., 0]
    differs = groups[:, :, None] != groups[:, None, :]
    return differs.float() * MASKED


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias.

    Shapes
    ------
    input ``(B * n_windows, N, dim)`` with ``N = prod(window)``; mask ``(n_windows, N, N)`` or None;
    output as input.
    """

    def __init__(self, dim: int, heads: int, ndim: int, window: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"feature width {dim} is not divisible by {heads} heads")
        self.heads, self.ndim, self.window = heads, ndim, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.projection = nn.Linear(dim, dim)
        self.position_bias = nn.Parameter(torch.zeros((2 * window - 1) ** ndim, heads))
        nn.init.trunc_normal_(self.position_bias, std=0.02)
        self._index_cache: dict[tuple, torch.Tensor] = {}

    def bias(self, window: Sequence[int]) -> torch.Tensor:
        """Relative position bias for a window (``window[d] <= self.window``), ``(heads, N, N)``."""
        device = self.position_bias.device
        index = cached(self._index_cache, (tuple(window), str(device)),
                       lambda: relative_position_index(window, self.window).to(device))
        return self.position_bias[index].permute(2, 0, 1)

    def forward(self, windows: torch.Tensor, window: Sequence[int],
                mask: torch.Tensor | None = None) -> torch.Tensor:
        count, tokens, dim = windows.shape
        head_dim = dim // self.heads
        qkv = self.qkv(windows).reshape(count, tokens, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0] * head_dim**-0.5, qkv[1], qkv[2]
        # explicit softmax attention: on CPU it beats scaled_dot_product_attention for small windows
        logits = query @ key.transpose(-2, -1) + self.bias(window).to(windows.dtype)
        if mask is not None:
            n_windows = mask.shape[0]
            logits = logits.view(count // n_windows, n_windows, self.heads, tokens, tokens)
            logits = (logits + mask[:, None].to(windows.dtype)).view(count, self.heads, tokens, tokens)
        attended = (logits.softmax(dim=-1) @ value).transpose(1, 2).reshape(count, tokens, dim)
        return self.projection(attended)


class SwinBlock(nn.Module):
    """Pre-norm transformer block: (shifted-)window attention, then an MLP, both residual.

    Shapes
    ------
    input ``(B, *S, dim)`` channels-last, ``S`` already a multiple of the window; output as input.
    """

    def __init__(self, dim: int, heads: int, ndim: int, window: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm_attention = nn.LayerNorm(dim)
        self.attention = WindowAttention(dim, heads, ndim, window)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(round(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        for layer in (self.attention.qkv, self.attention.projection, self.mlp[0], self.mlp[2]):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, tokens: torch.Tensor, window: Sequence[int], shift: Sequence[int],
                mask: torch.Tensor | None) -> torch.Tensor:
        spatial = tokens.shape[1:-1]
        axes = list(range(1, 1 + len(spatial)))
        normed = self.norm_attention(tokens)
        if any(shift):
            normed = torch.roll(normed, [-s for s in shift], dims=axes)
        attended = self.attention(window_partition(normed, window), window, mask)
        attended = window_merge(attended, window, spatial)
        if any(shift):
            attended = torch.roll(attended, list(shift), dims=axes)
        tokens = tokens + attended
        return tokens + self.mlp(self.norm_mlp(tokens))


class SwinBlockPair(nn.Module):
    """A regular-window Swin block followed by a shifted-window one, on a channels-first map.

    Parameters
    ----------
    dim : feature channels (divisible by ``heads``).
    heads : attention heads.
    ndim : 2 or 3 spatial dimensions.
    window : window side in voxels; the shifted block shifts by ``window // 2``.
    mlp_ratio : hidden width of the MLP relative to ``dim``.

    Shapes
    ------
    input ``(B, dim, *S)`` of any size ``S``; output ``(B, dim, *S)``.
    """

    def __init__(self, dim: int, heads: int, ndim: int, window: int = 5, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.window = window
        self._mask_cache: dict[tuple, torch.Tensor | None] = {}
        self.blocks = nn.ModuleList(
            [SwinBlock(dim, heads, ndim, window, mlp_ratio) for _ in range(2)])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        spatial = tuple(features.shape[2:])
        ndim = len(spatial)
        window = tuple(min(self.window, size) for size in spatial)
        shift = tuple(self.window // 2 if size > self.window else 0 for size in spatial)
        padded = tuple(-(-size // w) * w for size, w in zip(spatial, window))
        tokens = torch.movedim(features, 1, -1)
        if padded != spatial:
            padding = [0, 0]
            for size, target in zip(reversed(spatial), reversed(padded)):
                padding += [0, target - size]
            tokens = F.pad(tokens, padding)
        no_shift = (0,) * ndim
        masks = [cached(self._mask_cache, (spatial, s, str(tokens.device)),
                        lambda s=s: attention_mask(spatial, padded, window, s, tokens.device))
                 for s in (no_shift, shift)]
        for block, block_shift, mask in zip(self.blocks, (no_shift, shift), masks):
            tokens = block(tokens, window, block_shift, mask)
        tokens = tokens[(slice(None),) + tuple(slice(0, size) for size in spatial)]
        return torch.movedim(tokens, -1, 1).contiguous()
