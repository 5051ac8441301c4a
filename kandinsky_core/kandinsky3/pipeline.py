"""Kandinsky 3 text-to-image and image-to-image, as diffusers' Kandinsky3Pipeline / Kandinsky3Img2ImgPipeline.

The prompt is encoded by the Flan-UL2 T5 encoder; the UNet denoises MoVQ latents in the shared
sampling loop (`sampling.denoise`), guided as `(g + 1)·cond − g·uncond`; the MoVQ decodes without quantizing. Same
weights and seed give diffusers' images, minus bugs of its pipelines/kandinsky3/pipeline_kandinsky3.py and
pipeline_kandinsky3_img2img.py: `encode_prompt` cuts a negative prompt longer than the prompt to the prompt's length
(`negative_prompt_embeds[:, : prompt_embeds.shape[1]]`), and with several prompts and several images per prompt it
repeats the embeddings image by image but tiles the masks prompt by prompt, so images get another prompt's mask;
image-to-image on a size that is not a multiple of 64 crashes deep in the scheduler (here a clear error); and the
checkpoint's mix of dtypes reaches the UNet (here one compute dtype, the UNet's, is used throughout).

Conditioning is a pair `(hidden, mask)`: T5 hidden states (B, L, d) and their attention mask (B, L), 1 for real tokens.
"""
from dataclasses import dataclass

import torch

from .. import images
from ..errors import KandinskyError
from ..prompts import prompt_list
from ..sampling import check_guidance, decode_latents, denoise, device_dtype, randn, timesteps_for

MAX_TOKENS = 128  # the tokenizer pads and truncates every prompt to this many tokens, as trained


@dataclass
class Kandinsky3Models:
    """What a kandinsky-3 folder holds: UNet, MoVQ, scheduler, T5 text encoder and its tokenizer.

    `tokenizer(prompts, max_length)` returns (input_ids, attention_mask), (B, max_length) each;
    `text_encoder(input_ids, attention_mask)` returns the last hidden states (B, max_length, d).
    """

    unet: object
    movq: object
    scheduler: object
    text_encoder: object = None
    tokenizer: object = None

    @property
    def size_multiple(self):
        """Image height and width must be multiples of this (64 for the published model)."""
        return self.movq.config.scale_factor * self.unet.config.latent_multiple


def _encode(models, prompts, min_length=0):
    """T5 states of `prompts` with padded rows zeroed, cut to the longest prompt's tokens + 1 (one padding kept),
    or to `min_length` if that is longer."""
    if models.text_encoder is None or models.tokenizer is None:
        raise KandinskyError("Encoding a prompt needs the Kandinsky 3 text encoder and tokenizer; load the whole "
                             "kandinsky-3 folder, or pass the prompt's conditioning to the sample_* functions.")
    device, dtype = device_dtype(models.unet)
    ids, mask = models.tokenizer(prompts, max_length=MAX_TOKENS)
    te_device = device_dtype(models.text_encoder)[0]
    hidden = models.text_encoder(ids.to(te_device), mask.to(te_device))
    hidden = hidden.masked_fill(mask.to(te_device)[..., None] == 0, 0)
    kept = max(int(mask.sum(-1).max()) + 1, min_length)
    # One compute dtype for the whole run: the UNet's (the published folder mixes fp16 T5 states with fp32 parts).
    return images.check_finite(hidden[:, :kept], "The text encoder's output").to(device, dtype), mask[:, :kept].to(device)


def _repeat(pair, n):
    # Each prompt's states and mask repeated together (diffusers tiles the masks with `repeat(n, 1)` instead).
    return tuple(t.repeat_interleave(n, dim=0) for t in pair)


@torch.no_grad()
def encode_prompt(models, prompt, negative_prompt=None, *, num_images_per_prompt=1, guidance_scale=3.0):
    """(positive, negative) conditioning pairs, num_images_per_prompt rows per prompt; negative is None when
    guidance_scale ≤ 1, all zeros and fully masked when negative_prompt is None ("" encodes the empty prompt)."""
    check_guidance(guidance_scale, published=3.0)
    prompts = prompt_list(prompt, "prompt")
    positive = _encode(models, prompts)
    if guidance_scale <= 1:
        return _repeat(positive, num_images_per_prompt), None
    if negative_prompt is None:
        negative = (torch.zeros_like(positive[0]), torch.zeros_like(positive[1]))
    else:
        negatives = prompt_list(negative_prompt, "negative_prompt")
        negatives = negatives * len(prompts) if len(negatives) == 1 else negatives
        if len(negatives) != len(prompts):
            raise KandinskyError(f"{len(negatives)} negative prompts for {len(prompts)} prompts; give one, or one per prompt.")
        # As long as the prompt's, as in diffusers (the pooling mean counts padding), but never cut to it.
        negative = _encode(models, negatives, min_length=positive[0].shape[1])
    return _repeat(positive, num_images_per_prompt), _repeat(negative, num_images_per_prompt)


def guided_eps(unet, x, t, positive, negative, guidance_scale):
    """ε with Kandinsky 3's guidance (g + 1)·cond − g·uncond; one batched UNet call when both contexts are as long."""
    if negative is None or guidance_scale <= 1:
        return unet(x, t, *positive)
    if negative[0].shape == positive[0].shape:
        both = unet(torch.cat([x, x]), t, torch.cat([negative[0], positive[0]]), torch.cat([negative[1], positive[1]]))
        uncond, cond = both.chunk(2)
    else:  # padding the shorter one would change its pooled embedding (the pooling mean counts padding)
        uncond, cond = unet(x, t, *negative), unet(x, t, *positive)
    # sampling.guide(uncond, cond, g + 1) in exact arithmetic, computed as diffusers' Kandinsky3Pipeline does so that
    # the rounding, and so the images, match it.
    return (guidance_scale + 1.0) * cond - guidance_scale * uncond


def _guided_unet(models, positive, negative, guidance_scale):
    """`model(x, t)` for `sampling.denoise`: the UNet's guided ε."""
    def model(x, t):
        return guided_eps(models.unet, x, t, positive, negative, guidance_scale)
    return model


def _check_conditioning(positive, negative, guidance_scale):
    check_guidance(guidance_scale, published=3.0)
    if guidance_scale > 1 and negative is None:
        raise KandinskyError("Guidance needs a negative conditioning (encode_prompt returns one); or set guidance_scale to 1.")
    if negative is not None and negative[0].shape[0] != positive[0].shape[0]:
        raise KandinskyError(f"{negative[0].shape[0]} negative rows for {positive[0].shape[0]} positive ones; "
                             "give one negative conditioning row per positive row.")


@torch.no_grad()
def sample_text_to_image(models, positive, negative, shape, *, steps=25, guidance_scale=3.0, generator=None,
                         latents=None, scheduler=None, callback=None):
    """Latents from noise of `shape` (B, 4, h, w), given `encode_prompt`'s conditioning (B rows each)."""
    _check_conditioning(positive, negative, guidance_scale)
    scheduler = scheduler or models.scheduler
    device, dtype = device_dtype(models.unet)
    timesteps = timesteps_for(scheduler, steps)
    if latents is None:
        latents = randn(shape, generator, device, dtype)
    elif tuple(latents.shape) != tuple(shape):
        raise KandinskyError(f"latents have shape {tuple(latents.shape)}, expected {tuple(shape)}.")
    latents = latents.to(device, dtype) * scheduler.init_noise_sigma
    return denoise(_guided_unet(models, positive, negative, guidance_scale), scheduler, latents, timesteps,
                   generator=generator, callback=callback)


@torch.no_grad()
def sample_image_to_image(models, positive, negative, init, *, strength=0.3, steps=25, guidance_scale=3.0,
                          generator=None, scheduler=None, callback=None):
    """Latents re-drawn from MoVQ latents `init` (one row per output), noised to the level `strength` sets."""
    _check_conditioning(positive, negative, guidance_scale)
    scheduler = scheduler or models.scheduler
    timesteps = timesteps_for(scheduler, steps, strength)
    init = images.check_finite(init, "The latent image").to(*device_dtype(models.unet))
    noise = randn(init.shape, generator, init.device, init.dtype)
    latents = scheduler.add_noise(init, noise, timesteps[:1].repeat(init.shape[0]))
    return denoise(_guided_unet(models, positive, negative, guidance_scale), scheduler, latents, timesteps,
                   generator=generator, callback=callback)


@torch.no_grad()
def text_to_image(models, prompt, *, negative_prompt=None, height=1024, width=1024, steps=25, guidance_scale=3.0,
                  num_images_per_prompt=1, generator=None, latents=None, scheduler=None, output_type="pil", callback=None):
    """Images for `prompt` (a string or a list); sizes are multiples of 64."""
    images.check_size(height, width, models.size_multiple)
    positive, negative = encode_prompt(models, prompt, negative_prompt, num_images_per_prompt=num_images_per_prompt,
                                       guidance_scale=guidance_scale)
    s = models.movq.config.scale_factor
    shape = (positive[0].shape[0], models.unet.config.in_channels, height // s, width // s)
    latents = sample_text_to_image(models, positive, negative, shape, steps=steps, guidance_scale=guidance_scale,
                                   generator=generator, latents=latents, scheduler=scheduler, callback=callback)
    return finish(models, latents, output_type)


@torch.no_grad()
def finish(models, latents, output_type="pil"):
    """Images from final latents, decoded by Kandinsky 3's MoVQ ('latent': the latents as given)."""
    return decode_latents(models.movq, latents, output_type)


@torch.no_grad()
def encode_image(models, image, height=None, width=None):
    """MoVQ latents of the input image(s), resized to (height, width) when given (else kept at their own size)."""
    device, dtype = device_dtype(models.unet)
    h, w = images.image_size(image)
    height, width = height or h, width or w
    images.check_size(height, width, models.size_multiple)
    return models.movq.encode(images.preprocess_image(image, height, width).to(device, dtype))


@torch.no_grad()
def image_to_image(models, prompt, image, *, strength=0.3, negative_prompt=None, height=None, width=None, steps=25,
                   guidance_scale=3.0, num_images_per_prompt=1, generator=None, scheduler=None, output_type="pil",
                   callback=None):
    """Re-draw `image` (one, or one per prompt) towards `prompt`; strength 1 keeps little of it, small values most."""
    n = num_images_per_prompt
    positive, negative = encode_prompt(models, prompt, negative_prompt, num_images_per_prompt=n, guidance_scale=guidance_scale)
    init = encode_image(models, image, height, width)
    prompts = positive[0].shape[0] // n
    if init.shape[0] not in (1, prompts):
        raise KandinskyError(f"{init.shape[0]} images for {prompts} prompts; give one image, or one per prompt.")
    init = init.expand(prompts, -1, -1, -1).repeat_interleave(n, dim=0)
    latents = sample_image_to_image(models, positive, negative, init, strength=strength, steps=steps,
                                    guidance_scale=guidance_scale, generator=generator, scheduler=scheduler, callback=callback)
    return finish(models, latents, output_type)
