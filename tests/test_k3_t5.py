"""Kandinsky 3's Flan-UL2 T5 encoder against transformers' T5EncoderModel, its loader and its errors.

Parity runs on the tiny gated-SiLU T5 of `tiny_text` (random weights, padded prompts); the full-size model is only
built on the meta device.
"""
import json
import os
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file
from transformers import T5Config as HFT5Config
from transformers import T5EncoderModel

from kandinsky_core.errors import KandinskyError
from kandinsky_core.kandinsky3 import t5 as T5
from kandinsky_core.kandinsky3.tiny_text import T5_TINY, random_state_dict, write_text_encoder, write_text_encoder_file

ALIAS = "encoder.embed_tokens.weight"


def hf_config(config):
    return HFT5Config(**{k: v for k, v in config.to_dict().items() if k not in ("architectures", "torch_dtype")})


def transformers_model(sd, config=T5_TINY):
    model = T5EncoderModel(hf_config(config)).eval()
    model.load_state_dict({**sd, ALIAS: sd["shared.weight"]})
    return model


def our_model(sd, config=T5_TINY, dtype=None):
    model = T5.T5Encoder(config, dtype=dtype).eval()
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in sd.items()})
    return model


def prompts(batch=3, length=40, seed=1):
    """Random ids with a full row, a short row and a half-padded one."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, T5_TINY.vocab_size, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, length // 2:] = 0
    return ids * mask, mask


@pytest.fixture(scope="module")
def weights():
    return random_state_dict(T5_TINY, seed=0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("k3")
    write_text_encoder(str(root / "text_encoder"))
    return root


def run(model, ids, mask, **kwargs):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, **kwargs)
    return getattr(out, "last_hidden_state", out)


def test_fp32_matches_transformers(weights):
    ids, mask = prompts()
    theirs, ours = run(transformers_model(weights), ids, mask), run(our_model(weights), ids, mask)
    assert ours.shape == (3, 40, 32) and ours.dtype == torch.float32
    assert (ours - theirs).abs().max() <= 1e-5
    # the padded rows really differ from unpadded ones, so the mask is exercised
    assert (run(our_model(weights), ids, torch.ones_like(mask)) - ours).abs().max() > 1e-2


def test_bf16_matches_transformers_in_bf16(weights):
    ids, mask = prompts()
    theirs = run(transformers_model(weights).to(torch.bfloat16), ids, mask)
    ours = run(our_model(weights, dtype=torch.bfloat16), ids, mask)
    reference = run(our_model(weights), ids, mask)
    assert ours.dtype == torch.bfloat16 and torch.isfinite(ours).all()
    torch.testing.assert_close(ours, theirs)  # bf16's own tolerances
    assert (ours.float() - reference).abs().max() < 0.1 * reference.abs().max()


def test_fp16_folder_matches_transformers_loaded_the_same_way(folder):
    ids, mask = prompts()
    theirs = T5EncoderModel.from_pretrained(folder / "text_encoder", variant="fp16", dtype=torch.float16).eval()
    ours = T5.load_t5(str(folder / "text_encoder"), dtype=torch.float16)
    assert {p.dtype for n, p in ours.named_parameters() if ".wo." in n} == {torch.float32}
    assert {p.dtype for n, p in ours.named_parameters() if ".wo." not in n} == {torch.float16}
    a, b = run(theirs, ids, mask), run(ours, ids, mask)
    assert b.dtype == torch.float16
    torch.testing.assert_close(b, a, atol=1e-3, rtol=1e-3)


def test_fp16_does_not_overflow_where_plain_fp16_would(weights):
    scale = {".wi_1.weight": 10, ".wo.weight": 20000}  # FFN outputs ~1e5 > 65504, every weight fits fp16
    big = {k: v * next((f for end, f in scale.items() if k.endswith(end)), 1) for k, v in weights.items()}
    ids, mask = prompts()
    plain = transformers_model(big).half()  # every weight fp16, wo included
    ffn = plain.encoder.block[0].layer[1]
    with torch.no_grad():
        assert torch.isinf(ffn.DenseReluDense(ffn.layer_norm(plain.shared(ids)))).any()  # what fp32 wo prevents
    for i, block in enumerate(plain.encoder.block):  # transformers' own fp16 load keeps wo in fp32
        block.layer[1].DenseReluDense.wo.weight.data = big[f"encoder.block.{i}.layer.1.DenseReluDense.wo.weight"]
    ours, expected = run(our_model(big, dtype=torch.float16), ids, mask), run(our_model(big), ids, mask)
    assert ours.dtype == torch.float16 and torch.isfinite(ours).all()
    assert (ours.float() - expected).abs().max() < 5e-2 * expected.abs().max()  # fp16 rounding of a 1e5 stream
    torch.testing.assert_close(ours, run(plain, ids, mask), atol=1e-3, rtol=1e-3)


class CastLinear(torch.nn.Linear):
    """Like ComfyUI's manual_cast: weights stored in any dtype, cast to the input's dtype on every call."""

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight.to(x.dtype))


class CastEmbedding(torch.nn.Embedding):
    def forward(self, ids):
        return torch.nn.functional.embedding(ids, self.weight.to(torch.float32))


class CastOps:
    Linear, Embedding = CastLinear, CastEmbedding


def test_fp8_storage_loads_and_runs_with_casting_layers(folder):
    ids, mask = prompts()
    fp8 = T5.load_t5(str(folder), dtype=torch.float8_e4m3fn, operations=CastOps)
    assert {p.dtype for p in fp8.parameters()} == {torch.float8_e4m3fn}
    assert fp8.compute_dtype() == torch.float32
    rounded = our_model({k: v.float() for k, v in fp8.state_dict().items()})
    out = run(fp8, ids, mask)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, run(rounded, ids, mask), atol=1e-5, rtol=1e-5)
    assert run(fp8, ids, mask, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_full_size_on_meta():
    ours = T5.T5Encoder(T5.FLAN_UL2, device="meta")
    assert sum(p.numel() for p in ours.parameters()) == 8_721_797_632
    with torch.device("meta"):
        theirs = T5EncoderModel(hf_config(T5.FLAN_UL2))
    expected = {k: tuple(v.shape) for k, v in theirs.state_dict().items() if k != ALIAS}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected
    # fp16 keeps every wo in fp32: the 21.74 GB the published fp16 shards weigh
    half = T5.T5Encoder(T5.FLAN_UL2, dtype=torch.float16, device="meta")
    assert sum(p.numel() * p.element_size() for p in half.parameters()) == 21_738_562_560


def test_published_config_is_the_preset():
    published = {"d_ff": 16384, "d_kv": 256, "d_model": 4096, "dense_act_fn": "silu", "feed_forward_proj": "gated-silu",
                 "layer_norm_epsilon": 1e-06, "num_heads": 16, "num_layers": 32, "relative_attention_max_distance": 128,
                 "relative_attention_num_buckets": 32, "vocab_size": 32128, "model_type": "t5"}
    assert T5.T5Config.from_dict(published) == T5.FLAN_UL2


def same_state(model, sd):
    got = model.state_dict()
    assert set(got) == set(sd)
    for k, v in sd.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_sharded_fp16_folder_round_trip(folder, weights):
    index = json.loads((folder / "text_encoder" / "model.safetensors.index.fp16.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    published = {k: v.to(torch.float32 if k.endswith(".wo.weight") else torch.float16) for k, v in weights.items()}
    for path in (folder, folder / "text_encoder"):  # the repo folder or the component folder
        model = T5.load_t5(str(path))
        assert model.config == T5_TINY
        same_state(model, published)
    model = T5.load_t5(str(folder), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("with_config", [True, False])
def test_single_file_round_trip(tmp_path, weights, with_config):
    path = write_text_encoder_file(str(tmp_path / "t5.safetensors"), with_config=with_config)
    model = T5.load_t5(path, dtype=torch.float32)
    assert model.config == T5_TINY  # without metadata: rebuilt from the tensor shapes
    same_state(model, {k: v.half().float() if not k.endswith(".wo.weight") else v for k, v in weights.items()})


def test_pytorch_bin_folder_loads(folder, tmp_path, weights):
    """The repo's first revision held one fp32 `pytorch_model.bin`."""
    (tmp_path / "config.json").write_text((folder / "text_encoder" / "config.json").read_text())
    torch.save({**weights, ALIAS: weights["shared.weight"]}, tmp_path / "pytorch_model.bin")
    model = T5.load_t5(str(tmp_path))
    assert model.compute_dtype() == torch.float32
    same_state(model, weights)


@pytest.mark.parametrize("keys", [("shared.weight", ALIAS), (ALIAS,)])
def test_tied_embedding_alias_loads(tmp_path, weights, keys):
    sd = {k: v for k, v in weights.items() if k != "shared.weight"}
    sd.update({k: weights["shared.weight"] for k in keys})
    save_file({k: v.clone() for k, v in sd.items()}, str(tmp_path / "t5.safetensors"))
    same_state(T5.load_t5(str(tmp_path / "t5.safetensors")), weights)


def test_missing_shard_is_named(folder, tmp_path):
    broken = tmp_path / "text_encoder"
    shutil.copytree(folder / "text_encoder", broken)
    os.remove(broken / "model.fp16-00002-of-00002.safetensors")
    with pytest.raises(KandinskyError, match="model.fp16-00002-of-00002.safetensors"):
        T5.load_t5(str(broken))


def test_truncated_shard_is_named(folder, tmp_path):
    broken = tmp_path / "text_encoder"
    shutil.copytree(folder / "text_encoder", broken)
    shard = broken / "model.fp16-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(KandinskyError, match="model.fp16-00001-of-00002.safetensors"):
        T5.load_t5(str(broken))


def xxl_config(**changes):
    return {**T5.FLAN_UL2.to_dict(), "d_model": 4096, "num_heads": 64, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
            **changes}


@pytest.mark.parametrize("config, message", [
    (xxl_config(), "not the Kandinsky 3 Flan-UL2 encoder.*4096/64/64/10240"),
    (xxl_config(feed_forward_proj="gated-gelu"), "gated-gelu.*not the Kandinsky 3 Flan-UL2"),
    ({"model_type": "xlm-roberta", "hidden_size": 1024, "numDims": 768}, "not a T5 config"),
])
def test_other_text_encoders_are_refused(tmp_path, config, message):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(KandinskyError, match=message):
        T5.load_t5(str(tmp_path))


def test_block_shape_not_count_identifies_flan_ul2():
    """A block count other than 32 (a benchmark's one-block stand-in) passes; loading checks it against the weights."""
    assert T5.check_flan_ul2(replace(T5.FLAN_UL2, num_layers=1)).num_layers == 1
    with pytest.raises(KandinskyError, match="4096/16/256/10240"):
        T5.check_flan_ul2(replace(T5.FLAN_UL2, d_ff=10240))


def test_wrong_width_found_from_shapes():
    shapes = {"shared.weight": (32128, 4096), "encoder.block.0.layer.0.SelfAttention.q.weight": (4096, 4096),
              "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (32, 64),
              "encoder.block.0.layer.1.DenseReluDense.wi_0.weight": (10240, 4096)}
    with pytest.raises(KandinskyError, match="d_model/heads/d_kv.*4096/64/64"):
        T5.check_flan_ul2(T5.config_from_shapes(shapes))


def test_foreign_single_file_is_named(tmp_path):
    save_file({"roberta.embeddings.word_embeddings.weight": torch.zeros(10, 4)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(KandinskyError, match="not the Kandinsky 3 Flan-UL2 text encoder.*RoBERTa"):
        T5.load_t5(str(tmp_path / "x.safetensors"))


def test_config_that_does_not_fit_the_weights(folder, tmp_path):
    broken = tmp_path / "text_encoder"
    shutil.copytree(folder / "text_encoder", broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "d_ff": 40}))
    with pytest.raises(KandinskyError, match="DenseReluDense.w.*has shape .* the config says"):
        T5.load_t5(str(broken))
