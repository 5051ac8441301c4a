"""Tiny kandinsky-3 folders in the published layout, for the ComfyUI server tests (conftest.write_models).

unet/ and movq/ hold fp16 `diffusion_pytorch_model.fp16.safetensors` files (the hub has only the fp16 variant),
text_encoder/ fp16 shards with fp32 `wo` (tiny_text), tokenizer/ a SentencePiece model, scheduler/ the published
config. Every weight is random (seeded), large enough that a 64-pixel image is not flat.
"""
import json
import os
from dataclasses import replace

import torch
from safetensors.torch import save_file

from kandinsky_core import schedulers
from kandinsky_core.config import to_dict
from kandinsky_core.kandinsky3.tiny_text import T5_TINY, write_text_encoder, write_tokenizer
from kandinsky_core.kandinsky3.unet import UNET3_TINY, UNet
from kandinsky_core.movq import MOVQ_TINY8, MoVQ

K3 = "kandinsky-3/"  # the tiny published folder
K3_OTHER_T5 = "kandinsky-3-t5-48/"  # the same layout, with a 48-wide T5 (and a UNet taking 48-wide states)
FP16 = "diffusion_pytorch_model.fp16.safetensors"


def _json(path, d):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(d, f, indent=2, sort_keys=True)


def _save_fp16(model, config, folder):
    _json(os.path.join(folder, "config.json"), config)
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(folder, FP16), metadata={"format": "pt"})


def random_unet(config, seed):
    """A UNet of `config` with every weight random: the published init zeroes the time-conditioned norms."""
    unet = UNet(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return unet.eval()


def write_kandinsky3(folder, seed=0, t5=T5_TINY):
    """One tiny kandinsky-3 folder (unet, movq, scheduler, text_encoder, tokenizer, model_index.json)."""
    unet_config = replace(UNET3_TINY, encoder_hid_dim=t5.d_model)
    _save_fp16(random_unet(unet_config, seed), to_dict(unet_config, "Kandinsky3UNet"), os.path.join(folder, "unet"))
    torch.manual_seed(seed)
    _save_fp16(MoVQ(MOVQ_TINY8), to_dict(MOVQ_TINY8, "VQModel"), os.path.join(folder, "movq"))
    _json(os.path.join(folder, "scheduler", "scheduler_config.json"), schedulers.KANDINSKY_3_DDPM)
    write_text_encoder(os.path.join(folder, "text_encoder"), seed, t5)
    write_tokenizer(os.path.join(folder, "tokenizer"))
    _json(os.path.join(folder, "model_index.json"), {"_class_name": "Kandinsky3Pipeline"})
    return folder


def write_all(root):
    """The tiny folders K3 and K3_OTHER_T5 under `root`."""
    write_kandinsky3(os.path.join(root, K3))
    write_kandinsky3(os.path.join(root, K3_OTHER_T5), seed=1, t5=replace(T5_TINY, d_model=48, d_kv=12))


def load_core(folder):
    """The folder's models for kandinsky_core's pipeline, in fp32 on the CPU (what the test server computes in)."""
    from kandinsky_core.kandinsky3.loading import load_kandinsky3

    return load_kandinsky3(folder, dtype=torch.float32)
