"""Kandinsky 3's text encoder: the encoder half of Flan-UL2 (a T5 v1.1-style T5, 8.72 B parameters), in one file.

32 pre-norm blocks of self-attention and a gated-SiLU feed-forward, RMS norms without bias, no 1/sqrt(d) attention
scaling, and one relative position bias (computed by block 0) shared by every block. Module names follow transformers'
`T5EncoderModel`, so the published `text_encoder/` shards load without a key map. Layers come from `operations`, so
ComfyUI can store them in fp8 and offload them layer by layer; nothing here assumes a weight's dtype is the dtype the
model computes in.

fp16 overflows in Flan-UL2's feed-forward (it was trained in bf16). As transformers does, and as the published fp16
shards are stored: every `wo` runs in fp32 when computing in fp16, and the residual stream is clamped to fp16's range.
"""
import json
import math
import os
import re
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .. import attention
from ..config import from_dict
from ..errors import KandinskyError
from ..weights import (describe, iter_tensors, load_weights, read_metadata_config, read_shapes, save_model, shard_files,
                       weights_path)

HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class T5Config:
    """The transformers `T5Config` keys that shape the encoder."""

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 256
    d_ff: int = 16384
    num_layers: int = 32
    num_heads: int = 16
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-silu"

    def __post_init__(self):
        if self.feed_forward_proj != "gated-silu":
            raise KandinskyError(f"This T5 uses feed_forward_proj {self.feed_forward_proj!r}: it is not the "
                                 "Kandinsky 3 Flan-UL2 encoder (gated-silu); load kandinsky-3's text_encoder/ folder.")

    @classmethod
    def from_dict(cls, d):
        """Config from a transformers `text_encoder/config.json` dict."""
        if "d_model" not in d:
            raise KandinskyError(f"This config is not a T5 config (model_type {d.get('model_type')!r}, no d_model): "
                                 "it is not the Kandinsky 3 Flan-UL2 encoder; load kandinsky-3's text_encoder/ folder.")
        return from_dict(cls, {**d, "feed_forward_proj": d.get("feed_forward_proj", "relu")})  # transformers' default

    def to_dict(self):
        """The config as a transformers `config.json` dict (the published file's fields)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"architectures": ["T5EncoderModel"], "model_type": "t5", "is_gated_act": True, "dense_act_fn": "silu",
                "num_decoder_layers": self.num_layers, "pad_token_id": 0, "eos_token_id": 1,
                "decoder_start_token_id": 0, "dropout_rate": 0.1, "initializer_factor": 1.0, "is_encoder_decoder": True,
                "n_positions": 512, "torch_dtype": "float16", **d}


FLAN_UL2 = T5Config()  # kandinsky-community/kandinsky-3 text_encoder/config.json


class RMSNorm(nn.Module):
    """T5's LayerNorm: scale only, no mean, statistics in fp32 whatever the compute dtype."""

    def __init__(self, dim, eps, *, dtype=None, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dtype=dtype, device=device))
        self.eps = eps

    def forward(self, x, dtype):
        """Normalise `x` and return it in the compute `dtype`."""
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        # transformers rounds to the half dtype before the scale multiplies; so do we, for the same numbers. The weight
        # is no `operations` layer: cast (and move, for ComfyUI's offloading) it here.
        return self.weight.to(device=x.device, dtype=dtype) * x.to(dtype)


def clamp_fp16(x):
    """Keep an fp16 residual stream finite, as transformers' T5Block does (a no-op in other dtypes)."""
    if x.dtype != torch.float16:
        return x
    big = torch.finfo(torch.float16).max
    limit = torch.where(torch.isinf(x).any(), big - 1000, big)
    return torch.clamp(x, min=-limit, max=limit)


def relative_position_bucket(relative_position, num_buckets, max_distance):
    """T5's bidirectional bucket of each key-minus-query offset: exact below num_buckets/4, then log-spaced."""
    num_buckets //= 2
    buckets = (relative_position > 0).long() * num_buckets
    distance = relative_position.abs()
    exact = num_buckets // 2
    log_ratio = torch.log(distance.float() / exact) / math.log(max_distance / exact)
    large = torch.clamp(exact + (log_ratio * (num_buckets - exact)).long(), max=num_buckets - 1)
    return buckets + torch.where(distance < exact, distance, large)


class Attention(nn.Module):
    """Self-attention without 1/sqrt(d) scaling; block 0's also owns the relative position bias table."""

    def __init__(self, config, has_bias, *, operations=nn, dtype=None, device=None):
        super().__init__()
        inner, self.heads, self.config = config.num_heads * config.d_kv, config.num_heads, config
        self.q, self.k, self.v = (operations.Linear(config.d_model, inner, bias=False, dtype=dtype, device=device)
                                  for _ in range(3))
        self.o = operations.Linear(inner, config.d_model, bias=False, dtype=dtype, device=device)
        if has_bias:
            self.relative_attention_bias = operations.Embedding(config.relative_attention_num_buckets, config.num_heads,
                                                                dtype=dtype, device=device)

    def position_bias(self, length, dtype, device):
        """(1, heads, L, L) additive bias from each key's offset to the query."""
        positions = torch.arange(length, device=device)
        c = self.config
        buckets = relative_position_bucket(positions[None, :] - positions[:, None], c.relative_attention_num_buckets,
                                           c.relative_attention_max_distance)
        return self.relative_attention_bias(buckets).to(dtype).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x, bias):
        """Attend with `bias` (position bias, padded keys at the dtype's minimum) as the additive mask."""
        out = attention.attention(self.q(x), self.k(x), self.v(x), self.heads, bias, scale=1.0)
        return self.o(out)


class GatedFeedForward(nn.Module):
    """silu(wi_0 x) * wi_1 x, then wo; in fp16, wo runs in fp32 (its output overflows fp16 in Flan-UL2)."""

    def __init__(self, config, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.wi_0 = operations.Linear(config.d_model, config.d_ff, bias=False, dtype=dtype, device=device)
        self.wi_1 = operations.Linear(config.d_model, config.d_ff, bias=False, dtype=dtype, device=device)
        wo_dtype = torch.float32 if dtype == torch.float16 else dtype
        self.wo = operations.Linear(config.d_ff, config.d_model, bias=False, dtype=wo_dtype, device=device)

    def forward(self, x):
        """(B, L, d_model) in, (B, L, d_model) out (fp32 when `x` is fp16)."""
        h = F.silu(self.wi_0(x)) * self.wi_1(x)
        return self.wo(h.float() if h.dtype == torch.float16 else h)


class SelfAttentionLayer(nn.Module):
    """Pre-norm residual self-attention (transformers' `T5LayerSelfAttention`)."""

    def __init__(self, config, has_bias, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.SelfAttention = Attention(config, has_bias, operations=operations, dtype=dtype, device=device)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon, dtype=dtype, device=device)

    def forward(self, x, bias, dtype):
        """Residual update of `x`."""
        return x + self.SelfAttention(self.layer_norm(x, dtype), bias)


class FeedForwardLayer(nn.Module):
    """Pre-norm residual feed-forward (transformers' `T5LayerFF`)."""

    def __init__(self, config, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.DenseReluDense = GatedFeedForward(config, operations=operations, dtype=dtype, device=device)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon, dtype=dtype, device=device)

    def forward(self, x, dtype):
        """Residual update of `x`."""
        return x + self.DenseReluDense(self.layer_norm(x, dtype))


class Block(nn.Module):
    """One encoder block: `layer.0` self-attention, `layer.1` feed-forward, each followed by the fp16 clamp."""

    def __init__(self, config, has_bias, *, operations=nn, dtype=None, device=None):
        super().__init__()
        layers = dict(operations=operations, dtype=dtype, device=device)
        self.layer = nn.ModuleList([SelfAttentionLayer(config, has_bias, **layers), FeedForwardLayer(config, **layers)])

    def forward(self, x, bias, dtype):
        """(B, L, d_model) residual stream in and out."""
        x = clamp_fp16(self.layer[0](x, bias, dtype))
        return clamp_fp16(self.layer[1](x, dtype))


class Stack(nn.Module):
    """The block stack and the final norm (transformers' `T5Stack`, encoder side)."""

    def __init__(self, config, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.block = nn.ModuleList([Block(config, i == 0, operations=operations, dtype=dtype, device=device)
                                    for i in range(config.num_layers)])
        self.final_layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon, dtype=dtype, device=device)

    def forward(self, x, attention_mask, dtype):
        """Hidden states (B, L, d_model) in the compute dtype; padded keys (mask 0) are never attended to."""
        bias = self.block[0].layer[0].SelfAttention.position_bias(x.shape[1], dtype, x.device)
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
        bias = torch.where(keep, bias, torch.finfo(dtype).min)  # as transformers' SDPA path: masked = dtype minimum
        for block in self.block:
            x = block(x, bias, dtype)
        return self.final_layer_norm(x, dtype)


class T5Encoder(nn.Module):
    """Flan-UL2's encoder: token ids and their mask to last hidden states (transformers' `T5EncoderModel`)."""

    def __init__(self, config, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.config = config
        self.shared = operations.Embedding(config.vocab_size, config.d_model, dtype=dtype, device=device)
        self.encoder = Stack(config, operations=operations, dtype=dtype, device=device)

    def compute_dtype(self):
        """The dtype the model computes in by default: its embedding's, or fp32 for fp8 (or other) storage."""
        stored = self.shared.weight.dtype
        return stored if stored in HALF else torch.float32

    def forward(self, input_ids, attention_mask=None, *, dtype=None):
        """last_hidden_state (B, L, d_model) in `dtype` (default: `compute_dtype()`) for (B, L) ids and 0/1 mask."""
        dtype = dtype or self.compute_dtype()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.shared(input_ids).to(dtype)
        return self.encoder(x, attention_mask.to(input_ids.device), dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Loading the published text_encoder/ folder (fp16 shards with fp32 `wo`) or one safetensors file.

# .bin: kandinsky-3's first, fp32 revision; the sharded .bin index: Kandinsky 3.1's weights/flan_ul2_encoder/.
WEIGHT_FILES = ("model.safetensors.index.fp16.json", "model.safetensors", "model.safetensors.index.json",
                "model.fp16.safetensors", "pytorch_model.bin", "pytorch_model.bin.index.json")
T5_KIND = "kandinsky3_t5"  # save_t5's marker: the loaders list such files
SKIPPED = ("decoder.", "lm_head.")  # a whole Flan-UL2 (T5ForConditionalGeneration) holds the decoder too
WHERE = "pass kandinsky-3's text_encoder/ folder, Kandinsky 3.1's weights/flan_ul2_encoder/ or one .safetensors file."


def t5_weights_path(path):
    """The T5 weights file (or shard index) of a text_encoder/ folder, or `path` itself if it is a file."""
    return weights_path(path, WEIGHT_FILES, hint=WHERE)


def config_from_shapes(shapes):
    """Rebuild a T5 config from tensor shapes: widths from the embedding, heads from the position bias table."""
    embedding = shapes.get("shared.weight") or shapes.get("encoder.embed_tokens.weight")
    table = shapes.get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    gate = shapes.get("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")
    query = shapes.get("encoder.block.0.layer.0.SelfAttention.q.weight")
    if embedding is None or table is None or gate is None or query is None:
        raise KandinskyError(f"This is not the Kandinsky 3 Flan-UL2 text encoder: it looks like {describe(shapes)}.")
    buckets, heads = table
    blocks = {int(m.group(1)) for k in shapes for m in [re.match(r"encoder\.block\.(\d+)\.", k)] if m}
    return T5Config(vocab_size=embedding[0], d_model=embedding[1], num_heads=heads, d_kv=query[0] // heads,
                    d_ff=gate[0], num_layers=len(blocks), relative_attention_num_buckets=buckets)


def check_flan_ul2(config):
    """Refuse full-size T5s of another shape (T5-XXL, Flan-T5...); tiny test models pass."""
    # A block's shape tells the T5 families apart (T5-XXL, Flan-T5-XXL and UMT5-XXL: 64 heads of 64, d_ff 10240); the
    # block count only has to match the weights, which loading checks (benchmarks use a one-block stand-in).
    found = (config.d_model, config.num_heads, config.d_kv, config.d_ff)
    expected = (FLAN_UL2.d_model, FLAN_UL2.num_heads, FLAN_UL2.d_kv, FLAN_UL2.d_ff)
    if config.d_model >= 1024 and found != expected:  # real T5s are >= 1024 wide; tests use tiny ones
        raise KandinskyError(f"This is not the Kandinsky 3 Flan-UL2 encoder (d_model/heads/d_kv/d_ff found "
                             f"{'/'.join(map(str, found))}, expected {'/'.join(map(str, expected))}); load the "
                             "text_encoder/ folder of kandinsky-community/kandinsky-3.")
    return config


def read_t5_config(path):
    """The config of the T5 at `path` (folder or file): config.json, our file metadata, or tensor shapes."""
    config_file = os.path.join(path, "config.json") if os.path.isdir(path) else None
    if config_file and os.path.isfile(config_file):
        try:
            with open(config_file) as f:
                d = json.load(f)
        except (OSError, ValueError) as err:
            raise KandinskyError(f"{config_file} cannot be read as JSON ({type(err).__name__}: {err}: cut off or damaged); "
                                 "copy text_encoder/config.json of kandinsky-community/kandinsky-3 again.") from None
        return check_flan_ul2(T5Config.from_dict(d))
    weights = t5_weights_path(path)
    meta = read_metadata_config(weights)
    if meta is not None:
        return check_flan_ul2(T5Config.from_dict(meta))
    shapes = {}
    for file in shard_files(weights):
        shapes.update(read_shapes(file))
    return check_flan_ul2(config_from_shapes(shapes))


def tensor_dtype(key, compute):
    """The dtype one tensor is kept in: the compute dtype, except `wo`, which stays fp32 for fp16 compute."""
    return torch.float32 if compute == torch.float16 and key.endswith("DenseReluDense.wo.weight") else compute


def read_tensors(files, dtype, device):
    """{model key: tensor} from the shard files, each in its `tensor_dtype` (dtype None: the embedding's, as stored)."""
    # fp16 has an exception (fp32 `wo`) and None is known only once the embedding is read: both read as stored, which
    # keeps the published fp16 tensors as views of the file. Other dtypes convert while reading.
    read_as = None if dtype in (None, torch.float16) else dtype
    sd = {}
    for file in files:
        for key, t in iter_tensors(file, dtype=read_as, device=device):
            if not key.startswith(SKIPPED):
                sd[key] = t if dtype is None else t.to(tensor_dtype(key, dtype))
    alias = sd.pop("encoder.embed_tokens.weight", None)  # transformers ties it to shared.weight
    if "shared.weight" not in sd and alias is not None:
        sd["shared.weight"] = alias
    if dtype is None and "shared.weight" in sd:  # one compute dtype for the whole model
        compute = sd["shared.weight"].dtype
        sd = {key: t.to(tensor_dtype(key, compute)) for key, t in sd.items()}
    return sd


def load_t5(path, *, dtype=None, device="cpu", operations=nn):
    """The Flan-UL2 encoder from a `text_encoder/` folder (fp16 shards + index) or one safetensors file.

    `dtype` None computes in the checkpoint's own dtype (its embedding's: fp16 for the published shards); fp16 keeps
    every `wo` in fp32; fp8 dtypes are storage only, for ComfyUI's per-layer casts.
    """
    if os.path.isdir(path) and os.path.isdir(os.path.join(path, "text_encoder")):
        path = os.path.join(path, "text_encoder")
    if not os.path.exists(path):
        raise KandinskyError(f"{path} does not exist; {WHERE}")
    config = read_t5_config(path)
    weights = t5_weights_path(path)
    model = T5Encoder(config, operations=operations, device="meta")
    # A plain build to check the file against: lazily allocating `operations` list no weights before loading.
    reference = model if operations is nn else T5Encoder(config, device="meta")
    tensors = read_tensors(shard_files(weights), dtype, device).items()
    return load_weights(model, weights, reference=reference, tensors=tensors,
                        config_origin="kandinsky-3's text_encoder/config.json",
                        mismatch_hint="a shard may be missing or belong to another model.").eval()


def save_t5(path, t5, tokenizer):
    """Save a loaded T5 as one safetensors file in its stored dtypes (fp32 `wo` of fp16 included), with its config and
    `tokenizer` in the metadata; load_t5 reads it back without converting."""
    return save_model(path, t5.state_dict(), T5_KIND, t5.config.to_dict(), **tokenizer.metadata())
