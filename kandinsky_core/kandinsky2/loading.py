"""Load the published kandinsky-community Kandinsky 2.1 / 2.2 checkpoints as they are: diffusers folders or one
safetensors file per component.

The component and its variant come from `config.json` or, for a lone file, from tensor names and shapes; file names are
never consulted. File reading and strict filling of a meta-built model are the shared `kandinsky_core.weights`.
"""
import json
import os

import torch
from torch import nn
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection, XLMRobertaTokenizerFast

from .. import weights
from ..config import to_dict
from ..errors import KandinskyError
from ..images import KANDINSKY_CLIP_PREPROCESSOR
from ..movq import MoVQ, MoVQConfig, is_movq, movq_config_from_shapes
from ..weights import KANDINSKY3_HINT, component_path, count_indices, describe, load_model, load_scheduler
from .decoder_pipeline import DecoderModels
from .prior import PriorConfig, PriorTransformer
from .prior_pipeline import PriorModels
from .text_encoder import MultilingualCLIP
from .unet import UNet, UNetConfig

COMPONENT_CLASSES = {"unet": "UNet2DConditionModel", "movq": "VQModel", "prior": "PriorTransformer"}


def identify(shapes):
    """'unet', 'movq' or 'prior' from tensor names, or a KandinskyError saying what the file is instead."""
    if "conv_in.weight" in shapes and "time_embedding.linear_1.weight" in shapes and any(k.startswith("add_embedding.") for k in shapes):
        return "unet"
    if is_movq(shapes):
        return "movq"
    if "prd_embedding" in shapes and "positional_embedding" in shapes:
        return "prior"
    raise KandinskyError(f"This is not a Kandinsky UNet, MoVQ or prior: it looks like {describe(shapes)}.")


def unet_config_from_shapes(shapes):
    """Rebuild a UNet config from tensor shapes (attention head width 64, as in every published decoder)."""
    n = count_indices(shapes, r"down_blocks\.(\d+)\.")
    ch = tuple(shapes[f"down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(n))
    addition = ("image_hint" if "add_embedding.input_hint_block.0.weight" in shapes else
                "text_image" if "add_embedding.text_proj.weight" in shapes else "image")
    down = tuple("SimpleCrossAttnDownBlock2D" if f"down_blocks.{i}.attentions.0.to_q.weight" in shapes else "ResnetDownsampleBlock2D" for i in range(n))
    up = tuple("SimpleCrossAttnUpBlock2D" if f"up_blocks.{i}.attentions.0.to_q.weight" in shapes else "ResnetUpsampleBlock2D" for i in range(n))
    context = shapes["mid_block.attentions.0.add_k_proj.weight"][1]
    if addition == "text_image":
        hid = shapes["encoder_hid_proj.text_proj.weight"][1]
    else:
        hid = shapes["encoder_hid_proj.image_embeds.weight"][1]
    return UNetConfig(
        in_channels=shapes["conv_in.weight"][1], out_channels=shapes["conv_out.weight"][0], addition_embed_type=addition,
        encoder_hid_dim_type="text_image_proj" if addition == "text_image" else "image_proj", encoder_hid_dim=hid,
        cross_attention_dim=context, block_out_channels=ch, down_block_types=down, up_block_types=up,
        layers_per_block=count_indices(shapes, r"down_blocks\.0\.resnets\.(\d+)\."))


def prior_config_from_shapes(shapes):
    """Rebuild a prior config from tensor shapes (attention head width 64, as published)."""
    inner = shapes["prd_embedding"][-1]
    layers = count_indices(shapes, r"transformer_blocks\.(\d+)\.")
    return PriorConfig(embedding_dim=shapes["clip_mean"][-1], num_layers=layers,
                       num_attention_heads=inner // 64, attention_head_dim=64,
                       num_embeddings=shapes["positional_embedding"][1] - 4, additional_embeddings=4)


CONFIG_TYPES = {"unet": (UNetConfig, unet_config_from_shapes, UNet), "movq": (MoVQConfig, movq_config_from_shapes, MoVQ),
                "prior": (PriorConfig, prior_config_from_shapes, PriorTransformer)}


def read_config(path, kind):
    """The config of a `kind` component at `path` (folder or file): config.json, file metadata, or tensor shapes."""
    config_cls, from_shapes, _ = CONFIG_TYPES[kind]

    def check(shapes):
        found = identify(shapes)
        if found != kind:
            raise KandinskyError(f"{path} is a Kandinsky {found}, not a {kind}; load it with the {found} loader.")

    def hint(name):
        return f"; {KANDINSKY3_HINT}" if name.startswith("Kandinsky3") else ""

    return weights.read_config(path, config_cls, COMPONENT_CLASSES[kind], from_shapes, check,
                               what=f"a Kandinsky {kind}", hint=hint)


def build(kind, config, *, operations=nn, dtype=None):
    """A `kind` model for `config` on the meta device; a config no such model can have raises KandinskyError."""
    return weights.build(CONFIG_TYPES[kind][2], config, kind, operations=operations, dtype=dtype)


def load_component(path, kind, *, dtype=None, device="cpu", operations=nn):
    """Build a `kind` model ('unet', 'movq' or 'prior') on meta and fill it from the checkpoint at `path`."""
    path = component_path(path, kind)
    model_cls = CONFIG_TYPES[kind][2]
    return load_model(model_cls, read_config(path, kind), path, kind, dtype=dtype, device=device, operations=operations)


UNET_KIND = "kandinsky2_unet"  # save_unet's marker: the loaders list such files


def save_unet(path, unet, scheduler=None):
    """Save a loaded decoder UNet as one safetensors file in its stored dtypes, with its config and the `scheduler`
    config dict in the metadata (load_component and weights.read_metadata_config read them)."""
    extra = {} if scheduler is None else {"scheduler": json.dumps(scheduler)}
    return weights.save_model(path, unet.state_dict(), UNET_KIND, to_dict(unet.config, COMPONENT_CLASSES["unet"]), **extra)


def _require(folder, sub, repo_hint):
    path = os.path.join(folder, sub)
    if not os.path.isdir(path):
        raise KandinskyError(f"{folder} has no {sub}/ folder; a complete {repo_hint} checkout has one.")
    return path


def load_tokenizer(folder, kind):
    """The tokenizer in `folder` ('clip' or 'xlmr'), offline only."""
    cls = CLIPTokenizer if kind == "clip" else XLMRobertaTokenizerFast
    try:
        return cls.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise KandinskyError(f"{folder} is not a usable {cls.__name__} folder ({err}); copy tokenizer/ from the "
                             "kandinsky-community repo.") from None


def _load_transformers(cls, folder, dtype, device):
    try:
        return cls.from_pretrained(folder, dtype=dtype, local_files_only=True).to(device).eval().requires_grad_(False)
    except (OSError, ValueError, KeyError) as err:
        raise KandinskyError(f"{folder} is not a loadable {cls.__name__} ({err}).") from None


def load_mclip(folder, *, dtype=None, device="cpu", operations=nn):
    """Kandinsky 2.1's MultilingualCLIP text encoder from its folder."""
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    model = load_model(MultilingualCLIP, config, folder, "MultilingualCLIP text encoder", dtype=dtype, device=device,
                       operations=operations)
    embeddings = model.transformer.embeddings  # index buffers are not saved in checkpoints: rebuild them
    positions = torch.arange(embeddings.position_ids.shape[-1], device=device).unsqueeze(0)
    embeddings.register_buffer("position_ids", positions, persistent=False)
    embeddings.register_buffer("token_type_ids", torch.zeros_like(positions), persistent=False)
    return model.eval()


def load_prior_models(folder, *, dtype=None, device="cpu", operations=nn):
    """Everything `prior_pipeline` needs, from a kandinsky-2-x-prior folder."""
    hint = "kandinsky-community/kandinsky-2-x-prior"
    prior = load_component(_require(folder, "prior", hint), "prior", dtype=dtype, device=device, operations=operations)
    text = _load_transformers(CLIPTextModelWithProjection, _require(folder, "text_encoder", hint), dtype, device)
    image = _load_transformers(CLIPVisionModelWithProjection, _require(folder, "image_encoder", hint), dtype, device)
    for name, tower in (("text_encoder", text), ("image_encoder", image)):
        if tower.config.projection_dim != prior.config.embedding_dim:
            raise KandinskyError(f"{folder}: {name} projects to {tower.config.projection_dim} dims but the prior works with "
                                 f"{prior.config.embedding_dim}; the folder mixes Kandinsky 2.1 and 2.2 parts.")
    processor_file = os.path.join(folder, "image_processor", "preprocessor_config.json")
    processor = KANDINSKY_CLIP_PREPROCESSOR  # older prior repos lack image_processor/; this is its published content
    if os.path.isfile(processor_file):
        with open(processor_file) as f:
            processor = json.load(f)
    return PriorModels(prior, text, load_tokenizer(_require(folder, "tokenizer", hint), "clip"), image, processor,
                       load_scheduler(folder))


def load_decoder_models(folder, *, dtype=None, device="cpu", operations=nn, movq=None):
    """Everything `decoder_pipeline` needs, from a kandinsky-2-x decoder folder (2.1 with its text encoder)."""
    hint = "kandinsky-community decoder"
    unet = load_component(_require(folder, "unet", hint), "unet", dtype=dtype, device=device, operations=operations)
    movq = movq or load_component(_require(folder, "movq", hint), "movq", dtype=dtype, device=device, operations=operations)
    models = DecoderModels(unet, movq, load_scheduler(folder))
    if unet.config.addition_embed_type == "text_image":
        models.text_encoder = load_mclip(_require(folder, "text_encoder", "kandinsky-2-1"), dtype=dtype, device=device, operations=operations)
        models.tokenizer = load_tokenizer(_require(folder, "tokenizer", "kandinsky-2-1"), "xlmr")
    return models
