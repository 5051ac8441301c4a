"""Tiny random Kandinsky 3.0 / 3.1 checkpoints in the original ai-forever layouts, for tests and dry runs.

Writers for every published original file: UNet files (3.1: {"unet", "null_embedding"}; 3.0: plus "projections"),
3.1 projection files, `movq.pt` and the 3.1 `flan_ul2_encoder/` folder (fp32 `.bin` shards with an index, the
tokenizer files and the projection files beside them). The weights come from numpy's seeded generator, which gives
the same numbers on every machine, so parity fixtures made from them hold everywhere. Every parameter is random,
zero-initialised layers included (zeros would hide a wrongly mapped tensor).
"""
import json
import os
import re
from dataclasses import replace

import numpy as np
import torch

from ..movq import MOVQ_TINY8, MoVQ
from .original import NORM_GROUPS, PROJECTION_3_0, PROJECTION_KEYS
from .t5 import T5Encoder
from .tiny_text import T5_TINY, write_tokenizer
from .unet import UNET3, UNet

# Four levels like the published UNet (so every level's attention choice is exercised), at tiny widths.
ORIGINAL_UNET_TINY = replace(UNET3, in_channels=4, out_channels=4, block_out_channels=(8, 16, 32, 64),
                             time_embedding_dim=16, cross_attention_dim=8, encoder_hid_dim=T5_TINY.d_model,
                             attention_head_dim=4, groups=2, layers_per_block=2,
                             time_features="original")
# The original MoVQ normalises with 32 groups everywhere.
ORIGINAL_MOVQ_TINY = replace(MOVQ_TINY8, norm_num_groups=NORM_GROUPS)
SHARDS = 2

UNET_INVERSE = [
    (r"^time_embedding\.linear_1\.", "to_time_embed.1."), (r"^time_embedding\.linear_2\.", "to_time_embed.3."),
    (r"^conv_in\.", "in_layer."), (r"^conv_norm_out\.", "out_layer.0."), (r"^conv_out\.", "out_layer.2."),
    (r"^add_time_condition\.", "feature_pooling."),
    (r"^down_blocks\.(\d+)\.", r"down_samples.\1."), (r"^up_blocks\.(\d+)\.", r"up_samples.\1."),
    (r"\.attentions\.0\.", ".self_attention_block."),
    (r"\.attentions\.(\d+)\.", lambda m: f".resnet_attn_blocks.{int(m[1]) - 1}.1."),
    (r"\.resnets_in\.(\d+)\.", r".resnet_attn_blocks.\1.0."), (r"\.resnets_out\.(\d+)\.", r".resnet_attn_blocks.\1.2."),
    (r"\.to_q\.", ".to_query."), (r"\.to_k\.", ".to_key."), (r"\.to_v\.", ".to_value."), (r"\.to_out\.0\.", ".output_layer."),
]


def original_unet_key(key):
    """The original name of one of our UNet tensors (not the projection's: it lives in its own file)."""
    for pattern, replacement in UNET_INVERSE:
        key = re.sub(pattern, replacement, key)
    return key


def original_movq_key(key, levels):
    """The original name of one of our MoVQ tensors."""
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.", key)
    attention = re.search(r"\.attentions\.\d+\.", key) is not None
    for pattern, replacement in [
            (r"\.mid_block\.resnets\.(\d)\.", lambda m: f".mid.block_{int(m[1]) + 1}."),
            (r"\.mid_block\.attentions\.0\.", ".mid.attn_1."),
            (r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
            (r"^encoder\.down_blocks\.(\d+)\.attentions\.", r"encoder.down.\1.attn."),
            (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
            (r"\.resnets\.", ".block."), (r"\.attentions\.", ".attn."), (r"\.upsamplers\.0\.", ".upsample."),
            (r"\.conv_shortcut\.", ".nin_shortcut."), (r"\.conv_norm_out\.", ".norm_out."),
            (r"\.to_q\.", ".q."), (r"\.to_k\.", ".k."), (r"\.to_v\.", ".v."), (r"\.to_out\.0\.", ".proj_out."),
            (r"\.group_norm\.", ".norm."), (r"\.spatial_norm\.", ".norm.")]:
        key = re.sub(pattern, replacement, key)
    if key.startswith("encoder.") and re.search(r"\.(norm\d?|norm_out)\.(weight|bias)$", key):
        key = re.sub(r"\.(norm\d?|norm_out)\.(weight|bias)$", r".\1.norm_layer.\2", key)
    return key, attention


def random_tensor(shape, rng, key=""):
    """A random fp32 tensor that keeps activations O(1): weights ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.2²)."""
    values = rng.standard_normal(shape)
    if len(shape) > 1:
        values /= np.sqrt(np.prod(shape[1:]))
    elif re.search(r"norm[^.]*\.weight$|norm_layer\.weight$|layer_norm\.weight$", key):
        values = 1 + 0.2 * values
    else:
        values *= 0.2
    return torch.from_numpy(values.astype(np.float32))


def random_state(model, seed):
    """{key: random tensor} for every tensor of a (meta) model, in its key order."""
    rng = np.random.default_rng(seed)
    return {k: random_tensor(tuple(v.shape), rng, k) for k, v in model.state_dict().items()}


def original_unet_state(config=ORIGINAL_UNET_TINY, seed=0):
    """({original UNet key: tensor}, {projection key: tensor}, null_embedding) of a random tiny UNet."""
    ours = random_state(UNet(config, device="meta"), seed)
    projection = {k: ours.pop(v) for k, v in PROJECTION_KEYS.items()}
    null = random_tensor((config.cross_attention_dim,), np.random.default_rng(seed + 1000))
    return {original_unet_key(k): v for k, v in ours.items()}, projection, null


def inpainting_in_layer(config=ORIGINAL_UNET_TINY, seed=0):
    """The 9-channel `in_layer` of the tiny inpainting UNet (the rest of it is the text-to-image UNet's)."""
    rng = np.random.default_rng(seed + 2000)
    return {"in_layer.weight": random_tensor((config.init_channels, 9, 3, 3), rng),
            "in_layer.bias": random_tensor((config.init_channels,), rng, "in_layer.bias")}


def original_movq_state(config=ORIGINAL_MOVQ_TINY, seed=0):
    """{original MoVQ key: tensor} of a random tiny MoVQ (no codebook, attention weights as 1×1 convolutions)."""
    ours = random_state(MoVQ(config, device="meta"), seed)
    ours.pop("quantize.embedding.weight")
    out = {}
    for key, t in ours.items():
        name, attention = original_movq_key(key, len(config.block_out_channels))
        out[name] = t[:, :, None, None] if attention and t.ndim == 2 else t
    return out


def write_unet(path, unet, null_embedding, projection_3_0=None, config=ORIGINAL_UNET_TINY):
    """An original UNet file: 3.1 layout, or 3.0 with the projection inside when `projection_3_0` is given. It also
    says the two config values its shapes do not tell (published files need not: theirs are the published ones)."""
    top = {"unet": dict(unet), "null_embedding": null_embedding,
           "config": {"groups": config.groups, "attention_head_dim": config.attention_head_dim}}
    if projection_3_0 is not None:
        inverse = {v: k for k, v in PROJECTION_3_0.items()}
        top["projections"] = {inverse[k]: v for k, v in projection_3_0.items()}
    torch.save(top, path)
    return path


def write_projection(path, projection):
    """A 3.1 projection file (`0.weight`, `1.weight`, `1.bias`)."""
    torch.save(dict(projection), path)
    return path


def write_movq(path, state):
    """An original `movq.pt`."""
    torch.save(dict(state), path)
    return path


def write_flan_ul2_encoder(folder, seed=0, config=T5_TINY, projections=None):
    """A 3.1 `weights/flan_ul2_encoder/` folder: config.json, fp32 `.bin` shards of the whole encoder model with their
    index, the tokenizer files and the given {file name: projection} files."""
    os.makedirs(folder, exist_ok=True)
    write_tokenizer(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({**config.to_dict(), "architectures": ["T5EncoderModel"]}, f, indent=2, sort_keys=True)
    sd = random_state(T5Encoder(config, device="meta"), seed)
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"]  # transformers saves the tied embedding twice
    keys, weight_map = sorted(sd), {}
    for i in range(SHARDS):
        name = f"pytorch_model-{i + 1:05d}-of-{SHARDS:05d}.bin"
        part = {k: sd[k].clone() for k in keys[i::SHARDS]}
        torch.save(part, os.path.join(folder, name))
        weight_map.update({k: name for k in part})
    with open(os.path.join(folder, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)
    for name, projection in (projections or {}).items():
        write_projection(os.path.join(folder, name), projection)
    return folder


def write_kandinsky31(folder, seed=0):
    """Kandinsky 3.1's `weights/` folder in its published layout: kandinsky3.pt, kandinsky3_flash.pt,
    kandinsky3_inpainting.pt, movq.pt and flan_ul2_encoder/ with the three projection files."""
    os.makedirs(folder, exist_ok=True)
    projections = {}
    for i, (name, inpainting) in enumerate([("", False), ("_flash", False), ("_inpainting", True)]):
        unet, projections[f"projection{name}.pt"], null = original_unet_state(seed=seed + 10 * i)
        write_unet(os.path.join(folder, f"kandinsky3{name}.pt"),
                   {**unet, **inpainting_in_layer(seed=seed + 10 * i)} if inpainting else unet, null)
    write_movq(os.path.join(folder, "movq.pt"), original_movq_state(seed=seed))
    write_flan_ul2_encoder(os.path.join(folder, "flan_ul2_encoder"), seed=seed, projections=projections)
    return folder
