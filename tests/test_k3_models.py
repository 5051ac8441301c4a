"""The Kandinsky 3 UNet and MoVQ against diffusers' Kandinsky3UNet and VQModel: same weights, same outputs, keys, sizes."""
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from k3_oracle import copy_of, randomize, their_movq, their_unet

import diffusers
from kandinsky_core.config import to_dict
from kandinsky_core.errors import KandinskyError
from kandinsky_core.kandinsky3.unet import UNET3, UNET3_TINY, UNet
from kandinsky_core.movq import MOVQ_K3, MOVQ_TINY, MoVQ

KEYS_TSV = Path("/work/shared/reference/kandinsky3_unet_keys.tsv")
# A 4-level model (every block kind, three resamplings) small enough for CPU; groups 4, head width 8.
UNET3_SMALL = replace(UNET3, block_out_channels=(32, 64, 64, 128), time_embedding_dim=16, cross_attention_dim=16,
                      encoder_hid_dim=24, attention_head_dim=8, groups=4, layers_per_block=2)


def unet_inputs(config, batch=2, size=(16, 24), tokens=7, seed=0):
    """Latents, T5 states and a mask with a fully masked row and a partly masked one."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, *size, generator=g)
    context = torch.randn(batch, tokens, config.encoder_hid_dim, generator=g)
    mask = torch.zeros(batch, tokens, dtype=torch.long)
    mask[-1, :4] = 1
    return x, context, mask


@pytest.mark.parametrize("config", [UNET3_TINY, UNET3_SMALL], ids=["tiny", "4-level"])
def test_unet_matches_diffusers(config):
    theirs = their_unet(config)
    ours = copy_of(UNet(config), theirs)
    x, context, mask = unet_inputs(config, size=(8, 16) if config is UNET3_TINY else (16, 24))
    with torch.no_grad():
        for t in (torch.tensor(961), torch.tensor([1, 501]), 41):
            expected = theirs(x, t, encoder_hidden_states=context, encoder_attention_mask=mask).sample
            got = ours(x, t, context, mask)
            assert got.shape == x.shape
            assert (got - expected).abs().max().item() <= 1e-5


def test_timestep_and_padded_tokens_reach_the_output():
    """With random weights (not diffusers' zero-initialised norms, see diffusers/models/unets/unet_kandinsky3.py) a
    parity test can see both; with those zeros the output depends on neither the timestep nor the padded tokens."""
    ours = randomize(UNet(UNET3_SMALL), 0)
    x, context, mask = unet_inputs(UNET3_SMALL)
    changed = context.clone()
    changed[-1, 5:] += 3  # padded positions: they enter only through the pooling mean
    with torch.no_grad():
        reference = ours(x, 41, context, mask)
        assert (ours(x, 961, context, mask) - reference).abs().max() > 1e-2
        assert (ours(x, 41, changed, mask) - reference).abs().max() > 1e-3


def test_unet_without_mask_means_every_token():
    ours = randomize(UNet(UNET3_TINY), 1)
    x, context, _ = unet_inputs(UNET3_TINY, size=(8, 8))
    with torch.no_grad():
        assert torch.equal(ours(x, 5, context), ours(x, 5, context, torch.ones(context.shape[:2])))


def test_full_size_unet_on_meta_matches_published_keys():
    ours = UNet(UNET3, device="meta")
    assert sum(p.numel() for p in ours.parameters()) == 3_055_348_228
    rows = [line.rstrip("\n").split("\t") for line in KEYS_TSV.read_text().splitlines()]
    assert len(rows) == 1071
    assert [(k, str(tuple(v.shape))) for k, v in ours.state_dict().items()] == [(k, s) for k, s in rows]


def test_movq_matches_diffusers_exactly():
    theirs = their_movq()
    ours = copy_of(MoVQ(MOVQ_TINY), theirs)
    image = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latents = ours.encode(image)
        assert torch.equal(latents, theirs.encode(image).latents)
        assert torch.equal(ours.decode(latents), theirs.decode(latents, force_not_quantize=True).sample)


def test_full_size_k3_movq_on_meta():
    ours = MoVQ(MOVQ_K3, device="meta")
    kwargs = {k: v for k, v in to_dict(MOVQ_K3, "VQModel").items() if k != "_class_name"}
    with torch.device("meta"):
        theirs = diffusers.VQModel(**kwargs)
    assert sum(p.numel() for p in ours.parameters()) == 270_669_103
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}


def test_config_round_trips_through_diffusers_dict():
    d = {"_class_name": "Kandinsky3UNet", "_diffusers_version": "0.24.0.dev0", **asdict(UNET3)}
    from kandinsky_core.kandinsky3.unet import UNetConfig
    assert UNetConfig.from_dict(d) == UNET3


@pytest.mark.parametrize("bad, message", [
    ({"context": torch.randn(2, 7, 48)}, "text hidden states of shape"),
    ({"mask": torch.ones(2, 5)}, "attention mask has shape"),
    ({"x": torch.randn(2, 4, 8, 7)}, "multiple of 2"),
    ({"x": torch.randn(2, 9, 8, 8)}, "4-channel latents"),
    ({"context": torch.randn(1, 7, 32)}, "one row per latent"),
])
def test_unet_wiring_errors(bad, message):
    ours = UNet(UNET3_TINY)
    x, context, mask = unet_inputs(UNET3_TINY, size=(8, 8))
    args = {"x": x, "context": context, "mask": mask, **bad}
    with pytest.raises(KandinskyError, match=message):
        ours(args["x"], 1, args["context"], args["mask"])
