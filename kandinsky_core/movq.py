"""MoVQ, the image autoencoder of Kandinsky 2.1, 2.2 and 3 (diffusers `VQModel` with `norm_type="spatial"`).

The encoder is a plain VQGAN encoder. The decoder is "MoVQ" (https://arxiv.org/abs/2209.09002): every normalisation is
a SpatialNorm whose scale and shift are predicted from the latent itself, so the latent conditions the whole decoder.
Kandinsky 3 uses the same network at twice the width (`MOVQ_K3`). Module names follow diffusers, so its
`movq/diffusion_pytorch_model.safetensors` loads with `strict=True`.
"""
import os
import re
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from . import attention, config
from .errors import KandinskyError
from .weights import (TORCH_EXTENSIONS, build, cast, component_path, count_indices, describe, load_model, load_pickle,
                      load_weights, read_config, save_model)

# Submodules are registered in diffusers' order, so state-dict keys come out in its order too.
# diffusers' SpatialNorm hard-codes 32 groups, whatever `norm_num_groups` says (it only reaches the encoder).
SPATIAL_NORM_GROUPS = 32
EPS = 1e-6
ENCODER_BLOCKS = {"DownEncoderBlock2D": False, "AttnDownEncoderBlock2D": True}  # block type -> has attention
DECODER_BLOCKS = {"UpDecoderBlock2D": False, "AttnUpDecoderBlock2D": True}


@dataclass
class MoVQConfig:
    """The diffusers `VQModel` config keys that shape the network."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple = ("DownEncoderBlock2D",)
    up_block_types: tuple = ("UpDecoderBlock2D",)
    block_out_channels: tuple = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 3
    num_vq_embeddings: int = 256
    norm_num_groups: int = 32
    vq_embed_dim: int | None = None  # None: same as latent_channels
    norm_type: str = "group"
    mid_block_add_attention: bool = True

    def __post_init__(self):
        if self.norm_type != "spatial":
            raise KandinskyError(f"MoVQ norm_type {self.norm_type!r} is not supported: only the Kandinsky MoVQ "
                                 "(norm_type 'spatial') is; load a Kandinsky movq/config.json.")
        if self.act_fn != "silu":
            raise KandinskyError(f"MoVQ act_fn {self.act_fn!r} is not supported: only 'silu' is.")
        unknown = set(self.down_block_types) - set(ENCODER_BLOCKS) | set(self.up_block_types) - set(DECODER_BLOCKS)
        if unknown:
            raise KandinskyError(f"Unknown MoVQ block types {sorted(unknown)}: use {list(ENCODER_BLOCKS)} for "
                                 f"down_block_types and {list(DECODER_BLOCKS)} for up_block_types.")
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise KandinskyError(f"MoVQ config has {n} block_out_channels but {len(self.down_block_types)} down and "
                                 f"{len(self.up_block_types)} up block types: give one block type per level.")

    @classmethod
    def from_dict(cls, d):
        """Config from a diffusers `movq/config.json` dict."""
        return config.from_dict(cls, d)

    @property
    def scale_factor(self):
        """How many image pixels one latent pixel covers per side."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def embed_dim(self):
        """Channels of the codebook vectors (and of the latents `encode` returns)."""
        return self.vq_embed_dim or self.latent_channels


# kandinsky-community/kandinsky-2-1 and kandinsky-2-2-decoder `movq/`: 67,832,495 params.
MOVQ = MoVQConfig(
    block_out_channels=(128, 256, 256, 512),
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
    up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"),
    layers_per_block=2, latent_channels=4, num_vq_embeddings=16384, vq_embed_dim=4, norm_type="spatial",
)
# kandinsky-community/kandinsky-3 `movq/`: the same MoVQ at twice the width, 270,669,103 params, same key names.
MOVQ_K3 = replace(MOVQ, block_out_channels=(256, 512, 512, 1024))

# The MoVQ of diffusers' Kandinsky fast tests (scale factor 2).
MOVQ_TINY = MoVQConfig(
    block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
    up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
    layers_per_block=1, latent_channels=4, norm_num_groups=8, num_vq_embeddings=12, vq_embed_dim=4,
    norm_type="spatial",
)
# The tiny MoVQ of the tiny checkpoints (tiny.py, kandinsky3/tiny.py): it halves three times like the published ones,
# so their latents are 1/8 of the image size too.
MOVQ_TINY8 = replace(MOVQ_TINY, block_out_channels=(32, 32, 64, 64),
                     down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
                     up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3)


class SpatialNorm(torch.nn.Module):
    """GroupNorm whose per-pixel scale and shift come from the latent `zq`, resized to the feature map."""

    def __init__(self, channels, zq_channels, *, operations=torch.nn, dtype=None, device=None):
        super().__init__()
        self.norm_layer = operations.GroupNorm(SPATIAL_NORM_GROUPS, channels, eps=EPS, dtype=dtype, device=device)
        self.conv_y = operations.Conv2d(zq_channels, channels, 1, dtype=dtype, device=device)
        self.conv_b = operations.Conv2d(zq_channels, channels, 1, dtype=dtype, device=device)

    def forward(self, x, zq):
        zq = F.interpolate(zq, size=x.shape[-2:], mode="nearest")
        return self.norm_layer(x) * self.conv_y(zq) + self.conv_b(zq)


def make_norm(channels, groups, zq_channels, *, operations=torch.nn, dtype=None, device=None):
    """SpatialNorm in the decoder (zq_channels given), plain GroupNorm in the encoder."""
    if zq_channels:
        return SpatialNorm(channels, zq_channels, operations=operations, dtype=dtype, device=device)
    return operations.GroupNorm(groups, channels, eps=EPS, dtype=dtype, device=device)


def apply_norm(norm, x, zq):
    """Run a norm made by `make_norm`; only SpatialNorm takes the latent."""
    return norm(x) if zq is None else norm(x, zq)


class ResBlock(torch.nn.Module):
    """norm, SiLU, conv3x3, norm, SiLU, conv3x3, plus a (1x1-projected when channels change) skip."""

    def __init__(self, in_channels, out_channels, groups, zq_channels, *, operations=torch.nn, dtype=None,
                 device=None):
        super().__init__()
        kw = dict(operations=operations, dtype=dtype, device=device)
        self.norm1 = make_norm(in_channels, groups, zq_channels, **kw)
        self.conv1 = operations.Conv2d(in_channels, out_channels, 3, padding=1, dtype=dtype, device=device)
        self.norm2 = make_norm(out_channels, groups, zq_channels, **kw)
        self.conv2 = operations.Conv2d(out_channels, out_channels, 3, padding=1, dtype=dtype, device=device)
        self.conv_shortcut = (operations.Conv2d(in_channels, out_channels, 1, dtype=dtype, device=device)
                              if in_channels != out_channels else None)

    def forward(self, x, zq=None):
        h = self.conv1(F.silu(apply_norm(self.norm1, x, zq)))
        h = self.conv2(F.silu(apply_norm(self.norm2, h, zq)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class AttnBlock(torch.nn.Module):
    """Single-head self-attention over all pixels, with a residual; GroupNorm (encoder) or SpatialNorm (decoder)."""

    def __init__(self, channels, groups, zq_channels, *, operations=torch.nn, dtype=None, device=None):
        super().__init__()
        if zq_channels:
            self.spatial_norm = SpatialNorm(channels, zq_channels, operations=operations, dtype=dtype, device=device)
        else:
            self.group_norm = operations.GroupNorm(groups, channels, eps=EPS, dtype=dtype, device=device)
        self.to_q = operations.Linear(channels, channels, dtype=dtype, device=device)
        self.to_k = operations.Linear(channels, channels, dtype=dtype, device=device)
        self.to_v = operations.Linear(channels, channels, dtype=dtype, device=device)
        self.to_out = torch.nn.ModuleList([operations.Linear(channels, channels, dtype=dtype, device=device)])

    def forward(self, x, zq=None):
        b, c, height, width = x.shape
        # GroupNorm over the (B, C, H*W) view, as diffusers does: the 3-D kernel rounds differently from the 4-D one.
        h = self.group_norm(x.flatten(2)) if zq is None else self.spatial_norm(x, zq).flatten(2)
        h = h.transpose(1, 2)  # (B, H*W, C)
        h = attention.attention(self.to_q(h), self.to_k(h), self.to_v(h), heads=1)
        h = self.to_out[0](h).transpose(1, 2).reshape(b, c, height, width)
        # h first, as in diffusers: the sum then keeps h's channels-last layout, and later GroupNorms round the same.
        return h + x


class Downsample(torch.nn.Module):
    """Halve H and W with a stride-2 conv3x3, padded on the right and bottom only (as the VQGAN was trained)."""

    def __init__(self, channels, *, operations=torch.nn, dtype=None, device=None):
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, stride=2, dtype=dtype, device=device)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(torch.nn.Module):
    """Double H and W: nearest-neighbour upscale, then conv3x3."""

    def __init__(self, channels, *, operations=torch.nn, dtype=None, device=None):
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, padding=1, dtype=dtype, device=device)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Block(torch.nn.Module):
    """One resolution level: ResBlocks (each followed by attention if `attn`), then an optional down- or upsampler."""

    def __init__(self, in_channels, out_channels, layers, groups, attn, zq_channels=None, resample=None, *,
                 operations=torch.nn, dtype=None, device=None):
        super().__init__()
        kw = dict(operations=operations, dtype=dtype, device=device)
        self.attentions = torch.nn.ModuleList(
            AttnBlock(out_channels, groups, zq_channels, **kw) for _ in range(layers if attn else 0))
        self.resnets = torch.nn.ModuleList(
            ResBlock(in_channels if i == 0 else out_channels, out_channels, groups, zq_channels, **kw)
            for i in range(layers))
        self.downsamplers = torch.nn.ModuleList([Downsample(out_channels, **kw)] if resample == "down" else [])
        self.upsamplers = torch.nn.ModuleList([Upsample(out_channels, **kw)] if resample == "up" else [])

    def forward(self, x, zq=None):
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, zq)
            if self.attentions:
                x = self.attentions[i](x, zq)
        for resample in (*self.downsamplers, *self.upsamplers):
            x = resample(x)
        return x


class MidBlock(torch.nn.Module):
    """ResBlock, attention (unless disabled), ResBlock at the lowest resolution."""

    def __init__(self, channels, groups, add_attention, zq_channels=None, *, operations=torch.nn, dtype=None,
                 device=None):
        super().__init__()
        kw = dict(operations=operations, dtype=dtype, device=device)
        self.attentions = torch.nn.ModuleList([AttnBlock(channels, groups, zq_channels, **kw)] if add_attention else [])
        self.resnets = torch.nn.ModuleList(ResBlock(channels, channels, groups, zq_channels, **kw) for _ in range(2))

    def forward(self, x, zq=None):
        x = self.resnets[0](x, zq)
        for attn in self.attentions:
            x = attn(x, zq)
        return self.resnets[1](x, zq)


class Encoder(torch.nn.Module):
    """Image (B, in_channels, H, W) -> latent (B, latent_channels, H/f, W/f)."""

    def __init__(self, cfg, *, operations=torch.nn, dtype=None, device=None):
        super().__init__()
        kw = dict(operations=operations, dtype=dtype, device=device)
        channels, groups = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = operations.Conv2d(cfg.in_channels, channels[0], 3, padding=1, dtype=dtype, device=device)
        self.down_blocks = torch.nn.ModuleList(
            Block(channels[max(i - 1, 0)], channels[i], cfg.layers_per_block, groups, ENCODER_BLOCKS[kind],
                  resample="down" if i < len(channels) - 1 else None, **kw)
            for i, kind in enumerate(cfg.down_block_types))
        self.mid_block = MidBlock(channels[-1], groups, cfg.mid_block_add_attention, **kw)
        self.conv_norm_out = operations.GroupNorm(groups, channels[-1], eps=EPS, dtype=dtype, device=device)
        self.conv_out = operations.Conv2d(channels[-1], cfg.latent_channels, 3, padding=1, dtype=dtype, device=device)

    def forward(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(torch.nn.Module):
    """Latent (B, latent_channels, h, w) -> image (B, out_channels, h*f, w*f), every norm conditioned on `zq`."""

    def __init__(self, cfg, *, operations=torch.nn, dtype=None, device=None):
        super().__init__()
        kw = dict(operations=operations, dtype=dtype, device=device)
        channels, zq = cfg.block_out_channels[::-1], cfg.latent_channels
        self.conv_in = operations.Conv2d(cfg.latent_channels, channels[0], 3, padding=1, dtype=dtype, device=device)
        self.up_blocks = torch.nn.ModuleList(
            Block(channels[max(i - 1, 0)], channels[i], cfg.layers_per_block + 1, None, DECODER_BLOCKS[kind],
                  zq_channels=zq, resample="up" if i < len(channels) - 1 else None, **kw)
            for i, kind in enumerate(cfg.up_block_types))
        self.mid_block = MidBlock(channels[0], None, cfg.mid_block_add_attention, zq_channels=zq, **kw)
        self.conv_norm_out = SpatialNorm(channels[-1], zq, **kw)
        self.conv_out = operations.Conv2d(channels[-1], cfg.out_channels, 3, padding=1, dtype=dtype, device=device)

    def forward(self, x, zq):
        x = self.mid_block(self.conv_in(x), zq)
        for block in self.up_blocks:
            x = block(x, zq)
        return self.conv_out(F.silu(self.conv_norm_out(x, zq)))


class VectorQuantizer(torch.nn.Module):
    """Snap each latent pixel to its nearest codebook vector (Euclidean)."""

    def __init__(self, num_embeddings, embed_dim, *, operations=torch.nn, dtype=None, device=None):
        super().__init__()
        self.embedding = operations.Embedding(num_embeddings, embed_dim, dtype=dtype, device=device)

    def forward(self, z):
        codebook = self.embedding.weight.to(dtype=z.dtype, device=z.device)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*h*w, C)
        nearest = torch.cdist(flat, codebook).argmin(dim=1)  # cdist as in diffusers, so near-ties pick the same code
        return codebook[nearest].reshape(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)


class MoVQ(torch.nn.Module):
    """The Kandinsky MoVQ: `encode` images in [-1, 1] to latents, `decode` latents back to images."""

    def __init__(self, config, *, operations=torch.nn, dtype=None, device=None):
        super().__init__()
        self.config = config
        kw = dict(operations=operations, dtype=dtype, device=device)
        self.encoder = Encoder(config, **kw)
        self.quant_conv = operations.Conv2d(config.latent_channels, config.embed_dim, 1, dtype=dtype, device=device)
        self.quantize = VectorQuantizer(config.num_vq_embeddings, config.embed_dim, **kw)
        self.post_quant_conv = operations.Conv2d(config.embed_dim, config.latent_channels, 1, dtype=dtype,
                                                 device=device)
        self.decoder = Decoder(config, **kw)

    def encode(self, x):
        """Image (B, 3, H, W) in [-1, 1] -> unquantized, unscaled latents (B, 4, H/8, W/8) for the real MoVQ."""
        self._check_image(x)
        return self.quant_conv(self.encoder(x)).contiguous()

    def decode(self, z, force_not_quantize=True):
        """Latents -> image in about [-1, 1]; the Kandinsky pipelines never quantize (force_not_quantize=True)."""
        self._check_latent(z)
        quant = z if force_not_quantize else self.quantize(z)
        # SpatialNorm is conditioned on the latent as given, before post_quant_conv.
        return self.decoder(self.post_quant_conv(quant), quant)

    def _check_image(self, x):
        c = self.config.in_channels
        if x.ndim != 4 or x.shape[1] != c:
            raise KandinskyError(f"MoVQ.encode needs an image tensor of shape (B, {c}, H, W), got "
                                 f"{tuple(x.shape)}: pass channels-first images with {c} channels.")
        f = self.config.scale_factor
        h, w = x.shape[-2:]
        if h % f or w % f:
            raise KandinskyError(
                f"MoVQ.encode got a {h}x{w} (HxW) image, but height and width must be multiples of {f}: "
                f"resize or crop to {h // f * f or f}x{w // f * f or f} or pad to {-(-h // f) * f}x{-(-w // f) * f}.")

    def _check_latent(self, z):
        c = self.config.embed_dim
        if z.ndim != 4 or z.shape[1] != c:
            raise KandinskyError(f"MoVQ.decode needs latents of shape (B, {c}, h, w), got {tuple(z.shape)}: pass "
                                 "the latents a Kandinsky decoder or MoVQ.encode produced.")


# ---------------------------------------------------------------------------------------------------------------------
# Loading: a diffusers movq/ folder or one safetensors file (2.x and Kandinsky 3 alike).

MOVQ_CLASS = "VQModel"
MOVQ_KIND = "movq"  # save_movq's marker: the loaders list such files


def is_movq(shapes):
    """True if tensor names are those of a MoVQ (a codebook and a decoder)."""
    return "quantize.embedding.weight" in shapes and "decoder.conv_in.weight" in shapes


def movq_config_from_shapes(shapes):
    """Rebuild a MoVQ config from tensor shapes (32 norm groups, as published)."""
    n = count_indices(shapes, r"encoder\.down_blocks\.(\d+)\.")
    ch = tuple(shapes[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"][0] for i in range(n))
    down = tuple("AttnDownEncoderBlock2D" if f"encoder.down_blocks.{i}.attentions.0.to_q.weight" in shapes else "DownEncoderBlock2D" for i in range(n))
    up = tuple("AttnUpDecoderBlock2D" if f"decoder.up_blocks.{i}.attentions.0.to_q.weight" in shapes else "UpDecoderBlock2D" for i in range(n))
    codes, dim = shapes["quantize.embedding.weight"]
    return MoVQConfig(block_out_channels=ch, down_block_types=down, up_block_types=up, norm_type="spatial",
                      layers_per_block=count_indices(shapes, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."),
                      latent_channels=shapes["quant_conv.weight"][0], num_vq_embeddings=codes, vq_embed_dim=dim,
                      in_channels=shapes["encoder.conv_in.weight"][1], out_channels=shapes["decoder.conv_out.weight"][0])


def read_movq_config(path):
    """The MoVQ config at `path` (movq/ folder or one file): config.json, our file metadata, or tensor shapes."""
    def check(shapes):
        if not is_movq(shapes):
            raise KandinskyError(f"{path} is not a MoVQ: it looks like {describe(shapes)}.")
    return read_config(path, MoVQConfig, MOVQ_CLASS, movq_config_from_shapes, check, what="a Kandinsky MoVQ")


def save_movq(path, movq):
    """Save a loaded MoVQ as one safetensors file in its stored dtype, config in the metadata (load_movq reads it)."""
    return save_model(path, movq.state_dict(), MOVQ_KIND, config.to_dict(movq.config, MOVQ_CLASS))


def load_movq(path, *, dtype=None, device="cpu", operations=torch.nn):
    """The MoVQ from a repo folder, its movq/ folder or one file: diffusers' layout, or the original `movq.pt`."""
    path = component_path(os.fspath(path), "movq")
    if os.path.isfile(path) and path.endswith(TORCH_EXTENSIONS):
        top = load_pickle(path)
        if is_original_movq(top):
            return _load_original(path, top, dtype=dtype, device=device, operations=operations)
    return load_model(MoVQ, read_movq_config(path), path, "movq", dtype=dtype, device=device, operations=operations)


# ---------------------------------------------------------------------------------------------------------------------
# The original VQGAN names of ai-forever's movq.pt (Kandinsky 3.0 / 3.1), as (original, ours) regular expressions.
# The original wraps every encoder GroupNorm in a SpatialNorm without latent, lists decoder levels the other way
# round, stores attention projections as 1x1 convolutions and has no codebook.

CODEBOOK = (16384, 4)  # diffusers' MoVQ has one; no Kandinsky pipeline quantizes, so zeros stand in for it
ORIGINAL_RULES = [
    (r"^encoder\.(.*)\.norm_layer\.", r"encoder.\1."),  # the original wraps every encoder GroupNorm in a SpatialNorm
    (r"^(encoder|decoder)\.mid\.block_(\d)\.", lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}."),
    (r"^(encoder|decoder)\.mid\.attn_1\.", r"\1.mid_block.attentions.0."),
    (r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets."),
    (r"^encoder\.down\.(\d+)\.attn\.", r"encoder.down_blocks.\1.attentions."),
    (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
    (r"^decoder\.up\.(\d+)\.block\.", r"decoder.up.\1.resnets."),
    (r"^decoder\.up\.(\d+)\.attn\.", r"decoder.up.\1.attentions."),
    (r"^decoder\.up\.(\d+)\.upsample\.", r"decoder.up.\1.upsamplers.0."),
    (r"\.nin_shortcut\.", ".conv_shortcut."), (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
    (r"\.attentions\.(\d+)\.q\.", r".attentions.\1.to_q."), (r"\.attentions\.(\d+)\.k\.", r".attentions.\1.to_k."),
    (r"\.attentions\.(\d+)\.v\.", r".attentions.\1.to_v."),
    (r"\.attentions\.(\d+)\.proj_out\.", r".attentions.\1.to_out.0."),
]


def _apply_rules(key):
    for pattern, replacement in ORIGINAL_RULES:
        key = re.sub(pattern, replacement, key)
    return key


def is_original_movq(top):
    """Whether a loaded pickle is an original MoVQ state dict."""
    return isinstance(top, dict) and "encoder.down.0.block.0.conv1.weight" in top and "decoder.conv_out.weight" in top


def original_key(key, levels):
    """Our (diffusers) name of an original MoVQ tensor; decoder levels run in the opposite order."""
    key = _apply_rules(key)
    key = re.sub(r"^decoder\.up\.(\d+)\.", lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.", key)
    if key.startswith("encoder.") and ".attentions." in key:
        key = re.sub(r"\.norm\.", ".group_norm.", key)
    elif key.startswith("decoder.") and ".attentions." in key:
        key = re.sub(r"\.norm\.", ".spatial_norm.", key)
    return key


def original_config(shapes):
    """Our MoVQ config for an original `movq.pt` (mapped key shapes; 32 norm groups and the codebook as published)."""
    return movq_config_from_shapes({**shapes, "quantize.embedding.weight": CODEBOOK})


def original_tensors(top):
    """(our key, tensor) pairs of an original MoVQ state dict: attention 1×1 convolutions become linear weights."""
    levels = count_indices(top, r"encoder\.down\.(\d+)\.")
    for key, t in top.items():
        ours = original_key(key, levels)
        yield ours, t[:, :, 0, 0] if ".attentions." in ours and ".to_" in ours and t.ndim == 4 else t


def _load_original(path, top, *, dtype, device, operations):
    """The MoVQ of an original `movq.pt` (a zero codebook stands in for the one the file lacks)."""
    tensors = dict(original_tensors(top))
    config = original_config({k: tuple(v.shape) for k, v in tensors.items()})
    tensors["quantize.embedding.weight"] = torch.zeros(CODEBOOK)
    model = build(MoVQ, config, "MoVQ", operations=operations, dtype=dtype)
    reference = model if operations is torch.nn else build(MoVQ, config, "MoVQ")
    return load_weights(model, path, reference=reference, tensors=((k, cast(v, dtype, device)) for k, v in tensors.items()),
                        mismatch_hint="it is not an original Kandinsky 3 movq.pt.").eval()
