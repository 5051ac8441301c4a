"""Kandinsky 3 nodes: the UNet loader (a MODEL), the T5 loader (a CLIP) and the Kandinsky 3 Sampler.

The MoVQ is the pack's Kandinsky MoVQ Loader / Encode / Decode (the K3 MoVQ has the 2.x architecture, twice as wide).
Guidance: Kandinsky 3 (diffusers, the core) writes `(g + 1)·cond − g·uncond`, which is ComfyUI's cfg = g + 1; the
published default g = 3 is cfg 4.
"""
import os

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ...kandinsky_core.errors import KandinskyError
from ...kandinsky_core.kandinsky3 import original_pipeline as K3OP
from ...kandinsky_core.kandinsky3 import pipeline as K3
from ..common import modes, paths
from ..common.inpaint import carried
from ..common.progress import step_callback
from ..common.sampling import Computing, check_denoise, check_latent, check_modifiers, make_scheduler, repeats
from . import original_nodes
from .model import (INPAINT, WEIGHT_DTYPES, Kandinsky3, check_conditioning, inpaint_concat, load_unet,
                    make_room_to_sample)
from .text import load_clip

CATEGORY = "Kandinsky 3"
SAMPLERS = ["checkpoint", "ddpm", "dpm++ 2m", "dpm++ 2m karras", "flash"]
ORIGINAL_SAMPLERS = ("checkpoint", "flash")  # what an original-file UNet samples with: the 3.1 sampler, or Flash's
DTYPE_TIP = ("How the weights are stored: default lets ComfyUI choose for the device; fp8 halves the memory of fp16 "
             "(computed in a higher precision layer by layer).")


class UNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky3UNetLoader", display_name="Kandinsky 3 UNet Loader", category=f"{CATEGORY}/loaders",
            description="Loads the Kandinsky 3 UNet (3 B parameters) of a kandinsky-3 folder as a MODEL, for KSampler "
                        "or the Kandinsky 3 Sampler. fp8 storage and ComfyUI's low-VRAM loading apply to it.",
            inputs=[io.Combo.Input("unet", options=paths.entries("kandinsky3"),
                                   tooltip="A kandinsky-community/kandinsky-3 folder (unet/, scheduler/) in "
                                           "models/kandinsky, or a UNet file Kandinsky Save Model wrote (mapped "
                                           "when weight_dtype is its stored dtype)."),
                    io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default", tooltip=DTYPE_TIP),
                    modes.mode_input()],
            outputs=[io.Model.Output(display_name="model", tooltip="The UNet as a ComfyUI model (ε-prediction on the "
                                                                   "checkpoint's cosine schedule).")])

    @classmethod
    def execute(cls, unet, weight_dtype, mode="fast"):
        path = paths.resolve(unet, kind="kandinsky3")
        if not os.path.isfile(path):
            paths.check_kandinsky3(path)  # names what is wrong with unet/config.json, before the loader's check
        return io.NodeOutput(load_unet(path, weight_dtype, mode=mode))


class T5Loader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky3T5Loader", display_name="Kandinsky 3 T5 Loader", category=f"{CATEGORY}/loaders",
            description="Loads Kandinsky 3's text encoder (the Flan-UL2 T5 encoder, 8.7 B parameters) and tokenizer as "
                        "a CLIP, for CLIP Text Encode and the conditioning nodes.",
            inputs=[io.Combo.Input("text_encoder", options=paths.entries("t5"),
                                   tooltip="A kandinsky-community/kandinsky-3 folder (text_encoder/, tokenizer/), or "
                                           "Kandinsky 3.1's weights/flan_ul2_encoder/, in models/kandinsky, or a T5 "
                                           "file Kandinsky Save Model wrote (with its tokenizer)."),
                    io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default", tooltip=DTYPE_TIP)],
            outputs=[io.Clip.Output(display_name="clip", tooltip="The T5 as a CLIP: prompts are read as written (no "
                                                                 "(word:1.2) weighting), up to 127 tokens.")])

    @classmethod
    def execute(cls, text_encoder, weight_dtype):
        return io.NodeOutput(load_clip(paths.resolve(text_encoder, kind="t5"), weight_dtype))


def kandinsky3_of(model):
    """The Kandinsky3 BaseModel inside a MODEL, or a clear error for any other model."""
    inner = getattr(model, "model", None)
    if not isinstance(inner, Kandinsky3):
        raise KandinskyError(f"Kandinsky 3 Sampler needs a MODEL from Kandinsky 3 UNet Loader, got {type(inner).__name__}; "
                             "use KSampler (or the Kandinsky Decoder Sampler for 2.x) with other models.")
    return inner


def read_conditioning(cond, name, width):
    """(states, mask) of a single-entry Kandinsky 3 CONDITIONING."""
    if not cond or len(cond) != 1:
        raise KandinskyError(f"The {name} conditioning has {len(cond or [])} entries; the Kandinsky 3 Sampler takes one "
                             "(from CLIP Text Encode). Use KSampler for combined conditioning.")
    check_modifiers(cond, "Kandinsky 3 Sampler", name)
    return check_conditioning(cond[0][0], cond[0][1], width, f"Kandinsky 3 Sampler, {name}")


def read_inputs(k3, positive, negative, latent_image, sampler, steps, denoise):
    """The (states, mask) pairs of positive and negative (None if unconnected), once every input is checked."""
    width = k3.diffusion_model.unet.config.encoder_hid_dim
    pos = read_conditioning(positive, "positive", width)
    neg = read_conditioning(negative, "negative", width) if negative is not None else None
    check_denoise(denoise, steps)
    if sampler not in SAMPLERS:  # ComfyUI 0.3.75 does not check V3 combo values against their options
        raise KandinskyError(f"Unknown sampler {sampler!r}; pick one of {', '.join(SAMPLERS)}.")
    if k3.original != (sampler in ORIGINAL_SAMPLERS) and (k3.original or sampler == "flash"):
        raise KandinskyError(f"The {sampler!r} sampler is not for this UNet: a UNet from the original files (Kandinsky "
                             f"3.1 UNet Loader) samples with {' or '.join(ORIGINAL_SAMPLERS)}, a kandinsky-3 folder's "
                             "with checkpoint, ddpm or dpm++; flash needs the Flash UNet from the original files.")
    check_latent(latent_image, "Kandinsky 3 Sampler", "use KSampler with this model, which denoises inside it.")
    return pos, neg


def conditioning_pair(cond, n, device, dtype):
    """A (states, mask) pair on the UNet's device, each row repeated for its n latents."""
    hidden, mask = cond
    return hidden.to(device, dtype).repeat_interleave(n, dim=0), mask.to(device).repeat_interleave(n, dim=0)


NEGATIVE_TIP = ("Optional negative prompt. Unconnected: no negative prompt (diffusers' default, an empty and fully "
                "masked context; for a UNet from the original files its null embedding, as the original code).")
SAMPLER_TIP = ("checkpoint: the folder's scheduler (DDPM with x0 clipping); for a UNet from the original files the "
               "Kandinsky 3.1 sampler (DDIM η 1, dynamic threshold). flash: Kandinsky 3.1 Flash's four steps (steps and "
               "cfg are not used).")


class Sampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky3Sampler", display_name="Kandinsky 3 Sampler", category=f"{CATEGORY}/sampling",
            description="Samples Kandinsky 3 with the checkpoint's DDPM (or DPM-Solver++ 2M), exactly as kandinsky_core "
                        "and diffusers do for the same seed. Text-to-image at denoise 1; image-to-image below, on "
                        "latents from Kandinsky MoVQ Encode.",
            inputs=[
                io.Model.Input("model", tooltip="From Kandinsky 3 UNet Loader."),
                io.Conditioning.Input("positive", tooltip="CLIP Text Encode with the Kandinsky 3 CLIP."),
                io.Conditioning.Input("negative", optional=True, tooltip=NEGATIVE_TIP),
                io.Latent.Input("latent_image", tooltip="Empty Latent Image (sides multiples of 64 pixels) for text-to-"
                                                        "image, or Kandinsky MoVQ Encode's latents for denoise < 1."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the noise (a CPU generator: the same image on any device)."),
                io.Int.Input("steps", default=25, min=1, max=999, tooltip="Denoising steps (25 in diffusers)."),
                io.Float.Input("cfg", default=4.0, min=1.0, max=30.0, step=0.1,
                               tooltip="ComfyUI's cfg = Kandinsky 3's guidance + 1: 4.0 is diffusers' default 3.0. "
                                       "At 2 or below guidance is off (the negative is not used), as in diffusers."),
                io.Combo.Input("sampler", options=SAMPLERS, default="checkpoint", tooltip=SAMPLER_TIP),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Image-to-image strength: 1 ignores latent_image, lower values keep more of it, "
                                       "0 returns it unchanged (as KSampler does)."),
            ],
            outputs=[io.Latent.Output(tooltip="MoVQ latents; decode with Kandinsky MoVQ Decode.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, positive, latent_image, seed, steps, cfg, sampler, denoise, negative=None):
        k3, g = kandinsky3_of(model), cfg - 1.0
        pos, neg = read_inputs(k3, positive, negative, latent_image, sampler, steps, denoise)
        if denoise == 0:  # as KSampler: nothing to denoise, the latent comes back as it is
            return io.NodeOutput(dict(latent_image))
        make_room_to_sample(k3, latent_image["samples"])
        mm.load_models_gpu([model])
        unet = k3.diffusion_model.unet
        device, dtype = model.load_device, k3.manual_cast_dtype or next(unet.parameters()).dtype
        init = latent_image["samples"]
        n = repeats(pos[0].shape[0], init.shape[0])
        run = dict(steps=steps, generator=torch.Generator().manual_seed(seed),
                   callback=step_callback(4 if sampler == "flash" else steps, cls.hidden.unique_id, model))
        unet = Computing(unet, dtype, device)
        if k3.original:
            concat = positive[0][1].get(INPAINT)
            latents = sample_original(k3, unet, (pos, neg, n, concat), init, sampler, g, denoise, run)
        else:
            latents = sample_diffusers(k3, unet, (pos, neg, n), init, sampler, g, denoise, run)
        return io.NodeOutput({**carried(latent_image), "samples": latents.to(mm.intermediate_device(), torch.float32)})


def sample_diffusers(k3, unet, conditioning, init, sampler, g, denoise, run):
    """A kandinsky-3 folder's UNet sampled as diffusers' Kandinsky 3 pipelines do."""
    pos, neg, n = conditioning
    device, dtype = unet.probe.device, unet.probe.dtype
    positive = conditioning_pair(pos, n, device, dtype)
    negative = None if g <= 1 else conditioning_pair(neg, n, device, dtype) if neg is not None else \
        (torch.zeros_like(positive[0]), torch.zeros_like(positive[1]))  # diffusers' negative_prompt=None
    core = K3.Kandinsky3Models(unet, None, make_scheduler(k3.scheduler_config, sampler))
    if denoise < 1:
        return K3.sample_image_to_image(core, positive, negative, init.to(device, dtype), strength=denoise,
                                        guidance_scale=g, **run)
    return K3.sample_text_to_image(core, positive, negative, tuple(init.shape), guidance_scale=g, **run)


def sample_original(k3, unet, conditioning, init, sampler, g, denoise, run):
    """An original-file UNet sampled as the original code does: the 3.1 sampler (quantile 0.99, 0.95 for inpainting)
    or Flash's four steps without guidance, conditioned as the original (an unconnected negative: its null_embedding)."""
    pos, neg, n, concat = conditioning
    device, dtype = unet.probe.device, unet.probe.dtype
    null = k3.diffusion_model.null_embedding.to(device, dtype)
    positive = K3OP.condition(unet, *conditioning_pair(pos, n, device, dtype), null)
    negative = None if neg is None else K3OP.condition(unet, *conditioning_pair(neg, n, device, dtype), null)
    inpainting = unet.config.in_channels == 9
    if inpainting:
        concat = inpaint_concat(concat, init).to(device, dtype).repeat_interleave(init.shape[0] // concat.shape[0], dim=0)
    flash = sampler == "flash"
    chosen = K3OP.FlashSampler() if flash else K3OP.OriginalSampler(0.95 if inpainting else 0.99)
    models = K3OP.OriginalModels(unet, None, null)
    return K3OP.sample(models, positive, negative, tuple(init.shape), sampler=chosen, concat=concat,
                       guidance_scale=None if flash or g == 0 else g, init=init if denoise < 1 else None,
                       strength=denoise, **{**run, "steps": 4 if flash else run["steps"]})


NODES = [UNetLoader, T5Loader, Sampler, *original_nodes.NODES]
