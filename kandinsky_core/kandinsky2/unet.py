"""The Kandinsky 2.1 / 2.2 decoder UNet: all five published variants in one readable file.

A BigGAN-style UNet (down/up-sampling inside ResNet blocks) whose attention layers attend jointly over the image tokens
and a conditioning context ("added K/V"). The variants differ only in how the CLIP image embedding (and, in 2.1, the
text) enters: see `ImageConditioning`, `TextImageConditioning` and `ImageHintConditioning`. Parameter and key names
follow diffusers' `UNet2DConditionModel`, so the published `unet/` checkpoints load without a key map.
"""
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .. import attention
from ..config import from_dict
from ..errors import KandinskyError
from ..layers import TimestepEmbedding, timestep_embedding

DOWN_TYPES = {"ResnetDownsampleBlock2D": False, "SimpleCrossAttnDownBlock2D": True}  # value: block has attention
UP_TYPES = {"ResnetUpsampleBlock2D": False, "SimpleCrossAttnUpBlock2D": True}
VARIANTS = {  # (addition_embed_type, in_channels) -> variant name
    ("text_image", 4): "2.1", ("text_image", 9): "2.1-inpaint",
    ("image", 4): "2.2", ("image", 9): "2.2-inpaint", ("image_hint", 8): "2.2-depth",
}


@dataclass(frozen=True)
class UNetConfig:
    """The `unet/config.json` keys that shape the model (diffusers names)."""

    in_channels: int = 4
    out_channels: int = 8
    addition_embed_type: str = "image"
    encoder_hid_dim_type: str = "image_proj"
    encoder_hid_dim: int = 1280
    cross_attention_dim: int = 768
    block_out_channels: tuple = (384, 768, 1152, 1536)
    down_block_types: tuple = ("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3
    up_block_types: tuple = ("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",)
    mid_block_type: str = "UNetMidBlock2DSimpleCrossAttn"
    layers_per_block: int = 3
    attention_head_dim: int = 64
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    resnet_time_scale_shift: str = "scale_shift"
    flip_sin_to_cos: bool = True
    freq_shift: int = 0

    @classmethod
    def from_dict(cls, d):
        """Read a diffusers `config.json` dict, refusing settings this architecture does not have."""
        config = from_dict(cls, d)
        config.validate()
        return config

    def validate(self):
        """Raise KandinskyError if this is not one of the Kandinsky decoder layouts."""
        if (self.addition_embed_type, self.in_channels) not in VARIANTS:
            raise KandinskyError(
                f"UNet config with addition_embed_type={self.addition_embed_type!r} and in_channels={self.in_channels} "
                f"is not a Kandinsky 2.1/2.2 decoder; known variants: {sorted(VARIANTS.values())}")
        bad = [t for t in self.down_block_types if t not in DOWN_TYPES] + [t for t in self.up_block_types if t not in UP_TYPES]
        if bad or self.mid_block_type != "UNetMidBlock2DSimpleCrossAttn" or self.resnet_time_scale_shift != "scale_shift":
            raise KandinskyError(f"UNet config uses blocks a Kandinsky decoder never has ({bad or self.mid_block_type}); "
                                 "is this a Stable Diffusion UNet? Use a kandinsky-community decoder's unet/ folder.")
        if len(self.down_block_types) != len(self.block_out_channels) or len(self.up_block_types) != len(self.block_out_channels):
            raise KandinskyError("UNet config: down_block_types, up_block_types and block_out_channels differ in length")

    @property
    def variant(self):
        """'2.1', '2.1-inpaint', '2.2', '2.2-inpaint' or '2.2-depth'."""
        return VARIANTS[(self.addition_embed_type, self.in_channels)]

    @property
    def image_embed_dim(self):
        """Width of the CLIP image embedding this decoder takes (2.1: 768, 2.2: 1280)."""
        return self.cross_attention_dim if self.addition_embed_type == "text_image" else self.encoder_hid_dim

    @property
    def time_embed_dim(self):
        """Width of the timestep embedding every ResBlock is modulated by (diffusers: 4 × the first level's)."""
        return self.block_out_channels[0] * 4

    @property
    def latent_multiple(self):
        """Latent height and width must be multiples of this (one halving per down block)."""
        return 2 ** (len(self.block_out_channels) - 1)


UNET_22 = UNetConfig()  # kandinsky-2-2-decoder: 1,253,057,288 parameters
UNET_22_INPAINT = replace(UNET_22, in_channels=9)  # kandinsky-2-2-decoder-inpaint: 1,253,074,568
UNET_22_DEPTH = replace(UNET_22, in_channels=8, addition_embed_type="image_hint")  # kandinsky-2-2-controlnet-depth: 1,253,429,212
UNET_21 = replace(UNET_22, addition_embed_type="text_image", encoder_hid_dim_type="text_image_proj", encoder_hid_dim=1024)  # 1,228,661,768
UNET_21_INPAINT = replace(UNET_21, in_channels=9)  # kandinsky-2-1-inpaint: 1,228,679,048

# diffusers' fast-test sizes; the depth variant there uses a 100-wide context.
_TINY = dict(block_out_channels=(32, 64), down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
             up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"), layers_per_block=1,
             encoder_hid_dim=32, cross_attention_dim=32, attention_head_dim=4)
UNET_21_TINY = replace(UNET_21, **_TINY)
UNET_21_INPAINT_TINY = replace(UNET_21_TINY, in_channels=9)
UNET_22_TINY = replace(UNET_22, **_TINY)
UNET_22_INPAINT_TINY = replace(UNET_22_TINY, in_channels=9)
UNET_22_DEPTH_TINY = replace(UNET_22_TINY, in_channels=8, addition_embed_type="image_hint", cross_attention_dim=100)


class ResBlock(nn.Module):
    """ResNet block with scale-shift timestep modulation; `resample` makes it the block's down/up-sampler."""

    def __init__(self, cin, cout, config, resample=None, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.resample = resample
        groups, eps = config.norm_num_groups, config.norm_eps
        self.norm1 = operations.GroupNorm(groups, cin, eps=eps, dtype=dtype, device=device)
        self.conv1 = operations.Conv2d(cin, cout, 3, padding=1, dtype=dtype, device=device)
        self.time_emb_proj = operations.Linear(config.time_embed_dim, 2 * cout, dtype=dtype, device=device)
        self.norm2 = operations.GroupNorm(groups, cout, eps=eps, dtype=dtype, device=device)
        self.conv2 = operations.Conv2d(cout, cout, 3, padding=1, dtype=dtype, device=device)
        self.conv_shortcut = operations.Conv2d(cin, cout, 1, dtype=dtype, device=device) if cin != cout else None

    def forward(self, x, emb):
        h = F.silu(self.norm1(x))
        if self.resample == "down":
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
        elif self.resample == "up":
            h, x = F.interpolate(h, scale_factor=2.0, mode="nearest"), F.interpolate(x, scale_factor=2.0, mode="nearest")
        h = self.conv1(h)
        scale, shift = self.time_emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class AddedKVAttention(nn.Module):
    """Self-attention whose keys and values are prefixed with projections of the conditioning context.

    The image tokens attend jointly to the context (CLIP image tokens, plus text tokens in 2.1) and to themselves;
    the GroupNorm lives inside the block and the residual is added at the end.
    """

    def __init__(self, channels, config, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.heads = channels // config.attention_head_dim
        self.group_norm = operations.GroupNorm(config.norm_num_groups, channels, eps=config.norm_eps, dtype=dtype,
                                               device=device)
        self.to_q = operations.Linear(channels, channels, dtype=dtype, device=device)
        self.to_k = operations.Linear(channels, channels, dtype=dtype, device=device)
        self.to_v = operations.Linear(channels, channels, dtype=dtype, device=device)
        self.add_k_proj = operations.Linear(config.cross_attention_dim, channels, dtype=dtype, device=device)
        self.add_v_proj = operations.Linear(config.cross_attention_dim, channels, dtype=dtype, device=device)
        self.to_out = nn.ModuleList([operations.Linear(channels, channels, dtype=dtype, device=device)])

    def forward(self, x, context):
        b, c, h, w = x.shape
        tokens = self.group_norm(x.flatten(2)).transpose(1, 2)  # (B, HW, C); the 3-D norm matches diffusers bit for bit
        k = torch.cat([self.add_k_proj(context), self.to_k(tokens)], dim=1)  # context first, as trained
        v = torch.cat([self.add_v_proj(context), self.to_v(tokens)], dim=1)
        out = self.to_out[0](attention.attention(self.to_q(tokens), k, v, self.heads))
        return out.transpose(1, 2).reshape(b, c, h, w) + x


class DownBlock(nn.Module):
    """`layers_per_block` ResBlocks (each followed by attention if `attn`), then an optional down-sampling ResBlock."""

    def __init__(self, cin, cout, attn, downsample, config, *, operations=nn, dtype=None, device=None):
        super().__init__()
        kw, layers = dict(operations=operations, dtype=dtype, device=device), config.layers_per_block
        self.resnets = nn.ModuleList([ResBlock(cin if i == 0 else cout, cout, config, **kw) for i in range(layers)])
        self.attentions = nn.ModuleList([AddedKVAttention(cout, config, **kw) for _ in range(layers)] if attn else [])
        self.downsamplers = nn.ModuleList([ResBlock(cout, cout, config, "down", **kw)] if downsample else [])

    def forward(self, x, emb, context):
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, emb)
            if self.attentions:
                x = self.attentions[i](x, context)
            skips.append(x)
        for down in self.downsamplers:
            x = down(x, emb)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """ResBlocks over the input concatenated with one skip each (plus attention if `attn`), then optional up-sampling."""

    def __init__(self, cin, cout, skip_channels, attn, upsample, config, *, operations=nn, dtype=None, device=None):
        super().__init__()
        kw = dict(operations=operations, dtype=dtype, device=device)
        self.resnets = nn.ModuleList([
            ResBlock((cin if i == 0 else cout) + s, cout, config, **kw) for i, s in enumerate(skip_channels)])
        self.attentions = nn.ModuleList([AddedKVAttention(cout, config, **kw) for _ in skip_channels] if attn else [])
        self.upsamplers = nn.ModuleList([ResBlock(cout, cout, config, "up", **kw)] if upsample else [])

    def forward(self, x, emb, context, skips):
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), emb)
            if self.attentions:
                x = self.attentions[i](x, context)
        for up in self.upsamplers:
            x = up(x, emb)
        return x


class MidBlock(nn.Module):
    """ResBlock → attention → ResBlock at the lowest resolution."""

    def __init__(self, channels, config, *, operations=nn, dtype=None, device=None):
        super().__init__()
        kw = dict(operations=operations, dtype=dtype, device=device)
        self.resnets = nn.ModuleList([ResBlock(channels, channels, config, **kw) for _ in range(2)])
        self.attentions = nn.ModuleList([AddedKVAttention(channels, config, **kw)])

    def forward(self, x, emb, context):
        x = self.resnets[0](x, emb)
        return self.resnets[1](self.attentions[0](x, context), emb)


class ImageProjection(nn.Module):
    """2.2 context: the image embedding becomes `tokens` cross-attention tokens."""

    def __init__(self, image_dim, context_dim, tokens=32, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.tokens = tokens
        self.image_embeds = operations.Linear(image_dim, tokens * context_dim, dtype=dtype, device=device)
        self.norm = operations.LayerNorm(context_dim, dtype=dtype, device=device)

    def forward(self, image_embeds, text_hidden_states=None):
        return self.norm(self.image_embeds(image_embeds).reshape(image_embeds.shape[0], self.tokens, -1))


class TextImageProjection(nn.Module):
    """2.1 context: 10 image tokens followed by the projected XLM-R text hidden states."""

    def __init__(self, text_dim, image_dim, context_dim, tokens=10, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.tokens = tokens
        self.image_embeds = operations.Linear(image_dim, tokens * context_dim, dtype=dtype, device=device)
        self.text_proj = operations.Linear(text_dim, context_dim, dtype=dtype, device=device)

    def forward(self, image_embeds, text_hidden_states):
        image_tokens = self.image_embeds(image_embeds).reshape(image_embeds.shape[0], self.tokens, -1)
        return torch.cat([image_tokens, self.text_proj(text_hidden_states)], dim=1)


class ImageConditioning(nn.Module):
    """2.2: the image embedding is added to the timestep embedding."""

    def __init__(self, image_dim, temb, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.image_proj = operations.Linear(image_dim, temb, dtype=dtype, device=device)
        self.image_norm = operations.LayerNorm(temb, dtype=dtype, device=device)

    def forward(self, image_embeds, text_embeds=None):
        return self.image_norm(self.image_proj(image_embeds))


class TextImageConditioning(nn.Module):
    """2.1: image embedding plus normalised pooled text embedding, added to the timestep embedding."""

    def __init__(self, text_dim, image_dim, temb, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.text_proj = operations.Linear(text_dim, temb, dtype=dtype, device=device)
        self.text_norm = operations.LayerNorm(temb, dtype=dtype, device=device)
        self.image_proj = operations.Linear(image_dim, temb, dtype=dtype, device=device)

    def forward(self, image_embeds, text_embeds):
        return self.image_proj(image_embeds) + self.text_norm(self.text_proj(text_embeds))


class ImageHintConditioning(ImageConditioning):
    """2.2 depth: as `ImageConditioning`, plus a conv stack turning the pixel-space hint into 4 latent channels."""

    def __init__(self, image_dim, temb, *, operations=nn, dtype=None, device=None):
        super().__init__(image_dim, temb, operations=operations, dtype=dtype, device=device)
        widths = [(3, 16, 1), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 96, 2), (96, 96, 1), (96, 256, 2), (256, 4, 1)]
        layers = []
        for cin, cout, stride in widths:
            layers += [operations.Conv2d(cin, cout, 3, padding=1, stride=stride, dtype=dtype, device=device), nn.SiLU()]
        self.input_hint_block = nn.Sequential(*layers[:-1])  # keys .0, .2, ... .14, as published

    def encode_hint(self, hint):
        """(B, 3, H, W) hint in [0, 1] → (B, 4, H/8, W/8)."""
        return self.input_hint_block(hint)


class UNet(nn.Module):
    """The Kandinsky decoder UNet; the variant comes from `config` (see `UNetConfig.variant`)."""

    lora_kind = "decoder"  # what `kandinsky_core.lora` merges into it

    def __init__(self, config, *, operations=nn, dtype=None, device=None):
        super().__init__()
        config.validate()
        self.config = config
        kw = dict(operations=operations, dtype=dtype, device=device)
        ch, temb = config.block_out_channels, config.time_embed_dim
        self.conv_in = operations.Conv2d(config.in_channels, ch[0], 3, padding=1, dtype=dtype, device=device)
        self.time_embedding = TimestepEmbedding(ch[0], temb, **kw)
        context_dim = config.cross_attention_dim
        if config.addition_embed_type == "text_image":
            self.encoder_hid_proj = TextImageProjection(config.encoder_hid_dim, context_dim, context_dim, **kw)
            self.add_embedding = TextImageConditioning(context_dim, context_dim, temb, **kw)
        else:
            self.encoder_hid_proj = ImageProjection(config.encoder_hid_dim, context_dim, **kw)
            kind = ImageHintConditioning if config.addition_embed_type == "image_hint" else ImageConditioning
            self.add_embedding = kind(config.encoder_hid_dim, temb, **kw)
        n, layers = len(ch), config.layers_per_block
        self.down_blocks = nn.ModuleList([DownBlock(ch[max(i - 1, 0)], ch[i], DOWN_TYPES[t], i < n - 1, config, **kw)
                                          for i, t in enumerate(config.down_block_types)])
        self.mid_block = MidBlock(ch[-1], config, **kw)
        skip_widths = [ch[0]] + [ch[i] for i in range(n) for _ in range(layers + (i < n - 1))]  # conv_in + every down output
        self.up_blocks = nn.ModuleList()
        for i, t in enumerate(config.up_block_types):
            skips = [skip_widths.pop() for _ in range(layers + 1)]
            self.up_blocks.append(
                UpBlock(ch[min(n - i, n - 1)], ch[n - 1 - i], skips, UP_TYPES[t], i < n - 1, config, **kw))
        self.conv_norm_out = operations.GroupNorm(config.norm_num_groups, ch[0], eps=config.norm_eps, dtype=dtype,
                                                  device=device)
        self.conv_out = operations.Conv2d(ch[0], config.out_channels, 3, padding=1, dtype=dtype, device=device)

    def forward(self, x, timesteps, image_embeds, text_embeds=None, text_hidden_states=None, hint=None):
        """Predict (B, 8, h, w): ε in channels 0-3, the learned-variance interpolation in 4-7.

        x: noisy latents, with the masked-image latents and mask already concatenated for inpainting (9 channels);
        image_embeds: (B, 768|1280) CLIP image embeddings; text_embeds / text_hidden_states: 2.1's MCLIP outputs;
        hint: (B, 3, 8h, 8w) depth hint in [0, 1] for the depth variant.
        """
        self.check_inputs(x, image_embeds, text_embeds, text_hidden_states, hint)
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(x.shape[0])
        t_emb = timestep_embedding(timesteps, self.config.block_out_channels[0], self.config.flip_sin_to_cos, self.config.freq_shift)
        emb = self.time_embedding(t_emb.to(x.dtype)) + self.add_embedding(image_embeds, text_embeds)
        if hint is not None:
            x = torch.cat([x, self.add_embedding.encode_hint(hint)], dim=1)
        context = self.encoder_hid_proj(image_embeds, text_hidden_states)
        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, emb, context)
            skips += block_skips
        h = self.mid_block(h, emb, context)
        for block in self.up_blocks:
            h = block(h, emb, context, skips)
        return self.conv_out(F.silu(self.conv_norm_out(h)))

    def check_inputs(self, x, image_embeds, text_embeds, text_hidden_states, hint):
        """Turn wiring mistakes into KandinskyErrors that say what to connect instead."""
        c = self.config
        if hint is not None and c.addition_embed_type != "image_hint":
            raise KandinskyError(f"A depth hint was given but the {c.variant} decoder has no hint input; use the 2.2 depth decoder.")
        want = 4 if c.addition_embed_type == "image_hint" else c.in_channels
        if x.ndim != 4 or x.shape[1] != want:
            raise KandinskyError(f"The {c.variant} decoder expects {want}-channel latents (B, {want}, h, w), got {tuple(x.shape)}; use "
                                 "MoVQ latents (4 channels, 1/8 of the image size).")
        if image_embeds.ndim != 2 or image_embeds.shape[-1] != c.image_embed_dim:
            got = image_embeds.shape[-1] if image_embeds.ndim else "scalar"
            hint_version = {768: " (a Kandinsky 2.1 embedding: use the 2.2 prior)", 1280: " (a Kandinsky 2.2 embedding: use the 2.1 prior)"}
            raise KandinskyError(f"The {c.variant} decoder takes {c.image_embed_dim}-dim image embeddings, got {got}-dim"
                                 f"{hint_version.get(got, '')}.")
        if 0 in x.shape or x.shape[-2] % c.latent_multiple or x.shape[-1] % c.latent_multiple:
            m = c.latent_multiple
            raise KandinskyError(f"Latent size {tuple(x.shape[-2:])} (batch {x.shape[0]}) must be a positive multiple of {m} "
                                 f"(images: multiples of {8 * m}); crop or resize the image, or pick such a latent size.")
        if c.addition_embed_type == "text_image" and (text_embeds is None or text_hidden_states is None):
            raise KandinskyError(f"The {c.variant} decoder needs the prompt's text embeddings (from the 2.1 text encoder).")
        if c.addition_embed_type == "image_hint":
            if hint is None:
                raise KandinskyError("The depth decoder needs a hint: a (B, 3, H, W) depth image in [0, 1] at the output size.")
            if hint.shape[0] != x.shape[0] or tuple(hint.shape[-2:]) != (x.shape[-2] * 8, x.shape[-1] * 8) or hint.shape[1] != 3:
                raise KandinskyError(f"Depth hint {tuple(hint.shape)} does not fit latents {tuple(x.shape)}: it must be "
                                     f"({x.shape[0]}, 3, {x.shape[-2] * 8}, {x.shape[-1] * 8}), the image size, 3 channels.")
