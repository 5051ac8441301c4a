"""Tiny random-weight checkpoints in exactly the published kandinsky-community folder layout.

Tests, the ComfyUI suite and `python -m kandinsky_core --tiny` use them to run the real loading code end to end on
a machine with no weights and no network. The MoVQ here halves three times, like the real one, so latents are 1/8 of
the image size as in the published models.
"""
import json
import os
from dataclasses import replace

import torch
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    DPTConfig,
    DPTForDepthEstimation,
)

from .. import schedulers as S
from ..config import to_dict
from ..images import KANDINSKY_CLIP_PREPROCESSOR
from ..movq import MOVQ_TINY8, MoVQ
from . import unet as U
from .prior import PRIOR_TINY, PriorTransformer
from .text_encoder import MultilingualCLIP
from .tiny_tokenizers import (
    tiny_clip_text_config,
    tiny_clip_vision_config,
    tiny_mclip_config,
    write_clip_tokenizer,
    write_xlmr_tokenizer,
)

# The tiny 2.2 parts use 48-dim embeddings (2.1: 32), so mixing versions fails as it does with the real 768/1280.
TINY_DIMS = {"2.1": 32, "2.2": 48}
_22 = {"encoder_hid_dim": TINY_DIMS["2.2"]}
DECODERS = {  # repo folder name -> (UNet config, pipeline class)
    "kandinsky-2-1": (U.UNET_21_TINY, "KandinskyPipeline"),
    "kandinsky-2-1-inpaint": (U.UNET_21_INPAINT_TINY, "KandinskyInpaintPipeline"),
    "kandinsky-2-2-decoder": (replace(U.UNET_22_TINY, **_22), "KandinskyV22Pipeline"),
    "kandinsky-2-2-decoder-inpaint": (replace(U.UNET_22_INPAINT_TINY, **_22), "KandinskyV22InpaintPipeline"),
    "kandinsky-2-2-controlnet-depth": (replace(U.UNET_22_DEPTH_TINY, **_22), "KandinskyV22ControlnetPipeline"),
}
PRIORS = {"kandinsky-2-1-prior": ("2.1", "KandinskyPriorPipeline"), "kandinsky-2-2-prior": ("2.2", "KandinskyV22PriorPipeline")}


def _json(path, d):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(d, f, indent=2)


def save_component(model, config_dict, folder, weights="diffusion_pytorch_model.safetensors"):
    """Write `config.json` and a safetensors weights file, diffusers style."""
    _json(os.path.join(folder, "config.json"), config_dict)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(folder, weights), metadata={"format": "pt"})


def save_single_file(model, config_dict, path):
    """One safetensors file holding the weights, with the config in its metadata."""
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, path, metadata={"format": "pt", "config": json.dumps(config_dict)})


def _randomize_prior_parameters(prior, generator):
    """Raw parameters are left uninitialised by the model (loading fills them); give them values."""
    with torch.no_grad():
        prior.positional_embedding.copy_(0.02 * torch.randn(prior.positional_embedding.shape, generator=generator))
        prior.prd_embedding.copy_(0.02 * torch.randn(prior.prd_embedding.shape, generator=generator))
        prior.clip_mean.copy_(0.1 * torch.randn(prior.clip_mean.shape, generator=generator))
        prior.clip_std.copy_(1 + 0.1 * torch.rand(prior.clip_std.shape, generator=generator))


def write_prior(folder, seed=0, version="2.2"):
    """A tiny prior repo: prior/, text_encoder/, tokenizer/, image_encoder/, image_processor/, scheduler/.

    As in the published priors, 2.1's CLIP towers use quick_gelu (OpenAI ViT-L/14) and 2.2's gelu (LAION ViT-bigG/14).
    """
    dim, act = TINY_DIMS[version], "quick_gelu" if version == "2.1" else "gelu"
    config = replace(PRIOR_TINY, embedding_dim=dim)
    torch.manual_seed(seed)
    prior = PriorTransformer(config)
    _randomize_prior_parameters(prior, torch.Generator().manual_seed(seed))
    save_component(prior, to_dict(config, "PriorTransformer"), os.path.join(folder, "prior"))
    # The prior reads the text tower's hidden states too, so that tower is as wide as the embedding (as published).
    towers = ((CLIPTextModelWithProjection, CLIPTextConfig, {**tiny_clip_text_config(), "hidden_size": dim}, "text_encoder"),
              (CLIPVisionModelWithProjection, CLIPVisionConfig, tiny_clip_vision_config(), "image_encoder"))
    for model_cls, config_cls, kwargs, sub in towers:
        model_cls(config_cls(**{**kwargs, "projection_dim": dim, "hidden_act": act})).save_pretrained(os.path.join(folder, sub))
    write_clip_tokenizer(os.path.join(folder, "tokenizer"))
    _json(os.path.join(folder, "image_processor", "preprocessor_config.json"), KANDINSKY_CLIP_PREPROCESSOR)
    _json(os.path.join(folder, "scheduler", "scheduler_config.json"), S.KANDINSKY_PRIOR_UNCLIP)
    pipeline = "KandinskyPriorPipeline" if version == "2.1" else "KandinskyV22PriorPipeline"
    _json(os.path.join(folder, "model_index.json"), {"_class_name": pipeline})
    return folder


def write_decoder(folder, unet_config, seed=0, pipeline_class="KandinskyV22Pipeline"):
    """A tiny decoder repo: unet/, movq/, scheduler/ (2.1 also text_encoder/, tokenizer/, ddpm_scheduler/)."""
    torch.manual_seed(seed)
    save_component(U.UNet(unet_config), to_dict(unet_config, "UNet2DConditionModel"), os.path.join(folder, "unet"))
    save_component(MoVQ(MOVQ_TINY8), to_dict(MOVQ_TINY8, "VQModel"), os.path.join(folder, "movq"))
    if unet_config.addition_embed_type == "text_image":
        mclip = tiny_mclip_config()
        save_component(MultilingualCLIP(mclip).eval(), mclip, os.path.join(folder, "text_encoder"), "model.safetensors")
        write_xlmr_tokenizer(os.path.join(folder, "tokenizer"))
        _json(os.path.join(folder, "scheduler", "scheduler_config.json"), S.KANDINSKY_2_1_DDIM)
        _json(os.path.join(folder, "ddpm_scheduler", "scheduler_config.json"), S.KANDINSKY_2_1_DDPM)
    else:
        _json(os.path.join(folder, "scheduler", "scheduler_config.json"), S.KANDINSKY_2_2_DDPM)
    _json(os.path.join(folder, "model_index.json"), {"_class_name": pipeline_class})
    return folder


def write_all(root, seed=0):
    """Every published repo, tiny, under `root` (folder names as on the hub); returns {name: path}."""
    paths = {name: write_prior(os.path.join(root, name), seed, version) for name, (version, _) in PRIORS.items()}
    for name, (config, pipeline_class) in DECODERS.items():
        paths[name] = write_decoder(os.path.join(root, name), config, seed, pipeline_class)
    return paths


# A DPT (the Intel/dpt-large architecture) shrunk to 115k parameters; initializer_range is raised from 0.02 so the
# random depth head does not output (almost) zero everywhere.
DPT_TINY = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 37,
            "image_size": 32, "patch_size": 8, "backbone_out_indices": [0, 1, 2, 3], "neck_hidden_sizes": [16, 16, 32, 32],
            "fusion_hidden_size": 16, "head_hidden_size": 16, "initializer_range": 0.2}
# Intel/dpt-large's preprocessing (bicubic resize to a fixed square, mean/std 0.5) at the tiny model's 32 pixels.
DPT_TINY_PREPROCESSOR = {
    "image_processor_type": "DPTImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
    "keep_aspect_ratio": False, "ensure_multiple_of": 1, "resample": 3, "do_rescale": True,
    "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "do_pad": False,
}


def write_depth_model(folder, seed=0):
    """A tiny random DPT depth-estimation model and its image processor config, as `save_pretrained` lays them out."""
    torch.manual_seed(seed)
    DPTForDepthEstimation(DPTConfig(**DPT_TINY)).save_pretrained(folder)
    _json(os.path.join(folder, "preprocessor_config.json"), DPT_TINY_PREPROCESSOR)
    return folder
