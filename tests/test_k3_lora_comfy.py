"""Kandinsky 3 UNet LoRAs through ComfyUI's own LoraLoaderModelOnly and LoraLoader, on a real server: both namings
diffusers' generic LoRA trainers write, the served image equal to kandinsky_core with the LoRA merged, strength 0 bit
for bit without it, every key placed. (Refusals of wrong files are rows of test_hostile.py.)
"""
import numpy as np
import pytest
import torch

from k3_files import K3, load_core
from kandinsky_core.kandinsky3 import pipeline as K3P
from kandinsky_core.lora import apply_lora
from lora_files import model_shapes, random_lora, write_lora
from test_comfy_nodes import check_images, run, saved
from test_k3_comfy import PROMPT, K3Graph

PEFT, PROCS = "k3-unet-peft.safetensors", "k3-unet-attn-procs.safetensors"


@pytest.fixture(scope="module")
def ws(comfy):
    with comfy.listen() as listener:
        yield listener


@pytest.fixture(scope="module")
def loras(comfy):
    """The same random K3 UNet LoRA in PEFT naming (`unet.` prefixed) and in attn-procs naming, in models/loras."""
    shapes = model_shapes(comfy.base_dir / "models" / "kandinsky", K3.rstrip("/"), "unet")
    folder = comfy.base_dir / "models" / "loras"
    write_lora(folder / PEFT, random_lora(shapes, "kandinsky3", "peft", seed=7, prefix="unet."))
    write_lora(folder / PROCS, random_lora(shapes, "kandinsky3", seed=7))
    return folder


def branch(g, name, loader=None, lora=PEFT, strength=1.0, seed=3, steps=3):
    """Kandinsky 3 text-to-image with `lora` on the MODEL (LoraLoaderModelOnly, or LoraLoader with the T5 CLIP)."""
    model, clip, movq = g.k3()
    if loader == "LoraLoaderModelOnly":
        model = g.add(loader, model=model, lora_name=lora, strength_model=strength)[0]
    elif loader == "LoraLoader":
        both = g.add(loader, model=model, clip=clip, lora_name=lora, strength_model=strength, strength_clip=1.0)
        model, clip = both[0], both[1]
    node = g.k3_sampler(model, g.encode(clip), g.empty_latent()[0], seed, steps)
    return g.decode_and_save(movq, node[0], f"k3_lora_{name}")


def images(comfy, ws, branches):
    """{name: served image} for {name: branch keyword arguments}, all in one prompt."""
    g = K3Graph()
    saves = {name: branch(g, name, **kw) for name, kw in branches.items()}
    entry, _ = run(comfy, ws, g)
    return {name: check_images(saved(comfy, entry, save), 1)[0].astype(int) for name, save in saves.items()}


def test_kandinsky3_unet_lora_through_comfyuis_loaders(comfy, ws, loras):
    out = images(comfy, ws, {"plain": {}, "peft": dict(loader="LoraLoaderModelOnly"),
                             "procs": dict(loader="LoraLoaderModelOnly", lora=PROCS),
                             "zero": dict(loader="LoraLoaderModelOnly", strength=0.0),
                             "with_clip": dict(loader="LoraLoader"),
                             "half": dict(loader="LoraLoaderModelOnly", strength=0.5)})
    assert np.abs(out["peft"] - out["plain"]).mean() > 1  # the LoRA changes the image
    assert np.abs(out["half"] - out["peft"]).mean() > 0.5  # and its strength matters
    assert np.array_equal(out["procs"], out["peft"])  # both namings are the same LoRA
    assert np.array_equal(out["zero"], out["plain"])
    assert np.array_equal(out["with_clip"], out["peft"])  # LoraLoader: the UNet part, the T5 takes none
    assert "lora key not loaded" not in comfy.log_path.read_text(errors="replace")  # every key found its layer


def test_served_image_equals_kandinsky_core_with_the_lora_merged(comfy, ws, loras):
    strength, seed, steps = 0.8, 5, 3
    served = images(comfy, ws, {"core": dict(loader="LoraLoaderModelOnly", strength=strength, seed=seed,
                                             steps=steps)})["core"]
    models = load_core(str(comfy.base_dir / "models" / "kandinsky" / K3))
    apply_lora(models.unet, loras / PEFT, strength)
    image = K3P.text_to_image(models, PROMPT, height=64, width=64, steps=steps, guidance_scale=3.0,
                              generator=torch.Generator().manual_seed(seed), output_type="np")
    expected = np.clip(255 * image[0], 0, 255).astype(np.uint8)  # Save Image's conversion (truncating)
    assert np.abs(served[..., :3] - expected).max() == 0
