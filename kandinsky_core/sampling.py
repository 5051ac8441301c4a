"""What every pipeline shares: the sampling loop, its timesteps, reproducible noise, argument checks, the per-step
callback and the final MoVQ decode.

The loop has k-diffusion's shape: a pipeline hands it a guided-model function `model(x, t) -> model output` (its own
conditioning and guidance inside) and a scheduler; the loop only steps and reports.
"""
import math
import numbers

import torch

from . import images
from .errors import Cancelled, KandinskyError


def check_guidance(guidance_scale, published=None):
    """Raise KandinskyError unless guidance_scale is a finite number (≤ 1 turns guidance off)."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real) or not math.isfinite(guidance_scale):
        default = "" if published is None else f" ({published:g} is the published default)"
        raise KandinskyError(f"guidance_scale must be a finite number, got {guidance_scale!r}; use 1 (no guidance) to "
                             f"about 10{default}.")


def guide(uncond, cond, guidance_scale):
    """Classifier-free guidance uncond + scale·(cond − uncond), as the 2.x prior and decoder were trained."""
    return uncond + guidance_scale * (cond - uncond)


def device_dtype(module):
    """(device, dtype) of a model's first parameter: where and in what its pipeline computes."""
    p = next(module.parameters())
    return p.device, p.dtype


def randn(shape, generator, device, dtype):
    """Gaussian noise drawn on the generator's device (CPU generators stay reproducible across devices)."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def timesteps_for(scheduler, steps, strength=1.0):
    """The timesteps of a `steps`-step run that starts at `strength` (1: from pure noise), the scheduler set for it."""
    timesteps = scheduler.set_timesteps(steps)
    if not 0 < strength <= 1:
        raise KandinskyError(f"strength must be in (0, 1], got {strength}.")
    n = len(timesteps)  # `steps`, or fewer where a grid cannot have that many (Kandinsky 3.1's)
    keep = min(int(n * strength), n)
    if keep < 1:
        raise KandinskyError(f"strength {strength} with {steps} steps leaves no step to run; raise strength or steps "
                             f"(strength × steps must be at least 1).")
    scheduler.set_begin_index(n - keep)
    return timesteps[n - keep:]


def report(callback, i, total, t, latents, denoised):
    """Call the per-step callback with a dict; its "denoised" is a function giving the x0 estimate when called.

    The callback stops the run by returning False (raising `Cancelled`) or by raising its own exception.
    """
    if callback is None:
        return
    info = {"step": i, "total": total, "t": int(t), "latents": latents, "denoised": denoised}
    if callback(info) is False:
        raise Cancelled(f"cancelled by the callback at step {i + 1} of {total}")


@torch.no_grad()
def denoise(model, scheduler, latents, timesteps, *, generator=None, callback=None):
    """The sampling loop: `model(x, t)` gives the guided output, the scheduler steps, the callback sees every step."""
    for i, t in enumerate(timesteps):
        out = model(latents, t)
        previous, latents = latents, scheduler.step(out, t, latents, generator=generator)
        report(callback, i, len(timesteps), t, latents, lambda: scheduler.predict_x0(out, t, previous))
    return latents


@torch.no_grad()
def decode_latents(movq, latents, output_type="pil"):
    """Images from final latents by the MoVQ, unquantized as every Kandinsky pipeline decodes ('latent': as given)."""
    if output_type == "latent":
        return latents
    return images.postprocess(movq.decode(latents, force_not_quantize=True), output_type)
