"""Kandinsky 3 text-to-image and image-to-image against diffusers' pipelines (same tiny weights and seed), and the
upstream bugs we fix instead of copying (diffusers/pipelines/kandinsky3/, both pipelines), each compared with
diffusers where diffusers is right."""
import inspect

import numpy as np
import pytest
import torch
from k3_oracle import pipeline_pair
from oracle import random_image

from kandinsky_core.errors import Cancelled, KandinskyError
from kandinsky_core.kandinsky3 import pipeline as P

SIZE = 16  # diffusers' K3 text-to-image sizes latents for an 8x MoVQ: 16 px -> 8 latent px, as ours with the tiny 2x MoVQ


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return pipeline_pair(tmp_path_factory.mktemp("k3"))


def tokens(models, prompt):
    return int(models.tokenizer([prompt])[1].sum())


def theirs_t2i(t2i, steps=3, **kw):
    kw = {"height": SIZE, "width": SIZE, **kw}
    return t2i(**kw, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np").images


def ours_t2i(models, steps=3, **kw):
    kw = {"height": SIZE, "width": SIZE, **kw}
    return P.text_to_image(models, **kw, steps=steps, generator=torch.Generator().manual_seed(0), output_type="np")


CASES = {
    "no negative": {"prompt": "a painting of a squirrel eating a burger"},
    "shorter negative": {"prompt": "a painting of a squirrel eating a burger", "negative_prompt": "low quality"},
    "2 prompts x 2": {"prompt": ["a red cat", "a red dog"], "num_images_per_prompt": 2},
    "guidance 1": {"prompt": "a red cat", "guidance_scale": 1.0},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_text_to_image_matches_diffusers(pair, case):
    t2i, _, ours = pair
    kw = CASES[case]
    if case == "2 prompts x 2":  # equal token counts: diffusers' mask-order bug (tested below) does not bite
        assert tokens(ours, kw["prompt"][0]) == tokens(ours, kw["prompt"][1])
    if "negative_prompt" in kw:
        assert tokens(ours, kw["negative_prompt"]) < tokens(ours, kw["prompt"])
    expected, got = theirs_t2i(t2i, **kw), ours_t2i(ours, **kw)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4
    assert expected.std() > 0.01  # a real image, not a saturated one


@pytest.mark.parametrize("strength", [0.3, 0.75])
def test_image_to_image_matches_diffusers(pair, strength):
    _, i2i, ours = pair
    image = random_image(64)
    expected = i2i(prompt="a red cat", image=image, strength=strength, num_inference_steps=10,
                   generator=torch.Generator().manual_seed(0), output_type="np").images
    got = P.image_to_image(ours, "a red cat", image, strength=strength, steps=10,
                           generator=torch.Generator().manual_seed(0), output_type="np")
    assert got.shape == expected.shape == (1, 64, 64, 3)
    assert np.abs(got - expected).max() <= 1e-4


def test_defaults_are_diffusers():
    for fn, extra in ((P.text_to_image, {"height": 1024, "width": 1024}), (P.image_to_image, {"strength": 0.3})):
        params = inspect.signature(fn).parameters
        assert {k: params[k].default for k in ("steps", "guidance_scale", *extra)} == {"steps": 25, "guidance_scale": 3.0, **extra}


def test_callback_reports_every_step_and_cancels(pair):
    _, _, ours = pair
    seen = []

    def callback(info):
        seen.append((info["step"], info["total"], info["t"], info["denoised"]().shape, info["latents"].shape))

    ours_t2i(ours, prompt="a red cat", callback=callback)
    assert [(s, total, t) for s, total, t, _, _ in seen] == [(0, 3, 667), (1, 3, 334), (2, 3, 1)]
    assert all(d == lat == (1, 4, 8, 8) for _, _, _, d, lat in seen)
    with pytest.raises(Cancelled):
        ours_t2i(ours, prompt="a red cat", callback=lambda info: info["step"] < 1)


# ---- upstream bugs, fixed -------------------------------------------------------------------------------------------

def test_negative_prompt_longer_than_the_prompt_is_not_cut(pair):
    """diffusers cuts the negative prompt's states to the prompt's token count; we keep all of them, and run
    the two branches as separate UNet calls when their lengths differ (padding would change the pooling mean)."""
    t2i, _, ours = pair
    short, negative_prompt = "a red cat", "ugly, cropped, deformed hands, blurry low quality"
    assert tokens(ours, negative_prompt) > tokens(ours, short) + 3
    positive, negative = P.encode_prompt(ours, short, negative_prompt)
    assert int(negative[1].sum()) == tokens(ours, negative_prompt)  # every token kept, EOS included
    assert negative[0].shape[1] == tokens(ours, negative_prompt) + 1 > positive[0].shape[1]
    got = ours_t2i(ours, prompt=short, negative_prompt=negative_prompt)
    assert np.abs(got - theirs_t2i(t2i, prompt=short, negative_prompt=negative_prompt)).max() > 1e-3


def test_separate_branch_calls_equal_the_batched_call(pair):
    _, _, ours = pair
    positive, negative = P.encode_prompt(ours, "a red cat", "a red dog")
    assert positive[0].shape == negative[0].shape
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batched = P.guided_eps(ours.unet, x, 501, positive, negative, 3.0)
        separate = 4.0 * ours.unet(x, 501, *positive) - 3.0 * ours.unet(x, 501, *negative)
    assert (batched - separate).abs().max() <= 1e-4  # batch-size rounding, amplified by the guidance


def test_several_prompts_keep_their_own_masks(pair):
    """With several prompts and num_images_per_prompt > 1, diffusers tiles the masks but repeats the states.
    Fed our (correctly ordered) conditioning row by row, diffusers agrees with us; its own encoding does not."""
    t2i, _, ours = pair
    prompts = ["a red cat", "a painting of a squirrel eating a burger"]
    assert tokens(ours, prompts[0]) != tokens(ours, prompts[1])
    positive, _ = P.encode_prompt(ours, prompts, num_images_per_prompt=2)
    assert torch.equal(positive[1].sum(-1), torch.tensor([tokens(ours, p) for p in prompts]).repeat_interleave(2))
    got = ours_t2i(ours, prompt=prompts, num_images_per_prompt=2)
    right = theirs_t2i(t2i, prompt_embeds=positive[0], attention_mask=positive[1])
    buggy = theirs_t2i(t2i, prompt=prompts, num_images_per_prompt=2)
    assert np.abs(got - right).max() <= 1e-4
    assert np.abs(got - buggy).max() > 1e-3


def test_image_to_image_size_not_a_multiple_is_a_clear_error(pair):
    """diffusers crashes inside the scheduler for sizes that are not multiples of 64 (4 for the tiny models)."""
    _, _, ours = pair
    with pytest.raises(KandinskyError, match="width 66 is not a multiple of 4; use 64 or 68"):
        P.image_to_image(ours, "a red cat", random_image(66).crop((0, 0, 66, 64)), steps=2)
    got = P.image_to_image(ours, "a red cat", random_image(66), height=64, width=64, steps=4, output_type="np")
    assert got.shape == (1, 64, 64, 3)


def test_negative_prompts_pair_with_prompts(pair):
    _, _, ours = pair
    with pytest.raises(KandinskyError, match="2 negative prompts for 3 prompts"):
        P.encode_prompt(ours, ["a", "b", "c"], ["x", "y"])
    positive, negative = P.encode_prompt(ours, ["a red cat", "a red dog"], "blurry", num_images_per_prompt=2)
    assert negative[0].shape == positive[0].shape and negative[0].shape[0] == 4
    with pytest.raises(KandinskyError, match="prompt must be a string"):
        P.text_to_image(ours, [], height=SIZE, width=SIZE)


def test_wrong_width_conditioning_is_a_clear_error(pair):
    _, _, ours = pair
    positive = (torch.randn(1, 5, 48), torch.ones(1, 5))
    with pytest.raises(KandinskyError, match="text hidden states of shape"):
        P.sample_text_to_image(ours, positive, None, (1, 4, 8, 8), steps=2, guidance_scale=1.0)
    positive = (torch.randn(1, 5, 32), torch.ones(1, 6))
    with pytest.raises(KandinskyError, match="attention mask has shape"):
        P.sample_text_to_image(ours, positive, None, (1, 4, 8, 8), steps=2, guidance_scale=1.0)
