"""Tiny Kandinsky 3 components for diffusers (the oracle) and for kandinsky_core, sharing the very same weights."""
import torch
from transformers import T5Config as HFT5Config, T5EncoderModel, T5Tokenizer as HFT5Tokenizer

import diffusers
from kandinsky_core import schedulers
from kandinsky_core.config import diffusers_fields, to_dict
from kandinsky_core.kandinsky3.pipeline import Kandinsky3Models
from kandinsky_core.kandinsky3.unet import UNET3_TINY, UNet
from kandinsky_core.movq import MOVQ_TINY, MoVQ

# diffusers' fast-test text encoder (hf-internal-testing/tiny-random-t5) with Flan-UL2's gated-SiLU feed-forward.
T5_TINY = {"vocab_size": 1103, "d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 5, "num_heads": 4,
           "relative_attention_num_buckets": 8, "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6,
           "feed_forward_proj": "gated-silu"}


def randomize(module, seed, scale=0.3):
    """Overwrite every parameter with seeded noise: diffusers zero-initialises the time-conditioned norms
    (diffusers/models/unets/unet_kandinsky3.py), which would make a tiny UNet ignore the timestep and hide a wrong
    time embedding."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return module.eval()


def their_unet(config=UNET3_TINY, seed=0):
    """diffusers' Kandinsky3UNet of `config`, every weight random."""
    return randomize(diffusers.Kandinsky3UNet(**diffusers_fields(config)), seed)


def their_movq(seed=0):
    """diffusers' VQModel with the fast tests' MoVQ config, every weight random."""
    kwargs = {k: v for k, v in to_dict(MOVQ_TINY, "VQModel").items() if k != "_class_name"}
    return randomize(diffusers.VQModel(**kwargs), seed, scale=0.1)


def their_t5(seed=0):
    """transformers' T5EncoderModel (the oracle) at the tiny size, every weight random."""
    return randomize(T5EncoderModel(HFT5Config(**T5_TINY)), seed, scale=0.5)


def copy_of(ours, theirs):
    """`ours` holding `theirs`'s weights (transformers' T5 also lists its tied embedding as encoder.embed_tokens)."""
    sd = {k: v for k, v in theirs.state_dict().items() if k != "encoder.embed_tokens.weight"}
    ours.load_state_dict(sd, strict=True)
    return ours.eval()


def pipeline_pair(tmp_path):
    """(diffusers Kandinsky3Pipeline, Kandinsky3Img2ImgPipeline, our Kandinsky3Models) with shared weights."""
    from kandinsky_core.kandinsky3.t5 import T5Config, T5Encoder
    from kandinsky_core.kandinsky3.tiny_text import write_tokenizer
    from kandinsky_core.kandinsky3.tokenizer import load_tokenizer

    unet, movq, t5 = their_unet(), their_movq(), their_t5()
    folder = write_tokenizer(str(tmp_path / "tokenizer"))
    config = {k: v for k, v in schedulers.KANDINSKY_3_DDPM.items() if k != "_class_name"}
    parts = dict(tokenizer=HFT5Tokenizer.from_pretrained(folder), text_encoder=t5, unet=unet, movq=movq)
    t2i = diffusers.Kandinsky3Pipeline(**parts, scheduler=diffusers.DDPMScheduler.from_config(config))
    i2i = diffusers.Kandinsky3Img2ImgPipeline(**parts, scheduler=diffusers.DDPMScheduler.from_config(config))
    for pipe in (t2i, i2i):
        pipe.set_progress_bar_config(disable=True)
    ours = Kandinsky3Models(copy_of(UNet(UNET3_TINY), unet), copy_of(MoVQ(MOVQ_TINY), movq),
                            schedulers.scheduler_from_config(schedulers.KANDINSKY_3_DDPM),
                            copy_of(T5Encoder(T5Config(**T5_TINY)), t5), load_tokenizer(folder))
    return t2i, i2i, ours
