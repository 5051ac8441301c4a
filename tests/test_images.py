"""kandinsky_core.images against diffusers' VaeImageProcessor and Kandinsky inpaint helpers, and transformers' CLIP."""
import copy
import warnings

import numpy as np
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.kandinsky.pipeline_kandinsky_inpaint import get_new_h_w
from diffusers.pipelines.kandinsky.pipeline_kandinsky_inpaint import prepare_mask as ref_prepare_mask
from diffusers.pipelines.kandinsky.pipeline_kandinsky_inpaint import (
    prepare_mask_and_masked_image as ref_prepare_mask_and_masked_image,
)
from diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2 import downscale_height_and_width
from PIL import Image

from kandinsky_core import images
from kandinsky_core.errors import KandinskyError

try:  # transformers >= 5: the PIL backend under its own name (the default one needs torchvision)
    from transformers import CLIPImageProcessorPil as CLIPProcessor
except ImportError:
    from transformers import CLIPImageProcessor as CLIPProcessor


def vae_processor():
    """The processor diffusers' Kandinsky img2img pipelines build."""
    return VaeImageProcessor(vae_scale_factor=8, vae_latent_channels=4, resample="bicubic", reducing_gap=1)


def ref_preprocess(image, height, width):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers' [-1, 1]-tensor deprecation notice
        return vae_processor().preprocess(image, height=height, width=width)


def random_pil(rng, height, width, mode="RGB"):
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def random_mask_pil(rng, height, width):
    """A blocky binary mask with soft edges after resizing (values 0/255)."""
    blocks = rng.integers(0, 2, (max(height // 8, 1), max(width // 8, 1)), dtype=np.uint8) * 255
    return Image.fromarray(blocks).resize((width, height), Image.Resampling.NEAREST)


# --- sizes -------------------------------------------------------------------------------------------------------


def test_latent_size_matches_diffusers():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 1100, 2))
        for factor in (8, 2):
            assert images.latent_size(h, w, factor) == get_new_h_w(h, w, factor)
            assert images.latent_size(h, w, factor) == downscale_height_and_width(h, w, factor)
    assert images.latent_size(512, 768) == (64, 96)
    assert images.latent_size(500, 500) == (64, 64)


def test_check_size_accepts_multiples_of_64():
    images.check_size(64, 64)
    images.check_size(512, 768)
    images.check_size(np.int64(1024), 640)
    images.check_size(40, 48, multiple=8)


@pytest.mark.parametrize(
    "height, width, expected",
    [
        (500, 512, "height 500 is not a multiple of 64; use 448 or 512"),
        (512, 700, "width 700 is not a multiple of 64; use 640 or 704"),
        (30, 512, "height 30 is not a multiple of 64; use 64"),
        (0, 512, "height 0 is not a positive multiple of 64; use 64"),
        (512, -64, "width -64 is not a positive multiple of 64; use 64"),
        (512.0, 512, "height must be an integer, got 512.0"),
        (True, 512, "height must be an integer, got True"),
    ],
)
def test_check_size_errors(height, width, expected):
    with pytest.raises(KandinskyError) as info:
        images.check_size(height, width)
    assert expected in str(info.value)


def test_check_size_names_both_sides():
    with pytest.raises(KandinskyError) as info:
        images.check_size(100, 130)
    assert str(info.value) == (
        "height 100 is not a multiple of 64; use 64 or 128. width 130 is not a multiple of 64; use 128 or 192"
    )
    with pytest.raises(KandinskyError, match="width 44 is not a multiple of 8; use 40 or 48"):
        images.check_size(40, 44, multiple=8)


def test_crop_to_multiple_centres_the_crop_as_comfyui_vae_encode():
    pixels = torch.arange(2 * 3 * 70 * 100, dtype=torch.float32).view(2, 3, 70, 100)
    cropped = images.crop_to_multiple(pixels, 8)
    # 70 = 64 + 6 rows: 3 off the top; 100 = 96 + 4 columns: 2 off the left (ComfyUI's offset (size % 8) // 2)
    torch.testing.assert_close(cropped, pixels[..., 3:67, 2:98], rtol=0, atol=0)
    assert images.crop_to_multiple(pixels[..., :64, :96], 8).data_ptr() == pixels.data_ptr()  # a view, no copy
    with pytest.raises(KandinskyError, match="7x70 .*smaller than the 8x8 pixels.*use an image of at least 8"):
        images.crop_to_multiple(pixels[..., :7], 8)


# --- img2img preprocessing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("src", [(64, 64), (50, 90), (200, 130), (33, 47)])
@pytest.mark.parametrize("size", [64, 128])
def test_preprocess_pil_matches_diffusers(src, size):
    image = random_pil(np.random.default_rng(src[0] * size), *src)
    ours = images.preprocess_image(image, size, size)
    assert ours.shape == (1, 3, size, size) and ours.dtype == torch.float32
    assert torch.equal(ours, ref_preprocess(image, size, size))
    assert ours.min() >= -1 and ours.max() <= 1


def test_preprocess_pil_list_and_modes():
    rng = np.random.default_rng(1)
    batch = [random_pil(rng, 80, 60), random_pil(rng, 40, 100)]
    assert torch.equal(images.preprocess_image(batch, 64, 64), ref_preprocess(batch, 64, 64))
    gray = random_pil(rng, 70, 70, mode="L")
    ours = images.preprocess_image(gray, 64, 64)
    assert ours.shape == (1, 3, 64, 64)
    assert torch.equal(ours, ref_preprocess(gray.convert("RGB"), 64, 64))


def test_preprocess_non_square_orientation():
    image = random_pil(np.random.default_rng(2), 100, 150)
    ours = images.preprocess_image(image, 64, 128)
    assert ours.shape == (1, 3, 64, 128)
    assert torch.equal(ours, ref_preprocess(image, 64, 128))
    # diffusers' pipelines call preprocess(image, width, height): the swapped result we do not reproduce
    swapped = vae_processor().preprocess(image, 128, 64)
    assert swapped.shape == (1, 3, 128, 64)


def test_preprocess_tensors_and_arrays_match_diffusers():
    gen = torch.Generator().manual_seed(0)
    unit = torch.rand(2, 3, 64, 96, generator=gen)
    for height, width in [(64, 96), (64, 64), (128, 128), (32, 48)]:
        assert torch.equal(images.preprocess_image(unit, height, width), ref_preprocess(unit, height, width))
    signed = unit * 2 - 1
    assert torch.equal(images.preprocess_image(signed, 64, 96), ref_preprocess(signed, 64, 96))
    assert torch.equal(images.preprocess_image(signed, 64, 96), signed)
    single = unit[0]
    assert torch.equal(images.preprocess_image(single, 64, 64), ref_preprocess(single, 64, 64))
    array = unit.permute(0, 2, 3, 1).numpy()
    assert torch.equal(images.preprocess_image(array, 64, 64), ref_preprocess(array, 64, 64))
    assert torch.equal(images.preprocess_image(array[0], 64, 96), ref_preprocess(array[0], 64, 96))


def test_preprocess_uint8_array_reads_0_to_255():
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    expected = ref_preprocess(pixels.astype(np.float32) / 255, 64, 64)
    assert torch.equal(images.preprocess_image(pixels, 64, 64), expected)
    assert torch.equal(images.preprocess_image(Image.fromarray(pixels), 64, 64), expected)


def test_preprocess_rejects_non_rgb():
    with pytest.raises(KandinskyError, match=r"expected an RGB image .* got \(1, 1, 64, 64\); convert grayscale"):
        images.preprocess_image(torch.rand(1, 1, 64, 64), 64, 64)
    with pytest.raises(KandinskyError, match=r"got \(64, 64, 4\)"):
        images.preprocess_image(np.zeros((64, 64, 4), np.float32), 64, 64)
    with pytest.raises(KandinskyError, match="unsupported input type str"):
        images.preprocess_image("cat.png", 64, 64)


# --- inpainting --------------------------------------------------------------------------------------------------


def assert_inpaint_matches(ours, theirs):
    (mask, image), (ref_mask, ref_image) = ours, theirs
    assert mask.dtype == torch.float32 and image.dtype == torch.float32
    assert torch.equal(mask, ref_mask.float())
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    # diffusers computes x / 127.5 - 1, we 2 * (x / 255) - 1: identical in float32 for every uint8 x
    assert torch.equal(image, ref_image)


@pytest.mark.parametrize("height, width", [(64, 64), (128, 128), (64, 128), (128, 64)])
def test_inpaint_pil_matches_diffusers(height, width):
    rng = np.random.default_rng(height + 3 * width)
    image, mask = random_pil(rng, 90, 70), random_mask_pil(rng, 90, 70)
    ours = images.prepare_mask_and_masked_image(image, mask, height, width)
    assert ours[0].shape == (1, 1, height, width) and ours[1].shape == (1, 3, height, width)
    assert_inpaint_matches(ours, ref_prepare_mask_and_masked_image(image, mask, height, width))


def test_inpaint_pil_lists_and_rgb_mask():
    rng = np.random.default_rng(4)
    batch = [random_pil(rng, 64, 64), random_pil(rng, 100, 80)]
    masks = [random_mask_pil(rng, 64, 64).convert("RGB"), random_mask_pil(rng, 48, 48)]
    ours = images.prepare_mask_and_masked_image(batch, masks, 64, 64)
    assert_inpaint_matches(ours, ref_prepare_mask_and_masked_image(batch, masks, 64, 64))
    one_mask = images.prepare_mask_and_masked_image(batch, masks[0], 64, 64)
    assert one_mask[0].shape == (1, 1, 64, 64)


@pytest.mark.parametrize(
    "mask_shape, batch", [((32, 48), 1), ((1, 32, 48), 1), ((2, 1, 32, 48), 2), ((2, 32, 48), 2), ((1, 1, 32, 48), 1)]
)
def test_inpaint_tensors_match_diffusers(mask_shape, batch):
    gen = torch.Generator().manual_seed(batch)
    image = torch.rand(batch, 3, 32, 48, generator=gen) * 2 - 1
    mask = torch.rand(mask_shape, generator=gen)
    mask_before = mask.clone()
    ours = images.prepare_mask_and_masked_image(image, mask, 32, 48)
    assert torch.equal(mask, mask_before)  # diffusers binarizes the caller's mask in place; we do not
    assert ours[0].shape == (batch, 1, 32, 48)
    assert_inpaint_matches(ours, ref_prepare_mask_and_masked_image(image.clone(), mask.clone(), 32, 48))
    assert torch.equal(ours[0], (mask_before < 0.5).float().reshape(ours[0].shape))


def test_inpaint_single_image_tensor_and_arrays():
    rng = np.random.default_rng(5)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(5)) * 2 - 1
    mask = torch.rand(64, 64, generator=torch.Generator().manual_seed(6))
    assert_inpaint_matches(
        images.prepare_mask_and_masked_image(image, mask, 64, 64),
        ref_prepare_mask_and_masked_image(image.clone(), mask.clone(), 64, 64),
    )
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    float_mask = rng.random((64, 64), dtype=np.float32)
    assert_inpaint_matches(
        images.prepare_mask_and_masked_image(pixels, float_mask, 64, 64),
        ref_prepare_mask_and_masked_image(pixels, float_mask.copy(), 64, 64),
    )
    # uint8 arrays are 0..255 everywhere: a uint8 mask of 200 means repaint, 100 means keep
    byte_mask = np.where(float_mask > 0.5, 200, 100).astype(np.uint8)
    keep, _ = images.prepare_mask_and_masked_image(pixels, byte_mask, 64, 64)
    assert torch.equal(keep[0, 0], torch.from_numpy((float_mask <= 0.5).astype(np.float32)))
    bool_mask = torch.from_numpy(float_mask > 0.5)
    keep_bool, _ = images.prepare_mask_and_masked_image(image, bool_mask, 64, 64)
    assert torch.equal(keep_bool, keep)


def test_inpaint_mask_size_mismatch_names_both_sizes():
    image = torch.zeros(1, 3, 64, 96)
    with pytest.raises(KandinskyError) as info:
        images.prepare_mask_and_masked_image(image, torch.zeros(64, 64), 64, 96)
    assert str(info.value) == "mask is 64x64 but the image is 64x96 (height x width); resize the mask to 64x96"
    with pytest.raises(KandinskyError, match=r"mask is 32x48 but the image is 64x96"):
        images.prepare_mask_and_masked_image(image, np.zeros((32, 48), np.float32), 64, 96)


def test_inpaint_input_errors():
    image = torch.zeros(2, 3, 64, 64)
    with pytest.raises(KandinskyError) as info:
        images.prepare_mask_and_masked_image(image, torch.zeros(64, 64), 128, 128)
    assert str(info.value) == (
        "image is 64x64 (height x width) but 128x128 was requested; resize the image or request its size"
    )
    with pytest.raises(KandinskyError, match=r"got 3 masks for 2 images; pass one mask, or one per image"):
        images.prepare_mask_and_masked_image(image, torch.zeros(3, 64, 64), 64, 64)
    with pytest.raises(KandinskyError, match=r"image tensor values must lie in \[-1, 1\], got \[0, 2\]"):
        images.prepare_mask_and_masked_image(image.index_fill(1, torch.tensor([0]), 2.0), torch.zeros(64, 64), 64, 64)
    with pytest.raises(KandinskyError, match=r"mask values must lie in \[0, 1\] \(1 = repaint\), got \[0, 255\]"):
        images.prepare_mask_and_masked_image(image, torch.full((64, 64), 255.0).tril(), 64, 64)
    with pytest.raises(KandinskyError, match=r"mask shape \(2, 3, 64, 64\) is not \(H, W\)"):
        images.prepare_mask_and_masked_image(image, torch.zeros(2, 3, 64, 64), 64, 64)


def test_inpaint_mask_is_inverted():
    image = torch.zeros(1, 3, 8, 8)
    user = torch.zeros(8, 8)
    user[2:5, 3:6] = 1.0  # white = repaint
    user[7, 0], user[7, 1] = 0.5, 0.499  # binarized at 0.5: 0.5 repaints, just below keeps
    keep, _ = images.prepare_mask_and_masked_image(image, user, 8, 8)
    assert keep[0, 0, 3, 4] == 0 and keep[0, 0, 7, 0] == 0 and keep[0, 0, 7, 1] == 1
    assert keep[0, 0, 0, 0] == 1 and keep.sum() == 64 - 10
    ref_keep, _ = ref_prepare_mask_and_masked_image(image, user.clone(), 8, 8)
    assert torch.equal(keep, ref_keep)


# --- hole dilation -----------------------------------------------------------------------------------------------


def dilation_cases():
    gen = torch.Generator().manual_seed(0)
    cases = []
    for h, w, p in [(1, 1, 0.5), (1, 9, 0.3), (9, 1, 0.3), (2, 2, 0.5), (8, 8, 0.1), (8, 8, 0.5), (8, 8, 0.9),
                    (7, 13, 0.2), (16, 16, 0.05), (12, 5, 0.4), (16, 24, 0.3), (3, 3, 0.2)]:
        cases.append((torch.rand(1, 1, h, w, generator=gen) > p).float())
    border = torch.ones(1, 1, 8, 8)
    border[0, 0, 0, 3] = border[0, 0, 7, 5] = border[0, 0, 4, 0] = border[0, 0, 2, 7] = 0
    corners = torch.ones(1, 1, 6, 6)
    corners[0, 0, 0, 0] = corners[0, 0, 0, 5] = corners[0, 0, 5, 0] = corners[0, 0, 5, 5] = 0
    single = torch.ones(1, 1, 5, 5)
    single[0, 0, 2, 2] = 0
    cases += [border, corners, single, torch.zeros(1, 1, 6, 6), torch.ones(1, 1, 6, 6)]
    cases.append((torch.rand(3, 1, 10, 10, generator=gen) > 0.3).float())  # a batch
    soft = torch.rand(2, 1, 9, 9, generator=gen)
    cases.append(torch.where(soft > 0.4, torch.ones_like(soft), soft))  # non-binary: any value != 1 is hole
    return cases


@pytest.mark.parametrize("mask", dilation_cases())
def test_dilate_hole_bit_identical_to_diffusers(mask):
    ours = images.dilate_hole(mask)
    assert torch.equal(ours, ref_prepare_mask(copy.deepcopy(mask)))
    assert ours.shape == mask.shape and ours.dtype == mask.dtype


def test_dilate_hole_is_asymmetric():
    mask = torch.ones(1, 1, 5, 5)
    mask[0, 0, 2, 2] = 0
    cleared = (images.dilate_hole(mask)[0, 0] == 0).nonzero().tolist()
    assert sorted(cleared) == [[1, 1], [1, 2], [2, 1], [2, 2], [2, 3], [3, 2], [3, 3]]


# --- postprocessing ----------------------------------------------------------------------------------------------


def test_postprocess_matches_diffusers_and_ranges():
    decoded = torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(0)) * 1.5  # beyond [-1, 1]
    processor = vae_processor()
    pt = images.postprocess(decoded, "pt")
    assert pt.shape == (2, 3, 16, 24) and pt.min() == 0 and pt.max() == 1
    assert torch.equal(pt, processor.postprocess(decoded, "pt"))
    array = images.postprocess(decoded, "np")
    assert array.shape == (2, 16, 24, 3) and array.dtype == np.float32
    assert np.array_equal(array, processor.postprocess(decoded, "np"))
    pil = images.postprocess(decoded, "pil")
    ref_pil = processor.postprocess(decoded, "pil")
    assert len(pil) == 2 and pil[0].size == (24, 16) and pil[0].mode == "RGB"
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(pil, ref_pil))


def test_postprocess_rounds_like_diffusers():
    decoded = torch.tensor([-1.0, 1.0, 0.0, -0.999, 2 * 100.5 / 255 - 1]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    pixels = np.asarray(images.postprocess(decoded, "pil")[0])[0, :, 0]
    assert pixels.tolist() == [0, 255, 128, 0, 100]  # numpy rounds half to even


@pytest.mark.parametrize("output_type", ["latent", "PIL", None])
def test_postprocess_rejects_other_types(output_type):
    with pytest.raises(KandinskyError, match=r"is not one of pt, np, pil; for latents"):
        images.postprocess(torch.zeros(1, 3, 8, 8), output_type)


# --- CLIP image inputs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("src", [(224, 224), (300, 200), (200, 300), (100, 150), (257, 511), (225, 1000), (1000, 225)])
def test_clip_inputs_match_transformers(src):
    image = random_pil(np.random.default_rng(src[1]), *src)
    ours = images.clip_image_inputs(image)
    theirs = CLIPProcessor(**images.KANDINSKY_CLIP_PREPROCESSOR)(image, return_tensors="pt").pixel_values
    assert ours.shape == (1, 3, 224, 224) and ours.dtype == torch.float32
    assert torch.equal(ours, theirs)


def test_clip_inputs_batches_tensors_and_configs():
    rng = np.random.default_rng(7)
    batch = [random_pil(rng, 240, 320), random_pil(rng, 230, 230, mode="L")]
    theirs = CLIPProcessor(**images.KANDINSKY_CLIP_PREPROCESSOR)(batch, return_tensors="pt").pixel_values
    assert torch.equal(images.clip_image_inputs(batch), theirs)
    # a tensor in [0, 1] that came from uint8 pixels gives exactly the PIL result
    tensor = torch.from_numpy(np.array(batch[0])).permute(2, 0, 1)[None].float() / 255
    assert torch.equal(images.clip_image_inputs(tensor), images.clip_image_inputs(batch[0]))
    small = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32},
             "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.3, 0.4], "resample": 2}
    theirs = CLIPProcessor(**small)(batch, return_tensors="pt").pixel_values
    ours = images.clip_image_inputs(batch, small)
    assert ours.shape == (2, 3, 32, 32) and torch.equal(ours, theirs)


def test_clip_inputs_reject_partial_configs():
    config = dict(images.KANDINSKY_CLIP_PREPROCESSOR, do_center_crop=False)
    with pytest.raises(KandinskyError, match="turns off do_center_crop; only the full CLIP preprocessing"):
        images.clip_image_inputs(Image.new("RGB", (8, 8)), config)
