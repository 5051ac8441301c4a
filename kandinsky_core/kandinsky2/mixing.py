"""Paths between two image embeddings, for animations: linear or spherical interpolation over a number of frames."""
import torch

from ..errors import KandinskyError

MODES = ("linear", "slerp")

MAX_FRAMES = 10_000  # far beyond any animation; past it the (frames, ..., D) result could exhaust memory
# Below this sine of the angle the two directions are treated as equal (slerp's weights tend to linear ones there).
_PARALLEL = 1e-6


def embedding_path(a, b, frames, mode="linear"):
    """`frames` embeddings from a to b, both included: (..., D) tensors → (frames, ..., D), in a's dtype.

    "linear" blends the vectors. "slerp" turns the direction along the great circle at constant angular speed and
    blends the lengths linearly, so unit-norm embeddings stay unit-norm (CLIP compares embeddings by angle).
    """
    if mode not in MODES:
        raise KandinskyError(f"interpolation mode {mode!r} is not one of {', '.join(MODES)}; pick one of those.")
    if isinstance(frames, bool) or not isinstance(frames, int) or not 2 <= frames <= MAX_FRAMES:
        raise KandinskyError(f"frames must be an integer from 2 (the two ends) to {MAX_FRAMES}, got {frames!r}.")
    if a.shape != b.shape:
        raise KandinskyError(f"cannot interpolate embeddings of shapes {tuple(a.shape)} and {tuple(b.shape)}; use "
                             "embeddings of the same Kandinsky version and batch size.")
    t = torch.linspace(0, 1, frames, device=a.device).view(-1, *[1] * a.ndim)  # (frames, 1, ..., 1)
    a32, b32 = a.float(), b.float().to(a.device)
    path = torch.lerp(a32, b32, t) if mode == "linear" else _slerp(a32, b32, t)
    return path.to(a.dtype)


def _slerp(a, b, t):
    """Great-circle interpolation of the directions of a and b, with their norms interpolated linearly."""
    norm_a, norm_b = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    if (norm_a == 0).any() or (norm_b == 0).any():
        raise KandinskyError("slerp needs non-zero embeddings (an all-zero one has no direction); use linear mode.")
    unit_a, unit_b = a / norm_a, b / norm_b
    # acos of the dot product loses half the digits near 0 and π; this form keeps them.
    theta = 2 * torch.atan2((unit_a - unit_b).norm(dim=-1, keepdim=True), (unit_a + unit_b).norm(dim=-1, keepdim=True))
    sin = torch.sin(theta)
    if ((sin < _PARALLEL) & (theta > 1)).any():
        raise KandinskyError("the two embeddings point in opposite directions, so the great circle between them is "
                             "not defined; use linear mode.")
    parallel = sin < _PARALLEL
    safe_sin = sin.clamp_min(_PARALLEL)
    weight_a = torch.where(parallel, 1 - t, torch.sin((1 - t) * theta) / safe_sin)
    weight_b = torch.where(parallel, t, torch.sin(t * theta) / safe_sin)
    direction = weight_a * unit_a + weight_b * unit_b
    return direction * torch.lerp(norm_a, norm_b, t)
