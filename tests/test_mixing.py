"""Embedding paths for animations: linear and spherical interpolation (kandinsky_core.kandinsky2.mixing)."""
import math

import pytest
import torch

from kandinsky_core.errors import KandinskyError
from kandinsky_core.kandinsky2.mixing import embedding_path


def _pair(shape=(2, 1, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@pytest.mark.parametrize("mode", ["linear", "slerp"])
@pytest.mark.parametrize("frames", [2, 3, 8])
def test_frames_and_endpoints(mode, frames):
    a, b = _pair()
    path = embedding_path(a, b, frames, mode)
    assert path.shape == (frames, *a.shape)
    torch.testing.assert_close(path[0], a, atol=1e-6, rtol=0)
    torch.testing.assert_close(path[-1], b, atol=1e-6, rtol=0)


def test_linear_is_evenly_spaced():
    a, b = _pair()
    path = embedding_path(a, b, 5, "linear")
    torch.testing.assert_close(path[2], (a + b) / 2, atol=1e-6, rtol=0)
    steps = path.diff(dim=0)
    torch.testing.assert_close(steps, ((b - a) / 4).expand_as(steps), atol=1e-6, rtol=0)


def test_slerp_keeps_unit_norm_and_constant_angle():
    a, b = _pair((16,))
    a, b = a / a.norm(), b / b.norm()
    path = embedding_path(a, b, 9, "slerp")
    torch.testing.assert_close(path.norm(dim=-1), torch.ones(9), atol=1e-6, rtol=0)
    angles = torch.acos((path[:-1] * path[1:]).sum(-1).clamp(-1, 1))
    total = torch.acos((a * b).sum().clamp(-1, 1))
    torch.testing.assert_close(angles, torch.full((8,), float(total) / 8), atol=1e-5, rtol=0)
    assert (path[4] - (a + b) / 2).norm() > 1e-3  # differs from the linear midpoint, which is shorter


def test_slerp_blends_norms_linearly_and_matches_known_midpoint():
    a = torch.tensor([2.0, 0.0])
    b = torch.tensor([0.0, 4.0])
    mid = embedding_path(a, b, 3, "slerp")[1]
    torch.testing.assert_close(mid, 3.0 * torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6, rtol=0)


def test_slerp_of_parallel_vectors_is_linear():
    a = torch.tensor([[1.0, 2.0, 3.0]])
    path = embedding_path(a, 3 * a, 5, "slerp")
    torch.testing.assert_close(path, embedding_path(a, 3 * a, 5, "linear"), atol=1e-6, rtol=0)


def test_keeps_dtype_and_rows_are_independent():
    a, b = _pair((3, 1, 16))
    path = embedding_path(a.half(), b.half(), 4, "slerp")
    assert path.dtype == torch.float16
    row = embedding_path(a[1], b[1], 4, "slerp")
    torch.testing.assert_close(path[:, 1].float(), row, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("frames", [1, 0, 2.5, True])
def test_rejects_bad_frames(frames):
    a, b = _pair()
    with pytest.raises(KandinskyError, match="frames"):
        embedding_path(a, b, frames)


def test_rejects_bad_mode_and_shapes():
    a, b = _pair()
    with pytest.raises(KandinskyError, match="linear, slerp"):
        embedding_path(a, b, 4, "cubic")
    with pytest.raises(KandinskyError, match="shapes"):
        embedding_path(a, b[:1], 4)


def test_slerp_rejects_opposite_and_zero_embeddings():
    a = torch.tensor([1.0, 2.0])
    with pytest.raises(KandinskyError, match="opposite"):
        embedding_path(a, -a, 4, "slerp")
    with pytest.raises(KandinskyError, match="non-zero"):
        embedding_path(a, torch.zeros(2), 4, "slerp")
    torch.testing.assert_close(embedding_path(a, -a, 3, "linear")[1], torch.zeros(2))
