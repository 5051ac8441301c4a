"""The Kandinsky 3 UNet (3.06 B parameters), in one file.

A UNet of ResNet blocks whose every normalisation is a GroupNorm with its scale and shift predicted from the time
embedding ("conditional group norm"). The text enters twice: its projected T5 states are cross-attended (with the
prompt's padding mask) at the three lower levels, and one attention query, the mean over the tokens, pools them into
the time embedding. There is no mid block; down-sampling is a stride-2 convolution, up-sampling a transposed one.
Parameter and key names are diffusers' `Kandinsky3UNet`, so the published `unet/` weights load without a key map.
"""
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .. import attention
from ..config import extension, from_dict
from ..errors import KandinskyError
from ..layers import TimestepEmbedding, timestep_embedding

# Fixed by the architecture (diffusers hard-codes them; they are not in config.json).
EXPANSION_RATIO = 4  # attention blocks' feed-forward width, × channels
COMPRESSION_RATIO = 2  # ResNet blocks' inner width, ÷ max(in, out)
# Per level, outermost first. Up level i reads entry [-1 - i] of these 4-tuples even in a 2-level model, as diffusers
# does, so its 2-level test UNet attends at the outermost up level but not at the outermost down level.
CROSS_ATTENTION = (False, True, True, True)
SELF_ATTENTION = (False, True, True, True)
MASKED = -10000.0  # additive attention bias for padded tokens, as trained
# Not in the weights: the published values (a lone file without config.json is read with them).
PUBLISHED_GROUPS, PUBLISHED_HEAD_DIM = 32, 64


@dataclass(frozen=True)
class UNetConfig:
    """The `unet/config.json` keys of diffusers' Kandinsky3UNet; defaults are the published model."""

    in_channels: int = 4
    out_channels: int | None = extension(None)  # None: in_channels, as diffusers; original inpainting maps 9 to 4
    block_out_channels: tuple = (384, 768, 1536, 3072)
    time_embedding_dim: int = 1536
    cross_attention_dim: int = 4096
    encoder_hid_dim: int = 4096  # width of the text encoder's hidden states
    attention_head_dim: int = 64
    groups: int = 32
    layers_per_block: int = 3
    # How the sinusoidal timestep features are computed: "diffusers" (its get_timestep_embedding) or "original" (the
    # ai-forever code's order of operations, whose frequencies round differently: up to 6e-5 apart at t = 979).
    time_features: str = extension("diffusers")

    @classmethod
    def from_dict(cls, d):
        """Read a diffusers `unet/config.json` dict, refusing shapes this architecture cannot have."""
        config = from_dict(cls, d)
        config.validate()
        return config

    def validate(self):
        """Raise KandinskyError if the config cannot describe a Kandinsky 3 UNet."""
        if not 1 <= len(self.block_out_channels) <= len(CROSS_ATTENTION):
            raise KandinskyError(f"Kandinsky 3 UNet config: {len(self.block_out_channels)} levels in block_out_channels; "
                                 f"the architecture has 1 to {len(CROSS_ATTENTION)} (4 published).")
        if self.time_features not in ("diffusers", "original"):
            raise KandinskyError(f"Kandinsky 3 UNet config: time_features {self.time_features!r}; use 'diffusers' or "
                                 "'original'.")
        if self.layers_per_block < 2:
            raise KandinskyError(f"Kandinsky 3 UNet config: layers_per_block {self.layers_per_block}; it must be at least 2 (3 published).")

    @property
    def init_channels(self):
        """Width after conv_in and before conv_out (half the first level's)."""
        return self.block_out_channels[0] // 2

    @property
    def output_channels(self):
        """Channels of the predicted ε (those of the latents)."""
        return self.out_channels or self.in_channels

    @property
    def latent_multiple(self):
        """Latent height and width must be multiples of this (one halving per level but the last)."""
        return 2 ** (len(self.block_out_channels) - 1)


UNET3 = UNetConfig()  # kandinsky-community/kandinsky-3 unet/: 3,055,348,228 parameters, 1071 tensors
# diffusers' fast-test UNet (786,372 parameters); its text encoder is 32 wide, projected to a 4-wide context.
UNET3_TINY = replace(UNET3, block_out_channels=(32, 64), time_embedding_dim=4, cross_attention_dim=4, encoder_hid_dim=32,
                     attention_head_dim=4, groups=2)


class Attention(nn.Module):
    """Multi-head attention with bias-free projections; `out_dim` is also the inner width (heads × head_dim)."""

    def __init__(self, query_dim, context_dim, out_dim, head_dim, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.heads = out_dim // head_dim
        self.to_q = operations.Linear(query_dim, out_dim, bias=False, dtype=dtype, device=device)
        self.to_k = operations.Linear(context_dim, out_dim, bias=False, dtype=dtype, device=device)
        self.to_v = operations.Linear(context_dim, out_dim, bias=False, dtype=dtype, device=device)
        self.to_out = nn.ModuleList([operations.Linear(out_dim, out_dim, bias=False, dtype=dtype, device=device)])

    def forward(self, x, context, mask=None):
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        return self.to_out[0](attention.attention(q, k, v, self.heads, mask))


class ConditionalGroupNorm(nn.Module):
    """GroupNorm without parameters (`config.groups` groups), scaled and shifted by a projection of the time
    embedding."""

    def __init__(self, channels, config, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.norm = operations.GroupNorm(config.groups, channels, affine=False, dtype=dtype, device=device)
        self.context_mlp = nn.Sequential(
            nn.SiLU(), operations.Linear(config.time_embedding_dim, 2 * channels, dtype=dtype, device=device))

    def forward(self, x, temb):
        scale, shift = self.context_mlp(temb)[:, :, None, None].chunk(2, dim=1)
        return self.norm(x) * (scale + 1.0) + shift


class Block(nn.Module):
    """Conditional norm → SiLU → (transposed-conv up-sampling) → convolution → (stride-2 down-sampling)."""

    def __init__(self, cin, cout, kernel, resample, config, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.group_norm = ConditionalGroupNorm(cin, config, operations=operations, dtype=dtype, device=device)
        self.up_sample = (operations.ConvTranspose2d(cin, cin, 2, stride=2, dtype=dtype, device=device)
                          if resample == "up" else nn.Identity())
        self.projection = operations.Conv2d(cin, cout, kernel, padding=int(kernel > 1), dtype=dtype, device=device)
        self.down_sample = (operations.Conv2d(cout, cout, 2, stride=2, dtype=dtype, device=device)
                            if resample == "down" else nn.Identity())

    def forward(self, x, temb):
        return self.down_sample(self.projection(self.up_sample(F.silu(self.group_norm(x, temb)))))


class ResNetBlock(nn.Module):
    """Four Blocks (kernels 1, 3, 3, 1) at half the width, plus a shortcut resampled the same way."""

    def __init__(self, cin, cout, config, resample=None, *, operations=nn, dtype=None, device=None):
        super().__init__()
        kw = dict(operations=operations, dtype=dtype, device=device)
        hidden = max(cin, cout) // COMPRESSION_RATIO
        widths = [(cin, hidden), (hidden, hidden), (hidden, hidden), (hidden, cout)]
        where = {"up": 1, "down": 2}.get(resample)  # the Block that resamples, as trained
        self.resnet_blocks = nn.ModuleList([Block(i, o, kernel, resample if n == where else None, config, **kw)
                                            for n, ((i, o), kernel) in enumerate(zip(widths, (1, 3, 3, 1)))])
        up, down = resample == "up", resample == "down"
        self.shortcut_up_sample = (operations.ConvTranspose2d(cin, cin, 2, stride=2, dtype=dtype, device=device)
                                   if up else nn.Identity())
        self.shortcut_projection = (operations.Conv2d(cin, cout, 1, dtype=dtype, device=device)
                                    if cin != cout else nn.Identity())
        self.shortcut_down_sample = (operations.Conv2d(cout, cout, 2, stride=2, dtype=dtype, device=device)
                                     if down else nn.Identity())

    def forward(self, x, temb):
        out = x
        for block in self.resnet_blocks:
            out = block(out, temb)
        return self.shortcut_down_sample(self.shortcut_projection(self.shortcut_up_sample(x))) + out


class AttentionBlock(nn.Module):
    """Conditional norm → attention (cross-attention to the text if `cross`, else self-attention) → residual, then a
    1×1-conv feed-forward behind another conditional norm → residual."""

    def __init__(self, channels, cross, config, *, operations=nn, dtype=None, device=None):
        super().__init__()
        kw = dict(operations=operations, dtype=dtype, device=device)
        context_dim = config.cross_attention_dim if cross else channels
        self.in_norm = ConditionalGroupNorm(channels, config, **kw)
        self.attention = Attention(channels, context_dim, channels, config.attention_head_dim, **kw)
        self.out_norm = ConditionalGroupNorm(channels, config, **kw)
        hidden = EXPANSION_RATIO * channels
        self.feed_forward = nn.Sequential(
            operations.Conv2d(channels, hidden, 1, bias=False, dtype=dtype, device=device), nn.SiLU(),
            operations.Conv2d(hidden, channels, 1, bias=False, dtype=dtype, device=device))

    def forward(self, x, temb, context=None, mask=None):
        bsz, c, h, w = x.shape
        tokens = self.in_norm(x, temb).reshape(bsz, c, h * w).transpose(1, 2)  # (B, HW, C)
        out = self.attention(tokens, tokens if context is None else context, mask)
        x = x + out.transpose(1, 2).reshape(bsz, c, h, w)
        return x + self.feed_forward(self.out_norm(x, temb))


class DownBlock(nn.Module):
    """[self-attention] → layers × (ResNet, [cross-attention], ResNet); the last ResNet halves the size."""

    def __init__(self, cin, cout, cross, self_attn, downsample, config, *, operations=nn, dtype=None, device=None):
        super().__init__()
        kw, n = dict(operations=operations, dtype=dtype, device=device), config.layers_per_block
        # Parameter-free placeholders keep diffusers' indices: attentions.0 is self-, attentions.1.. cross-attention.
        self.attentions = nn.ModuleList([AttentionBlock(cin, False, config, **kw) if self_attn else nn.Identity()] +
                                        [AttentionBlock(cout, True, config, **kw) if cross else nn.Identity()
                                         for _ in range(n)])
        self.resnets_in = nn.ModuleList([ResNetBlock(cin if i == 0 else cout, cout, config, **kw) for i in range(n)])
        self.resnets_out = nn.ModuleList([
            ResNetBlock(cout, cout, config, "down" if downsample and i == n - 1 else None, **kw) for i in range(n)])
        self.self_attn, self.cross = self_attn, cross

    def forward(self, x, temb, context, mask):
        if self.self_attn:
            x = self.attentions[0](x, temb)
        for i, (res_in, res_out) in enumerate(zip(self.resnets_in, self.resnets_out)):
            x = res_in(x, temb)
            if self.cross:
                x = self.attentions[i + 1](x, temb, context, mask)
            x = res_out(x, temb)
        return x


class UpBlock(nn.Module):
    """layers × (ResNet, [cross-attention], ResNet) → [self-attention]; the first ResNet doubles the size.

    The input arrives concatenated with the skip (`skip` extra channels); the widths follow the published layout.
    """

    def __init__(self, cin, skip, cout, cross, self_attn, upsample, config, *, operations=nn, dtype=None,
                 device=None):
        super().__init__()
        kw, n = dict(operations=operations, dtype=dtype, device=device), config.layers_per_block
        widths = [(cin + skip, cin)] + [(cin, cin)] * (n - 2) + [(cin, cout)]
        self.attentions = nn.ModuleList([AttentionBlock(cout, False, config, **kw) if self_attn else nn.Identity()] +
                                        [AttentionBlock(i, True, config, **kw) if cross else nn.Identity()
                                         for i, _ in widths])
        self.resnets_in = nn.ModuleList([ResNetBlock(i, i, config, "up" if upsample and k == 0 else None, **kw)
                                         for k, (i, _) in enumerate(widths)])
        self.resnets_out = nn.ModuleList([ResNetBlock(i, o, config, **kw) for i, o in widths])
        self.self_attn, self.cross = self_attn, cross

    def forward(self, x, temb, context, mask):
        for i, (res_in, res_out) in enumerate(zip(self.resnets_in, self.resnets_out)):
            x = res_in(x, temb)
            if self.cross:
                x = self.attentions[i + 1](x, temb, context, mask)
            x = res_out(x, temb)
        return self.attentions[0](x, temb) if self.self_attn else x


class EncoderProjection(nn.Module):
    """T5 hidden states → the UNet's context width: bias-free Linear, then LayerNorm."""

    def __init__(self, text_dim, context_dim, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.projection_linear = operations.Linear(text_dim, context_dim, bias=False, dtype=dtype, device=device)
        self.projection_norm = operations.LayerNorm(context_dim, dtype=dtype, device=device)

    def forward(self, x):
        return self.projection_norm(self.projection_linear(x))


class AttentionPooling(nn.Module):
    """Adds to the time embedding one attention read of the context, queried with the context's mean."""

    def __init__(self, time_dim, context_dim, head_dim, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.attention = Attention(context_dim, context_dim, time_dim, head_dim, operations=operations, dtype=dtype,
                                   device=device)

    def forward(self, temb, context, mask):
        # The mean runs over every position, padding included (padded positions hold the projection's LayerNorm bias).
        return temb + self.attention(context.mean(dim=1, keepdim=True), context, mask).squeeze(1)


class UNet(nn.Module):
    """The Kandinsky 3 UNet: predicts ε for 4-channel MoVQ latents, conditioned on T5 hidden states and their mask."""

    lora_kind = "kandinsky3"  # what `kandinsky_core.lora` merges into it

    def __init__(self, config=UNET3, *, operations=nn, dtype=None, device=None):
        super().__init__()
        config.validate()
        self.config = config
        kw, init = dict(operations=operations, dtype=dtype, device=device), config.init_channels
        self.time_embedding = TimestepEmbedding(init, config.time_embedding_dim, **kw)
        self.add_time_condition = AttentionPooling(config.time_embedding_dim, config.cross_attention_dim,
                                                   config.attention_head_dim, **kw)
        self.conv_in = operations.Conv2d(config.in_channels, init, 3, padding=1, dtype=dtype, device=device)
        self.encoder_hid_proj = EncoderProjection(config.encoder_hid_dim, config.cross_attention_dim, **kw)
        widths, n = (init,) + tuple(config.block_out_channels), len(config.block_out_channels)
        self.down_blocks = nn.ModuleList([
            DownBlock(widths[i], widths[i + 1], CROSS_ATTENTION[i], SELF_ATTENTION[i], i < n - 1, config, **kw)
            for i in range(n)])
        self.up_blocks = nn.ModuleList([  # up level i mirrors down level n-1-i; from the second on it takes a skip
            UpBlock(widths[n - i], widths[n - i] if i else 0, widths[n - 1 - i], CROSS_ATTENTION[-1 - i],
                    SELF_ATTENTION[-1 - i], i > 0, config, **kw) for i in range(n)])
        self.conv_norm_out = operations.GroupNorm(config.groups, init, dtype=dtype, device=device)
        self.conv_out = operations.Conv2d(init, config.output_channels, 3, padding=1, dtype=dtype, device=device)

    def forward(self, x, timesteps, context, context_mask=None, *, projected=False):
        """ε for latents x (B, C, h, w) at `timesteps` (scalar or (B,)), given T5 hidden states `context` (B, L, 4096)
        and their attention mask (B, L), 1 for real tokens (None: every token is real).

        `projected=True`: `context` has been through `encoder_hid_proj` already, as the original ai-forever code feeds
        it (projected, then zeroed where masked)."""
        self.check_inputs(x, context, context_mask, projected)
        if context_mask is None:
            context_mask = torch.ones(context.shape[:2], device=x.device)
        mask = ((1 - context_mask.to(x.dtype)) * MASKED)[:, None, None, :]  # additive, (B, 1, 1, L)
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(x.shape[0])
        temb = self.time_embedding(self.time_features(timesteps).to(x.dtype))
        context = context if projected else self.encoder_hid_proj(context)
        temb = self.add_time_condition(temb, context, mask)
        h, skips = self.conv_in(x), []
        for block in self.down_blocks:
            h = block(h, temb, context, mask)
            skips.append(h)
        skips.pop()  # the deepest level's output goes straight up
        for i, block in enumerate(self.up_blocks):
            h = block(torch.cat([h, skips.pop()], dim=1) if i else h, temb, context, mask)
        return self.conv_out(F.silu(self.conv_norm_out(h)))

    def time_features(self, timesteps):
        """Sinusoidal features of the timesteps, sines first, computed as the config says."""
        dim = self.config.init_channels
        if self.config.time_features == "diffusers":
            return timestep_embedding(timesteps, dim, False, 1)
        # kandinsky3/model/nn.py SinusoidalPosEmb: the exponent's scale is divided first, then multiplied.
        half = dim // 2
        t = timesteps.float()
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=t.dtype) * -(math.log(10000) / (half - 1)))
        args = t[:, None] * freqs[None]
        return torch.cat([args.sin(), args.cos()], dim=-1)

    def check_inputs(self, x, context, context_mask, projected=False):
        """Turn wiring mistakes into KandinskyErrors that say what to connect instead."""
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise KandinskyError(f"The Kandinsky 3 UNet expects {c.in_channels}-channel latents (B, {c.in_channels}, h, w), "
                                 f"got {tuple(x.shape)}; use MoVQ latents (1/8 of the image size).")
        m = c.latent_multiple
        if 0 in x.shape or x.shape[-2] % m or x.shape[-1] % m:
            raise KandinskyError(f"Latent size {tuple(x.shape[-2:])} must be a positive multiple of {m} (images: multiples "
                                 f"of {8 * m}); crop or resize the image, or pick such a latent size.")
        width = c.cross_attention_dim if projected else c.encoder_hid_dim
        if context.ndim != 3 or context.shape[-1] != width or context.shape[0] != x.shape[0]:
            raise KandinskyError(f"The Kandinsky 3 UNet takes text hidden states of shape ({x.shape[0]}, tokens, "
                                 f"{width}), got {tuple(context.shape)}; encode the prompt with the Kandinsky 3 "
                                 "text encoder (Flan-UL2 T5), one row per latent.")
        if context_mask is not None and tuple(context_mask.shape) != tuple(context.shape[:2]):
            raise KandinskyError(f"The text attention mask has shape {tuple(context_mask.shape)} but the hidden states "
                                 f"{tuple(context.shape)}: it must be (batch, tokens) = {tuple(context.shape[:2])}.")
