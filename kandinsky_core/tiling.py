"""MoVQ decode and encode over overlapping tiles, for images too large to run whole.

Tiles run one at a time, one image of the batch at a time, and are blended into float32 output buffers with linear
ramps across each overlap, so peak memory follows the tile size, not the image size.

Tiling is an approximation, not a re-arrangement of the same computation: every GroupNorm (and every decoder
SpatialNorm) takes its statistics over the tile rather than the whole image, the mid-block attention (and the
decoder's first up block, which attends too) only sees the tile, and convolutions see the tile's zero padding at its
inner edges. Smooth images come out close to the whole decode; small tiles on busy images can show faint seams or
slight tone shifts between tiles, which larger tiles and overlaps reduce. A tile covering the whole input reproduces
`MoVQ.decode` / `MoVQ.encode` exactly.
"""
import math

import torch

from . import images
from .errors import KandinskyError


def _check_tile(tile, overlap):
    if tile < 1 or not 0 <= overlap < tile:
        raise KandinskyError(f"tile {tile} with overlap {overlap} is not usable: the tile must be at least 1 and the "
                             "overlap between 0 and tile - 1 (a quarter of the tile works well).")


def tile_starts(size, tile, overlap):
    """Tile offsets along one axis: the first at 0, the last flush with the end, evenly spread, overlapping ≥ `overlap`."""
    if size <= tile:
        return [0]
    n = math.ceil((size - overlap) / (tile - overlap))
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def tile_count(height, width, tile, overlap):
    """How many tiles cover one (height, width) input; sizes in the units of `decode_tiled` / `encode_tiled` input."""
    _check_tile(tile, overlap)
    return len(tile_starts(height, tile, overlap)) * len(tile_starts(width, tile, overlap))


def _ramp(starts, i, length, scale):
    """Blend weights of tile i along one axis, at output resolution: linear ramps across the overlaps, 1 elsewhere."""
    weights = torch.ones(length * scale)
    if i > 0:
        n = (starts[i - 1] + length - starts[i]) * scale
        weights[:n] = torch.arange(1, n + 1) / (n + 1)
    if i < len(starts) - 1:
        n = (starts[i] + length - starts[i + 1]) * scale
        weights[-n:] = torch.minimum(weights[-n:], torch.arange(n, 0, -1) / (n + 1))
    return weights


def _run_tiled(fn, x, grid_hw, tile, overlap, scale_in, scale_out, output_device, callback):
    """Apply `fn` tile by tile over a grid laid out in latent pixels; grid cell k covers k*scale_in input pixels and
    k*scale_out output pixels. Overlaps are blended with complementary linear ramps (weights summing to 1)."""
    _check_tile(tile, overlap)
    if x.ndim != 4:
        raise KandinskyError(f"tiled MoVQ input must be (B, C, H, W), got shape {tuple(x.shape)}; add the batch "
                             "dimension.")
    batch = x.shape[0]
    height, width = grid_hw
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    out, total = None, torch.zeros(height * scale_out, width * scale_out, device=output_device)
    steps, step = batch * len(rows) * len(cols), 0
    for i, y in enumerate(rows):
        for j, x0 in enumerate(cols):
            weight = (_ramp(rows, i, th, scale_out)[:, None] * _ramp(cols, j, tw, scale_out)[None]).to(output_device)
            ys, xs = slice(y * scale_out, (y + th) * scale_out), slice(x0 * scale_out, (x0 + tw) * scale_out)
            total[ys, xs] += weight
            for b in range(batch):
                piece = fn(x[b:b + 1, :, y * scale_in:(y + th) * scale_in, x0 * scale_in:(x0 + tw) * scale_in])
                if out is None:
                    out = torch.zeros(batch, piece.shape[1], *total.shape, device=output_device)
                out[b, :, ys, xs] += piece[0].to(output_device, torch.float32) * weight
                if callback is not None:
                    callback({"step": step, "total": steps})
                step += 1
    return out / total


@torch.no_grad()
def decode_tiled(movq, z, tile, overlap, *, output_device=None, callback=None):
    """`movq.decode(z)` over tile x tile latent tiles overlapping by `overlap` latent pixels; float32 on `output_device`.

    `callback({"step", "total"})` runs after every tile (of every image), for progress and cancel.
    """
    f = movq.config.scale_factor
    device = z.device if output_device is None else output_device
    return _run_tiled(movq.decode, z, z.shape[-2:], tile, overlap, 1, f, device, callback)


@torch.no_grad()
def encode_tiled(movq, x, tile, overlap, *, output_device=None, callback=None):
    """`movq.encode(x)` over tile x tile image tiles overlapping by `overlap` pixels (both multiples of the MoVQ's
    scale factor, 8); float32 latents on `output_device`. `callback` as in `decode_tiled`."""
    f = movq.config.scale_factor
    height, width = x.shape[-2:]
    images.check_size(height, width, f)
    if tile % f or overlap % f:
        raise KandinskyError(f"encode tile {tile} and overlap {overlap} must be multiples of {f} (the MoVQ's "
                             f"downscale), so tiles line up with latent pixels; use e.g. {max(tile // f, 1) * f} "
                             f"and {overlap // f * f}.")
    device = x.device if output_device is None else output_device
    return _run_tiled(movq.encode, x, (height // f, width // f), tile // f, overlap // f, f, 1, device, callback)
