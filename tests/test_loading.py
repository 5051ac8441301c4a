"""Loading the published layout: folders and single files round-trip, variants are detected, bad files are named."""
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from kandinsky_core import weights as W
from kandinsky_core.kandinsky2 import loading, tiny
from kandinsky_core.kandinsky2 import unet as U
from kandinsky_core.config import to_dict
from kandinsky_core.errors import KandinskyError
from kandinsky_core.movq import MOVQ, MOVQ_TINY8, MoVQ
from kandinsky_core.kandinsky2.prior import PRIOR_21, PRIOR_22, PriorConfig, PriorTransformer


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    return tiny.write_all(str(tmp_path_factory.mktemp("tiny")))


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", sorted(tiny.DECODERS))
def test_decoder_folders_round_trip(repos, name):
    config, _ = tiny.DECODERS[name]
    models = loading.load_decoder_models(repos[name])
    torch.manual_seed(0)
    assert same_weights(models.unet, U.UNet(config))
    assert models.unet.config == config and models.unet.config.variant == config.variant
    assert same_weights(models.movq, MoVQ(MOVQ_TINY8))
    assert (models.text_encoder is not None) == (models.version == "2.1")
    assert type(models.scheduler).__name__ == ("DDIMScheduler" if models.version == "2.1" else "DDPMScheduler")


@pytest.mark.parametrize("name", sorted(tiny.PRIORS))
def test_prior_folders_load(repos, name):
    models = loading.load_prior_models(repos[name], dtype=torch.float16)
    version = tiny.PRIORS[name][0]
    assert models.prior.config.embedding_dim == tiny.TINY_DIMS[version] and models.version == version
    assert all(p.dtype == torch.float16 for p in models.prior.parameters())
    assert models.text_encoder.dtype == models.image_encoder.dtype == torch.float16
    assert models.tokenizer("a cat").input_ids[-1] == models.tokenizer.eos_token_id
    assert models.image_processor["crop_size"] == 224


@pytest.mark.parametrize("kind", ["unet", "movq", "prior"])
def test_single_file_with_config_metadata(repos, tmp_path, kind):
    folder = os.path.join(repos["kandinsky-2-2-decoder" if kind != "prior" else "kandinsky-2-2-prior"], kind)
    from_folder = loading.load_component(folder, kind)
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    path = str(tmp_path / "renamed-anything.safetensors")
    tiny.save_single_file(from_folder, config, path)
    assert same_weights(loading.load_component(path, kind), from_folder)


def test_bin_weights_load_with_weights_only(repos, tmp_path):
    folder = tmp_path / "movq"
    folder.mkdir()
    model = loading.load_component(repos["kandinsky-2-2-decoder"], "movq")
    torch.save(model.state_dict(), folder / "diffusion_pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(to_dict(MOVQ_TINY8, "VQModel")))
    assert same_weights(loading.load_component(str(folder), "movq"), model)


def test_weights_load_straight_into_dtype_and_device(repos):
    model = loading.load_component(repos["kandinsky-2-2-decoder"], "unet", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    full = loading.load_component(repos["kandinsky-2-2-decoder"], "unet")  # memory-mapped path, no conversion
    assert all(torch.equal(a, b.to(torch.bfloat16)) for a, b in zip(model.state_dict().values(), full.state_dict().values()))


@pytest.mark.parametrize("config", [U.UNET_21, U.UNET_21_INPAINT, U.UNET_22, U.UNET_22_INPAINT, U.UNET_22_DEPTH])
def test_unet_variant_detected_from_full_size_shapes(config):
    shapes = {k: tuple(v.shape) for k, v in U.UNet(config, device="meta").state_dict().items()}
    assert loading.identify(shapes) == "unet"
    assert loading.unet_config_from_shapes(shapes) == config


def test_movq_and_priors_detected_from_full_size_shapes():
    shapes = {k: tuple(v.shape) for k, v in MoVQ(MOVQ, device="meta").state_dict().items()}
    assert loading.identify(shapes) == "movq" and loading.movq_config_from_shapes(shapes) == MOVQ
    for config in (PRIOR_21, PRIOR_22):
        shapes = {k: tuple(v.shape) for k, v in PriorTransformer(config, device="meta").state_dict().items()}
        assert loading.identify(shapes) == "prior" and loading.prior_config_from_shapes(shapes) == config


def test_lone_file_without_config_is_detected_by_shapes(repos, tmp_path):
    model = loading.load_component(repos["kandinsky-2-2-controlnet-depth"], "unet")
    path = str(tmp_path / "model.safetensors")
    save_file(model.state_dict(), path)
    guessed = loading.read_config(path, "unet")
    assert guessed.variant == "2.2-depth" and guessed.block_out_channels == (32, 64)
    with pytest.raises(KandinskyError, match="is a Kandinsky unet, not a movq"):
        loading.load_component(path, "movq")


def test_stable_diffusion_checkpoint_is_named(tmp_path):
    path = str(tmp_path / "kandinsky.safetensors")
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2),
               "first_stage_model.encoder.conv_in.weight": torch.zeros(2)}, path)
    with pytest.raises(KandinskyError, match="not a Kandinsky UNet, MoVQ or prior: it looks like a Stable Diffusion checkpoint"):
        loading.load_component(path, "unet")


def test_foreign_folder_config_is_named(tmp_path):
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    save_file({"x": torch.zeros(1)}, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(KandinskyError, match="describes a AutoencoderKL, not a Kandinsky unet"):
        loading.load_component(str(folder), "unet")


def test_folder_without_weights_or_parts(tmp_path):
    with pytest.raises(KandinskyError, match="holds no weights file"):
        loading.load_component(str(tmp_path), "unet")
    with pytest.raises(KandinskyError, match="has no unet/ folder"):
        loading.load_decoder_models(str(tmp_path))
    with pytest.raises(KandinskyError, match="does not exist"):
        loading.load_component(str(tmp_path / "missing"), "movq")


@pytest.mark.parametrize("cut", [0, 7, 200])
def test_truncated_or_empty_safetensors(repos, tmp_path, cut):
    source = os.path.join(repos["kandinsky-2-2-decoder"], "movq", "diffusion_pytorch_model.safetensors")
    path = tmp_path / "movq.safetensors"
    path.write_bytes(open(source, "rb").read()[:cut])
    with pytest.raises(KandinskyError, match="empty" if cut == 0 else "truncated or corrupt"):
        loading.load_component(str(path), "movq")


def test_config_that_does_not_fit_the_weights(repos, tmp_path):
    folder = tmp_path / "unet"
    folder.mkdir()
    source = os.path.join(repos["kandinsky-2-2-decoder"], "unet")
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(open(os.path.join(source, "diffusion_pytorch_model.safetensors"), "rb").read())
    config = json.load(open(os.path.join(source, "config.json")))
    (folder / "config.json").write_text(json.dumps({**config, "block_out_channels": [32, 128]}))
    with pytest.raises(KandinskyError, match="has shape .* but the config says"):
        loading.load_component(str(folder), "unet")


def test_missing_tokenizer_is_named(repos, tmp_path):
    copy = tmp_path / "prior"
    shutil.copytree(repos["kandinsky-2-2-prior"], copy)
    shutil.rmtree(copy / "tokenizer")
    with pytest.raises(KandinskyError, match="has no tokenizer/ folder"):
        loading.load_prior_models(str(copy))


def test_mixed_versions_in_a_prior_folder(repos, tmp_path):
    copy = tmp_path / "prior"
    shutil.copytree(repos["kandinsky-2-2-prior"], copy)
    config = json.load(open(copy / "prior" / "config.json"))
    wide = {**config, "embedding_dim": 40}
    tiny.save_component(PriorTransformer(PriorConfig.from_dict(wide)), wide, str(copy / "prior"))
    with pytest.raises(KandinskyError, match="mixes Kandinsky 2.1 and 2.2 parts"):
        loading.load_prior_models(str(copy))


FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2]


def raw(t):
    """Bytes of a tensor as an integer tensor, so fp8 and NaN compare exactly."""
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.dtype.itemsize])


def sample_tensors(dtype):
    g = torch.Generator().manual_seed(0)
    return {"big": (torch.randn(300, 700, generator=g) * 50).to(dtype), "vector": torch.randn(5, generator=g).to(dtype),
            "empty": torch.zeros(0, 3, dtype=dtype), "scalar": torch.tensor(1.5).to(dtype),
            "ids": torch.arange(7, dtype=torch.int64), "mask": torch.tensor([True, False, True])}


@pytest.mark.parametrize("target", [None] + FLOATS, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("source", FLOATS, ids=lambda d: str(d).replace("torch.", ""))
def test_every_dtype_round_trips_exactly(tmp_path, source, target):
    sd = sample_tensors(source)
    path = str(tmp_path / "w.safetensors")
    save_file(sd, path)
    loaded = dict(W.iter_tensors(path, dtype=target))
    assert loaded.keys() == sd.keys()
    for k, t in sd.items():
        want = t.to(target) if target is not None and t.is_floating_point() else t
        assert loaded[k].dtype == want.dtype and loaded[k].shape == want.shape and torch.equal(raw(loaded[k]), raw(want)), k
    assert W.read_shapes(path) == {k: tuple(t.shape) for k, t in sd.items()}


def test_unconverted_tensors_share_the_file_copy_on_write(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(4096), "b": torch.zeros(3)}, str(path))
    before = path.read_bytes()
    loaded = dict(W.iter_tensors(str(path)))
    loaded["a"].mul_(3)  # parameters are writable; the checkpoint on disk must not change
    assert path.read_bytes() == before and loaded["a"][0] == 3
    assert dict(W.iter_tensors(str(path)))["a"][0] == 1


def write_raw_safetensors(path, entries, pad=0):
    """A safetensors file written by hand: [(key, dtype string, shape, bytes)], data `pad` bytes off alignment."""
    header, offset = {}, pad
    for key, dtype, shape, data in entries:
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob + b"\0" * pad + b"".join(e[3] for e in entries))


def test_misaligned_tensors_load(tmp_path):
    x = torch.randn(1000)
    path = str(tmp_path / "odd.safetensors")
    write_raw_safetensors(path, [("u", "U8", [3], b"abc"), ("x", "F32", [1000], x.numpy().tobytes())], pad=1)
    for dtype in (None, torch.float16):
        loaded = dict(W.iter_tensors(path, dtype=dtype))
        assert torch.equal(loaded["x"], x.to(dtype or x.dtype)) and loaded["u"].tolist() == [97, 98, 99]


def test_data_cut_short_is_named(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(1000), "b": torch.ones(1000)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(KandinskyError, match="truncated or corrupt .*tensor b lies outside the file"):
        list(W.iter_tensors(str(path), dtype=torch.float16))


def test_unknown_stored_dtype_is_named(tmp_path):
    path = str(tmp_path / "c.safetensors")
    write_raw_safetensors(path, [("z", "C64", [1], b"\0" * 8)])
    with pytest.raises(KandinskyError, match="tensor z is stored as C64"):
        W.read_shapes(path)


def write_shards(folder, model, index_name, weights="model-{:05d}-of-00002.safetensors"):
    """The model's weights split in two shards plus a diffusers/transformers-style index."""
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    keys, weight_map = sorted(sd), {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        name = weights.format(i + 1)
        if name.endswith(".bin"):
            torch.save({k: sd[k] for k in part}, os.path.join(folder, name))
        else:
            save_file({k: sd[k] for k in part}, os.path.join(folder, name))
        weight_map.update({k: name for k in part})
    with open(os.path.join(folder, index_name), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


@pytest.mark.parametrize("index_name, weights", [
    ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model-{:05d}-of-00002.safetensors"),
    ("model.safetensors.index.fp16.json", "model.fp16-{:05d}-of-00002.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model-{:05d}-of-00002.bin")])
def test_sharded_checkpoints_load(repos, tmp_path, index_name, weights):
    model = loading.load_component(repos["kandinsky-2-2-decoder"], "movq")
    folder = tmp_path / "movq"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(to_dict(MOVQ_TINY8, "VQModel")))
    write_shards(str(folder), model, index_name, weights)
    assert W.weights_path(str(folder)).endswith(index_name)
    assert same_weights(loading.load_component(str(folder), "movq"), model)
    half = loading.load_component(str(folder), "movq", dtype=torch.bfloat16)
    assert all(torch.equal(a, b.to(torch.bfloat16)) for a, b in zip(half.state_dict().values(), model.state_dict().values()))
    os.remove(folder / weights.format(2))
    with pytest.raises(KandinskyError, match=f"lists 1 shard.* not there: .*{weights.format(2)}"):
        loading.load_component(str(folder), "movq")
