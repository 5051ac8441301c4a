"""Tiled MoVQ decode/encode: exact when one tile covers everything, exact blending for local maps, close on smooth input."""
import types

import pytest
import torch
import torch.nn.functional as F

from kandinsky_core import tiling
from kandinsky_core.errors import KandinskyError
from kandinsky_core.movq import MOVQ_TINY, MoVQ


@pytest.fixture(scope="module")
def movq():
    torch.manual_seed(0)
    return MoVQ(MOVQ_TINY).eval()


def smooth_latent(batch, height, width, amplitude=0.3):
    """Low-frequency latents: a per-channel level plus slow waves across the whole latent."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    z = torch.stack([0.5 * c - 0.7 + amplitude * (torch.sin(2 * yy + c) + torch.cos(3 * xx - c)) for c in range(4)])
    return torch.stack([z * (1 + 0.2 * b) for b in range(batch)])


class LocalMoVQ:
    """A stand-in MoVQ whose decode/encode are per-pixel, so tiling changes nothing but rounding; records tile shapes."""

    def __init__(self, f):
        self.config = types.SimpleNamespace(scale_factor=f)
        self.f, self.seen = f, []

    def decode(self, z):
        self.seen.append(tuple(z.shape))
        return torch.tanh(F.interpolate(z[:, :3], scale_factor=self.f, mode="nearest") * 2)

    def encode(self, x):
        self.seen.append(tuple(x.shape))
        pooled = F.avg_pool2d(x, self.f)
        return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)


class TileIndexMoVQ(LocalMoVQ):
    """Decodes every tile to a flat image of the tile's index (0, 1, 2, ...)."""

    def decode(self, z):
        self.seen.append(tuple(z.shape))
        return torch.full((1, 3, z.shape[-2] * self.f, z.shape[-1] * self.f), float(len(self.seen) - 1))


def test_one_tile_reproduces_decode_exactly(movq):
    z = smooth_latent(1, 12, 10)
    with torch.no_grad():
        expected = movq.decode(z)
    for tile in (12, 64):
        assert torch.equal(tiling.decode_tiled(movq, z, tile, 3), expected)


def test_one_tile_reproduces_encode_exactly(movq):
    torch.manual_seed(1)
    x = torch.rand(1, 3, 24, 20) * 2 - 1
    with torch.no_grad():
        expected = movq.encode(x)
    assert torch.equal(tiling.encode_tiled(movq, x, 24, 8), expected)


def test_one_tile_per_image_matches_batched_decode(movq):
    z = smooth_latent(2, 8, 8)
    with torch.no_grad():
        expected = movq.decode(z)
    assert (tiling.decode_tiled(movq, z, 8, 2) - expected).abs().max() < 1e-5


@pytest.mark.parametrize("shape, tile, overlap", [((2, 4, 13, 22), 8, 3), ((1, 4, 9, 9), 4, 1), ((1, 4, 30, 7), 16, 15)])
def test_blending_is_exact_for_local_maps(shape, tile, overlap):
    """Where the network is per-pixel, tiled and whole must agree: tiles are placed right and weights sum to 1."""
    torch.manual_seed(2)
    stub = LocalMoVQ(2)
    z = torch.randn(shape)
    out = tiling.decode_tiled(stub, z, tile, overlap)
    assert out.shape == (shape[0], 3, shape[2] * 2, shape[3] * 2)
    assert (out - stub.decode(z)).abs().max() < 1e-6
    assert max(s[-2] for s in stub.seen[:-1]) <= tile and max(s[-1] for s in stub.seen[:-1]) <= tile
    assert all(s[0] == 1 for s in stub.seen[:-1])  # one image at a time


def test_overlaps_blend_linearly_from_one_tile_to_the_next():
    """Each tile decodes to its own index; across an overlap the output must ramp linearly from one to the next."""
    row = tiling.decode_tiled(TileIndexMoVQ(2), torch.zeros(1, 4, 1, 10), 4, 1)[0, 0, 0]
    third = 1 / 3
    expected = [0.0] * 6 + [third, 2 * third] + [1.0] * 4 + [1 + third, 1 + 2 * third] + [2.0] * 6
    assert torch.allclose(row, torch.tensor(expected), atol=1e-6)


def test_encode_blending_is_exact_for_local_maps():
    torch.manual_seed(3)
    stub = LocalMoVQ(8)
    x = torch.rand(2, 3, 104, 72) * 2 - 1
    out = tiling.encode_tiled(stub, x, 32, 8)
    assert out.shape == (2, 4, 13, 9)
    assert (out - stub.encode(x)).abs().max() < 1e-6
    assert {s[-2] for s in stub.seen[:-1]} == {32} and {s[-1] for s in stub.seen[:-1]} == {32}


def test_small_tiles_stay_close_on_smooth_input(movq):
    """GroupNorm statistics and attention become per tile, so tiling only approximates the whole decode.

    Measured on this random tiny MoVQ (32x32 latent, 64x64 image, output std 0.18): tile 16 / overlap 4 gives a mean
    absolute difference of 0.063 (median 0.031); tile 8 / overlap 2 gives 0.094. Most of it sits at the image corners,
    where the untrained decoder's outputs are largest. Encode with 32 / 8 pixel tiles: 0.095 against latent std 0.37.
    """
    z = smooth_latent(1, 32, 32)
    with torch.no_grad():
        whole = movq.decode(z)
        whole_latents = movq.encode(whole.clamp(-1, 1))
    for tile, overlap, bound in ((16, 4, 0.08), (8, 2, 0.12)):
        diff = (tiling.decode_tiled(movq, z, tile, overlap) - whole).abs()
        assert diff.mean() < bound and diff.median() < bound / 2
    diff = (tiling.encode_tiled(movq, whole.clamp(-1, 1), 32, 8) - whole_latents).abs()
    assert diff.mean() < 0.12 and diff.mean() < 0.4 * whole_latents.std()


def test_real_movq_shapes_for_sizes_not_divisible_by_the_tile(movq):
    z = smooth_latent(2, 11, 7)
    out = tiling.decode_tiled(movq, z, 4, 1)
    assert out.shape == (2, 3, 22, 14) and out.dtype == torch.float32 and torch.isfinite(out).all()
    latents = tiling.encode_tiled(movq, out.clamp(-1, 1), 8, 2)
    assert latents.shape == (2, 4, 11, 7) and torch.isfinite(latents).all()


def test_callback_counts_every_tile_of_every_image():
    steps = []
    tiling.decode_tiled(LocalMoVQ(2), torch.zeros(3, 4, 10, 10), 4, 1, callback=steps.append)
    per_image = tiling.tile_count(10, 10, 4, 1)
    assert per_image == 9
    assert [s["step"] for s in steps] == list(range(3 * per_image))
    assert {s["total"] for s in steps} == {3 * per_image}


@pytest.mark.parametrize("tile, overlap", [(0, 0), (4, 4), (4, -1)])
def test_bad_tile_settings_are_refused(tile, overlap):
    with pytest.raises(KandinskyError, match="overlap"):
        tiling.decode_tiled(LocalMoVQ(2), torch.zeros(1, 4, 8, 8), tile, overlap)


def test_encode_refuses_sizes_and_tiles_off_the_latent_grid(movq):
    with pytest.raises(KandinskyError, match="height 9 is not a multiple of 2; use 8 or 10"):
        tiling.encode_tiled(movq, torch.zeros(1, 3, 9, 8), 8, 2)
    with pytest.raises(KandinskyError, match="multiples of 2"):
        tiling.encode_tiled(movq, torch.zeros(1, 3, 8, 8), 7, 2)
    with pytest.raises(KandinskyError, match=r"\(B, C, H, W\)"):
        tiling.decode_tiled(movq, torch.zeros(4, 8, 8), 4, 1)


def test_latent_of_wrong_channels_is_refused_with_the_movq_message(movq):
    with pytest.raises(KandinskyError, match="MoVQ.decode needs latents"):
        tiling.decode_tiled(movq, torch.zeros(1, 16, 8, 8), 4, 1)


def test_tile_grid_is_the_smallest_even_cover():
    assert tiling.tile_starts(10, 4, 1) == [0, 3, 6]
    assert tiling.tile_starts(13, 8, 3) == [0, 5]
    assert tiling.tile_starts(5, 8, 3) == [0]
