"""Registration networks: shapes, identity at initialisation, gradients, rebuilding from the config,
input checks, geometry of the affine, Swin window attention against a dense reference, folding of
the diffeomorphic baseline, and a short training run that must lower the loss."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from warpseg.models import NiceTrans, SwinBlockPair, VoxelMorph
from warpseg.models.blocks import resize_displacement
from warpseg.models.nice_trans import normalised_to_voxel_affine
from warpseg.spatial import (
    affine_displacement, folding_percent, identity_grid, jacobian_determinant, warp_image,
)

# (48, 32) and 32^3 make the window-5 Swin pairs pad (24 -> 25, 12 -> 15, 16 -> 20 ...) and shrink
# their window on the coarsest levels (3, 2), so every branch of the window logic runs.
SHAPES = {2: (48, 32), 3: (32, 32, 32)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: threads gain nothing, and on a busy machine OpenMP threads spin."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small_model(kind: str, ndim: int, **options):
    torch.manual_seed(0)
    if kind == "nice_trans":
        return NiceTrans(ndim, channels=(4, 8, 8, 8, 8), window=5, heads=2, **options)
    return VoxelMorph(ndim, encoder=(4, 8, 8, 8), decoder=(8, 8, 8, 8, 8, 4, 4), **options)


MODELS = [("nice_trans", {}), ("voxelmorph", {}), ("voxelmorph", {"integration_steps": 7})]
CASES = [pytest.param(kind, options, ndim, id=f"{kind}{'-diffeo' if options else ''}-{ndim}d")
         for kind, options in MODELS for ndim in (2, 3)]


def pair(ndim: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shape = (1, 1) + SHAPES[ndim]
    return torch.rand(shape, generator=generator), torch.rand(shape, generator=generator)


@pytest.mark.parametrize("kind, options, ndim", CASES)
def test_output_shapes_and_identity_at_initialisation(kind, options, ndim):
    model = small_model(kind, ndim, **options)
    moving, fixed = pair(ndim)
    with torch.no_grad():
        out = model(moving, fixed)
    displacement = out["displacement"]
    assert displacement.shape == (1, ndim) + SHAPES[ndim]
    assert displacement.abs().max() < 1e-2
    assert torch.allclose(warp_image(moving, displacement), moving, atol=1e-2)
    if kind == "nice_trans":
        assert torch.equal(out["affine"], torch.eye(ndim, ndim + 1)[None])
        assert out["affine_displacement"].abs().max() < 1e-5
        sizes = [tuple(d.shape[2:]) for d in out["level_displacements"]]
        assert sizes == [tuple(s // 2**k for s in SHAPES[ndim]) for k in (4, 3, 2, 1, 0)]
    if options.get("integration_steps"):
        assert out["velocity"].shape == displacement.shape


@pytest.mark.parametrize("kind, options, ndim", CASES)
def test_gradients_reach_every_parameter(kind, options, ndim):
    model = small_model(kind, ndim, **options)
    moving, fixed = pair(ndim)
    out = model(moving, fixed)
    loss = F.mse_loss(warp_image(moving, out["displacement"]), fixed) + out["displacement"].pow(2).mean()
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    if kind == "nice_trans":  # the zero-initialised affine layer must still learn from the image loss
        assert model.affine_head.parameters_out.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["nice_trans", "voxelmorph"])
def test_batch_items_are_registered_independently(kind):
    model = small_model(kind, 2)
    with torch.no_grad():  # a visible affine and deformable part
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        (moving_a, fixed_a), (moving_b, fixed_b) = pair(2, seed=1), pair(2, seed=2)
        batched = model(torch.cat([moving_a, moving_b]), torch.cat([fixed_a, fixed_b]))["displacement"]
        single = model(moving_b, fixed_b)["displacement"]
    assert single.abs().max() > 0.01
    assert torch.allclose(batched[1:], single, atol=1e-4)


def test_training_works_after_inference_mode():
    """Masks and position indices cached under ``torch.inference_mode`` must not break training."""
    model = small_model("nice_trans", 2)
    moving, fixed = pair(2)
    with torch.inference_mode():
        model(moving, fixed)
    model(moving, fixed)["displacement"].sum().backward()


@pytest.mark.parametrize("kind, options, ndim", CASES)
def test_config_rebuilds_the_same_network(kind, options, ndim):
    model = small_model(kind, ndim, **options)
    rebuilt = type(model)(**json.loads(json.dumps(model.config)))
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert shapes == {name: tuple(t.shape) for name, t in rebuilt.state_dict().items()}
    rebuilt.load_state_dict(model.state_dict())
    moving, fixed = pair(ndim)
    with torch.no_grad():
        assert torch.equal(model(moving, fixed)["displacement"], rebuilt(moving, fixed)["displacement"])


@pytest.mark.parametrize("kind", ["nice_trans", "voxelmorph"])
def test_bad_inputs_raise_value_errors_naming_the_shape(kind):
    model = small_model(kind, 2)
    assert model.size_multiple == 16
    with pytest.raises(ValueError, match=r"\(40, 32\).*multiple of 16"):
        model(torch.rand(1, 1, 40, 32), torch.rand(1, 1, 40, 32))
    with pytest.raises(ValueError, match=r"\(1, 1, 32, 32, 32\)"):
        model(torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32))
    with pytest.raises(ValueError, match=r"\(1, 1, 32, 48\)"):
        model(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 48))


@pytest.mark.parametrize("ndim", [2, 3])
def test_affine_only_mode_gives_an_affine_field(ndim):
    model = small_model("nice_trans", ndim, affine_only=True)
    with torch.no_grad():  # a non-identity affine: stretch, shear and translate
        bias = torch.zeros(ndim, ndim + 1)
        bias[0, 0], bias[0, 1], bias[-1, ndim] = 0.2, -0.1, 0.3
        model.affine_head.parameters_out.bias.copy_(bias.flatten())
        out = model(*pair(ndim))
    assert out["level_displacements"] == []
    assert torch.equal(out["displacement"], out["affine_displacement"])
    assert torch.allclose(out["displacement"], affine_displacement(out["affine"], SHAPES[ndim]))
    determinant = jacobian_determinant(out["displacement"])
    expected = torch.linalg.det(out["affine"][0, :, :ndim])
    assert abs(expected - 1) > 0.1
    assert torch.allclose(determinant, expected.expand_as(determinant), atol=1e-4)
    model.affine_only = False  # same weights, now with the deformable steps
    with torch.no_grad():
        full = model(*pair(ndim))
    assert torch.allclose(full["affine"], out["affine"])
    assert torch.allclose(full["displacement"], out["displacement"], atol=1e-2)


@pytest.mark.parametrize("ndim", [2, 3])
def test_levels_compose_residuals_in_voxel_units_then_apply_the_affine(ndim):
    """Each level's head predicting the same constant ``c`` (in its own voxels) adds ``2**k c`` in
    full-resolution voxels; the affine ``(A, b)`` then maps ``x + d``: ``u = a(x) + A d``."""
    model = small_model("nice_trans", ndim)
    constant = torch.tensor([0.5, -0.25, 0.125][:ndim])
    with torch.no_grad():
        model.affine_head.parameters_out.bias.copy_(0.1 * torch.randn(ndim * (ndim + 1)))
        for head in model.displacement_heads:
            head.weight.zero_()
            head.bias.copy_(constant)
        out = model(*pair(ndim))
    deformable = sum(2**k for k in range(5)) * constant
    linear = out["affine"][0, :, :ndim]
    expected = out["affine_displacement"] + (linear @ deformable).view(1, ndim, *([1] * ndim))
    assert torch.allclose(out["displacement"], expected, atol=1e-4)
    # the coarsest level has one residual (c in its voxels); the affine's mean displacement (its value
    # at the grid centre, which every level shares) is 16 times smaller in coarse voxels
    spatial_axes = tuple(range(2, 2 + ndim))
    coarsest_mean = out["level_displacements"][0].mean(dim=spatial_axes)[0]
    affine_mean = out["affine_displacement"].mean(dim=spatial_axes)[0] / 16
    assert torch.allclose(coarsest_mean, affine_mean + linear @ constant, atol=1e-4)


def test_without_affine_the_affine_is_the_identity():
    model = small_model("nice_trans", 2, affine=False)
    assert model.affine_head is None
    with torch.no_grad():
        out = model(*pair(2))
    assert torch.equal(out["affine"], torch.eye(2, 3)[None])
    assert out["displacement"].abs().max() < 1e-2
    with pytest.raises(ValueError, match="affine_only"):
        NiceTrans(2, affine=False, affine_only=True)


def test_normalised_affine_means_the_same_map_at_every_level():
    """A normalised affine converted on a coarse and on a 2x finer grid describes one map: the
    coarse field, upsampled like the decoder upsamples fields, matches the fine one."""
    normalised = torch.tensor([[[1.1, 0.2, 0.15], [-0.1, 0.9, -0.2]]])
    coarse, fine = (8, 12), (16, 24)
    upsampled = resize_displacement(
        affine_displacement(normalised_to_voxel_affine(normalised, coarse), coarse), fine)
    exact = affine_displacement(normalised_to_voxel_affine(normalised, fine), fine)
    assert torch.allclose(upsampled[..., 1:-1, 1:-1], exact[..., 1:-1, 1:-1], atol=1e-4)
    # a rotation stays a rotation on a non-square grid, and the identity stays the identity
    cos, sin = math.cos(0.3), math.sin(0.3)
    rotation = torch.tensor([[cos, -sin], [sin, cos]])
    voxel = normalised_to_voxel_affine(torch.cat([rotation, torch.zeros(2, 1)], 1)[None], fine)
    assert torch.allclose(voxel[0, :, :2], rotation)
    centre = torch.tensor([7.5, 11.5, 1.0])  # a rotation about the grid centre keeps the centre
    assert torch.allclose(voxel[0] @ centre, centre[:2], atol=1e-5)
    identity = normalised_to_voxel_affine(torch.eye(2, 3)[None], fine)
    assert torch.allclose(identity, torch.eye(2, 3)[None])


def dense_swin_reference(block, tokens, table_window, window, shift, padded):
    """One Swin block as dense attention over all tokens with the allowed pairs spelled out."""
    spatial, channels = tokens.shape[1:-1], tokens.shape[-1]
    ndim, heads = len(spatial), block.attention.heads
    flat = tokens.reshape(-1, channels)
    position = identity_grid(spatial, dtype=torch.long).reshape(ndim, -1)
    allowed = torch.ones(flat.shape[0], flat.shape[0], dtype=torch.bool)
    index = torch.zeros_like(allowed, dtype=torch.long)
    for d in range(ndim):
        shifted = (position[d] - shift[d]) % padded[d]
        window_id, inner, wrapped = shifted // window[d], shifted % window[d], position[d] < shift[d]
        allowed &= (window_id[:, None] == window_id[None]) & (wrapped[:, None] == wrapped[None])
        index = index * (2 * table_window - 1) + inner[:, None] - inner[None] + table_window - 1
    query, key, value = block.attention.qkv(block.norm_attention(flat)).reshape(
        -1, 3, heads, channels // heads).permute(1, 2, 0, 3)
    logits = query @ key.transpose(1, 2) / math.sqrt(channels // heads)
    logits = logits + block.attention.position_bias[index].permute(2, 0, 1)
    attended = logits.masked_fill(~allowed, -math.inf).softmax(-1) @ value
    flat = flat + block.attention.projection(attended.transpose(0, 1).reshape(-1, channels))
    return (flat + block.mlp(block.norm_mlp(flat))).reshape(tokens.shape)


@pytest.mark.parametrize("spatial, table_window", [((7, 9), 3), ((10, 12), 5), ((3, 4), 5),
                                                   ((5, 6, 7), 3), ((4, 9, 6), 4)])
def test_swin_pair_matches_dense_attention_with_explicit_windows(spatial, table_window):
    torch.manual_seed(0)
    swin = SwinBlockPair(8, 2, len(spatial), table_window)
    for parameter in swin.parameters():  # large random weights so that every term matters
        torch.nn.init.normal_(parameter, std=0.3)
    features = torch.randn((1, 8) + spatial)
    window = tuple(min(table_window, size) for size in spatial)
    shift = tuple(table_window // 2 if size > table_window else 0 for size in spatial)
    padded = tuple(-(-size // w) * w for size, w in zip(spatial, window))
    tokens = torch.movedim(features, 1, -1)
    tokens = dense_swin_reference(swin.blocks[0], tokens, table_window, window, (0,) * len(spatial), padded)
    tokens = dense_swin_reference(swin.blocks[1], tokens, table_window, window, shift, padded)
    with torch.no_grad():
        assert torch.allclose(swin(features), torch.movedim(tokens, -1, 1), atol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_diffeomorphic_voxelmorph_does_not_fold_a_random_velocity(ndim):
    model = small_model("voxelmorph", ndim, integration_steps=7)
    shape = SHAPES[ndim]
    coarse = torch.randn((1, ndim) + (4,) * ndim, generator=torch.Generator().manual_seed(0))
    velocity = 6.0 * F.interpolate(coarse, size=shape, mode=("bilinear", "trilinear")[ndim - 2],
                                   align_corners=True)
    assert folding_percent(jacobian_determinant(velocity)) > 0  # used directly, it would fold
    displacement = model.velocity_to_displacement(velocity)
    assert displacement.abs().max() > 3
    assert folding_percent(jacobian_determinant(displacement)) == 0.0


def gaussian_blob(shape, centre, sigma=4.0):
    grid = identity_grid(shape)
    squared = sum((grid[d] - centre[d]) ** 2 for d in range(len(shape)))
    return torch.exp(-squared / (2 * sigma**2))[None, None]


def test_nice_trans_learns_a_shift_of_a_blob():
    model = small_model("nice_trans", 2)
    moving, fixed = gaussian_blob((32, 32), (16, 16)), gaussian_blob((32, 32), (19, 16))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        displacement = model(moving, fixed)["displacement"]
        smoothness = sum(torch.diff(displacement, dim=d).pow(2).mean() for d in (2, 3))
        loss = F.mse_loss(warp_image(moving, displacement), fixed) + 0.01 * smoothness
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < 0.2 * losses[0]
    assert displacement[0, 0, 14:19, 14:19].mean() < -1.5  # fixed(x) = moving(x - 3) along axis 0
