"""Depth hints from a (tiny, random) transformers DPT: shapes, range, the depth pipeline as oracle, and load errors."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from kandinsky_core.kandinsky2 import depth, tiny
from kandinsky_core.errors import KandinskyError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny.write_depth_model(str(tmp_path_factory.mktemp("models") / "depth" / "dpt-tiny"))


@pytest.fixture(scope="module")
def loaded(folder):
    return depth.load_depth_model(folder)


def images(batch, height, width, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_tiny_model_is_in_save_pretrained_layout(folder):
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    with open(os.path.join(folder, "config.json")) as f:
        assert json.load(f)["architectures"] == ["DPTForDepthEstimation"]


def test_depth_maps_have_the_input_size_three_equal_channels_and_full_range(loaded):
    model, processor = loaded
    out = depth.estimate_depth(model, processor, images(2, 40, 56))
    assert out.shape == (2, 3, 40, 56) and out.dtype == torch.float32
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    assert out.amin((1, 2, 3)).tolist() == [0.0, 0.0] and out.amax((1, 2, 3)).tolist() == [1.0, 1.0]
    assert (out[0] - out[1]).abs().max() > 0.1  # each image gets its own map


def test_matches_the_transformers_depth_pipeline_image(loaded):
    """diffusers' depth example: `pipeline("depth-estimation")(image)["depth"]` / 255; that image is truncated to 8 bits."""
    model, processor = loaded
    pixels = images(1, 48, 36, seed=1)
    frame = (pixels[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    depth_pipeline = pipeline("depth-estimation", model=model, image_processor=processor)
    expected = np.asarray(depth_pipeline(Image.fromarray(frame))["depth"])
    ours = depth.estimate_depth(model, processor, pixels)[0, 0].numpy()
    gap = ours * 255 - expected
    assert gap.min() > -1e-3 and gap.max() < 1 + 1e-3


def test_distance_models_are_flipped_so_near_stays_bright(loaded, monkeypatch):
    model, processor = loaded
    pixels = images(1, 32, 32, seed=2)
    inverse_depth = depth.estimate_depth(model, processor, pixels)
    monkeypatch.setattr(model.config, "depth_estimation_type", "metric", raising=False)
    distance = depth.estimate_depth(model, processor, pixels)
    assert (distance - (1 - inverse_depth)).abs().max() < 1e-6


def test_low_precision_model_still_gives_float32_maps(folder):
    model, processor = depth.load_depth_model(folder, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    out = depth.estimate_depth(model, processor, images(1, 16, 24))
    assert out.dtype == torch.float32 and out.shape == (1, 3, 16, 24) and 0 <= out.min() and out.max() <= 1


def test_rejects_images_that_are_not_rgb_batches(loaded):
    with pytest.raises(KandinskyError, match=r"\(B, 3, H, W\), got \(1, 4, 8, 8\)"):
        depth.estimate_depth(*loaded, torch.zeros(1, 4, 8, 8))


def test_folders_that_are_not_depth_models_are_refused(tmp_path, folder):
    with pytest.raises(KandinskyError, match="no config.json"):
        depth.load_depth_model(str(tmp_path))
    movq = tmp_path / "movq"
    movq.mkdir()
    (movq / "config.json").write_text(json.dumps({"_class_name": "VQModel", "latent_channels": 4}))
    with pytest.raises(KandinskyError, match="not a complete transformers depth-estimation model"):
        depth.load_depth_model(str(movq))
    no_processor = tmp_path / "no_processor"
    no_processor.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_processor / name).write_bytes((open(os.path.join(folder, name), "rb")).read())
    with pytest.raises(KandinskyError, match="not a complete.*image processor"):
        depth.load_depth_model(str(no_processor))
