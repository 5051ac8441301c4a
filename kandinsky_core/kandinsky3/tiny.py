"""A tiny random Kandinsky 3 checkpoint in exactly the published kandinsky-community/kandinsky-3 layout.

Only fp16-variant files, as on the hub: `unet/` and `movq/` hold `diffusion_pytorch_model.fp16.safetensors`, the
text encoder is sharded with a `model.safetensors.index.fp16.json` and keeps its `wo` layers in fp32. Every weight is
random, the time-conditioned norms included (diffusers zero-initialises them, which would make the UNet ignore the
timestep). The MoVQ halves three times, like the real one, so latents are 1/8 of the image size.
"""
import json
import os

import torch
from safetensors.torch import save_file

from .. import schedulers
from ..config import to_dict
from ..movq import MOVQ_TINY8, MoVQ
from .tiny_text import write_text_encoder, write_text_encoder_file, write_tokenizer
from .unet import UNET3_TINY, UNet

MODEL_INDEX = {
    "_class_name": "Kandinsky3Pipeline", "_diffusers_version": "0.24.0.dev0", "movq": ["diffusers", "VQModel"],
    "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "T5Tokenizer"], "unet": ["diffusers", "Kandinsky3UNet"],
}
WEIGHTS = "diffusion_pytorch_model.fp16.safetensors"


def _json(path, d):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(d, f, indent=2, sort_keys=True)


def _random(model, seed, scale=0.2):
    """Every parameter drawn from one seeded generator (norm weights around 1, so activations keep their scale)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = scale * torch.randn(p.shape, generator=g)
            p.copy_(1 + noise if p.ndim == 1 and "norm" in name and name.endswith("weight") else noise)
    return model.eval()


def tiny_models(seed=0):
    """The tiny UNet and MoVQ (random, fp16 as published) with their diffusers config dicts."""
    unet = _random(UNet(UNET3_TINY), seed).half()
    movq = _random(MoVQ(MOVQ_TINY8), seed + 1, scale=0.1).half()
    unet_config = {**to_dict(UNET3_TINY, "Kandinsky3UNet"), "_diffusers_version": "0.24.0.dev0"}
    return (unet, unet_config), (movq, to_dict(MOVQ_TINY8, "VQModel"))


def _save(model, path, metadata=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, path, metadata={"format": "pt", **(metadata or {})})


def write_kandinsky3(folder, seed=0):
    """A tiny kandinsky-3 repo folder: model_index.json, unet/, movq/, text_encoder/, tokenizer/, scheduler/."""
    for (model, config), sub in zip(tiny_models(seed), ("unet", "movq")):
        _json(os.path.join(folder, sub, "config.json"), config)
        _save(model, os.path.join(folder, sub, WEIGHTS))
    write_text_encoder(os.path.join(folder, "text_encoder"), seed)
    write_tokenizer(os.path.join(folder, "tokenizer"))
    _json(os.path.join(folder, "scheduler", "scheduler_config.json"), schedulers.KANDINSKY_3_DDPM)
    _json(os.path.join(folder, "model_index.json"), MODEL_INDEX)
    return folder


def write_single_files(folder, seed=0, with_config=True):
    """The same tiny weights as one safetensors file per component (config in the metadata unless with_config is
    False); returns {"unet", "movq", "text_encoder": file path, "tokenizer": folder}."""
    paths = {name: os.path.join(folder, f"kandinsky3-{name}.safetensors") for name in ("unet", "movq", "text_encoder")}
    for (model, config), name in zip(tiny_models(seed), ("unet", "movq")):
        _save(model, paths[name], {"config": json.dumps(config)} if with_config else None)
    write_text_encoder_file(paths["text_encoder"], seed, with_config=with_config)
    paths["tokenizer"] = write_tokenizer(os.path.join(folder, "tokenizer"))
    return paths

