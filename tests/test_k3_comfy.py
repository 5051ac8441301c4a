"""Kandinsky 3 in ComfyUI: the UNet as a MODEL (stock KSampler), the T5 as a CLIP (core CLIP Text Encode), the
Kandinsky 3 Sampler equal to kandinsky_core pixel for pixel, the MoVQ through the pack's MoVQ nodes, node definitions,
and clear errors for bad wiring. Checkpoints are the tiny kandinsky-3 folders k3_files.py writes (published layout).

A few checks need ComfyUI's own objects (its noise schedule, conditioning from other text encoders): they import the
pack into this process from the same ComfyUI tree the server runs.
"""
import importlib.util
import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_server import COMFYUI_DIR, REPO
from graphs import INPUT_IMAGE, SIZE, Graph
from k3_files import K3, K3_OTHER_T5, load_core
from kandinsky_core import schedulers as S
from kandinsky_core.kandinsky3 import pipeline as K3P
from test_comfy_nodes import check_images, check_seeds, fail, run, saved, seed_variants

PROMPT = "a red cat on a blue mat"
NODES = {"Kandinsky3UNetLoader", "Kandinsky3T5Loader", "Kandinsky3Sampler"}


@pytest.fixture(scope="module")
def ws(comfy):
    """One websocket for the module (see test_comfy_nodes.ws)."""
    with comfy.listen() as listener:
        yield listener


class K3Graph(Graph):
    """A Graph with the Kandinsky 3 nodes."""

    def k3(self, folder=K3, weight_dtype="default"):
        """UNet loader, T5 loader and MoVQ loader of a tiny kandinsky-3 folder: (model, clip, movq) links."""
        unet = self.add("Kandinsky3UNetLoader", unet=folder, weight_dtype=weight_dtype)
        clip = self.add("Kandinsky3T5Loader", text_encoder=folder, weight_dtype=weight_dtype)
        movq = self.add("Kandinsky2MoVQLoader", movq=folder)
        return unet[0], clip[0], movq[0]

    def encode(self, clip, text=PROMPT):
        """Core CLIP Text Encode."""
        return self.add("CLIPTextEncode", clip=clip, text=text)[0]

    def k3_sampler(self, model, positive, latent, seed=0, steps=3, cfg=4.0, sampler="checkpoint", denoise=1.0,
                   negative=None, **extra):
        """Kandinsky 3 Sampler (negative left unconnected unless given)."""
        inputs = dict(model=model, positive=positive, latent_image=latent, seed=seed, steps=steps, cfg=cfg,
                      sampler=sampler, denoise=denoise, **extra)
        return self.add("Kandinsky3Sampler", **inputs, **({"negative": negative} if negative else {}))

    def ksampler(self, model, positive, negative, latent, seed=0, steps=3, cfg=4.0, **extra):
        """Core KSampler, euler / normal."""
        return self.add("KSampler", model=model, positive=positive, negative=negative, latent_image=latent, seed=seed,
                        steps=steps, cfg=cfg, sampler_name="euler", scheduler="normal", denoise=1.0, **extra)


# --- workflows ---------------------------------------------------------------------------------------------------


def test_stock_ksampler_with_clip_text_encode(comfy, ws):
    g = K3Graph()
    model, clip, movq = g.k3()
    positive, negative = g.encode(clip), g.encode(clip, "")
    latent = g.empty_latent(batch_size=2)[0]
    variants = seed_variants(g, lambda s, **kw: g.ksampler(model, positive, negative, latent, s, **kw), movq, 5,
                             "k3_ksampler")
    first, second = check_seeds(comfy, *run(comfy, ws, g), variants, batch=2)
    assert np.abs(first.astype(int) - second).mean() > 1  # each batch item has its own noise


def test_conditioning_nodes_work_with_the_t5(comfy, ws):
    g = K3Graph()
    model, clip, movq = g.k3()
    cat, dog = g.encode(clip), g.encode(clip, "a green dog in the rain, oil painting")
    combined = g.add("ConditioningCombine", conditioning_1=cat, conditioning_2=dog)[0]
    average = g.add("ConditioningAverage", conditioning_to=cat, conditioning_from=dog,
                    conditioning_to_strength=0.5)[0]
    zero = g.add("ConditioningZeroOut", conditioning=cat)[0]
    latent = g.empty_latent()[0]
    saves = [g.decode_and_save(movq, g.ksampler(model, cond, zero, latent, 5)[0], f"k3_cond_{i}")
             for i, cond in enumerate((cat, combined, average))]
    entry, _ = run(comfy, ws, g)
    images = [check_images(saved(comfy, entry, save), 1)[0] for save in saves]
    assert np.abs(images[0].astype(int) - images[1]).mean() > 1 and np.abs(images[0].astype(int) - images[2]).mean() > 1


# --- equality with kandinsky_core --------------------------------------------------------------------------------


def load_image_like_comfyui(path):
    """An image file as the MoVQ input ComfyUI's Load Image + MoVQ Encode make of it: (1, 3, H, W) in [-1, 1]."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(pixels)[None].movedim(-1, 1) * 2 - 1


def core_image(comfy, sampler, negative_prompt, denoise, seed, steps, cfg):
    """What kandinsky_core makes of the same folder, prompt and seed, as Save Image writes it (uint8)."""
    models = load_core(str(comfy.base_dir / "models" / "kandinsky" / K3))
    scheduler = None if sampler == "checkpoint" else S.dpm_solver_from(S.KANDINSKY_3_DDPM, karras=sampler.endswith("karras"))
    g, generator = cfg - 1, torch.Generator().manual_seed(seed)
    if denoise == 1:
        image = K3P.text_to_image(models, PROMPT, negative_prompt=negative_prompt, height=SIZE, width=SIZE, steps=steps,
                                  guidance_scale=g, generator=generator, scheduler=scheduler, output_type="np")
    else:
        positive, negative = K3P.encode_prompt(models, PROMPT, negative_prompt, guidance_scale=g)
        with torch.no_grad():
            init = models.movq.encode(load_image_like_comfyui(comfy.base_dir / "input" / INPUT_IMAGE))
            latents = K3P.sample_image_to_image(models, positive, negative, init, strength=denoise, steps=steps,
                                                guidance_scale=g, generator=generator, scheduler=scheduler)
            image = K3P.finish(models, latents, "np")
    return np.clip(255 * image[0], 0, 255).astype(np.uint8)  # Save Image's conversion (truncating)


@pytest.mark.parametrize("sampler, negative_prompt, denoise", [
    ("checkpoint", None, 1.0), ("dpm++ 2m karras", "blurry, low quality, watermark", 1.0), ("checkpoint", "", 0.5)],
    ids=["ddpm_no_negative", "dpm_karras_long_negative", "image_to_image"])
def test_sampler_equals_kandinsky_core(comfy, ws, sampler, negative_prompt, denoise):
    seed, steps, cfg = 11, 4, 4.0
    g = K3Graph()
    model, clip, movq = g.k3()
    negative = None if negative_prompt is None else g.encode(clip, negative_prompt)
    if denoise < 1:
        latent = g.add("Kandinsky2MoVQEncode", movq=movq, image=g.load_image()[0])[0]
    else:
        latent = g.empty_latent()[0]
    node = g.k3_sampler(model, g.encode(clip), latent, seed, steps, cfg, sampler, denoise, negative)
    save = g.decode_and_save(movq, node[0], f"k3_core_{sampler}_{denoise}")
    entry, _ = run(comfy, ws, g)
    (served,) = check_images(saved(comfy, entry, save), 1)
    expected = core_image(comfy, sampler, negative_prompt, denoise, seed, steps, cfg)
    difference = np.abs(served.astype(int) - expected).max()
    assert difference == 0, f"the served PNG differs from kandinsky_core by up to {difference} levels"


def test_sampler_seeds_and_image_to_image_depends_on_the_image(comfy, ws):
    g = K3Graph()
    model, clip, movq = g.k3()
    positive, image = g.encode(clip), g.load_image()
    latent = g.add("Kandinsky2MoVQEncode", movq=movq, image=image[0])[0]
    variants = seed_variants(g, lambda s, **kw: g.k3_sampler(model, positive, latent, s, denoise=0.6, **kw), movq, 5,
                             "k3_i2i")
    inverted = g.add("Kandinsky2MoVQEncode", movq=movq, image=g.add("ImageInvert", image=image[0])[0])[0]
    other = g.decode_and_save(movq, g.k3_sampler(model, positive, inverted, 5, denoise=0.6)[0], "k3_i2i_inverted")
    entry, messages = run(comfy, ws, g)
    (first,) = check_seeds(comfy, entry, messages, variants)
    (from_inverted,) = check_images(saved(comfy, entry, other), 1)
    assert np.abs(first.astype(int) - from_inverted).mean() > 1
