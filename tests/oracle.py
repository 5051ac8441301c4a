"""Tiny diffusers components (the oracle) and our models loaded with the very same weights."""
import random
from dataclasses import asdict

import numpy as np
import PIL.Image
import torch
from transformers import (CLIPImageProcessorPil, CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionConfig,
                          CLIPVisionModelWithProjection, XLMRobertaTokenizerFast)

import diffusers
from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP as TheirMCLIP
from kandinsky_core import schedulers
from kandinsky_core.kandinsky2 import unet as U
from kandinsky_core.config import to_dict
from kandinsky_core.images import KANDINSKY_CLIP_PREPROCESSOR
from kandinsky_core.kandinsky2.decoder_pipeline import DecoderModels
from kandinsky_core.movq import MOVQ_TINY, MoVQ
from kandinsky_core.kandinsky2.prior import PRIOR_TINY, PriorTransformer
from kandinsky_core.kandinsky2.prior_pipeline import PriorModels
from kandinsky_core.kandinsky2.text_encoder import MultilingualCLIP
from kandinsky_core.kandinsky2.tiny_tokenizers import (tiny_clip_text_config, tiny_clip_vision_config, tiny_mclip_config,
                                            write_clip_tokenizer, write_xlmr_tokenizer)


def floats(shape, seed):
    """diffusers' `floats_tensor` with `random.Random(seed)`: uniform [0, 1)."""
    rng = random.Random(seed)
    return torch.tensor([rng.random() for _ in range(int(np.prod(shape)))], dtype=torch.float32).view(shape)


def random_image(size=64, seed=0):
    """A random RGB PIL image (diffusers' own test image is all black, which would hide orientation bugs)."""
    g = np.random.default_rng(seed)
    return PIL.Image.fromarray(g.integers(0, 256, (size, size, 3), dtype=np.uint8))


def their_scheduler(config):
    d = {k: v for k, v in config.items() if k != "_class_name"}
    return getattr(diffusers, config["_class_name"]).from_config(d)


def copy_of(ours, theirs):
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours.eval()


def decoder_pair(unet_config, scheduler_config, tmp_path, movq_config=MOVQ_TINY):
    """(diffusers pipeline components dict, our DecoderModels) sharing weights."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**asdict(unet_config), class_embed_type=None).eval()
    torch.manual_seed(0)
    movq_dict = {k: v for k, v in to_dict(movq_config, "VQModel").items() if k != "_class_name"}
    movq = diffusers.VQModel(**movq_dict).eval()
    theirs = {"unet": unet, "movq": movq, "scheduler": their_scheduler(scheduler_config)}
    ours = DecoderModels(copy_of(U.UNet(unet_config), unet), copy_of(MoVQ(movq_config), movq),
                         schedulers.scheduler_from_config(scheduler_config))
    if unet_config.addition_embed_type == "text_image":
        torch.manual_seed(0)
        cfg = tiny_mclip_config()
        mclip = TheirMCLIP(MCLIPConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})).eval()
        mclip.transformer.set_attn_implementation("sdpa")  # diffusers' wrapper defaults to eager: same math, other rounding
        folder = write_xlmr_tokenizer(str(tmp_path / "xlmr"))
        theirs["text_encoder"] = mclip
        theirs["tokenizer"] = XLMRobertaTokenizerFast.from_pretrained(folder)
        ours.text_encoder = copy_of(MultilingualCLIP(cfg), mclip)
        ours.tokenizer = theirs["tokenizer"]
    return theirs, ours


def prior_pair(tmp_path):
    """(diffusers prior components dict, our PriorModels) sharing weights and the CLIP towers."""
    torch.manual_seed(0)
    prior = diffusers.PriorTransformer(**{k: v for k, v in to_dict(PRIOR_TINY, "").items()
                                          if k in ("num_attention_heads", "attention_head_dim", "embedding_dim", "num_layers")})
    g = torch.Generator().manual_seed(1)
    prior.clip_mean = torch.nn.Parameter(0.1 * torch.randn(prior.clip_mean.shape, generator=g))
    prior.clip_std = torch.nn.Parameter(1 + 0.1 * torch.rand(prior.clip_std.shape, generator=g))
    torch.manual_seed(0)
    text = CLIPTextModelWithProjection(CLIPTextConfig(**tiny_clip_text_config())).eval()
    torch.manual_seed(0)
    image = CLIPVisionModelWithProjection(CLIPVisionConfig(**tiny_clip_vision_config())).eval()
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(str(tmp_path / "clip")))
    theirs = {"prior": prior.eval(), "text_encoder": text, "image_encoder": image, "tokenizer": tokenizer,
              "image_processor": CLIPImageProcessorPil(**KANDINSKY_CLIP_PREPROCESSOR), "scheduler": their_scheduler(schedulers.KANDINSKY_PRIOR_UNCLIP)}
    ours = PriorModels(copy_of(PriorTransformer(PRIOR_TINY), prior), text, tokenizer, image, KANDINSKY_CLIP_PREPROCESSOR,
                       schedulers.scheduler_from_config(schedulers.KANDINSKY_PRIOR_UNCLIP))
    return theirs, ours
