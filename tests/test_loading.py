"""Loading the published layout: folders and single files round-trip, variants are detected, bad files are named."""
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from kandinsky_core import loading, tiny
from kandinsky_core import unet as U
from kandinsky_core.config import to_dict
from kandinsky_core.errors import KandinskyError
from kandinsky_core.movq import MOVQ, MoVQ
from kandinsky_core.prior import PRIOR_21, PRIOR_22, PriorConfig, PriorTransformer


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
    assert same_weights(models.movq, MoVQ(tiny.MOVQ_TINY8))
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
    (folder / "config.json").write_text(json.dumps(to_dict(tiny.MOVQ_TINY8, "VQModel")))
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
