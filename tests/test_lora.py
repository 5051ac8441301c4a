"""kandinsky_core.lora on tiny models: both namings, alpha, the merge, strength 0, removal, stacking, bad files."""
import copy

import pytest
import torch

from kandinsky_core import lora as L
from kandinsky_core.errors import KandinskyError
from kandinsky_core.kandinsky2.prior import PRIOR_22, PRIOR_TINY, PriorTransformer
from kandinsky_core.kandinsky2.unet import UNET_21, UNET_22, UNET_22_DEPTH_TINY, UNET_22_TINY, UNet
from lora_files import lora_names, random_lora, write_lora


def shapes(net):
    """{weight key: shape} of a network."""
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet(UNET_22_TINY).eval()


@pytest.fixture(scope="module")
def prior():
    torch.manual_seed(1)
    net = PriorTransformer(PRIOR_TINY).eval()
    with torch.no_grad():  # raw parameters are left empty by the constructor (loading fills them)
        for p in (net.positional_embedding, net.prd_embedding, net.clip_mean, net.clip_std):
            p.copy_(0.1 * torch.randn(p.shape))
    return net


def run_unet(net):
    g = torch.Generator().manual_seed(2)
    x, emb = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, UNET_22_TINY.encoder_hid_dim, generator=g)
    with torch.no_grad():
        return net(x, torch.tensor([500]), emb)


def run_prior(net):
    g = torch.Generator().manual_seed(3)
    d = PRIOR_TINY.embedding_dim
    args = (torch.randn(1, d, generator=g), 10, torch.randn(1, d, generator=g), torch.randn(1, 77, d, generator=g),
            torch.arange(77)[None] < 9)
    with torch.no_grad():
        return net(*args)


MODELS = {"decoder": ("unet", run_unet), "prior": ("prior", run_prior)}


def manually_merged(net, loras):
    """A copy of `net` with W + s·(alpha/rank)·up@down written by hand for each (state dict, strength)."""
    merged = copy.deepcopy(net)
    params = dict(merged.named_parameters())
    with torch.no_grad():
        for sd, strength in loras:
            for key, weight in params.items():
                for naming in ("attn-procs", "peft"):
                    up, down, alpha = lora_names(key.removesuffix(".weight"), naming)
                    if up in sd:
                        scale = float(sd[alpha]) / sd[down].shape[0] if alpha in sd else 1.0
                        weight += strength * scale * (sd[up] @ sd[down])
    return merged


@pytest.mark.parametrize("kind", ["decoder", "prior"])
@pytest.mark.parametrize("naming,alpha", [("attn-procs", None), ("peft", None), ("peft", 1.0)])
def test_patched_output_equals_the_manual_merge(request, tmp_path, kind, naming, alpha):
    fixture, run = MODELS[kind]
    net = request.getfixturevalue(fixture)
    sd = random_lora(shapes(net), kind, naming, rank=2, alpha=alpha)
    reference = run(manually_merged(net, [(sd, 0.7)]))
    before = run(net)
    lora = L.apply_lora(net, write_lora(tmp_path / "lora.safetensors", sd), strength=0.7)
    try:
        assert lora.kind == kind and lora.ranks == [2] and len(lora.pairs) == len(sd) // (3 if alpha else 2)
        patched = run(net)
        assert torch.allclose(patched, reference, rtol=0, atol=1e-6), (patched - reference).abs().max()
        assert (patched - before).abs().max() > 1e-3  # the LoRA does something
    finally:
        L.remove_lora(net, lora)
    assert torch.equal(run(net), before)  # removal restores the output bit for bit


@pytest.mark.parametrize("kind", ["decoder", "prior"])
def test_strength_zero_is_bit_identical(request, kind):
    fixture, run = MODELS[kind]
    net = request.getfixturevalue(fixture)
    before = run(net)
    lora = L.apply_lora(net, L.parse_lora(random_lora(shapes(net), kind), "x.safetensors"), strength=0.0)
    try:
        assert torch.equal(run(net), before)
    finally:
        L.remove_lora(net, lora)


def test_both_namings_merge_identically(unet):
    procs = L.parse_lora(random_lora(shapes(unet), "decoder", "attn-procs", seed=5), "a")
    peft = L.parse_lora(random_lora(shapes(unet), "decoder", "peft", seed=5, prefix="unet."), "b")
    assert procs.pairs.keys() == peft.pairs.keys()
    assert all(torch.equal(procs.pairs[t].delta(), peft.pairs[t].delta()) for t in procs.pairs)


@pytest.mark.parametrize("kind", ["decoder", "prior"])
def test_two_loras_stack_additively_and_come_out_one_at_a_time(request, kind):
    fixture, run = MODELS[kind]
    net = request.getfixturevalue(fixture)
    first = random_lora(shapes(net), kind, "attn-procs", rank=2, seed=1)
    second = random_lora(shapes(net), kind, "peft", rank=3, alpha=1.5, seed=2)
    both = run(manually_merged(net, [(first, 0.5), (second, -0.8)]))
    only_second = copy.deepcopy(net)
    L.apply_lora(only_second, L.parse_lora(second, "second"), -0.8)
    before = run(net)
    a = L.apply_lora(net, L.parse_lora(first, "first"), 0.5)
    L.apply_lora(net, L.parse_lora(second, "second"), -0.8)
    try:
        assert torch.allclose(run(net), both, rtol=0, atol=1e-6)
        L.remove_lora(net, a)  # the second stays, exactly as if applied alone
        assert torch.equal(run(net), run(only_second))
    finally:
        L.remove_lora(net)
    assert torch.equal(run(net), before)


def test_key_map_covers_every_attention_layer_of_the_full_size_models():
    decoder = shapes(UNet(UNET_22, device="meta"))
    prior = shapes(PriorTransformer(PRIOR_22, device="meta"))
    decoder_map, prior_map = L.lora_key_map(decoder, "diffusion_model.unet."), L.lora_key_map(prior)
    assert len(set(decoder_map.values())) == 22 * 6 and len(set(prior_map.values())) == 20 * 4
    assert decoder_map["down_blocks.1.attentions.0.processor.to_out"] == "diffusion_model.unet.down_blocks.1.attentions.0.to_out.0.weight"
    assert prior_map["prior.transformer_blocks.19.attn1.to_out.0"] == "transformer_blocks.19.attn1.to_out.0.weight"
    # The published rank-4 decoder file (to_q/k/v/out of the 22 modules) holds 823,296 parameters.
    published = random_lora(decoder, "decoder", rank=4, only=".to_")
    assert sum(v.numel() for v in published.values()) == 823_296
    assert all(k.removesuffix("_lora.up.weight").removesuffix("_lora.down.weight") in decoder_map for k in published)
    L.check_fits(L.parse_lora(published, "full.safetensors"), "decoder", decoder)


def test_2_1_decoder_has_the_same_lora_layers():
    # Kandinsky 2.1 attention widths equal 2.2's, so a LoRA's shapes cannot tell the versions apart.
    assert L.lora_key_map(shapes(UNet(UNET_21, device="meta"))) == L.lora_key_map(shapes(UNet(UNET_22, device="meta")))


def bad_files(unet, prior):
    """(state dict, name, kind it is applied to, words the error must contain) for each kind of wrong file."""
    rank_mismatch = random_lora(shapes(unet), "decoder", "peft")
    rank_mismatch["mid_block.attentions.0.to_k.lora_A.weight"] = torch.zeros(3, 64)
    incomplete = random_lora(shapes(prior), "prior")
    del incomplete["transformer_blocks.0.attn1.processor.to_v_lora.up.weight"]
    mixed = {**random_lora(shapes(unet), "decoder"), **random_lora(shapes(prior), "prior")}
    bad_alpha = random_lora(shapes(prior), "prior", "peft", alpha=1.0)
    bad_alpha["transformer_blocks.0.attn1.to_q.alpha"] = torch.ones(2)
    depth = shapes(UNet(UNET_22_DEPTH_TINY, device="meta"))  # 100-wide context: add_k_proj shapes differ
    return [
        ({"lora_unet_input_blocks_1_1_proj_in.lora_up.weight": torch.zeros(4, 1)}, "sd15.safetensors", "decoder",
         ["sd15.safetensors", "Stable Diffusion"]),
        ({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight": torch.zeros(4, 1)},
         "sdxl.safetensors", "prior", ["sdxl.safetensors", "Stable Diffusion"]),
        ({"down_blocks.1.attentions.0.attention.to_q.lora_A.weight": torch.zeros(1, 4)}, "k3.safetensors", "decoder",
         ["k3.safetensors", "Kandinsky 3"]),
        (random_lora(shapes(prior), "prior"), "prior.safetensors", "decoder", ["prior.safetensors", "prior LoRA",
                                                                                  "apply it to the prior"]),
        (random_lora(shapes(unet), "decoder"), "decoder.safetensors", "prior", ["decoder.safetensors", "decoder LoRA"]),
        (rank_mismatch, "ranks.safetensors", "decoder", ["ranks.safetensors", "ranks", "mid_block.attentions.0.to_k"]),
        (incomplete, "half.safetensors", "prior", ["half.safetensors", "only the down"]),
        (mixed, "both.safetensors", "decoder", ["both.safetensors", "mixes decoder and prior"]),
        ({}, "empty.safetensors", "prior", ["empty.safetensors", "an empty file"]),
        (bad_alpha, "alpha.safetensors", "prior", ["alpha.safetensors", "alpha"]),
        (random_lora(depth, "decoder", only="add_k"), "depth.safetensors", "decoder", ["depth.safetensors",
                                                                                       "another shape"]),
    ]


def test_wrong_files_are_refused_naming_the_file_and_nothing_is_applied(tmp_path, unet, prior):
    nets = {"decoder": (unet, run_unet), "prior": (prior, run_prior)}
    for sd, name, kind, words in bad_files(unet, prior):
        net, run = nets[kind]
        before = run(net)
        with pytest.raises(KandinskyError) as err:
            L.apply_lora(net, write_lora(tmp_path / name, sd))
        assert all(w in str(err.value) for w in words), (name, str(err.value))
        assert torch.equal(run(net), before), name


def test_not_a_model():
    with pytest.raises(KandinskyError, match="UNet or prior"):
        L.apply_lora(torch.nn.Linear(2, 2), L.Lora("x", "prior"))
