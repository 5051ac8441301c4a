"""Load kandinsky-community/kandinsky-3 as published: the diffusers folder (fp16-variant files, sharded T5) or one
safetensors file per component.

The family and the component come from `config.json`, our file metadata or tensor names and shapes, never from file
names. A Kandinsky 2.x folder or file given here is refused with a pointer to the 2.x loaders (and they refuse ours).
File reading, strict filling of a meta-built model and the MoVQ loader are the shared ones of `kandinsky_core.loading`
(the MoVQ is the 2.x architecture at twice the width).
"""
import json
import os

import torch
from torch import nn

from .. import loading as L
from ..errors import KandinskyError
from .pipeline import Kandinsky3Models
from .t5 import load_t5, read_t5_config
from .tokenizer import load_tokenizer
from .unet import UNet, UNetConfig

UNET_CLASS = "Kandinsky3UNet"
PIPELINE_CLASSES = ("Kandinsky3Pipeline", "Kandinsky3Img2ImgPipeline")
TWO_X_HINT = ("a Kandinsky 2.x decoder UNet; load its folder with the Kandinsky 2 loader "
              "(kandinsky_core.loading.load_decoder_models)")
# Not in the weights: the published values (as the 2.x loader assumes for its lone files).
PUBLISHED_GROUPS, PUBLISHED_HEAD_DIM = 32, 64


def is_kandinsky3_unet(shapes):
    """True if tensor names are those of a Kandinsky 3 UNet (attention pooling into the time embedding)."""
    return "add_time_condition.attention.to_q.weight" in shapes and "encoder_hid_proj.projection_linear.weight" in shapes


def unet_config_from_shapes(shapes):
    """Rebuild a UNet config from tensor shapes; norm groups and head width are the published 32 and 64."""
    levels = L.count_indices(shapes, r"down_blocks\.(\d+)\.")
    widths = tuple(shapes[f"down_blocks.{i}.resnets_in.0.resnet_blocks.3.projection.weight"][0] for i in range(levels))
    text_width, context = shapes["encoder_hid_proj.projection_linear.weight"][::-1]
    return UNetConfig(in_channels=shapes["conv_in.weight"][1], block_out_channels=widths,
                      time_embedding_dim=shapes["time_embedding.linear_1.weight"][0], cross_attention_dim=context,
                      encoder_hid_dim=text_width, attention_head_dim=PUBLISHED_HEAD_DIM, groups=PUBLISHED_GROUPS,
                      layers_per_block=L.count_indices(shapes, r"down_blocks\.0\.resnets_in\.(\d+)\."))


def _unet_path(path):
    return os.path.join(path, "unet") if os.path.isdir(os.path.join(path, "unet")) else path


def read_unet_config(path):
    """The Kandinsky 3 UNet config at `path` (repo folder, unet/ folder or one file)."""
    path = _unet_path(path)
    weights = L.weights_path(path)
    config_file = os.path.join(path, "config.json")
    if os.path.isdir(path) and os.path.isfile(config_file):
        with open(config_file) as f:
            d = json.load(f)
        if d.get("_class_name", UNET_CLASS) != UNET_CLASS:
            hint = TWO_X_HINT if d["_class_name"] == "UNet2DConditionModel" else f"a {d['_class_name']}"
            raise KandinskyError(f"{config_file} describes {hint}, not a Kandinsky 3 UNet ({UNET_CLASS}).")
        return UNetConfig.from_dict(d)
    shapes = L.read_shapes(weights)
    if not is_kandinsky3_unet(shapes):
        what = TWO_X_HINT if any(k.startswith("add_embedding.") for k in shapes) else L.describe(shapes)
        raise KandinskyError(f"{path} is not a Kandinsky 3 UNet: it looks like {what}.")
    meta = L.read_metadata_config(weights)
    return UNetConfig.from_dict(meta) if meta is not None else unet_config_from_shapes(shapes)


def stored_dtype(path):
    """The floating dtype a weights file stores (its first floating tensor's), e.g. fp16 for the published files."""
    for _, tensor in L.iter_tensors(L.weights_path(path)):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def load_unet(path, *, dtype=None, device="cpu", operations=nn):
    """The Kandinsky 3 UNet from a repo folder, its unet/ folder or one safetensors file; dtype None keeps the file's."""
    path = _unet_path(path)
    config = read_unet_config(path)
    try:
        model = UNet(config, operations=operations, dtype=dtype, device="meta")
    except (ValueError, TypeError, ZeroDivisionError, RuntimeError) as err:
        raise KandinskyError(f"{path}: the UNet config describes a model that cannot be built ({err}); copy config.json "
                             "again from kandinsky-community/kandinsky-3.") from None
    reference = model if operations is nn else UNet(config, device="meta")
    return L.load_weights(model, L.weights_path(path), dtype=dtype, device=device, reference=reference).eval()


def load_movq(path, *, dtype=None, device="cpu", operations=nn):
    """The MoVQ (K3's is the 2.x MoVQ at twice the width) from a repo folder, its movq/ folder or one file."""
    return L.load_component(path, "movq", dtype=dtype, device=device, operations=operations)


def check_family(folder):
    """The UNet config of a Kandinsky 3 repo folder; KandinskyError if model_index.json or the UNet say otherwise."""
    index = os.path.join(folder, "model_index.json")
    if os.path.isfile(index):
        with open(index) as f:
            name = json.load(f).get("_class_name", "")
        if name.startswith("Kandinsky") and name not in PIPELINE_CLASSES:
            raise KandinskyError(f"{folder} is a {name} checkpoint (Kandinsky 2.x), not Kandinsky 3; load it with the "
                                 "Kandinsky 2 loaders (kandinsky_core.loading).")
    for sub in ("unet", "movq", "scheduler"):
        if not os.path.isdir(os.path.join(folder, sub)):
            raise KandinskyError(f"{folder} has no {sub}/ folder; a complete kandinsky-community/kandinsky-3 checkout has one.")
    return read_unet_config(folder)


def load_kandinsky3(folder, *, dtype=None, device="cpu", operations=nn, text_encoder=True):
    """Everything the Kandinsky 3 pipelines need, from a kandinsky-3 folder.

    One compute dtype for all parts: `dtype`, or else the UNet file's (fp16 for the published folder, whose text
    encoder mixes fp16 and fp32 tensors; its `wo` layers stay fp32 in fp16, as published). `text_encoder=False`
    skips the 8.7 B-parameter T5 and the tokenizer (for callers that bring their own conditioning).
    """
    _check_configs(folder, text_encoder)
    scheduler = L.load_scheduler(folder)
    tokenizer = load_tokenizer(os.path.join(folder, "tokenizer")) if text_encoder else None
    dtype = dtype or stored_dtype(_unet_path(folder))
    parts = {"dtype": dtype, "device": device, "operations": operations}
    unet, movq = load_unet(folder, **parts), load_movq(folder, **parts)
    t5 = load_t5(os.path.join(folder, "text_encoder"), **parts) if text_encoder else None
    return Kandinsky3Models(unet, movq, scheduler, t5, tokenizer)


def _check_configs(folder, text_encoder):
    """Every component's config, checked before any weights are read (the T5 alone is 8.7 B parameters)."""
    unet = check_family(folder)
    L.read_config(L.component_path(folder, "movq"), "movq")
    if text_encoder:
        width, reads = read_t5_config(os.path.join(folder, "text_encoder")).d_model, unet.encoder_hid_dim
        if width != reads:
            raise KandinskyError(f"{folder}: the text encoder is {width} wide but the UNet reads {reads}-wide text states; "
                                 "the folder mixes parts of different models.")
