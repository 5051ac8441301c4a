"""MoVQ parity against diffusers' VQModel (the oracle), full-size structure on the meta device, and input errors."""
import dataclasses
import types

import pytest
import torch
from diffusers import VQModel

from kandinsky_core.errors import KandinskyError
from kandinsky_core.movq import MOVQ, MOVQ_TINY, MoVQ, MoVQConfig

# kandinsky-community/kandinsky-2-2-decoder movq/config.json (same for 2.1).
PUBLISHED = {
    "act_fn": "silu", "block_out_channels": [128, 256, 256, 512],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "norm_type": "spatial",
    "num_vq_embeddings": 16384, "out_channels": 3, "sample_size": 32, "scaling_factor": 0.18215,
    "up_block_types": ["AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
    "vq_embed_dim": 4,
}
# diffusers' Kandinsky fast tests: the t2i/img2img/inpaint MoVQ and the controlnet one.
TINY = {
    "block_out_channels": [32, 64], "down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 8, "norm_type": "spatial",
    "num_vq_embeddings": 12, "out_channels": 3, "up_block_types": ["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
    "vq_embed_dim": 4,
}
CONTROLNET = {
    **TINY, "block_out_channels": [32, 32, 64, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
    "up_block_types": ["AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
}
NO_MID_ATTENTION = {**TINY, "mid_block_add_attention": False}
TOL = 1e-5


def build_pair(d):
    """diffusers' VQModel under seed 0 and ours with its weights loaded strictly."""
    torch.manual_seed(0)
    theirs = VQModel(**d).eval()
    ours = MoVQ(MoVQConfig.from_dict(d)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def max_diff(a, b):
    return (a - b).abs().max().item()


def test_presets_match_published_configs():
    assert MoVQConfig.from_dict(PUBLISHED) == MOVQ
    assert MoVQConfig.from_dict(TINY) == MOVQ_TINY
    assert MOVQ.scale_factor == 8 and MOVQ_TINY.scale_factor == 2


@pytest.mark.parametrize("d, size", [(TINY, 32), (CONTROLNET, 64), (NO_MID_ATTENTION, 16)],
                         ids=["tiny", "controlnet", "no_mid_attention"])
def test_parity_with_diffusers(d, size):
    theirs, ours = build_pair(d)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    latent = torch.randn(2, 4, size // ours.config.scale_factor, size // ours.config.scale_factor, generator=g)
    with torch.no_grad():
        encoded = ours.encode(image)
        assert encoded.shape == latent.shape
        # diffusers returns a channels-last view (its attention block's last reshape); ours is a plain tensor, so a UNet
        # fed it directly runs the same kernels as one fed any other latent
        assert encoded.is_contiguous()
        assert max_diff(encoded, theirs.encode(image).latents) < TOL
        plain = ours.decode(latent)
        assert plain.shape == image.shape
        assert max_diff(plain, theirs.decode(latent, force_not_quantize=True).sample) < TOL
        quantized = ours.decode(latent, force_not_quantize=False)
        assert max_diff(quantized, theirs.decode(latent, force_not_quantize=False).sample) < TOL
    assert max_diff(plain, quantized) > 1e-2  # quantization really happened


def test_quantize_snaps_to_nearest_code():
    model = MoVQ(MOVQ_TINY)
    codebook = model.quantize.embedding.weight.detach()
    picks = torch.tensor([3, 0, 11, 3, 7, 5])
    z = (codebook[picks] + 1e-4).T.reshape(1, 4, 2, 3)  # (B, C, h, w), each pixel next to a chosen code
    expected = codebook[picks].T.reshape(1, 4, 2, 3)
    assert torch.equal(model.quantize(z), expected)


def test_full_size_on_meta_matches_diffusers_structure():
    ours = MoVQ(MOVQ, device="meta")
    with torch.device("meta"):
        theirs = VQModel(**PUBLISHED)
    assert sum(p.numel() for p in ours.parameters()) == 67_832_495
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    latent = ours.encode(torch.empty(1, 3, 512, 384, device="meta"))
    assert latent.shape == (1, 4, 64, 48)
    assert ours.decode(latent).shape == (1, 3, 512, 384)


def test_layers_are_built_by_operations():
    names = ("Conv2d", "GroupNorm", "Linear", "Embedding")
    ops = types.SimpleNamespace(**{n: type(n, (getattr(torch.nn, n),), {}) for n in names})
    model = MoVQ(MOVQ_TINY, operations=ops, dtype=torch.float16, device="meta")
    owners = [m for m in model.modules() if list(m.parameters(recurse=False))]
    assert owners and all(type(m) in vars(ops).values() for m in owners)
    assert all(p.dtype == torch.float16 for p in model.parameters())


@pytest.mark.parametrize("shape, match", [
    ((3, 512, 512), r"\(B, 3, H, W\), got \(3, 512, 512\)"),
    ((1, 4, 512, 512), r"\(B, 3, H, W\), got \(1, 4, 512, 512\)"),
    ((1, 3, 500, 512), r"multiples of 8: resize or crop to 496x512 or pad to 504x512"),
    ((1, 3, 512, 4), r"multiples of 8: resize or crop to 512x8 or pad to 512x8"),
])
def test_encode_rejects_bad_images(shape, match):
    with pytest.raises(KandinskyError, match=match):
        MoVQ(MOVQ, device="meta").encode(torch.empty(shape, device="meta"))


def test_decode_rejects_bad_latents():
    with pytest.raises(KandinskyError, match=r"\(B, 4, h, w\), got \(1, 3, 8, 8\)"):
        MoVQ(MOVQ_TINY, device="meta").decode(torch.empty(1, 3, 8, 8, device="meta"))


@pytest.mark.parametrize("change, match", [
    ({"norm_type": "group"}, "norm_type 'group' is not supported"),
    ({"act_fn": "gelu"}, "act_fn 'gelu' is not supported"),
    ({"down_block_types": ("DownEncoderBlock2D", "CrossAttnDownBlock2D")}, "Unknown MoVQ block types"),
    ({"up_block_types": ("UpDecoderBlock2D",)}, "2 block_out_channels but 2 down and 1 up"),
])
def test_config_rejects_unsupported(change, match):
    with pytest.raises(KandinskyError, match=match):
        dataclasses.replace(MOVQ_TINY, **change)


def test_group_norm_vqmodel_config_is_rejected():
    with pytest.raises(KandinskyError, match="norm_type 'group'"):
        MoVQConfig.from_dict({k: v for k, v in PUBLISHED.items() if k != "norm_type"})
