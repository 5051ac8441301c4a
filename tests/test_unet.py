"""The decoder UNet against diffusers' UNet2DConditionModel: same weights, same outputs, same keys and sizes."""
from dataclasses import asdict

import pytest
import torch
from diffusers import UNet2DConditionModel

from kandinsky_core.kandinsky2 import unet as U
from kandinsky_core.errors import KandinskyError

TINY = {"2.1": U.UNET_21_TINY, "2.1-inpaint": U.UNET_21_INPAINT_TINY, "2.2": U.UNET_22_TINY,
        "2.2-inpaint": U.UNET_22_INPAINT_TINY, "2.2-depth": U.UNET_22_DEPTH_TINY}
FULL = {"2.1": (U.UNET_21, 1_228_661_768), "2.1-inpaint": (U.UNET_21_INPAINT, 1_228_679_048),
        "2.2": (U.UNET_22, 1_253_057_288), "2.2-inpaint": (U.UNET_22_INPAINT, 1_253_074_568),
        "2.2-depth": (U.UNET_22_DEPTH, 1_253_429_212)}


def diffusers_unet(config):
    d = asdict(config)
    return UNet2DConditionModel(**d, class_embed_type=None, addition_embed_type_num_heads=64)


def unet_inputs(config, batch=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4 if config.variant == "2.2-depth" else config.in_channels, size, size, generator=g)
    image = torch.randn(batch, config.image_embed_dim, generator=g)
    kwargs = {}
    if config.addition_embed_type == "text_image":
        kwargs = {"text_embeds": torch.randn(batch, config.cross_attention_dim, generator=g),
                  "text_hidden_states": torch.randn(batch, 7, config.encoder_hid_dim, generator=g)}
    if config.addition_embed_type == "image_hint":
        kwargs["hint"] = torch.rand(batch, 3, size * 8, size * 8, generator=g)
    return x, image, kwargs


@pytest.mark.parametrize("variant", sorted(TINY))
def test_forward_matches_diffusers(variant):
    config = TINY[variant]
    torch.manual_seed(0)
    theirs = diffusers_unet(config).eval()
    ours = U.UNet(config).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x, image, kw = unet_inputs(config)
    added = {"image_embeds": image}
    if "text_embeds" in kw:
        added["text_embeds"] = kw["text_embeds"]
    if "hint" in kw:
        added["hint"] = kw["hint"]
    with torch.no_grad():
        for t in (torch.tensor(999), torch.tensor([3, 501])):
            expected = theirs(x, t, encoder_hidden_states=kw.get("text_hidden_states"), added_cond_kwargs=added).sample
            got = ours(x, t, image, **kw)
            assert got.shape == (x.shape[0], 8, *x.shape[-2:])
            assert (got - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("variant", sorted(FULL))
def test_full_size_shapes_and_keys_on_meta(variant):
    config, params = FULL[variant]
    ours = U.UNet(config, device="meta")
    assert sum(p.numel() for p in ours.parameters()) == params
    with torch.device("meta"):
        theirs = diffusers_unet(config)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert ours.config.variant == variant


def test_variant_detected_from_config_dict():
    cfg = {"_class_name": "UNet2DConditionModel", "addition_embed_type": "image_hint", "in_channels": 8,
           "encoder_hid_dim_type": "image_proj", "encoder_hid_dim": 1280, "block_out_channels": [384, 768, 1152, 1536],
           "time_embedding_type": "positional", "sample_size": 64}
    assert U.UNetConfig.from_dict(cfg) == U.UNET_22_DEPTH


def test_stable_diffusion_config_is_refused():
    sd = {"in_channels": 4, "addition_embed_type": None, "down_block_types": ["CrossAttnDownBlock2D"] * 4}
    with pytest.raises(KandinskyError, match="not a Kandinsky"):
        U.UNetConfig.from_dict(sd)


def test_wrong_embedding_width_names_the_prior():
    model = U.UNet(U.UNET_22_TINY)
    x, _, _ = unet_inputs(U.UNET_22_TINY)
    with pytest.raises(KandinskyError, match="takes 32-dim image embeddings, got 20-dim"):
        model(x, 10, torch.zeros(2, 20))
    full = U.UNet(U.UNET_22, device="meta")
    with pytest.raises(KandinskyError, match="1280-dim image embeddings, got 768-dim.*2.1 embedding"):
        full(torch.zeros(1, 4, 64, 64, device="meta"), 10, torch.zeros(1, 768, device="meta"))


def test_wiring_errors():
    depth = U.UNet(U.UNET_22_DEPTH_TINY)
    x, image, kw = unet_inputs(U.UNET_22_DEPTH_TINY)
    with pytest.raises(KandinskyError, match="needs a hint"):
        depth(x, 10, image)
    with pytest.raises(KandinskyError, match="does not fit latents"):
        depth(x, 10, image, hint=kw["hint"][:, :, :64, :64])
    plain = U.UNet(U.UNET_22_TINY)
    x, image, _ = unet_inputs(U.UNET_22_TINY)
    with pytest.raises(KandinskyError, match="no hint input"):
        plain(x, 10, image, hint=kw["hint"])
    with pytest.raises(KandinskyError, match="multiple of 2"):
        plain(x[:, :, :15, :15], 10, image)
    with pytest.raises(KandinskyError, match="9-channel"):
        U.UNet(U.UNET_22_INPAINT_TINY)(x, 10, image)
    with pytest.raises(KandinskyError, match="text embeddings"):
        U.UNet(U.UNET_21_TINY)(x, 10, image)
