"""Kandinsky Save Model: a loaded UNet, T5 or MoVQ as one safetensors file in the dtype it is stored in (fp8 included),
so that a converting load (fp16 shards as fp8, an original fp32 .pt) is paid once and every later load maps the file.

Core Save Model and CLIP Save cannot serve: they write ComfyUI checkpoint layouts that know nothing of a Kandinsky
config, the original files' null_embedding, the T5's tokenizer or the MoVQ. The files go straight into the model
folder their loader lists (diffusion_models, text_encoders, vae), named as core's save nodes name theirs
(prefix_00001_.safetensors), and are never overwritten. The node sits with the Kandinsky 3 loaders, whose loads it
speeds up.
"""
import os

import comfy.model_management as mm
import folder_paths
from comfy_api.latest import io

from ..kandinsky_core.errors import KandinskyError
from ..kandinsky_core.kandinsky2 import loading as L2
from ..kandinsky_core.kandinsky3 import loading as L3
from ..kandinsky_core.kandinsky3 import t5 as T5
from ..kandinsky_core.movq import save_movq
from .common import paths, types
from .kandinsky2.decoder_model import KandinskyDecoder
from .kandinsky3.model import Kandinsky3
from .kandinsky3.text import Kandinsky3TextModel

NODE = "Kandinsky Save Model"


def target(kind, prefix):
    """A new file for `prefix` in ComfyUI's first model folder for loader `kind` (the prefix may name subfolders)."""
    key = paths.SAVED[kind][0]
    roots = folder_paths.get_folder_paths(key)  # models/unet comes first for old setups; the current name is wanted
    root = next((r for r in roots if os.path.basename(os.path.normpath(r)) == key), roots[0])
    try:
        folder, name, counter, _, _ = folder_paths.get_save_image_path(prefix, root)
    except Exception as err:  # ComfyUI raises a bare Exception for a prefix that leaves the folder
        raise KandinskyError(f"{NODE}: filename_prefix {prefix!r} cannot be used ({err}); give a name inside the model "
                             "folder, e.g. kandinsky3_unet_fp8.") from None
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{name}_{counter:05}_.safetensors")


def save_unet(model, prefix):
    """Save a Kandinsky MODEL's UNet with its LoRAs baked in (as core's Save Model does); returns the path."""
    inner = getattr(model, "model", None)
    if not isinstance(inner, (Kandinsky3, KandinskyDecoder)):
        raise KandinskyError(f"{NODE}: model is not a Kandinsky UNet (it is {type(inner).__name__}); save other models "
                             "with core Save Model.")
    if isinstance(inner, KandinskyDecoder) and inner.diffusion_model.text_encoder is not None:
        raise KandinskyError(f"{NODE}: a Kandinsky 2.1 decoder needs its text encoder, which one file does not hold; "
                             "keep loading the kandinsky-2-1 folder.")
    mm.load_models_gpu([model], force_patch_weights=True)
    net = inner.diffusion_model
    if isinstance(inner, Kandinsky3):
        return L3.save_unet(target("kandinsky3", prefix), net.unet, net.null_embedding, inner.scheduler_config)
    return L2.save_unet(target("decoder", prefix), net.unet, inner.scheduler_config)


def save_clip(clip, prefix):
    """Save the Kandinsky 3 T5 of a CLIP with its tokenizer; returns the path."""
    text = getattr(clip, "cond_stage_model", None)
    if not isinstance(text, Kandinsky3TextModel):
        raise KandinskyError(f"{NODE}: clip is not the Kandinsky 3 T5 (it is {type(text).__name__}); save other text "
                             "encoders with core CLIP Save.")
    return T5.save_t5(target("t5", prefix), text.t5(), clip.tokenizer.tokenizer)


class SaveModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky3SaveModel", display_name=NODE, category="Kandinsky 3/loaders", is_output_node=True,
            description="Saves a loaded Kandinsky UNet, T5 or MoVQ as one .safetensors file in the dtype it is stored in "
                        "(fp8 included), into models/diffusion_models, text_encoders or vae, where the Kandinsky "
                        "loaders list it: a later load in that dtype maps the file instead of converting it.",
            inputs=[io.String.Input("filename_prefix", default="kandinsky",
                                    tooltip="File name start; _00001_.safetensors is added, and nothing is overwritten."),
                    io.Model.Input("model", optional=True, tooltip="A Kandinsky 3 or 2.2 UNet (LoRAs are baked in)."),
                    io.Clip.Input("clip", optional=True, tooltip="The Kandinsky 3 T5, saved with its tokenizer."),
                    types.MoVQ.Input("movq", optional=True, tooltip="A MoVQ.")])

    @classmethod
    def execute(cls, filename_prefix, model=None, clip=None, movq=None):
        if model is None and clip is None and movq is None:
            raise KandinskyError(f"{NODE}: nothing to save; connect a model, a clip or a movq.")
        saved = [save_unet(model, f"{filename_prefix}_unet")] if model is not None else []
        saved += [save_clip(clip, f"{filename_prefix}_t5")] if clip is not None else []
        saved += [save_movq(target("movq", f"{filename_prefix}_movq"), movq.model)] if movq is not None else []
        return io.NodeOutput(ui={"text": [os.path.basename(p) for p in saved]})


NODES = [SaveModel]
