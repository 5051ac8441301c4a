"""The original ai-forever checkpoints of Kandinsky 3.0 / 3.1 (github.com/ai-forever/Kandinsky-3), read as published.

These files are weights-only torch pickles (fp32 tensors in OrderedDicts), read with `torch.load(weights_only=True,
mmap=True)`, so a 12 GB UNet file is mapped, not copied, and each tensor is cast into the requested dtype on its own:
- a UNet file (`kandinsky3.pt`, `kandinsky3_flash.pt`, `kandinsky3_inpainting.pt`): {"unet": state dict, "null_embedding":
  the unconditional context token} and, in the 3.0 release, "projections" (the T5 → context projection, under `t5.`);
- a projection file (3.1's `projection.pt`, `projection_flash.pt`, `projection_inpainting.pt`): Linear + LayerNorm under
  `0.` and `1.`; each UNet was trained with its own;
- `movq.pt`: the MoVQ under the original VQGAN names, without a codebook (`kandinsky_core.movq` reads it).
What a file is comes from its keys and shapes: 4 or 9 UNet input channels (text-to-image or inpainting), a projection
inside or not. The base and Flash UNets have the same keys and shapes; which sampler a UNet wants is the user's choice.
Key names map one to one onto ours (diffusers' `Kandinsky3UNet` / `VQModel` names), so the models are the same classes
as for the diffusers-format folder.
"""
import os
import re

import torch
from torch import nn

from .. import weights as W
from ..errors import KandinskyError
from .. import movq as M
from .original_pipeline import OriginalModels
from .t5 import load_t5
from .tokenizer import load_tokenizer
from .unet import PUBLISHED_GROUPS, PUBLISHED_HEAD_DIM, UNet, UNetConfig

NORM_GROUPS = PUBLISHED_GROUPS  # not in the files: the published UNet's and MoVQ's GroupNorm groups
PROJECTION_3_0 = {"t5.0.weight": "0.weight", "t5.1.weight": "1.weight", "t5.1.bias": "1.bias"}
PROJECTION_KEYS = {"0.weight": "encoder_hid_proj.projection_linear.weight",
                   "1.weight": "encoder_hid_proj.projection_norm.weight", "1.bias": "encoder_hid_proj.projection_norm.bias"}

# (original, ours) regular expressions, applied in order; each side is the other's inverse.
UNET_RULES = [
    (r"^to_time_embed\.1\.", "time_embedding.linear_1."), (r"^to_time_embed\.3\.", "time_embedding.linear_2."),
    (r"^in_layer\.", "conv_in."), (r"^out_layer\.0\.", "conv_norm_out."), (r"^out_layer\.2\.", "conv_out."),
    (r"^feature_pooling\.", "add_time_condition."),
    (r"^down_samples\.(\d+)\.", r"down_blocks.\1."), (r"^up_samples\.(\d+)\.", r"up_blocks.\1."),
    (r"\.self_attention_block\.", ".attentions.0."),
    (r"\.resnet_attn_blocks\.(\d+)\.0\.", r".resnets_in.\1."), (r"\.resnet_attn_blocks\.(\d+)\.2\.", r".resnets_out.\1."),
    (r"\.to_query\.", ".to_q."), (r"\.to_key\.", ".to_k."), (r"\.to_value\.", ".to_v."),
    (r"\.output_layer\.", ".to_out.0."),
]


def _apply(rules, key):
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def unet_key(key):
    """Our (diffusers) name of an original UNet tensor."""
    key = _apply(UNET_RULES, key)
    # The cross-attention of resnet_attn_blocks.I sits at attentions.I+1 (attentions.0 is the self-attention).
    return re.sub(r"\.resnet_attn_blocks\.(\d+)\.1\.", lambda m: f".attentions.{int(m[1]) + 1}.", key)


def read_file(path):
    """The top-level dict of an original `.pt` file, memory-mapped; KandinskyError naming the file if it is not one."""
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise KandinskyError(f"{path} {what}; pass an original Kandinsky 3 .pt file (e.g. weights/kandinsky3.pt).")
    top = W.load_pickle(path)
    if not isinstance(top, dict):
        raise KandinskyError(f"{path} holds a {type(top).__name__}, not the dict of an original Kandinsky 3 file.")
    return top


def describe_file(top):
    """What an original file holds: 'unet', 'projection' or 'movq', or a KandinskyError saying what it is instead."""
    unet = top.get("unet")
    if isinstance(unet, dict) and "in_layer.weight" in unet:
        return "unet"
    if set(top) == set(PROJECTION_KEYS):
        return "projection"
    if M.is_original_movq(top):
        return "movq"
    shapes = {k: tuple(v.shape) for k, v in top.items() if isinstance(v, torch.Tensor)}
    raise KandinskyError(f"This is not an original Kandinsky 3 UNet, projection or MoVQ file: it looks like "
                         f"{W.describe(shapes) if shapes else 'a pickle of ' + ', '.join(map(str, list(top)[:4]))}.")


def _file_of(path, kind):
    top = read_file(path)
    found = describe_file(top)
    if found != kind:
        raise KandinskyError(f"{path} is an original Kandinsky 3 {found} file, not a {kind}; load it with the {found} "
                             "input.")
    return top


def published_projection(path):
    """The projection file the published repo pairs with an original UNet file (kandinsky3.pt, kandinsky3_flash.pt,
    kandinsky3_inpainting.pt with projection.pt, projection_flash.pt, projection_inpainting.pt), beside it or in the
    flan_ul2_encoder/ folder beside it; None if there is none."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if not stem.startswith("kandinsky3"):
        return None
    name = f"projection{stem[len('kandinsky3'):]}.pt"
    folder = os.path.dirname(os.fspath(path))
    found = [p for p in (os.path.join(folder, name), os.path.join(folder, "flan_ul2_encoder", name)) if os.path.isfile(p)]
    return found[0] if found else None


def projection_of(path, unet_top=None, unet_path=None):
    """The projection tensors (`0.weight`, `1.weight`, `1.bias`) of a 3.1 projection file; None: the ones a 3.0 UNet
    file holds, else the published projection file beside `unet_path`."""
    if path is None:
        inside = (unet_top or {}).get("projections")
        if isinstance(inside, dict) and set(inside) == set(PROJECTION_3_0):
            return {PROJECTION_3_0[k]: v for k, v in inside.items()}
        path = published_projection(unet_path) if unet_path is not None else None
        if path is None:
            raise KandinskyError("This Kandinsky 3.1 UNet file holds no text projection: give its projection file too "
                                 "(projection.pt for kandinsky3.pt, projection_flash.pt for kandinsky3_flash.pt, "
                                 "projection_inpainting.pt for kandinsky3_inpainting.pt, in weights/flan_ul2_encoder/).")
    return _file_of(path, "projection")


def unet_config(shapes, projection, groups=NORM_GROUPS, head_dim=PUBLISHED_HEAD_DIM):
    """Our UNet config for an original UNet state dict's shapes and its projection's; the norm groups and the head
    width are not in the shapes (published: 32 and 64)."""
    levels = W.count_indices(shapes, r"down_samples\.(\d+)\.")
    widths = tuple(shapes[f"down_samples.{i}.resnet_attn_blocks.0.0.resnet_blocks.3.projection.weight"][0]
                   for i in range(levels))
    context, text = projection["0.weight"]
    time = shapes["to_time_embed.1.weight"][0]
    if shapes["feature_pooling.attention.to_key.weight"][1] != context:
        raise KandinskyError(f"The projection maps the text to {context} channels but the UNet attends to "
                             f"{shapes['feature_pooling.attention.to_key.weight'][1]}: it belongs to another model; "
                             "give the projection file published with this UNet.")
    return UNetConfig(in_channels=shapes["in_layer.weight"][1], out_channels=shapes["out_layer.2.weight"][0],
                      block_out_channels=widths, time_embedding_dim=time, cross_attention_dim=context,
                      encoder_hid_dim=text, attention_head_dim=head_dim, groups=groups,
                      layers_per_block=W.count_indices(shapes, r"down_samples\.0\.resnet_attn_blocks\.(\d+)\."),
                      time_features="original")


def read_shapes(path):
    """{key: shape} of an original UNet file's UNet tensors (the file is mapped, not read)."""
    return {k: tuple(v.shape) for k, v in _file_of(path, "unet")["unet"].items()}


def read_unet_config(top, projection):
    """The UNet config of an original UNet file's dict and its projection tensors. Files our tiny writers make say
    their norm groups and head width under "config"; published files have the published ones."""
    hints = top.get("config") if isinstance(top.get("config"), dict) else {}
    shapes = {k: tuple(v.shape) for k, v in top["unet"].items()}
    return unet_config(shapes, {k: tuple(v.shape) for k, v in projection.items()},
                       hints.get("groups", NORM_GROUPS), hints.get("attention_head_dim", PUBLISHED_HEAD_DIM))


def load_unet(path, projection=None, *, dtype=None, device="cpu", operations=nn):
    """(UNet, null_embedding) from an original UNet file and its projection (a 3.1 projection file; None: the one
    inside a 3.0 file, else the published one beside it). `dtype` None keeps the file's (fp32)."""
    top = _file_of(path, "unet")
    proj = projection_of(projection, top, path)
    sd = top["unet"]
    config = read_unet_config(top, proj)
    null = top.get("null_embedding")
    if not isinstance(null, torch.Tensor) or null.shape[-1] != config.cross_attention_dim:
        raise KandinskyError(f"{path} has no null_embedding of width {config.cross_attention_dim}; it is not a complete "
                             "original Kandinsky 3 UNet file: download it again.")
    tensors = [(unet_key(k), v) for k, v in sd.items()] + [(PROJECTION_KEYS[k], v) for k, v in proj.items()]
    model = W.build(UNet, config, "Kandinsky 3 UNet", operations=operations, dtype=dtype)
    reference = model if operations is nn else W.build(UNet, config, "Kandinsky 3 UNet")
    model = W.load_weights(model, path, reference=reference, tensors=((k, W.cast(v, dtype, device)) for k, v in tensors),
                           mismatch_hint="it is not an original Kandinsky 3 UNet of the published shape.").eval()
    return model, null.reshape(-1).to(device=device, dtype=dtype or null.dtype)


def load_original(unet, movq, text_encoder=None, projection=None, *, dtype=None, device="cpu", operations=nn):
    """`original_pipeline.OriginalModels` from original files: a UNet file and its projection file (None for a 3.0
    file, which holds its own), `movq.pt`, and a T5 folder (3.1's flan_ul2_encoder/ or kandinsky-3's text_encoder/,
    with its tokenizer; None: no text encoder). One compute dtype for all (None: the UNet file's, fp32)."""
    parts = {"dtype": dtype, "device": device, "operations": operations}
    model, null = load_unet(unet, projection, **parts)
    dtype = dtype or next(model.parameters()).dtype
    t5 = tokenizer = None
    if text_encoder is not None:
        t5 = load_t5(text_encoder, **{**parts, "dtype": dtype})
        beside = os.path.join(os.path.dirname(os.path.normpath(text_encoder)), "tokenizer")  # kandinsky-3's layout
        tokenizer = load_tokenizer(text_encoder if os.path.isfile(os.path.join(text_encoder, "spiece.model")) else beside)
    return OriginalModels(model, M.load_movq(movq, **{**parts, "dtype": dtype}), null, t5, tokenizer)
