"""kandinsky_core.lora beyond 2.2: Kandinsky 3 UNet LoRAs in both namings, text-encoder (T5) layers refused, NaN
weights caught at load naming the file, and files that are no LoRA at all (empty, text, cut off) named with what is
wrong with them."""
import pytest
import torch
from safetensors.torch import save_file

from k3_files import random_unet
from kandinsky_core import lora as L
from kandinsky_core.errors import KandinskyError
from kandinsky_core.kandinsky3.unet import UNET3_TINY
from kandinsky_core.kandinsky2.unet import UNET_22_TINY, UNet
from lora_files import random_lora, write_lora

T5_LAYERS = {"text_encoder.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight": torch.zeros(2, 32),
             "text_encoder.encoder.block.0.layer.0.SelfAttention.q.lora_B.weight": torch.zeros(32, 2)}


def shapes(net):
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def unet3():
    return random_unet(UNET3_TINY, seed=0)


def run_unet3(net):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, UNET3_TINY.in_channels, 8, 8, generator=g)
    context = torch.randn(1, 5, UNET3_TINY.encoder_hid_dim, generator=g)
    with torch.no_grad():
        return net(x, torch.tensor([500]), context, torch.ones(1, 5))


def test_kandinsky3_unet_lora_in_both_namings(tmp_path, unet3):
    procs = random_lora(shapes(unet3), "kandinsky3", seed=4)
    peft = random_lora(shapes(unet3), "kandinsky3", "peft", seed=4, prefix="unet.")
    targets = {k.removeprefix("unet.").rpartition(".attention")[0] for k in peft}
    assert any(t.startswith("add_time_condition") for t in targets) and any(t.startswith("up_blocks") for t in targets)
    before, weights = run_unet3(unet3), {k: v.clone() for k, v in unet3.state_dict().items()}
    parsed = L.read_lora(write_lora(tmp_path / "k3-peft.safetensors", peft))
    assert parsed.kind == "kandinsky3" and len(parsed.pairs) == len(peft) // 2

    L.apply_lora(unet3, parsed, 0.5)
    key = "down_blocks.1.attentions.0.attention.to_q"
    up, down = peft[f"unet.{key}.lora_B.weight"], peft[f"unet.{key}.lora_A.weight"]
    assert torch.equal(unet3.state_dict()[key + ".weight"], weights[key + ".weight"] + 0.5 * (up @ down))
    merged = run_unet3(unet3)
    assert (merged - before).abs().max() > 1e-3  # the LoRA changes what the UNet predicts
    L.remove_lora(unet3)
    assert all(torch.equal(v, weights[k]) for k, v in unet3.state_dict().items())  # removed bit for bit

    L.apply_lora(unet3, write_lora(tmp_path / "k3-procs.safetensors", procs), 0.5)
    assert torch.equal(run_unet3(unet3), merged)  # attn-procs naming: the same LoRA
    L.remove_lora(unet3)


def test_loras_go_on_their_own_model_only(tmp_path, unet3):
    unet22 = UNet(UNET_22_TINY).eval()
    k3 = write_lora(tmp_path / "k3.safetensors", random_lora(shapes(unet3), "kandinsky3", "peft"))
    decoder = write_lora(tmp_path / "k22.safetensors", random_lora(shapes(unet22), "decoder"))
    with pytest.raises(KandinskyError, match="k3.safetensors is a Kandinsky 3 UNet LoRA .* not a Kandinsky 2.2 decoder "
                                             "LoRA; apply it to the Kandinsky 3 UNet"):
        L.apply_lora(unet22, k3)
    with pytest.raises(KandinskyError, match="k22.safetensors is a Kandinsky 2.2 decoder LoRA .* not a Kandinsky 3 "
                                             "UNet LoRA"):
        L.apply_lora(unet3, decoder)


def test_text_encoder_layers_are_refused_not_dropped(tmp_path, unet3):
    before = run_unet3(unet3)
    both = {**random_lora(shapes(unet3), "kandinsky3", "peft", prefix="unet."), **T5_LAYERS}
    with pytest.raises(KandinskyError, match="both.safetensors also holds 2 text-encoder layers .*Kandinsky 3 UNet "
                                             "only"):
        L.apply_lora(unet3, write_lora(tmp_path / "both.safetensors", both))
    with pytest.raises(KandinskyError, match="t5.safetensors is a T5 text-encoder LoRA"):
        L.apply_lora(unet3, write_lora(tmp_path / "t5.safetensors", T5_LAYERS))
    assert torch.equal(run_unet3(unet3), before)  # nothing applied


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_caught_at_load(tmp_path, unet3, value):
    sd = random_lora(shapes(unet3), "kandinsky3", "peft")
    key = sorted(sd)[-1]
    sd[key] = sd[key].clone().fill_(value)
    before = run_unet3(unet3)
    with pytest.raises(KandinskyError, match=f"bad.safetensors holds NaN or infinite values in the weights of "
                                             f"{key.removesuffix('.lora_B.weight').removesuffix('.lora_A.weight')}"):
        L.apply_lora(unet3, write_lora(tmp_path / "bad.safetensors", sd))
    assert torch.equal(run_unet3(unet3), before)


def test_files_that_are_no_lora_are_named(tmp_path):
    layer = "transformer_blocks.0.attn1.to_q"
    good = write_lora(tmp_path / "good.safetensors", {f"{layer}.lora_A.weight": torch.ones(2, 4),
                                                      f"{layer}.lora_B.weight": torch.ones(4, 2)})
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "notes.safetensors").write_text("trigger words: red cat\n")
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:-8])
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 not a zip")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "tensors.safetensors"))
    for name, words in [("empty.safetensors", "is empty (0 bytes)"), ("notes.safetensors", "it looks like a text file"),
                        ("cut.safetensors", "cannot be read"), ("cut.pt", "cannot be read"),
                        ("tensors.safetensors", "not a Kandinsky LoRA")]:
        with pytest.raises(KandinskyError) as err:
            L.read_lora(tmp_path / name)
        assert name in str(err.value) and words in str(err.value), str(err.value)
    assert L.read_lora(good).kind == "prior"
