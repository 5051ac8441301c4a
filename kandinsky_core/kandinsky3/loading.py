"""Load kandinsky-community/kandinsky-3 as published: the diffusers folder (fp16-variant files, sharded T5) or one
safetensors file per component.

The family and the component come from `config.json`, our file metadata or tensor names and shapes, never from file
names. A Kandinsky 2.x folder or file given here is refused with a pointer to the 2.x loaders (and they refuse ours).
File reading and strict filling of a meta-built model are the shared `kandinsky_core.weights`; the MoVQ loader is the
shared one of `kandinsky_core.movq` (Kandinsky 3's MoVQ is the 2.x architecture at twice the width).
"""
import json
import os

import torch
from torch import nn

from .. import weights as W
from ..config import to_dict
from ..errors import KandinskyError
from ..movq import load_movq, read_movq_config
from .pipeline import Kandinsky3Models
from .t5 import load_t5, read_t5_config
from .tokenizer import load_tokenizer
from .unet import PUBLISHED_GROUPS, PUBLISHED_HEAD_DIM, UNet, UNetConfig

UNET_CLASS = "Kandinsky3UNet"
UNET_KIND = "kandinsky3_unet"  # save_unet's marker: the loaders list such files
NULL_KEY = "null_embedding"  # an original UNet's unconditional context, kept beside its weights in a saved file
PIPELINE_CLASSES = ("Kandinsky3Pipeline", "Kandinsky3Img2ImgPipeline")
TWO_X_HINT = ("a Kandinsky 2.x decoder UNet; load its folder with the Kandinsky 2 loader "
              "(kandinsky_core.kandinsky2.loading.load_decoder_models)")


def is_kandinsky3_unet(shapes):
    """True if tensor names are those of a Kandinsky 3 UNet (attention pooling into the time embedding)."""
    return "add_time_condition.attention.to_q.weight" in shapes and "encoder_hid_proj.projection_linear.weight" in shapes


def unet_config_from_shapes(shapes):
    """Rebuild a UNet config from tensor shapes; norm groups and head width are the published 32 and 64."""
    levels = W.count_indices(shapes, r"down_blocks\.(\d+)\.")
    widths = tuple(shapes[f"down_blocks.{i}.resnets_in.0.resnet_blocks.3.projection.weight"][0] for i in range(levels))
    text_width, context = shapes["encoder_hid_proj.projection_linear.weight"][::-1]
    return UNetConfig(in_channels=shapes["conv_in.weight"][1], block_out_channels=widths,
                      time_embedding_dim=shapes["time_embedding.linear_1.weight"][0], cross_attention_dim=context,
                      encoder_hid_dim=text_width, attention_head_dim=PUBLISHED_HEAD_DIM, groups=PUBLISHED_GROUPS,
                      layers_per_block=W.count_indices(shapes, r"down_blocks\.0\.resnets_in\.(\d+)\."))


def _unet_path(path):
    return os.path.join(path, "unet") if os.path.isdir(os.path.join(path, "unet")) else path


def read_unet_config(path):
    """The Kandinsky 3 UNet config at `path` (repo folder, unet/ folder or one file)."""
    path = _unet_path(path)

    def check(shapes):
        if not is_kandinsky3_unet(shapes):
            raise KandinskyError(f"{path} is not a Kandinsky 3 UNet: it looks like {W.describe(shapes)}.")

    def hint(name):
        return f"; that is {TWO_X_HINT}" if name == "UNet2DConditionModel" else ""

    return W.read_config(path, UNetConfig, UNET_CLASS, unet_config_from_shapes, check, what="a Kandinsky 3 UNet",
                         hint=hint)


def stored_dtype(path):
    """The floating dtype a weights file stores (its first floating tensor's), e.g. fp16 for the published files."""
    for _, tensor in W.iter_tensors(W.weights_path(path)):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def load_unet(path, *, dtype=None, device="cpu", operations=nn):
    """The Kandinsky 3 UNet from a repo folder, its unet/ folder or one safetensors file; dtype None keeps the file's."""
    path = _unet_path(path)
    return W.load_model(UNet, read_unet_config(path), path, "Kandinsky 3 UNet", dtype=dtype, device=device,
                        operations=operations)


def save_unet(path, unet, null_embedding=None, scheduler=None):
    """Save a loaded UNet as one safetensors file in its stored dtypes, with its config, an original file's
    `null_embedding` and the `scheduler` config dict; load_unet_file reads it back without converting."""
    state = dict(unet.state_dict(), **({} if null_embedding is None else {NULL_KEY: null_embedding}))
    extra = {} if scheduler is None else {"scheduler": json.dumps(scheduler)}
    return W.save_model(path, state, UNET_KIND, to_dict(unet.config, UNET_CLASS), **extra)


def load_unet_file(path, *, dtype=None, device="cpu", operations=nn):
    """(UNet, null_embedding or None, scheduler config dict or None) of a file save_unet wrote; dtype None keeps the
    file's, and a file already in `dtype` is mapped, not copied."""
    config = read_unet_config(path)
    model = W.build(UNet, config, "Kandinsky 3 UNet", operations=operations, dtype=dtype)
    reference = model if operations is nn else W.build(UNet, config, "Kandinsky 3 UNet")
    null = {}

    def unet_tensors():
        for key, t in W.iter_tensors(path, dtype, device, as_stored=(NULL_KEY,)):
            if key == NULL_KEY:
                null[key] = t  # fp32 as saved, whatever the UNet is stored in
            else:
                yield key, t

    model = W.load_weights(model, path, reference=reference, tensors=unet_tensors()).eval()
    return model, null.get(NULL_KEY), W.read_metadata_config(path, "scheduler")


def check_family(folder):
    """The UNet config of a Kandinsky 3 repo folder; KandinskyError if model_index.json or the UNet say otherwise."""
    index = os.path.join(folder, "model_index.json")
    if os.path.isfile(index):
        with open(index) as f:
            name = json.load(f).get("_class_name", "")
        if name.startswith("Kandinsky") and name not in PIPELINE_CLASSES:
            raise KandinskyError(f"{folder} is a {name} checkpoint (Kandinsky 2.x), not Kandinsky 3; load it with the "
                                 "Kandinsky 2 loaders (kandinsky_core.kandinsky2.loading).")
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
    scheduler = W.load_scheduler(folder)
    tokenizer = load_tokenizer(os.path.join(folder, "tokenizer")) if text_encoder else None
    dtype = dtype or stored_dtype(_unet_path(folder))
    parts = {"dtype": dtype, "device": device, "operations": operations}
    unet, movq = load_unet(folder, **parts), load_movq(folder, **parts)
    t5 = load_t5(os.path.join(folder, "text_encoder"), **parts) if text_encoder else None
    return Kandinsky3Models(unet, movq, scheduler, t5, tokenizer)


def _check_configs(folder, text_encoder):
    """Every component's config, checked before any weights are read (the T5 alone is 8.7 B parameters)."""
    unet = check_family(folder)
    read_movq_config(W.component_path(folder, "movq"))
    if text_encoder:
        width, reads = read_t5_config(os.path.join(folder, "text_encoder")).d_model, unet.encoder_hid_dim
        if width != reads:
            raise KandinskyError(f"{folder}: the text encoder is {width} wide but the UNet reads {reads}-wide text states; "
                                 "the folder mixes parts of different models.")
