"""CLIP image embeddings for the decoder: from text through the prior, from images, and mixes of both.

Same algorithms, defaults and RNG order as diffusers' Kandinsky prior pipelines (2.1 and 2.2 are identical here),
except that interpolation's negative embedding is never random (2.2 emb2emb's `interpolate` returned `randn_like`),
and a single negative prompt applies to every prompt of a batch.
"""
import math
import numbers
from dataclasses import dataclass

import torch

from ..errors import KandinskyError
from ..images import clip_image_inputs
from ..sampling import check_guidance, denoise, device_dtype, guide, randn, timesteps_for
from .text_encoder import encode_clip_prompt


@dataclass
class PriorModels:
    """What a prior checkpoint folder holds."""

    prior: object
    text_encoder: object  # transformers CLIPTextModelWithProjection
    tokenizer: object
    image_encoder: object  # transformers CLIPVisionModelWithProjection
    image_processor: dict  # image_processor/preprocessor_config.json
    scheduler: object

    @property
    def embedding_dim(self):
        """768 for Kandinsky 2.1, 1280 for 2.2."""
        return self.prior.config.embedding_dim

    @property
    def version(self):
        """'2.1' (OpenAI CLIP ViT-L/14, quick_gelu) or '2.2' (LAION ViT-bigG/14, gelu), read from the image tower."""
        return "2.1" if self.image_encoder.config.hidden_act == "quick_gelu" else "2.2"


def _as_list(prompt, name):
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise KandinskyError(f"{name} must be a string or a non-empty list of strings, got {type(prompt).__name__}.")


@torch.no_grad()
def encode_prompts(models, prompts, negatives, n, cfg):
    """Text conditioning for the prior: [negative, positive] halves under guidance, each repeated `n` times."""
    device, dtype = device_dtype(models.prior)
    embeds, hidden, mask = encode_clip_prompt(models.tokenizer, models.text_encoder, prompts, device)
    parts = [(embeds, hidden, mask)]
    if cfg:
        parts.insert(0, encode_clip_prompt(models.tokenizer, models.text_encoder, negatives or [""] * len(prompts), device))
    embeds, hidden, mask = (torch.cat([p[i].repeat_interleave(n, dim=0) for p in parts]) for i in range(3))
    return {"proj_embedding": embeds.to(dtype), "encoder_hidden_states": hidden.to(dtype), "attention_mask": mask}


def _prompt_batch(prompt, negative_prompt):
    """diffusers samples the negative prompt's embedding in the same batch, with itself as the unconditional text."""
    prompts = _as_list(prompt, "prompt")
    if negative_prompt is None:
        return prompts, None
    negatives = _as_list(negative_prompt, "negative_prompt")
    if len(negatives) == 1:
        negatives = negatives * len(prompts)
    if len(negatives) != len(prompts):
        raise KandinskyError(f"{len(negatives)} negative prompts for {len(prompts)} prompts; give one, or one per prompt.")
    return prompts + negatives, negatives * 2


def _guided_prior(models, cond, guidance_scale):
    """`model(x, t)` for `sampling.denoise`: the prior's guided prediction of the clean embedding."""
    cfg = guidance_scale > 1

    def model(latents, t):
        pred = models.prior(torch.cat([latents] * 2) if cfg else latents, t, **cond)
        return guide(*pred.chunk(2), guidance_scale) if cfg else pred
    return model


class _PriorSteps:
    """The UnCLIP scheduler stepping from each timestep of a run to the next one, which it cannot know itself (it
    defaults to t - 1): diffusers' prior pipelines pass it as `prev_timestep`."""

    def __init__(self, scheduler, timesteps):
        self.scheduler = scheduler
        self.following = {int(t): timesteps[i + 1] if i + 1 < len(timesteps) else None for i, t in enumerate(timesteps)}

    def step(self, model_output, t, sample, generator=None):
        """One UnCLIP step to the run's next timestep (to 0 from the last)."""
        return self.scheduler.step(model_output, t, sample, generator=generator, prev_timestep=self.following[int(t)])

    def predict_x0(self, model_output, t, sample):
        """The prior predicts the clean embedding itself."""
        return model_output


def _finish(models, latents, negatives):
    embeds = models.prior.post_process_latents(latents)
    if negatives is None:
        return embeds, zero_image_embeds(models, embeds.shape[0])
    return tuple(embeds.chunk(2))


@torch.no_grad()
def sample_prior(models, prompt, negative_prompt=None, *, steps=25, guidance_scale=4.0, num_images_per_prompt=1,
                 generator=None, latents=None, callback=None):
    """Text → (image_embeds, negative_image_embeds), each (len(prompt) * num_images_per_prompt, dim)."""
    check_guidance(guidance_scale, published=4.0)
    prompts, negatives = _prompt_batch(prompt, negative_prompt)
    n, cfg = num_images_per_prompt, guidance_scale > 1
    device, dtype = device_dtype(models.prior)
    cond = encode_prompts(models, prompts, negatives, n, cfg)
    timesteps = timesteps_for(models.scheduler, steps)
    shape = (len(prompts) * n, models.embedding_dim)
    if latents is None:
        latents = randn(shape, generator, device, dtype)
    elif tuple(latents.shape) != shape:
        raise KandinskyError(f"prior latents have shape {tuple(latents.shape)}, expected {shape}.")
    latents = latents.to(device, dtype) * models.scheduler.init_noise_sigma
    latents = denoise(_guided_prior(models, cond, guidance_scale), _PriorSteps(models.scheduler, timesteps), latents,
                      timesteps, generator=generator, callback=callback)
    return _finish(models, latents, negatives)


@torch.no_grad()
def zero_image_embeds(models, batch):
    """The negative embedding used when there is no negative prompt: the image encoder applied to all-zero pixels."""
    size = models.image_encoder.config.image_size
    p = next(models.image_encoder.parameters())
    zeros = torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype)
    return models.image_encoder(zeros).image_embeds.repeat(batch, 1).to(device_dtype(models.prior)[1])


@torch.no_grad()
def embed_images(models, images):
    """CLIP image embeddings of PIL images, of (B, 3, 224, 224) CLIP pixel values, or (B, dim) embeddings as given."""
    device, dtype = device_dtype(models.prior)
    if isinstance(images, torch.Tensor) and images.ndim == 2:
        if images.shape[-1] != models.embedding_dim:
            raise KandinskyError(f"Got {images.shape[-1]}-dim embeddings, but this prior works with {models.embedding_dim}-dim ones "
                                 f"(Kandinsky {'2.1' if models.embedding_dim == 768 else '2.2'}); use embeddings from a "
                                 "prior of the same version.")
        return images.to(device, dtype)
    if isinstance(images, torch.Tensor) and images.ndim != 4:
        raise KandinskyError(f"Image tensors for the CLIP image encoder must be (B, 3, H, W) pixel values; got {tuple(images.shape)}.")
    if not isinstance(images, torch.Tensor):
        images = clip_image_inputs(images, models.image_processor)
    p = next(models.image_encoder.parameters())
    return models.image_encoder(images.to(p.device, p.dtype)).image_embeds.to(device, dtype)


@torch.no_grad()
def interpolate(models, items, weights, *, steps=25, guidance_scale=4.0, num_images_per_prompt=1, generator=None,
                latents=None, negative_prior_prompt=None, negative_prompt="", callback=None):
    """Weighted sum of the embeddings of texts, images and embeddings; weights are used as given (not normalised)."""
    if not items or len(items) != len(weights):
        raise KandinskyError(f"interpolate needs as many weights as items and at least one item; got {len(items)} items, "
                             f"{len(weights)} weights.")
    if not all(isinstance(w, numbers.Real) and math.isfinite(w) for w in weights):
        raise KandinskyError(f"interpolation weights must be finite numbers, got {list(weights)}; use e.g. 0.5 and 0.5.")
    n = num_images_per_prompt
    run = dict(steps=steps, guidance_scale=guidance_scale, num_images_per_prompt=n, generator=generator,
               latents=latents, callback=callback)
    total = 0
    for item, weight in zip(items, weights):
        if isinstance(item, str):
            emb = sample_prior(models, item, negative_prior_prompt, **run)[0]
        else:
            emb = embed_images(models, item if isinstance(item, torch.Tensor) else [item])
            emb = emb.repeat(n, 1) if emb.shape[0] == 1 else emb.repeat_interleave(n, dim=0)
        total = total + emb * weight
    if negative_prompt == "" and negative_prior_prompt is None:
        # diffusers samples a whole prior run here only to return its zero-image negative; skip straight to it.
        return total, zero_image_embeds(models, n)
    positive, negative = sample_prior(models, negative_prompt, negative_prior_prompt, **run)
    return total, negative if negative_prompt == "" else positive


@torch.no_grad()
def emb2emb(models, prompt, image, *, strength=0.3, negative_prompt=None, steps=25, guidance_scale=4.0,
            num_images_per_prompt=1, generator=None, callback=None):
    """Move an image's embedding towards a prompt: the prior denoises the noised image embedding (2.2's Emb2Emb)."""
    check_guidance(guidance_scale, published=4.0)
    if not 0 < strength <= 1 or int(steps * strength) < 1:
        raise KandinskyError(f"strength {strength} with {steps} steps leaves no step to run; use a strength in (0, 1] "
                             "with strength × steps ≥ 1.")
    prompts, negatives = _prompt_batch(prompt, negative_prompt)
    n, cfg = num_images_per_prompt, guidance_scale > 1
    cond = encode_prompts(models, prompts, negatives, n, cfg)
    init = embed_images(models, image if isinstance(image, torch.Tensor) else list(image) if isinstance(image, (list, tuple)) else [image])
    init = init.repeat_interleave(n, dim=0)
    batch = len(prompts) * n
    if batch % init.shape[0]:
        raise KandinskyError(f"Cannot share {init.shape[0] // n} images among {len(prompts)} prompts; give one image, or one per prompt.")
    init = torch.cat([init] * (batch // init.shape[0]))
    timesteps = timesteps_for(models.scheduler, steps, strength)
    # As in diffusers, the raw CLIP embedding is noised although the prior denoises in normalised space.
    latents = models.scheduler.add_noise(init, randn(init.shape, generator, init.device, init.dtype), timesteps[:1].repeat(batch))
    latents = denoise(_guided_prior(models, cond, guidance_scale), _PriorSteps(models.scheduler, timesteps), latents,
                      timesteps, generator=generator, callback=callback)
    return _finish(models, latents, negatives)
