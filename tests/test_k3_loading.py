"""Loading Kandinsky 3 as published (tiny checkpoints in the hub's exact layout), single files, and the clear errors."""
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import diffusers
from kandinsky_core.kandinsky2 import loading as L
from kandinsky_core.kandinsky2 import tiny as tiny2
from kandinsky_core.errors import KandinskyError
from kandinsky_core.kandinsky3 import loading, pipeline as P, tiny
from kandinsky_core.kandinsky3.t5 import load_t5
from kandinsky_core.kandinsky3.tiny_text import T5_TINY, write_text_encoder
from kandinsky_core.kandinsky3.tokenizer import load_tokenizer
from kandinsky_core.kandinsky3.unet import UNET3, UNET3_TINY

KEYS_TSV = Path("/work/shared/reference/kandinsky3_unet_keys.tsv")


@pytest.fixture(scope="module")
def k3(tmp_path_factory):
    return tiny.write_kandinsky3(str(tmp_path_factory.mktemp("hub") / "kandinsky-3"))


def copy_folder(k3, tmp_path):
    return shutil.copytree(k3, tmp_path / "kandinsky-3")


def t2i(models, **kw):
    return P.text_to_image(models, "a red cat", height=64, width=64, steps=3, generator=torch.Generator().manual_seed(0),
                           output_type="np", **kw)


def test_published_layout_loads_in_diffusers_and_gives_our_images(k3):
    names = sorted(os.path.relpath(os.path.join(r, f), k3) for r, _, fs in os.walk(k3) for f in fs)
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in names and "movq/diffusion_pytorch_model.fp16.safetensors" in names
    assert "text_encoder/model.safetensors.index.fp16.json" in names and "tokenizer/spiece.model" in names
    pipe = diffusers.Kandinsky3Pipeline.from_pretrained(k3, variant="fp16", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a red cat", height=64, width=64, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                    output_type="np").images
    got = t2i(loading.load_kandinsky3(k3, dtype=torch.float32))
    assert np.abs(got - expected).max() <= 1e-4
    assert expected.std() > 0.01


def test_published_folder_without_dtype_uses_one_compute_dtype(k3):
    """Given the fp16 files and no dtype, diffusers loads an fp16 T5 but an fp32 UNet and MoVQ, then crashes."""
    pipe = diffusers.Kandinsky3Pipeline.from_pretrained(k3, variant="fp16")
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(RuntimeError, match="same dtype"):
        pipe("a red cat", height=64, width=64, num_inference_steps=2, output_type="np")
    models = loading.load_kandinsky3(k3)
    dtypes = {p.dtype for m in (models.unet, models.movq) for p in m.parameters()}
    assert dtypes == {torch.float16} and models.text_encoder.compute_dtype() == torch.float16
    image = t2i(models)
    assert np.isfinite(image).all() and image.std() > 0.01


def test_single_files_round_trip(k3, tmp_path):
    files = tiny.write_single_files(str(tmp_path))
    for load, name in ((loading.load_unet, "unet"), (loading.load_movq, "movq")):
        from_folder, from_file = load(os.path.join(k3, name)), load(files[name])
        assert from_file.config == from_folder.config
        assert all(torch.equal(a, b) for a, b in zip(from_file.state_dict().values(), from_folder.state_dict().values()))
    t5_folder, t5_file = load_t5(os.path.join(k3, "text_encoder")), load_t5(files["text_encoder"])
    assert all(torch.equal(a, b) for a, b in zip(t5_file.state_dict().values(), t5_folder.state_dict().values()))
    ids = load_tokenizer(files["tokenizer"])(["a red cat"])[0]
    assert torch.equal(ids, load_tokenizer(os.path.join(k3, "tokenizer"))(["a red cat"])[0])


def test_unet_config_from_shapes():
    shapes = {k: tuple(json.loads(s.replace("(", "[").replace(",)", "]").replace(")", "]")))
              for k, s in (line.split("\t") for line in KEYS_TSV.read_text().splitlines())}
    assert loading.unet_config_from_shapes(shapes) == UNET3
    tiny_shapes = {k: tuple(v.shape) for k, v in tiny.tiny_models()[0][0].state_dict().items()}
    # head width and norm groups are not in the shapes: a lone file without config gets the published 64 and 32
    assert loading.unet_config_from_shapes(tiny_shapes) == replace(UNET3_TINY, attention_head_dim=64, groups=32)


def test_kandinsky2_folder_and_file_are_refused(tmp_path):
    folder = tiny2.write_decoder(str(tmp_path / "kandinsky-2-2-decoder"), tiny2.DECODERS["kandinsky-2-2-decoder"][0])
    with pytest.raises(KandinskyError, match="KandinskyV22Pipeline checkpoint .Kandinsky 2.x.*Kandinsky 2 loaders"):
        loading.load_kandinsky3(folder)
    with pytest.raises(KandinskyError, match="Kandinsky 2.x decoder UNet; load its folder with the Kandinsky 2 loader"):
        loading.load_unet(os.path.join(folder, "unet"))
    with pytest.raises(KandinskyError, match="Kandinsky 2.x decoder UNet"):
        loading.load_unet(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))


def test_kandinsky3_folder_and_file_are_refused_by_the_2x_loaders(k3, tmp_path):
    with pytest.raises(KandinskyError, match="Kandinsky3UNet.*Kandinsky 3 loader"):
        L.load_decoder_models(k3)
    files = tiny.write_single_files(str(tmp_path), with_config=False)
    with pytest.raises(KandinskyError, match="a Kandinsky 3 UNet; load Kandinsky 3 with the Kandinsky 3 loader"):
        L.load_component(files["unet"], "unet")


def test_truncated_unet_and_missing_shard_are_named(k3, tmp_path):
    folder = copy_folder(k3, tmp_path)
    weights = folder / "unet" / tiny.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(KandinskyError, match=f"{weights}.*truncated or corrupt"):
        loading.load_kandinsky3(str(folder))
    shutil.copy(Path(k3) / "unet" / tiny.WEIGHTS, weights)
    shard = folder / "text_encoder" / "model.fp16-00002-of-00002.safetensors"
    shard.unlink()
    with pytest.raises(KandinskyError, match=str(shard)):
        loading.load_kandinsky3(str(folder))


def test_text_encoder_of_another_width_is_refused(k3, tmp_path):
    folder = copy_folder(k3, tmp_path)
    shutil.rmtree(folder / "text_encoder")
    write_text_encoder(str(folder / "text_encoder"), config=replace(T5_TINY, d_model=48))
    with pytest.raises(KandinskyError, match="text encoder is 48 wide but the UNet reads 32-wide"):
        loading.load_kandinsky3(str(folder))


def test_command_line_tiny_3_end_to_end(tmp_path):
    out = tmp_path / "out.png"
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "kandinsky_core", "--tiny", "3", "--steps", "3", "--out", str(out)],
                            cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "loaded Kandinsky 3" in result.stdout
    image = np.asarray(Image.open(out))
    assert image.shape == (64, 64, 3) and image.std() > 1


def test_command_line_refuses_a_kandinsky2_folder_as_kandinsky3(tmp_path):
    folder = tiny2.write_decoder(str(tmp_path / "kandinsky-2-2-decoder"), tiny2.DECODERS["kandinsky-2-2-decoder"][0])
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "kandinsky_core", "--kandinsky3", folder], cwd=root,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Kandinsky 2 loaders" in result.stderr and "Traceback" not in result.stderr


def test_bf16_run_stays_close_to_fp32(k3):
    models = loading.load_kandinsky3(k3, dtype=torch.bfloat16)
    assert {p.dtype for m in (models.unet, models.movq) for p in m.parameters()} == {torch.bfloat16}
    difference = np.abs(t2i(models) - t2i(loading.load_kandinsky3(k3, dtype=torch.float32)))
    assert difference.mean() < 0.04 and difference.max() < 0.3  # bf16 keeps 8 bits of mantissa; measured 0.017, 0.14
