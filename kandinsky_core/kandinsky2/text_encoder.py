"""Prompt encoders: Kandinsky 2.1's MultilingualCLIP (decoder text encoder) and the priors' CLIP text-encoder call.

`MultilingualCLIP` loads `kandinsky-community/kandinsky-2-1/text_encoder` with `strict=True`: keys `transformer.*`
(a standard `transformers.XLMRobertaModel`, pooler included though unused) and `LinearTransformation.{weight,bias}`.
"""
from contextlib import nullcontext

import torch
from torch import nn
from transformers import XLMRobertaConfig, XLMRobertaModel

from ..errors import KandinskyError
from ..prompts import encodable

MAX_TOKENS = 77  # both Kandinsky tokenizers pad / truncate to 77

# Keys of text_encoder/config.json that are not XLM-RoBERTa settings.
_MCLIP_KEYS = ("numDims", "transformerDimensions", "model_type", "architectures")


def xlmr_config(config_dict):
    """The XLM-RoBERTa part of a MultilingualCLIP `text_encoder/config.json` dict, without dropout (inference only)."""
    missing = [k for k in ("numDims", "transformerDimensions", "hidden_size") if k not in config_dict]
    if missing:
        raise KandinskyError(
            f"Text encoder config lacks {missing}; pass the text_encoder/config.json of kandinsky-community/kandinsky-2-1."
        )
    if config_dict["transformerDimensions"] != config_dict["hidden_size"]:
        raise KandinskyError(
            f"Text encoder config has transformerDimensions={config_dict['transformerDimensions']} but "
            f"hidden_size={config_dict['hidden_size']}; they must be equal, fix text_encoder/config.json."
        )
    kwargs = {k: v for k, v in config_dict.items() if k not in _MCLIP_KEYS}
    return XLMRobertaConfig(**{**kwargs, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})


class MultilingualCLIP(nn.Module):
    """XLM-RoBERTa text tower, masked mean pool, Linear to the CLIP embedding width (M-CLIP, Kandinsky 2.1)."""

    def __init__(self, config_dict, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.config = config_dict
        # transformers initialises weights while building; under the meta device that costs nothing.
        with torch.device(device) if device is not None else nullcontext():
            self.transformer = XLMRobertaModel(xlmr_config(config_dict))
        self.transformer.to(dtype=dtype)
        self.LinearTransformation = operations.Linear(
            config_dict["transformerDimensions"], config_dict["numDims"], dtype=dtype, device=device
        )

    def forward(self, input_ids, attention_mask):
        """(pooled text embedding projected to CLIP width (B, numDims), last hidden states (B, T, hidden))."""
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
        return self.LinearTransformation(pooled), hidden


def tokenize(tokenizer, prompts, **kwargs):
    """Pad or cut prompts to the 77 tokens both Kandinsky 2.x tokenizers use, as PyTorch tensors."""
    prompts = [encodable(p) for p in prompts] if isinstance(prompts, (list, tuple)) else encodable(prompts)
    return tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt",
                     **kwargs)


def encode_text(tokenizer, text_encoder, prompts, device):
    """Kandinsky 2.1 decoder prompt encoding: (text_embeds (B, 768), hidden_states (B, 77, 1024), attention_mask (B, 77))."""
    tokens = tokenize(tokenizer, prompts, return_attention_mask=True, add_special_tokens=True)
    input_ids, attention_mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    text_embeds, hidden_states = text_encoder(input_ids=input_ids, attention_mask=attention_mask)
    return text_embeds, hidden_states, attention_mask


def encode_clip_prompt(tokenizer, clip_text_model, prompts, device):
    """Prior prompt encoding with a `CLIPTextModelWithProjection`: (text_embeds, last_hidden_state, bool mask (B, 77)).

    The text model gets no attention mask, as in the original prior; the mask only reaches the prior transformer.
    """
    tokens = tokenize(tokenizer, prompts)
    out = clip_text_model(tokens.input_ids.to(device))
    return out.text_embeds, out.last_hidden_state, tokens.attention_mask.bool().to(device)
