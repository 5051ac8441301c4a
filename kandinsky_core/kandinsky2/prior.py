"""Kandinsky 2.1/2.2 diffusion prior: a causal transformer that predicts a CLIP image embedding from CLIP text.

State-dict keys match diffusers' `PriorTransformer` (kandinsky-community/kandinsky-2-{1,2}-prior, `prior/`), so its
checkpoints load with `strict=True`. The model is DALL-E 2's prior: 77 text tokens, the pooled text embedding, the
timestep, the noisy image embedding and a learned query ("prd") token form one causal sequence; the query's output is
the predicted clean image embedding (prediction type "sample").
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import attention
from ..config import from_dict
from ..errors import KandinskyError
from ..layers import TimestepEmbedding, timestep_embedding

# Additive mask value of the original prior; finite (not -inf) so padded keys never turn a row into NaN.
MASK_VALUE = -10000.0

# The four tokens after the text: pooled text embedding, timestep, noisy image embedding, prd query.
EXTRA_TOKENS = 4

# diffusers options the Kandinsky priors never set, with the only value this implementation supports.
_FIXED_OPTIONS = {
    "additional_embeddings": EXTRA_TOKENS,
    "time_embed_act_fn": "silu",
    "norm_in_type": None,
    "embedding_proj_norm_type": None,
    "encoder_hid_proj_type": "linear",
    "added_emb_type": "prd",
}


@dataclass
class PriorConfig:
    """`prior/config.json` of a Kandinsky prior; field names are the diffusers keys."""

    num_attention_heads: int = 32
    attention_head_dim: int = 64
    num_layers: int = 20
    embedding_dim: int = 768  # CLIP embedding width: 768 (ViT-L/14, 2.1) or 1280 (ViT-bigG/14, 2.2)
    num_embeddings: int = 77  # text tokens
    additional_embeddings: int = EXTRA_TOKENS
    time_embed_act_fn: str = "silu"
    norm_in_type: str | None = None
    embedding_proj_norm_type: str | None = None
    encoder_hid_proj_type: str | None = "linear"
    added_emb_type: str | None = "prd"
    time_embed_dim: int | None = None  # None = inner_dim
    embedding_proj_dim: int | None = None  # None = embedding_dim
    clip_embed_dim: int | None = None  # None = embedding_dim

    def __post_init__(self):
        for name, expected in _FIXED_OPTIONS.items():
            if getattr(self, name) != expected:
                raise KandinskyError(
                    f"Prior config has {name}={getattr(self, name)!r}, which no Kandinsky prior uses "
                    f"(expected {expected!r}); use the prior/config.json of a Kandinsky 2.1 or 2.2 prior."
                )
        implied = {"time_embed_dim": self.inner_dim, "embedding_proj_dim": self.embedding_dim,
                   "clip_embed_dim": self.embedding_dim}
        for name, value in implied.items():
            if getattr(self, name) not in (None, value):
                raise KandinskyError(
                    f"Prior config has {name}={getattr(self, name)}, but Kandinsky priors use {value} "
                    f"(or null); use the prior/config.json of a Kandinsky 2.1 or 2.2 prior."
                )
        if self.inner_dim % 2:
            raise KandinskyError(
                f"Prior width num_attention_heads * attention_head_dim = {self.inner_dim} must be even "
                "for the sinusoidal timestep embedding; fix the prior config."
            )

    @property
    def inner_dim(self):
        """Transformer width."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def sequence_length(self):
        """Tokens per sample: the text tokens plus the four extra ones."""
        return self.num_embeddings + self.additional_embeddings

    @classmethod
    def from_dict(cls, d):
        """Read a diffusers `prior/config.json` dict."""
        return from_dict(cls, d)


PRIOR_21 = PriorConfig(embedding_dim=768)  # 1,022,030,080 params
PRIOR_22 = PriorConfig(embedding_dim=1280)  # 1,026,225,920 params
PRIOR_TINY = PriorConfig(num_attention_heads=2, attention_head_dim=12, embedding_dim=32, num_layers=1)  # tests


class SelfAttention(nn.Module):
    """Multi-head self-attention with biased projections (diffusers `Attention` key names)."""

    def __init__(self, dim, heads, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.heads = heads
        self.to_q = operations.Linear(dim, dim, dtype=dtype, device=device)
        self.to_k = operations.Linear(dim, dim, dtype=dtype, device=device)
        self.to_v = operations.Linear(dim, dim, dtype=dtype, device=device)
        self.to_out = nn.ModuleList([operations.Linear(dim, dim, dtype=dtype, device=device)])

    def forward(self, x, mask):
        out = attention.attention(self.to_q(x), self.to_k(x), self.to_v(x), self.heads, mask)
        return self.to_out[0](out)


class FeedForward(nn.Module):
    """Linear, exact GELU, Linear with 4x expansion."""

    def __init__(self, dim, *, operations=nn, dtype=None, device=None):
        super().__init__()
        # Keys net.0.proj / net.2 as in diffusers, whose net.1 is a weightless dropout.
        self.net = nn.ModuleDict({
            "0": nn.ModuleDict({"proj": operations.Linear(dim, 4 * dim, dtype=dtype, device=device)}),
            "2": operations.Linear(4 * dim, dim, dtype=dtype, device=device),
        })

    def forward(self, x):
        return self.net["2"](F.gelu(self.net["0"]["proj"](x)))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: self-attention then feed-forward, each added back to the stream."""

    def __init__(self, dim, heads, *, operations=nn, dtype=None, device=None):
        super().__init__()
        kw = dict(operations=operations, dtype=dtype, device=device)
        self.norm1 = operations.LayerNorm(dim, dtype=dtype, device=device)
        self.attn1 = SelfAttention(dim, heads, **kw)
        self.norm3 = operations.LayerNorm(dim, dtype=dtype, device=device)  # diffusers' name; no norm2 here
        self.ff = FeedForward(dim, **kw)

    def forward(self, x, mask):
        x = x + self.attn1(self.norm1(x), mask)
        return x + self.ff(self.norm3(x))


class PriorTransformer(nn.Module):
    """The Kandinsky prior: (noisy image embedding, t, text embedding, text tokens) -> predicted clean image embedding."""

    lora_kind = "prior"  # what `kandinsky_core.lora` merges into it

    def __init__(self, config, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.config = config
        inner, dim = config.inner_dim, config.embedding_dim
        kw = dict(operations=operations, dtype=dtype, device=device)
        self.time_embedding = TimestepEmbedding(inner, inner, **kw)
        self.proj_in = operations.Linear(dim, inner, dtype=dtype, device=device)
        self.embedding_proj = operations.Linear(dim, inner, dtype=dtype, device=device)
        self.encoder_hidden_states_proj = operations.Linear(dim, inner, dtype=dtype, device=device)
        self.positional_embedding = nn.Parameter(torch.empty(1, config.sequence_length, inner, dtype=dtype, device=device))
        self.prd_embedding = nn.Parameter(torch.empty(1, 1, inner, dtype=dtype, device=device))
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(inner, config.num_attention_heads, **kw) for _ in range(config.num_layers)]
        )
        self.norm_out = operations.LayerNorm(inner, dtype=dtype, device=device)
        self.proj_to_clip_embeddings = operations.Linear(inner, dim, dtype=dtype, device=device)
        # Statistics of the CLIP image embeddings; the prior works in the normalised space.
        self.clip_mean = nn.Parameter(torch.empty(1, dim, dtype=dtype, device=device))
        self.clip_std = nn.Parameter(torch.empty(1, dim, dtype=dtype, device=device))

    def forward(self, hidden_states, timestep, proj_embedding, encoder_hidden_states, attention_mask):
        """Predict the clean (normalised) image embedding (B, D).

        hidden_states: noisy image embedding (B, D); timestep: number or (B,) / (1,) tensor; proj_embedding: pooled
        CLIP text embedding (B, D); encoder_hidden_states: CLIP text hidden states (B, 77, D); attention_mask: bool
        (B, 77), True for real tokens.
        """
        self._check_inputs(hidden_states, proj_embedding, encoder_hidden_states, attention_mask)
        batch = hidden_states.shape[0]
        t = torch.as_tensor(timestep, device=hidden_states.device).reshape(-1).expand(batch)
        t_emb = self.time_embedding(timestep_embedding(t, self.config.inner_dim).to(hidden_states.dtype))
        x = torch.cat([
            self.encoder_hidden_states_proj(encoder_hidden_states),  # (B, 77, inner)
            self.embedding_proj(proj_embedding)[:, None],
            t_emb[:, None],
            self.proj_in(hidden_states)[:, None],
            self.prd_embedding.to(t_emb).expand(batch, -1, -1),
        ], dim=1)  # (B, 81, inner)
        x = x + self.positional_embedding.to(x)
        mask = self._attention_mask(attention_mask, x)
        for block in self.transformer_blocks:
            x = block(x, mask)
        return self.proj_to_clip_embeddings(self.norm_out(x[:, -1]))  # the prd token's output

    def post_process_latents(self, x):
        """Map a normalised embedding back to CLIP image-embedding space."""
        return x * self.clip_std.to(x) + self.clip_mean.to(x)

    def _attention_mask(self, text_mask, x):
        """Additive (B, 1, T, T) mask: hide padded text tokens from every query, and the future from each token."""
        length = x.shape[1]
        padding = (1 - text_mask.to(x.dtype)) * MASK_VALUE
        padding = F.pad(padding, (0, self.config.additional_embeddings))  # the extra tokens are always visible
        causal = torch.full((length, length), MASK_VALUE, dtype=x.dtype, device=x.device).triu_(1)
        return (padding[:, None, :] + causal)[:, None]

    def _check_inputs(self, hidden_states, proj_embedding, encoder_hidden_states, attention_mask):
        batch, dim, tokens = hidden_states.shape[0], self.config.embedding_dim, self.config.num_embeddings
        expected = {
            "hidden_states": (hidden_states, (batch, dim)),
            "proj_embedding": (proj_embedding, (batch, dim)),
            "encoder_hidden_states": (encoder_hidden_states, (batch, tokens, dim)),
            "attention_mask": (attention_mask, (batch, tokens)),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise KandinskyError(
                    f"Prior input {name} has shape {tuple(tensor.shape)}, expected {shape}; pass CLIP embeddings of "
                    f"width {dim} and {tokens} text tokens (tokenizer padding='max_length', max_length={tokens})."
                )
