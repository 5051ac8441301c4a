"""Pieces every sampling loop shares: reproducible noise, argument checks and the per-step callback."""
import math
import numbers

import torch

from .errors import Cancelled, KandinskyError


def check_guidance(guidance_scale):
    """Raise KandinskyError unless guidance_scale is a finite number (≤ 1 turns guidance off)."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real) or not math.isfinite(guidance_scale):
        raise KandinskyError(f"guidance_scale must be a finite number, got {guidance_scale!r}; use 1 (no guidance) to "
                             "about 10 (4 is the published default).")


def randn(shape, generator, device, dtype):
    """Gaussian noise drawn on the generator's device (CPU generators stay reproducible across devices)."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def report(callback, i, total, t, latents, denoised):
    """Call the per-step callback with a dict; its "denoised" is a function giving the x0 estimate when called.

    The callback stops the run by returning False (raising `Cancelled`) or by raising its own exception.
    """
    if callback is None:
        return
    info = {"step": i, "total": total, "t": int(t), "latents": latents, "denoised": denoised}
    if callback(info) is False:
        raise Cancelled(f"cancelled by the callback at step {i + 1} of {total}")
