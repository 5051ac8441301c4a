"""Decoding CLIP image embeddings into images: text-to-image, image-to-image, inpainting, and the depth hint.

Every variant runs the shared sampling loop (`sampling.denoise`) with the guided UNet as its model; the public
functions only prepare its inputs the way diffusers' Kandinsky pipelines do, minus three of their bugs: img2img keeps
height and width in order (diffusers' pipelines/kandinsky/pipeline_kandinsky_img2img.py calls
`preprocess(i, width, height)`, so its 2.1 img2img breaks on non-square sizes), 2.2 inpainting blends every batch item
with its own image (pipeline_kandinsky2_2_inpainting.py blends `image[:1]` into all of them), and image embeddings are
repeated for `num_images_per_prompt` with or without guidance (pipeline_kandinsky2_2.py repeats them only under
guidance).

The latent-level `sample_*` functions take latents of any size (`unet_any_size` pads them to what the UNet needs and
crops its output back) and can give every batch row the same noise (`shared_noise`); the image-level functions keep
diffusers' sizes (multiples of 64).
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import images
from ..errors import KandinskyError
from ..sampling import check_guidance, decode_latents, denoise, device_dtype, guide, randn, timesteps_for
from ..schedulers import add_noise_kandinsky21_img2img
from .text_encoder import encode_text


@dataclass
class DecoderModels:
    """What a decoder checkpoint folder holds: UNet, MoVQ, scheduler, and for 2.1 its text encoder and tokenizer."""

    unet: object
    movq: object
    scheduler: object
    text_encoder: object = None
    tokenizer: object = None

    @property
    def version(self):
        """'2.1' or '2.2'."""
        return self.unet.config.variant[:3]

    @property
    def size_multiple(self):
        """Image height and width must be multiples of this (64 for the published models)."""
        return self.movq.config.scale_factor * self.unet.config.latent_multiple


def _embeddings(image_embeds, negative_image_embeds, n, cfg, device, dtype):
    image_embeds = image_embeds.to(device, dtype).repeat_interleave(n, dim=0)
    if not cfg:
        return image_embeds
    negative = negative_image_embeds.to(device, dtype)
    if negative.shape[0] == 1 and image_embeds.shape[0] > 1:
        negative = negative.expand(image_embeds.shape[0] // n, -1)
    if negative.shape[0] * n != image_embeds.shape[0]:
        raise KandinskyError(f"{negative.shape[0]} negative embeddings for {image_embeds.shape[0] // n} positive ones; "
                             "give one negative embedding, or one per positive embedding.")
    return torch.cat([negative.repeat_interleave(n, dim=0), image_embeds])


def _text_conditioning(models, prompt, negative_prompt, batch, n, cfg, device, dtype):
    if models.version != "2.1":
        return {}
    if prompt is None:
        raise KandinskyError("The Kandinsky 2.1 decoder also reads the prompt: pass prompt= (the text given to the prior).")
    prompts = [prompt] * batch if isinstance(prompt, str) else list(prompt)
    if len(prompts) != batch:
        raise KandinskyError(f"{len(prompts)} prompts for {batch} image embeddings; give one prompt or one per embedding.")
    pooled, hidden, _ = encode_text(models.tokenizer, models.text_encoder, prompts, device)
    pooled, hidden = pooled.repeat_interleave(n, dim=0), hidden.repeat_interleave(n, dim=0)
    if cfg:
        negatives = [negative_prompt or ""] * batch if not isinstance(negative_prompt, (list, tuple)) else list(negative_prompt)
        neg_pooled, neg_hidden, _ = encode_text(models.tokenizer, models.text_encoder, negatives, device)
        pooled = torch.cat([neg_pooled.repeat_interleave(n, dim=0), pooled])
        hidden = torch.cat([neg_hidden.repeat_interleave(n, dim=0), hidden])
    return {"text_embeds": pooled.to(dtype), "text_hidden_states": hidden.to(dtype)}


@torch.no_grad()
def conditioning(models, image_embeds, negative_image_embeds, prompt, negative_prompt, n, guidance_scale, hint=None):
    """UNet keyword arguments for a [negative, positive] guided batch (or positive only when guidance ≤ 1)."""
    device, dtype = device_dtype(models.unet)
    check_guidance(guidance_scale, published=4.0)
    cfg = guidance_scale > 1
    if image_embeds.ndim != 2:
        raise KandinskyError(f"image_embeds must be (batch, dim), got shape {tuple(image_embeds.shape)}.")
    images.check_finite(image_embeds, "The image embedding")
    if cfg and negative_image_embeds is None:
        raise KandinskyError("Guidance needs negative image embeddings (the prior returns them); or set guidance_scale to 1.")
    if cfg and (negative_image_embeds.ndim != 2 or negative_image_embeds.shape[-1] != image_embeds.shape[-1]):
        raise KandinskyError(f"negative_image_embeds must be (batch, {image_embeds.shape[-1]}) like image_embeds, got shape "
                             f"{tuple(negative_image_embeds.shape)}; pass the negative embeddings the same prior returned.")
    if cfg:
        images.check_finite(negative_image_embeds, "The negative image embedding")
    cond = {"image_embeds": _embeddings(image_embeds, negative_image_embeds, n, cfg, device, dtype)}
    cond.update(_text_conditioning(models, prompt, negative_prompt, image_embeds.shape[0], n, cfg, device, dtype))
    if hint is not None or models.unet.config.variant == "2.2-depth":
        cond["hint"] = _hint(models, hint, image_embeds.shape[0] * n, cfg, device, dtype)
    return cond


def _hint(models, hint, batch, cfg, device, dtype):
    if models.unet.config.variant != "2.2-depth":
        raise KandinskyError(f"A depth hint only works with the 2.2 depth decoder (kandinsky-2-2-controlnet-depth), not "
                             f"the {models.unet.config.variant} one; load that decoder or leave the hint out.")
    if hint is None:
        raise KandinskyError("The depth decoder needs a hint: a (B, 3, H, W) depth map in [0, 1] at the output size.")
    if hint.ndim != 4 or hint.shape[1] != 3:
        raise KandinskyError(f"The depth hint must be (B, 3, H, W), got shape {tuple(hint.shape)}; give a 3-channel depth "
                             "map at the output size.")
    hint = images.check_finite(hint, "The depth hint").to(device, dtype)
    if hint.shape[0] not in (1, batch) and batch % hint.shape[0] == 0:
        hint = hint.repeat_interleave(batch // hint.shape[0], dim=0)
    hint = hint.expand(batch, -1, -1, -1) if hint.shape[0] == 1 else hint
    return torch.cat([hint, hint]) if cfg else hint


def guided_output(out, guidance_scale):
    """Classifier-free guidance on ε; the variance channels come from the positive half (as trained)."""
    if guidance_scale <= 1:
        return out
    eps, var = out[:, :4], out[:, 4:]
    return torch.cat([guide(*eps.chunk(2), guidance_scale), var.chunk(2)[1]], dim=1)


def unet_any_size(unet, x, t, hint=None, **cond):
    """The UNet on latents of any height and width: padded to the multiple it needs, its output cropped back.

    Sizes the UNet takes as they are run unchanged (bit-identical). Others are padded on both sides by reflection
    (noise stays noise-like), or by repeating the edge where the latent is too small to reflect; a depth hint is
    padded the same way at its 8x pixel scale.
    """
    m = unet.config.latent_multiple
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % m, -w % m
    if not (pad_h or pad_w) or 0 in x.shape:  # empty latents go through for the UNet's own error
        return unet(x, t, hint=hint, **cond)
    top, left = pad_h // 2, pad_w // 2
    pad = (left, pad_w - left, top, pad_h - top)
    mode = "reflect" if max(pad) < min(h, w) else "replicate"
    if hint is not None:
        hint = F.pad(hint, tuple(8 * p for p in pad), mode=mode)
    out = unet(F.pad(x, pad, mode=mode), t, hint=hint, **cond)
    return out[..., top:top + h, left:left + w]


class SharedNoiseSteps:
    """A scheduler whose steps draw the same noise for every batch row: one scheduler copy per row (multistep
    solvers keep one history per row), each stepping from the same generator state."""

    def __init__(self, scheduler, rows):
        self.schedulers = [scheduler] + [copy.deepcopy(scheduler) for _ in range(rows - 1)]

    def step(self, model_output, t, sample, generator=None):
        """One step of every row, each row drawing the noise the first row draws."""
        state = generator.get_state() if generator is not None else torch.get_rng_state()
        restore = generator.set_state if generator is not None else torch.set_rng_state
        rows = []
        for i, scheduler in enumerate(self.schedulers):
            restore(state)
            rows.append(scheduler.step(model_output[i:i + 1], t, sample[i:i + 1], generator=generator))
        return torch.cat(rows)

    def predict_x0(self, model_output, t, sample):
        """The x0 estimate (for previews), the same for every row's scheduler."""
        return self.schedulers[0].predict_x0(model_output, t, sample)


class _BlendedSteps:
    """2.2 inpainting's steps: after each step of `stepper`, the known region is put back, noised by `scheduler` to the
    next step's level (clean after the last), as trained."""

    def __init__(self, stepper, scheduler, init, keep, noise, timesteps):
        self.stepper, self.scheduler, self.init, self.keep, self.noise = stepper, scheduler, init, keep, noise
        self.following = {int(t): timesteps[i + 1:i + 2] for i, t in enumerate(timesteps)}

    def step(self, model_output, t, sample, generator=None):
        """One step, then the known region blended back in."""
        latents = self.stepper.step(model_output, t, sample, generator=generator)
        following = self.following[int(t)]
        known = self.scheduler.add_noise(self.init, self.noise, following) if len(following) else self.init
        return self.keep * known + (1 - self.keep) * latents

    def predict_x0(self, model_output, t, sample):
        """The wrapped steps' x0 estimate (for previews)."""
        return self.stepper.predict_x0(model_output, t, sample)


def initial_noise(shape, generator, device, dtype, shared_noise=False):
    """Starting noise of `shape`; with `shared_noise`, one draw repeated for every batch row (row 0 is the same
    either way)."""
    if not shared_noise:
        return randn(shape, generator, device, dtype)
    return randn((1, *shape[1:]), generator, device, dtype).expand(*shape).contiguous()


def _stepper(scheduler, rows, shared_noise):
    """The scheduler, or with `shared_noise` one that adds the same noise to every batch row at each step."""
    return SharedNoiseSteps(scheduler, rows) if shared_noise else scheduler


def _guided_unet(models, cond, guidance_scale, concat=None):
    """`model(x, t)` for `sampling.denoise`: the UNet (any latent size) on the guided batch, guided.

    Schedulers get all 8 output channels; only DDPM's learned_range variance uses channels 4-7. Inpainting appends
    `concat` (masked-image latents, mask) after the latents.
    """
    cfg = guidance_scale > 1

    def model(latents, t):
        x = torch.cat([latents] * 2) if cfg else latents
        if concat is not None:
            x = torch.cat([x, concat], dim=1)
        return guided_output(unet_any_size(models.unet, x, t, **cond), guidance_scale)
    return model


@torch.no_grad()
def finish(models, latents, output_type="pil"):
    """Images from final latents, decoded by the decoder's MoVQ ('latent': the latents as given)."""
    return decode_latents(models.movq, latents, output_type)


def _latent_shape(models, batch, height, width):
    images.check_size(height, width, models.size_multiple)
    s = models.movq.config.scale_factor
    return (batch, models.movq.config.latent_channels, height // s, width // s)


@torch.no_grad()
def sample_text_to_image(models, cond, shape, *, steps=100, guidance_scale=4.0, generator=None, latents=None,
                         scheduler=None, callback=None, shared_noise=False):
    """Latents from noise of `shape` (any latent size) given `conditioning(...)`: the text-to-image and depth loop."""
    scheduler = scheduler or models.scheduler
    device, dtype = device_dtype(models.unet)
    timesteps = timesteps_for(scheduler, steps)
    if latents is None:
        latents = initial_noise(shape, generator, device, dtype, shared_noise)
    elif tuple(latents.shape) != tuple(shape):
        raise KandinskyError(f"latents have shape {tuple(latents.shape)}, expected {tuple(shape)}.")
    latents = latents.to(device, dtype) * scheduler.init_noise_sigma
    return denoise(_guided_unet(models, cond, guidance_scale), _stepper(scheduler, len(latents), shared_noise), latents,
                   timesteps, generator=generator, callback=callback)


@torch.no_grad()
def sample_image_to_image(models, cond, init, *, strength=0.3, steps=100, guidance_scale=4.0, generator=None,
                          scheduler=None, callback=None, shared_noise=False):
    """Latents re-drawn from MoVQ latents `init` (one row per output image), noised according to `strength`."""
    scheduler = scheduler or models.scheduler
    timesteps = timesteps_for(scheduler, steps, strength)
    images.check_finite(init, "The latent image")
    noise = initial_noise(init.shape, generator, init.device, init.dtype, shared_noise)
    if models.version == "2.1":  # 2.1 noises with its training-time schedule at a strength-derived timestep
        t = torch.full((init.shape[0],), int(1000 * strength) - 2, dtype=torch.long)
        latents = add_noise_kandinsky21_img2img(init * scheduler.init_noise_sigma, noise, t)
    else:
        latents = scheduler.add_noise(init, noise, timesteps[:1].repeat(init.shape[0]))
    return denoise(_guided_unet(models, cond, guidance_scale), _stepper(scheduler, len(latents), shared_noise), latents,
                   timesteps, generator=generator, callback=callback)


def _require_inpainting(models):
    if models.unet.config.in_channels != 9:
        raise KandinskyError(f"Inpainting needs an inpainting decoder (kandinsky-2-x-inpaint); this one is {models.unet.config.variant}.")


def latent_keep_mask(keep, size):
    """A pixel keep-mask (1 = keep) brought to latent `size`, its hole grown by one latent pixel as trained."""
    return images.dilate_hole(F.interpolate(keep, size, mode="nearest"))


@torch.no_grad()
def sample_inpaint(models, cond, init, keep, shape, *, steps=100, guidance_scale=4.0, generator=None, latents=None,
                   scheduler=None, callback=None, shared_noise=False):
    """Latents of `shape` that repaint where the latent `keep` mask is 0; `init` and `keep` have 1 row or one per output."""
    _require_inpainting(models)
    scheduler = scheduler or models.scheduler
    device, dtype = device_dtype(models.unet)
    init, keep = images.check_finite(init, "The inpainting image's latent").to(device, dtype), keep.to(device, dtype)
    concat = torch.cat([(init * keep).expand(shape[0], -1, -1, -1), keep.expand(shape[0], -1, -1, -1)], dim=1)
    concat = torch.cat([concat] * 2) if guidance_scale > 1 else concat  # after the latents: masked-image latents, mask
    timesteps = timesteps_for(scheduler, steps)
    if latents is None:
        latents = initial_noise(shape, generator, device, dtype, shared_noise)
    latents = latents.to(device, dtype) * scheduler.init_noise_sigma
    stepper = _stepper(scheduler, len(latents), shared_noise)
    if models.version != "2.1":
        stepper = _BlendedSteps(stepper, scheduler, init, keep, latents.clone(), timesteps)
    model = _guided_unet(models, cond, guidance_scale, concat)
    latents = denoise(model, stepper, latents, timesteps, generator=generator, callback=callback)
    return latents if models.version == "2.1" else keep * init + (1 - keep) * latents


@torch.no_grad()
def text_to_image(models, image_embeds, negative_image_embeds=None, *, prompt=None, negative_prompt=None, hint=None,
                  height=512, width=512, steps=100, guidance_scale=4.0, num_images_per_prompt=1, generator=None,
                  latents=None, scheduler=None, output_type="pil", callback=None):
    """Images from CLIP image embeddings (2.1 also takes the prompt; the 2.2 depth decoder a hint)."""
    cond = conditioning(models, image_embeds, negative_image_embeds, prompt, negative_prompt, num_images_per_prompt, guidance_scale, hint)
    shape = _latent_shape(models, image_embeds.shape[0] * num_images_per_prompt, height, width)
    latents = sample_text_to_image(models, cond, shape, steps=steps, guidance_scale=guidance_scale, generator=generator,
                                   latents=latents, scheduler=scheduler, callback=callback)
    return finish(models, latents, output_type)


@torch.no_grad()
def encode_image(models, image, height, width, n):
    """MoVQ latents of the input image(s) at (height, width), repeated `n` times each."""
    device, dtype = device_dtype(models.unet)
    images.check_size(height, width, models.size_multiple)
    pixels = images.preprocess_image(image, height, width).to(device, dtype)
    return models.movq.encode(pixels).repeat_interleave(n, dim=0)


@torch.no_grad()
def image_to_image(models, image_embeds, negative_image_embeds, image, *, strength=0.3, prompt=None, negative_prompt=None,
                   hint=None, height=512, width=512, steps=100, guidance_scale=None, num_images_per_prompt=1,
                   generator=None, scheduler=None, output_type="pil", callback=None):
    """Re-draw `image` guided by the embeddings; `strength` 1 ignores the image, small values keep it."""
    guidance_scale = guidance_scale if guidance_scale is not None else (7.0 if models.version == "2.1" else 4.0)
    cond = conditioning(models, image_embeds, negative_image_embeds, prompt, negative_prompt, num_images_per_prompt, guidance_scale, hint)
    init = encode_image(models, image, height, width, num_images_per_prompt)
    if init.shape[0] != image_embeds.shape[0] * num_images_per_prompt:
        raise KandinskyError(f"{init.shape[0] // num_images_per_prompt} input images for {image_embeds.shape[0]} embeddings; "
                             "give one image per embedding.")
    latents = sample_image_to_image(models, cond, init, strength=strength, steps=steps, guidance_scale=guidance_scale,
                                    generator=generator, scheduler=scheduler, callback=callback)
    return finish(models, latents, output_type)


@torch.no_grad()
def inpaint(models, image_embeds, negative_image_embeds, image, mask, *, prompt=None, negative_prompt=None, height=512,
            width=512, steps=100, guidance_scale=4.0, num_images_per_prompt=1, generator=None, latents=None,
            scheduler=None, output_type="pil", callback=None):
    """Repaint the white (1) part of `mask` in `image`, keeping the black (0) part."""
    _require_inpainting(models)
    device, dtype = device_dtype(models.unet)
    n = num_images_per_prompt
    cond = conditioning(models, image_embeds, negative_image_embeds, prompt, negative_prompt, n, guidance_scale)
    shape = _latent_shape(models, image_embeds.shape[0] * n, height, width)
    keep, pixels = images.prepare_mask_and_masked_image(image, mask, height, width)
    init = models.movq.encode(pixels.to(device, dtype))
    keep = latent_keep_mask(keep.to(device, dtype), init.shape[-2:])
    if init.shape[0] not in (1, image_embeds.shape[0]):
        raise KandinskyError(f"{init.shape[0]} images for {image_embeds.shape[0]} embeddings; give one image, or one per embedding.")
    # One image (or mask) for all embeddings stays a single row and broadcasts; several go one per embedding.
    init, keep = (t if t.shape[0] == 1 else t.repeat_interleave(n, dim=0) for t in (init, keep))
    latents = sample_inpaint(models, cond, init, keep, shape, steps=steps, guidance_scale=guidance_scale, generator=generator,
                             latents=latents, scheduler=scheduler, callback=callback)
    return finish(models, latents, output_type)

