"""The diffusers Kandinsky 2.1 / 2.2 pipeline bugs we fix, clear errors for bad input, the callback, and the CLI."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import diffusers
from kandinsky_core.kandinsky2 import decoder_pipeline as D
from kandinsky_core.kandinsky2 import prior_pipeline as P
from kandinsky_core import schedulers as S
from kandinsky_core.kandinsky2 import unet as U
from kandinsky_core.errors import Cancelled, KandinskyError
from kandinsky_core.movq import MOVQ, MOVQ_TINY8, MoVQ
from oracle import decoder_pair, floats, prior_pair, random_image

DDPM_22 = {**S.KANDINSKY_2_2_DDPM, "clip_sample": False}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_img2img_keeps_height_and_width_in_order(tmp_path):
    """diffusers swaps them: its (height=W, width=H) run is exactly our (H, W) run."""
    theirs, ours = decoder_pair(U.UNET_22_TINY, DDPM_22, tmp_path)
    pos, neg = floats((1, 32), 0), floats((1, 32), 1)
    image = random_image(64).resize((96, 64))
    got = D.image_to_image(ours, pos, neg, image, height=64, width=96, steps=4, strength=0.5, generator=gen(), output_type="np")
    swapped = diffusers.KandinskyV22Img2ImgPipeline(**theirs)(pos, image, neg, height=96, width=64, num_inference_steps=4,
                                                              strength=0.5, generator=gen(), output_type="np").images
    assert got.shape == swapped.shape == (1, 64, 96, 3)
    assert float(np.abs(got - swapped).max()) < 1e-4


def test_kandinsky21_img2img_works_for_non_square_sizes(tmp_path):
    _, ours = decoder_pair(U.UNET_21_TINY, S.KANDINSKY_2_1_DDIM, tmp_path)
    pos, neg = floats((1, 32), 0), floats((1, 32), 1)
    run = dict(prompt="a cat", height=64, width=96, steps=4, strength=0.5, output_type="np")
    first = D.image_to_image(ours, pos, neg, random_image(64), generator=gen(), **run)
    again = D.image_to_image(ours, pos, neg, random_image(64), generator=gen(), **run)
    assert first.shape == (1, 64, 96, 3) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, again)


def test_inpaint_22_blends_every_item_with_its_own_image(tmp_path):
    _, ours = decoder_pair(U.UNET_22_INPAINT_TINY, DDPM_22, tmp_path)
    pos, neg = floats((2, 32), 0), floats((2, 32), 1)
    pixels = torch.stack([torch.full((3, 64, 64), -0.8), torch.full((3, 64, 64), 0.6)])
    mask = torch.zeros(64, 64)
    mask[:, 32:] = 1  # repaint the right half
    latents = D.inpaint(ours, pos, neg, pixels, mask, height=64, width=64, steps=3, generator=gen(), output_type="latent")
    init = ours.movq.encode(pixels)
    kept = slice(0, 12)  # the left latent columns, away from the dilated hole
    torch.testing.assert_close(latents[:, :, :, kept], init[:, :, :, kept], rtol=0, atol=1e-6)
    assert not torch.allclose(latents[1, :, :, kept], init[0, :, :, kept])


def test_images_per_prompt_without_guidance(tmp_path):
    _, ours = decoder_pair(U.UNET_22_TINY, DDPM_22, tmp_path)
    pos = floats((2, 32), 0)
    images = D.text_to_image(ours, pos, None, guidance_scale=1.0, num_images_per_prompt=3, height=64, width=64, steps=2,
                             generator=gen(), output_type="np")
    assert images.shape == (6, 64, 64, 3)
    assert not np.allclose(images[0], images[1])


def test_interpolate_negative_is_not_random(tmp_path):
    _, ours = prior_pair(tmp_path)
    a = P.interpolate(ours, ["a cat", random_image(64)], [0.5, 0.5], steps=2, generator=gen(0))[1]
    b = P.interpolate(ours, ["a cat", random_image(64)], [0.5, 0.5], steps=2, generator=gen(1))[1]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, P.zero_image_embeds(ours, 1))


def full_size_22():
    return D.DecoderModels(U.UNet(U.UNET_22, device="meta"), MoVQ(MOVQ, device="meta"), S.DDPMScheduler.from_config(S.KANDINSKY_2_2_DDPM))


def test_size_not_multiple_of_64_names_nearest_sizes():
    models = full_size_22()
    emb = torch.zeros(1, 1280, device="meta")
    with pytest.raises(KandinskyError, match="height 500 is not a multiple of 64; use 448 or 512"):
        D.text_to_image(models, emb, emb, height=500, width=512)


def test_21_embedding_into_22_decoder():
    models = full_size_22()
    with pytest.raises(KandinskyError, match="1280-dim image embeddings, got 768-dim.*2.1"):
        D.text_to_image(models, torch.zeros(1, 768, device="meta"), torch.zeros(1, 768, device="meta"), steps=1)


def test_mask_of_wrong_size(tmp_path):
    _, ours = decoder_pair(U.UNET_22_INPAINT_TINY, DDPM_22, tmp_path)
    pos = floats((1, 32), 0)
    with pytest.raises(KandinskyError, match="mask is 32x32 but the image is 64x64"):
        D.inpaint(ours, pos, pos, torch.zeros(1, 3, 64, 64), torch.zeros(32, 32), height=64, width=64, steps=2)


def test_wiring_errors(tmp_path):
    _, plain = decoder_pair(U.UNET_22_TINY, DDPM_22, tmp_path)
    pos = floats((1, 32), 0)
    with pytest.raises(KandinskyError, match="needs an inpainting decoder"):
        D.inpaint(plain, pos, pos, random_image(64), np.zeros((64, 64)), height=64, width=64)
    with pytest.raises(KandinskyError, match="only works with the 2.2 depth decoder"):
        D.text_to_image(plain, pos, pos, hint=torch.zeros(1, 3, 64, 64), height=64, width=64)
    with pytest.raises(KandinskyError, match="strength × steps must be at least 1"):
        D.image_to_image(plain, pos, pos, random_image(64), strength=0.05, steps=10, height=64, width=64)
    _, depth = decoder_pair(U.UNET_22_DEPTH_TINY, DDPM_22, tmp_path, MOVQ_TINY8)
    with pytest.raises(KandinskyError, match="needs a hint"):
        D.text_to_image(depth, pos, pos, height=64, width=64)
    _, v21 = decoder_pair(U.UNET_21_TINY, S.KANDINSKY_2_1_DDIM, tmp_path)
    with pytest.raises(KandinskyError, match="also reads the prompt"):
        D.text_to_image(v21, pos, pos, height=64, width=64)


def test_callback_reports_every_step_and_can_cancel(tmp_path):
    _, ours = decoder_pair(U.UNET_22_TINY, DDPM_22, tmp_path)
    pos, neg = floats((1, 32), 0), floats((1, 32), 1)
    seen = []

    def callback(info):
        seen.append((info["step"], info["total"], info["denoised"]().shape))
        return info["step"] < 2

    with pytest.raises(Cancelled, match="step 3 of 5"):
        D.text_to_image(ours, pos, neg, height=64, width=64, steps=5, generator=gen(), callback=callback)
    assert seen == [(0, 5, (1, 4, 32, 32)), (1, 5, (1, 4, 32, 32)), (2, 5, (1, 4, 32, 32))]


def test_dpm_solver_runs_the_decoder(tmp_path):
    _, ours = decoder_pair(U.UNET_22_TINY, DDPM_22, tmp_path)
    pos, neg = floats((1, 32), 0), floats((1, 32), 1)
    dpm = S.dpm_solver_from(DDPM_22, karras=True)
    a = D.text_to_image(ours, pos, neg, height=64, width=64, steps=5, scheduler=dpm, generator=gen(), output_type="np")
    b = D.text_to_image(ours, pos, neg, height=64, width=64, steps=5, scheduler=dpm, generator=gen(1), output_type="np")
    c = D.image_to_image(ours, pos, neg, random_image(64), height=64, width=64, steps=10, strength=0.5, scheduler=dpm, generator=gen(), output_type="np")
    assert np.isfinite(a).all() and np.isfinite(c).all() and not np.allclose(a, b)


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_command_line_tiny_end_to_end(tmp_path, version):
    out = tmp_path / "out.png"
    result = subprocess.run([sys.executable, "-m", "kandinsky_core", "--tiny", version, "--steps", "3", "--prior-steps", "3",
                             "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (64, 64)
    assert f"loaded Kandinsky {version}" in result.stdout


def test_command_line_reports_errors_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "kandinsky_core", "--prior", str(tmp_path), "--decoder", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr
