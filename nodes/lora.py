"""Kandinsky LoRAs the ComfyUI way: 2.2 decoder and Kandinsky 3 UNet LoRAs through ComfyUI's own LoRA loaders, 2.2
prior LoRAs through the Kandinsky Prior LoRA node. All become ModelPatcher weight patches, so ComfyUI's strength,
stacking and unpatching apply and a strength change or a removed LoRA never reloads the base weights.

ComfyUI (0.3.75 to 0.30.0) has no registry for LoRA key names: `comfy.lora.model_lora_keys_unet` knows each core
model by an isinstance branch. `install` wraps it to add our UNets' names (only for our models), which every
LoRA path consults (LoraLoader, LoraLoaderModelOnly, hook LoRAs). ComfyUI merely logs keys it cannot place, so
`install` also wraps `comfy.sd.load_lora_for_models` (and newer versions' bypass variant) to refuse, before anything
is cloned or patched, a file that is not a LoRA fitting this model (and any text-encoder LoRA for the Kandinsky 3 T5,
which takes none): a KandinskyError naming the file and what it is for.
A file that is no LoRA at all (empty, text) fails in ComfyUI's LoraLoader before any of this is called, with
ComfyUI's own error; the Prior LoRA node reads its file itself and names it.
"""
import copy
import functools
import os

import comfy.lora
import comfy.sd
import folder_paths
import torch
from comfy_api.latest import io
from safetensors import safe_open

from ..kandinsky_core import lora as core
from ..kandinsky_core.errors import KandinskyError
from .common import paths, types
from .kandinsky2.decoder_model import KandinskyDecoder
from .kandinsky3.model import Kandinsky3
from .kandinsky3.text import Kandinsky3TextModel

UNET_PREFIX = "diffusion_model.unet."  # where the core UNet sits in the decoder MODEL's state dict
HINTS = {"decoder": "load it with LoraLoaderModelOnly onto the MODEL of Kandinsky Decoder Loader",
         "prior": "load it with Kandinsky Prior LoRA onto the prior",
         "kandinsky3": "load it with LoraLoaderModelOnly onto the MODEL of Kandinsky 3 UNet Loader"}
TORCH_FILES = (".pt", ".pth", ".bin", ".ckpt")


def _shapes(net):
    return {k: v.shape for k, v in net.state_dict().items()}


def _same_bits(a, b):
    """Bit-for-bit equality (NaN included, which torch.equal never finds equal)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8),
                                                                     b.reshape(-1).view(torch.uint8))


def _holds(path, keys, state_dict):
    """Whether the file at `path` holds exactly these tensors under `keys` (sorted)."""
    if path.lower().endswith((".safetensors", ".sft")):
        with safe_open(path, framework="pt") as f:
            return sorted(f.keys()) == keys and all(_same_bits(f.get_tensor(k), state_dict[k]) for k in keys)
    # mmap: tensors are read only as far as they are compared (ComfyUI reads .pt LoRAs as weights_only too)
    sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else {}
    return sorted(sd) == keys and all(_same_bits(sd[k], state_dict[k]) for k in keys)


def _file_name(state_dict):
    """The models/loras file holding this state dict (ComfyUI's loaders hand over tensors, not the file name)."""
    keys = sorted(state_dict)
    for name in folder_paths.get_filename_list("loras") if keys else ():
        path = folder_paths.get_full_path("loras", name)
        if not path or not path.lower().endswith((".safetensors", ".sft") + TORCH_FILES):
            continue
        try:
            if _holds(path, keys, state_dict):
                return name
        except Exception:  # an unreadable neighbour is not this file
            continue
    return "this LoRA"


def checked_lora(state_dict, kind, net, name=None):
    """The parsed LoRA if it is a `kind` LoRA fitting `net`; else a KandinskyError naming the file."""
    try:
        lora = core.parse_lora(state_dict, name or "this LoRA")
        core.check_fits(lora, kind, _shapes(net), HINTS)
        return lora
    except KandinskyError:
        if name is not None:
            raise
    return checked_lora(state_dict, kind, net, _file_name(state_dict))  # raises again, now with the file's name


def _unet_kind(model):
    """'decoder' or 'kandinsky3' for the pack's BaseModels (the kind of LoRA they take), else None."""
    return "decoder" if isinstance(model, KandinskyDecoder) else "kandinsky3" if isinstance(model, Kandinsky3) else None


def _with_decoder_keys(original):
    @functools.wraps(original)
    def model_lora_keys_unet(model, key_map=None):
        key_map = original(model, {} if key_map is None else key_map)
        if _unet_kind(model):
            key_map.update(core.lora_key_map(model.diffusion_model.unet.state_dict(), UNET_PREFIX))
        return key_map
    return model_lora_keys_unet


def check_text_encoder(state_dict, clip):
    """Refuse text-encoder layers meant for the Kandinsky 3 T5 CLIP: ComfyUI would place none of them."""
    if not isinstance(getattr(clip, "cond_stage_model", None), Kandinsky3TextModel):
        return
    text = [k for k in state_dict if core.TEXT_ENCODER.search(k)]
    if text:
        raise KandinskyError(f"{_file_name(state_dict)} holds {len(text)} text-encoder layers (e.g. {text[0]}), but "
                             "the Kandinsky 3 T5 takes no LoRA; use LoraLoaderModelOnly with a LoRA of the Kandinsky 3 "
                             "UNet only.")


def _with_decoder_check(original):
    @functools.wraps(original)
    def load_lora_for_models(model, clip, lora, *args, **kwargs):
        kind = _unet_kind(getattr(model, "model", None))
        if kind:
            checked_lora(lora, kind, model.model.diffusion_model.unet)
        check_text_encoder(lora, clip)
        return original(model, clip, lora, *args, **kwargs)
    return load_lora_for_models


def install():
    """Teach ComfyUI's LoRA loaders the Kandinsky decoder (idempotent: a reloaded pack does not wrap twice)."""
    for module, name, wrap in ((comfy.lora, "model_lora_keys_unet", _with_decoder_keys),
                               (comfy.sd, "load_lora_for_models", _with_decoder_check),
                               (comfy.sd, "load_bypass_lora_for_models", _with_decoder_check)):  # newer ComfyUIs
        current = getattr(module, name, None)
        if current is not None and not getattr(current, "kandinsky_wrapped", False):
            wrapped = wrap(current)
            wrapped.kandinsky_wrapped = True
            setattr(module, name, wrapped)


def prior_with_lora(prior, path, strength):
    """A copy of the Prior whose transformer patcher is a clone carrying the LoRA (the CLIP towers are shared)."""
    state_dict = core.read_state_dict(path)  # not ComfyUI's reader: a file that is no LoRA is refused by name
    net = prior.models.prior
    checked_lora(state_dict, "prior", net, os.path.basename(path))
    patches = comfy.lora.load_lora(state_dict, core.lora_key_map(net.state_dict()), log_missing=False)
    patched = copy.copy(prior)
    patched.patchers = [prior.patchers[0].clone(), *prior.patchers[1:]]
    patched.patchers[0].add_patches(patches, strength)
    return patched


class PriorLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky2PriorLoRA", display_name="Kandinsky Prior LoRA", category=f"{types.CATEGORY}/loaders",
            description="Applies a Kandinsky 2.2 prior LoRA from models/loras to a prior. The weights are patched when "
                        "the prior runs: changing the strength or removing the LoRA never reloads the prior. Decoder "
                        "LoRAs go on the decoder MODEL through ComfyUI's LoraLoaderModelOnly.",
            inputs=[types.Prior.Input("prior", tooltip="A prior from Kandinsky Prior Loader (or another Prior LoRA)."),
                    io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                                   tooltip="A prior LoRA file in models/loras (diffusers' Kandinsky 2.2 prior LoRA "
                                           "trainer output, attn-procs or PEFT naming)."),
                    io.Float.Input("strength", default=1.0, min=-100.0, max=100.0, step=0.01,
                                   tooltip="How much of the LoRA to add; 0 leaves the prior as it is, negative "
                                           "values subtract it.")],
            outputs=[types.Prior.Output(display_name="prior", tooltip="The prior with the LoRA; chain Prior LoRA "
                                                                      "nodes to stack several.")])

    @classmethod
    def execute(cls, prior, lora_name, strength):
        if strength == 0:  # as ComfyUI's own LoRA loaders: nothing to patch
            return io.NodeOutput(prior)
        return io.NodeOutput(prior_with_lora(prior, paths.resolve(lora_name, "loras"), strength))


NODES = [PriorLoRA]
