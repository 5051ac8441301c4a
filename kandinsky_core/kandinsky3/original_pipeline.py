"""Kandinsky 3.1, 3.1 Flash and Kandinsky 3 inpainting, sampled as the original ai-forever code samples them.

The original (github.com/ai-forever/Kandinsky-3, kandinsky3/model/diffusion.py, t2i_pipeline.py,
inpainting_pipeline.py) conditions and samples differently from diffusers' Kandinsky 3 pipelines:
- the T5 states are projected, then zeroed where the prompt is padding, and cut to its tokens + 1; the UNet takes
  them projected (`projected=True`);
- the unconditional branch is the checkpoint's `null_embedding` in the first position of an otherwise empty context
  of the prompt's length, and guidance is `(g + 1)·cond − g·uncond`;
- the base and inpainting sampler is DDIM with η (1: the DDPM posterior on the strided grid) and dynamic
  thresholding of the x0 estimate (quantile 0.99, 0.95 for inpainting) on the 1000-step cosine table, the grid every
  ceil(1000 / steps)-th timestep from 999;
- Flash re-noises its x0 estimate to the fixed timesteps 979, 729, 479, 229 and predicts x0 again, without guidance.
Both samplers here draw their noise in the original's order and shapes, so a generator seeded like the original's
global RNG gives its latents. Bugs of the original fixed here: the sampler's `sqrt(1 − ᾱs − σ²)`, which float32 makes
slightly negative for 1 and 5 steps (the original returns a black image), is taken of max(0, ·); a negative prompt is
encoded on its own (the original cuts it to the prompt's token count, kandinsky-3#18, and lets a shorter one attend
the prompt's padding); the inpainting pipeline takes a negative prompt (the original's crashes in `prepare_batch`).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import images
from ..errors import KandinskyError
from ..sampling import check_guidance, decode_latents, denoise, device_dtype, randn, timesteps_for
from ..prompts import prompt_list
from .pipeline import MAX_TOKENS

FLASH_TIMESTEPS = (979, 729, 479, 229)
DEFAULTS = {"text_to_image": dict(steps=50, guidance_scale=3.0, percentile=0.99),
            "inpaint": dict(steps=50, guidance_scale=4.0, percentile=0.95)}


@dataclass
class OriginalModels:
    """An original-format Kandinsky 3 checkpoint: UNet (its text projection inside), its `null_embedding`, the MoVQ,
    and the T5 encoder with its tokenizer (as `pipeline.Kandinsky3Models` takes them)."""

    unet: object
    movq: object
    null_embedding: torch.Tensor
    text_encoder: object = None
    tokenizer: object = None

    @property
    def size_multiple(self):
        """Image height and width must be multiples of this (64 for the published model)."""
        return self.movq.config.scale_factor * self.unet.config.latent_multiple

    @property
    def inpainting(self):
        """True for the 9-channel inpainting UNet."""
        return self.unet.config.in_channels == 9


def cosine_tables(n=1000):
    """(ᾱ, √ᾱ, √(1 − ᾱ)) of the original's cosine schedule, computed in float32 in its order."""
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)])
    abar = torch.cumprod(1.0 - betas, dim=0)
    return abar, torch.sqrt(abar), torch.sqrt(1.0 - abar)


def dynamic_threshold(x0, percentile):
    """x0 clipped to ±s and divided by s, s = max(1, the `percentile` quantile of |x0| per sample)."""
    s = torch.quantile(x0.reshape(x0.shape[0], -1).abs(), percentile, dim=-1).clamp(min=1.0)
    s = s.reshape(-1, *[1] * (x0.ndim - 1))
    return torch.clip(x0, -s, s) / s


class OriginalSampler:
    """The Kandinsky 3.1 sampler (DDIM with η, dynamic thresholding) as a scheduler for `sampling.denoise`."""

    init_noise_sigma = 1.0

    def __init__(self, percentile=0.99, eta=1.0):
        self.percentile, self.eta = percentile, eta
        self.abar, self.sqrt_abar, self.sqrt_one_minus = cosine_tables()
        self.timesteps, self.previous = None, {}

    def set_timesteps(self, n):
        """The original's grid: 999 down in strides of ceil(1000 / n) (70 steps give 67), each step's target after it."""
        if not 1 <= n <= 1000:
            raise KandinskyError(f"{n} steps is out of range; use 1 to 1000 (50 published).")
        times = list(range(999, 0, -1000 // n))
        self.previous = dict(zip(times, times[1:] + [0]))
        self.timesteps = torch.tensor(times)
        return self.timesteps

    def set_begin_index(self, begin_index=0):
        """Nothing to remember: each step finds its target timestep from its own."""

    def _x0(self, eps, t, x):
        return (x - self.sqrt_one_minus[t] * eps) / self.sqrt_abar[t]

    def predict_x0(self, eps, t, x):
        """The unclipped x0 estimate (for previews)."""
        return self._x0(eps, int(t), x)

    def add_noise(self, x0, noise, t):
        """x0 noised to timestep t (q_sample)."""
        t = int(t.reshape(-1)[0]) if torch.is_tensor(t) else int(t)
        return self.sqrt_abar[t] * x0 + self.sqrt_one_minus[t] * noise

    def step(self, eps, t, x, generator=None):
        """x at the next grid timestep; one noise draw every step, the last one included (there multiplied by 0)."""
        t = int(t)
        s = self.previous[t]
        x0 = dynamic_threshold(self._x0(eps, t, x), self.percentile)
        eps = (x - self.sqrt_abar[t] * x0) / self.sqrt_one_minus[t]
        a_t, a_s = self.abar[t], self.abar[s]
        sigma = torch.sqrt(self.eta * (1.0 - a_t / a_s) * (1.0 - a_s) / (1.0 - a_t))
        mean = torch.sqrt(a_s) * x0
        mean = mean + torch.sqrt((1.0 - a_s - sigma ** 2).clamp(min=0)) * eps  # the original: NaN when < 0
        noise = randn(x.shape, generator, x.device, x.dtype)
        return mean + sigma * noise if s != 0 else mean


class FlashSampler(OriginalSampler):
    """The Kandinsky 3.1 Flash sampler: x0 from each of four fixed timesteps, re-noised to the next one.

    The loop's latents are the noisy input of the current timestep: start from `initial_latents`."""

    def __init__(self):
        super().__init__(percentile=None)

    def set_timesteps(self, n=len(FLASH_TIMESTEPS)):
        """The four timesteps Flash was distilled for."""
        if n != len(FLASH_TIMESTEPS):
            raise KandinskyError(f"Kandinsky 3.1 Flash samples its {len(FLASH_TIMESTEPS)} fixed timesteps "
                                 f"{list(FLASH_TIMESTEPS)}, not {n} steps.")
        self.previous = dict(zip(FLASH_TIMESTEPS, FLASH_TIMESTEPS[1:] + (0,)))
        self.timesteps = torch.tensor(FLASH_TIMESTEPS)
        return self.timesteps

    def initial_latents(self, shape, generator, device, dtype):
        """Noise of `shape` re-noised to the first timestep, as the original's loop starts (two draws)."""
        start = randn(shape, generator, device, dtype)
        return self.add_noise(start, randn(shape, generator, device, dtype), FLASH_TIMESTEPS[0])

    def step(self, eps, t, x, generator=None):
        """The x0 estimate, re-noised to the next timestep (returned as it is after the last)."""
        t = int(t)
        x0 = self._x0(eps, t, x)
        s = self.previous[t]
        return self.add_noise(x0, randn(x.shape, generator, x.device, x.dtype), s) if s else x0


def flash_sigmas(sigmas):
    """Flash's timesteps as ComfyUI sigmas (ε model, σ = √((1 − ᾱ)/ᾱ)) from a 1000-entry sigma table, then 0: with an
    LCM-style sampler (x = x0 + σ_next·noise) they are the Flash loop."""
    return torch.cat([sigmas[list(FLASH_TIMESTEPS)], sigmas.new_zeros(1)])


def project(unet, hidden, mask):
    """Original conditioning from T5 states (B, L, d) and their mask: projected, zeroed where padded, cut to the
    longest prompt's tokens + 1."""
    mask = mask.to(hidden.device)  # hidden: on the UNet's device in its compute dtype (ComfyUI stores fp8 apart)
    context = unet.encoder_hid_proj(hidden).masked_fill(mask[..., None] == 0, 0)
    kept = int(mask.sum(-1).max()) + 1
    return context[:, :kept], mask[:, :kept]


def condition(unet, hidden, mask, null_embedding):
    """Original conditioning of T5 states as ComfyUI's CLIP Text Encode gives them (cut to the tokens + 1): projected
    and zeroed where padded; rows of all-zero states (from ConditioningZeroOut, the way to ask for no negative prompt)
    become the null branch at their own length, as the original builds it at the prompt's."""
    context, mask = project(unet, hidden, mask)
    null = hidden.flatten(1).abs().amax(dim=1) == 0
    if null.any():
        context, mask = context.clone(), mask.clone()
        context[null], mask[null] = null_conditioning((context[null], mask[null]), null_embedding)
    return context, mask


def null_conditioning(positive, null_embedding):
    """The original's unconditional branch: `null_embedding` first, then zeros, as long as the prompt's context."""
    context, mask = torch.zeros_like(positive[0]), torch.zeros_like(positive[1])
    context[:, 0] = null_embedding.to(context)
    mask[:, 0] = 1
    return context, mask


@torch.no_grad()
def encode_prompt(models, prompt, negative_prompt=None, *, num_images_per_prompt=1):
    """(positive, negative) projected conditioning pairs, num_images_per_prompt rows per prompt; negative None means
    the `null_embedding` branch (see `null_conditioning`)."""
    if models.text_encoder is None or models.tokenizer is None:
        raise KandinskyError("Encoding a prompt needs the Kandinsky 3 text encoder and tokenizer (flan_ul2_encoder/ or "
                             "kandinsky-3's text_encoder/ and tokenizer/).")

    def encode(texts):
        ids, mask = models.tokenizer(texts, max_length=MAX_TOKENS)
        device = device_dtype(models.text_encoder)[0]
        hidden = models.text_encoder(ids.to(device), mask.to(device))
        hidden = images.check_finite(hidden, "The text encoder's output").to(*device_dtype(models.unet))
        pair = project(models.unet, hidden, mask)
        return tuple(t.repeat_interleave(num_images_per_prompt, dim=0) for t in pair)

    prompts = prompt_list(prompt, "prompt")
    negatives = None if negative_prompt is None else prompt_list(negative_prompt, "negative_prompt")
    if negatives is not None and len(negatives) not in (1, len(prompts)):
        raise KandinskyError(f"{len(negatives)} negative prompts for {len(prompts)} prompts; give one, or one per prompt.")
    return encode(prompts), None if negatives is None else encode(negatives * (len(prompts) // len(negatives)))


def guided_eps(unet, x, t, positive, negative, guidance_scale, null_embedding, concat=None):
    """ε guided as the original: `(g + 1)·cond − g·uncond`, cond first in one batch when both contexts are as long."""
    inputs = x if concat is None else torch.cat([x, concat], dim=1)
    t = torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)
    if guidance_scale is None:
        return unet(inputs, t, *positive, projected=True)
    negative = negative or null_conditioning(positive, null_embedding)
    if negative[0].shape == positive[0].shape:
        cond, uncond = unet(torch.cat([inputs, inputs]), torch.cat([t, t]), torch.cat([positive[0], negative[0]]),
                            torch.cat([positive[1], negative[1]]), projected=True).chunk(2)
    else:  # a negative prompt of another length: padding either would change the pooled embedding
        cond, uncond = unet(inputs, t, *positive, projected=True), unet(inputs, t, *negative, projected=True)
    return (guidance_scale + 1.0) * cond - guidance_scale * uncond


def _check(models, positive, negative, guidance_scale):
    if guidance_scale is not None:
        check_guidance(guidance_scale, published=3.0)
    if negative is not None and negative[0].shape[0] != positive[0].shape[0]:
        raise KandinskyError(f"{negative[0].shape[0]} negative rows for {positive[0].shape[0]} positive ones; "
                             "give one negative conditioning row per positive row.")


@torch.no_grad()
def sample(models, positive, negative, shape, *, sampler, guidance_scale=3.0, generator=None, concat=None,
           latents=None, callback=None, steps=50, init=None, strength=1.0):
    """Latents of `shape` (B, 4, h, w) with an `OriginalSampler` (`FlashSampler`: guidance_scale None); `concat`:
    the inpainting UNet's extra channels (keep-mask, masked-image latents), one row per latent. `init` and
    `strength` < 1: start from `init` noised to the strength's share of the grid (image-to-image, which the
    original has no pipeline for); `latents`: the first step's noisy input instead of fresh noise."""
    _check(models, positive, negative, guidance_scale)
    device, dtype = device_dtype(models.unet)
    timesteps = sampler.set_timesteps(steps)
    if init is not None:
        if isinstance(sampler, FlashSampler):
            raise KandinskyError("Kandinsky 3.1 Flash samples from noise only (denoise 1); its four timesteps were "
                                 "distilled for that.")
        timesteps = timesteps_for(sampler, steps, strength)
        latents = sampler.add_noise(init.to(device, dtype), randn(init.shape, generator, device, dtype), timesteps[0])
    elif latents is None:
        latents = (sampler.initial_latents(shape, generator, device, dtype) if isinstance(sampler, FlashSampler)
                   else randn(shape, generator, device, dtype))

    def model(x, t):
        return guided_eps(models.unet, x, t, positive, negative, guidance_scale, models.null_embedding, concat)

    return denoise(model, sampler, latents.to(device, dtype), timesteps, generator=generator, callback=callback)


def _latent_shape(models, batch, height, width):
    images.check_size(height, width, models.size_multiple)
    f = models.movq.config.scale_factor
    return (batch, models.unet.config.output_channels, height // f, width // f)


@torch.no_grad()
def text_to_image(models, prompt, *, negative_prompt=None, height=1024, width=1024, steps=50, guidance_scale=3.0,
                  eta=1.0, num_images_per_prompt=1, generator=None, output_type="pil", callback=None):
    """Kandinsky 3.0 / 3.1 text-to-image as the original Kandinsky3T2IPipeline (gan=False)."""
    check_guidance(guidance_scale, published=3.0)
    positive, negative = encode_prompt(models, prompt, negative_prompt, num_images_per_prompt=num_images_per_prompt)
    shape = _latent_shape(models, positive[0].shape[0], height, width)
    latents = sample(models, positive, negative, shape, sampler=OriginalSampler(0.99, eta), steps=steps,
                     guidance_scale=guidance_scale, generator=generator, callback=callback)
    return decode_latents(models.movq, latents, output_type)


@torch.no_grad()
def flash_text_to_image(models, prompt, *, height=1024, width=1024, num_images_per_prompt=1, generator=None,
                        output_type="pil", callback=None):
    """Kandinsky 3.1 Flash text-to-image: four UNet calls, no guidance, as the original (gan=True)."""
    positive, _ = encode_prompt(models, prompt, num_images_per_prompt=num_images_per_prompt)
    shape = _latent_shape(models, positive[0].shape[0], height, width)
    latents = sample(models, positive, None, shape, sampler=FlashSampler(), steps=len(FLASH_TIMESTEPS),
                     guidance_scale=None, generator=generator, callback=callback)
    return decode_latents(models.movq, latents, output_type)


def inpaint_inputs(movq, image, mask):
    """(keep-mask at latent size, masked-image latents) as the original prepares them: keep = 1 − mask (mask 1 =
    repaint), every pixel with anything to repaint set to 0, the rest MoVQ-encoded, the keep-mask nearest-downsampled."""
    keep = 1 - mask
    masked = image.masked_fill((1 - keep).bool(), 0)
    latents = movq.encode(masked)
    return F.interpolate(keep, size=latents.shape[-2:]), latents


@torch.no_grad()
def inpaint_concat(movq, image, mask):
    """The inpainting UNet's extra input channels for an image (B, 3, H, W) in [-1, 1] and a mask (B or 1, 1, H, W):
    the latent keep-mask, then the masked image's latents (`inpaint_inputs`), one row per image."""
    keep, latents = inpaint_inputs(movq, image, mask)
    return torch.cat([keep.expand(latents.shape[0], -1, -1, -1), latents], dim=1)


@torch.no_grad()
def inpaint(models, prompt, image, mask, *, negative_prompt=None, steps=50, guidance_scale=4.0, eta=1.0,
            num_images_per_prompt=1, generator=None, output_type="pil", callback=None, paste_back=False):
    """Repaint where `mask` is 1 (0 keeps), as the original Kandinsky3InpaintingPipeline; image (B, 3, H, W) in
    [-1, 1] or an image `images.preprocess_image` reads, mask (B, 1, H, W) or (H, W) in [0, 1], sides multiples of 64.
    paste_back puts the input's pixels back where the mask keeps them (the original regenerates the whole image)."""
    if not models.inpainting:
        raise KandinskyError("Inpainting needs the 9-channel Kandinsky 3 inpainting UNet (kandinsky3_inpainting.pt); "
                             "this UNet takes 4 channels.")
    check_guidance(guidance_scale, published=4.0)
    device, dtype = device_dtype(models.unet)
    pixels = image if torch.is_tensor(image) and image.ndim == 4 else None
    if pixels is None:
        height, width = images.image_size(image)
        pixels = images.preprocess_image(image, height, width)
    mask = torch.as_tensor(mask, dtype=torch.float32)
    mask = mask.reshape(1, 1, *mask.shape[-2:]) if mask.ndim == 2 else mask
    images.check_size(*pixels.shape[-2:], models.size_multiple)
    if tuple(mask.shape[-2:]) != tuple(pixels.shape[-2:]):
        raise KandinskyError(f"The mask is {tuple(mask.shape[-2:])} but the image {tuple(pixels.shape[-2:])}; give "
                             "them the same size.")
    movq_dtype = device_dtype(models.movq)[1]
    concat = inpaint_concat(models.movq, pixels.to(device, movq_dtype), mask.to(device, movq_dtype))
    positive, negative = encode_prompt(models, prompt, negative_prompt, num_images_per_prompt=num_images_per_prompt)
    n = positive[0].shape[0]
    concat = concat.to(dtype).repeat_interleave(n // concat.shape[0], dim=0)
    shape = (n, models.unet.config.output_channels, *concat.shape[-2:])
    out = sample(models, positive, negative, shape, sampler=OriginalSampler(0.95, eta), steps=steps,
                 guidance_scale=guidance_scale, generator=generator, concat=concat, callback=callback)
    if not paste_back or output_type == "latent":
        return decode_latents(models.movq, out, output_type)
    decoded = models.movq.decode(out, force_not_quantize=True)
    return images.postprocess(images.paste_back(decoded, pixels, mask), output_type)
