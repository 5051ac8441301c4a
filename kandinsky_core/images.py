"""Image-side helpers of the Kandinsky pipelines: sizes, pre/post-processing, inpaint masks, CLIP pixel values.

Plain functions over PIL images, numpy arrays and torch tensors. They reproduce diffusers' Kandinsky helpers
(`downscale_height_and_width`, `prepare_mask_and_masked_image` and `prepare_mask` in
diffusers/src/diffusers/pipelines/kandinsky2_2/pipeline_kandinsky2_2_inpainting.py, the img2img pipelines' image
processing), with these deliberate differences:

* Sizes are never rounded. `check_size` rejects a height or width that is not a multiple of 64, where diffusers
  silently renders the next larger size (its `downscale_height_and_width` rounds up), so users get exactly the size
  they ask for.
* `preprocess_image(image, height, width)` takes height and width in that order; diffusers' img2img pipelines pass
  them swapped (`image_processor.preprocess(i, width, height)` against `preprocess(image, height, width)`). For square
  sizes the result equals diffusers'.
* `postprocess(..., "pt")` always returns [0, 1]; diffusers returns the raw [-1, 1] decoder output for
  text-to-image and inpainting (only "np" and "pil" are rescaled) but [0, 1] for img2img (its VaeImageProcessor
  rescales "pt" too).
* Numpy arrays mean the same thing everywhere: uint8 is 0..255, floating is 0..1 (uint8 tensors are 0..255 too).
  diffusers' inpaint helper reads numpy images as 0..255 whatever their dtype, its image processor as 0..1.
* The image and mask tensors the preprocessing returns are float32, on the device of the input.
"""
import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import KandinskyError

# Published `image_processor/preprocessor_config.json` of both Kandinsky priors (kandinsky-community/kandinsky-2-1-prior
# and kandinsky-2-2-prior on the Hugging Face hub; the two files are the same).
KANDINSKY_CLIP_PREPROCESSOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}

OUTPUT_TYPES = ("pt", "np", "pil")

# diffusers' `prepare_mask` clears, around every hole pixel (i, j), the pixels (i-1, j), (i, j-1), (i-1, j-1),
# (i+1, j), (i, j+1), (i+1, j+1): not the two anti-diagonal ones. Seen from the cleared pixel (p, q), that is a hole
# at (p+1, q), (p, q+1), (p+1, q+1), (p-1, q), (p, q-1) or (p-1, q-1); as a cross-correlation kernel over rows
# p-1..p+1 and columns q-1..q+1:
_HOLE_NEIGHBOURS = ((1, 1, 0), (1, 0, 1), (0, 1, 1))


def latent_size(height, width, scale_factor=8):
    """Latent (height, width) diffusers uses for an image request: each side rounded up to scale_factor**2."""
    # The same factor counts twice: the MoVQ downsamples by it and the UNet needs latent sides divisible by it.
    block = scale_factor**2
    return -(-height // block) * scale_factor, -(-width // block) * scale_factor


def check_size(height, width, multiple=64):
    """Raise KandinskyError unless height and width are positive multiples of `multiple`; names the nearest valid."""
    # 64 = the MoVQ's 8x downsampling times the 8 the UNet needs the latent sides divisible by. Rejecting other sizes
    # (diffusers rounds them up) means the output always has exactly the requested size.
    problems = []
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            problems.append(f"{name} must be an integer, got {value!r}")
        elif value <= 0:
            problems.append(f"{name} {value} is not a positive multiple of {multiple}; use {multiple}")
        elif value % multiple:
            below = value // multiple * multiple
            choices = f"{below} or {below + multiple}" if below else f"{multiple}"
            problems.append(f"{name} {value} is not a multiple of {multiple}; use {choices}")
    if problems:
        raise KandinskyError(". ".join(problems))


def crop_to_multiple(pixels, multiple):
    """A (..., H, W) tensor centre-cropped to the largest multiple of `multiple` per side, as ComfyUI's VAE Encode."""
    h, w = pixels.shape[-2:]
    if h < multiple or w < multiple:
        raise KandinskyError(f"the image is {w}x{h} (width x height), smaller than the {multiple}x{multiple} pixels "
                             f"the MoVQ needs; use an image of at least {multiple} pixels a side")
    top, left = h % multiple // 2, w % multiple // 2
    return pixels[..., top:top + h - h % multiple, left:left + w - w % multiple]


def preprocess_image(image, height, width):
    """Image(s) → (B, 3, height, width) float32 tensor in [-1, 1], as diffusers' `VaeImageProcessor.preprocess`.

    PIL images (or a list) are converted to RGB and resized with bicubic filtering (reducing_gap=1). Tensors
    ((3, H, W) or (B, 3, H, W)) and numpy arrays ((H, W, 3) or (B, H, W, 3)) of another size are resized by
    nearest-neighbour, as diffusers does: resize them beforehand for quality. Like diffusers, a tensor or array with
    negative values is taken to be in [-1, 1] already, anything else in [0, 1].
    """
    if _is_pil(image):
        return 2.0 * _pil_batch(image, "RGB", height, width, Image.Resampling.BICUBIC, reducing_gap=1) - 1.0
    pixels = _image_batch(image)
    if pixels.shape[-2:] != (height, width):
        pixels = F.interpolate(pixels, size=(height, width))
    return pixels if pixels.min() < 0 else 2.0 * pixels - 1.0


def prepare_mask_and_masked_image(image, mask, height, width):
    """Inpaint inputs → (mask (B, 1, H, W) with 1 = keep, image (B, 3, H, W) in [-1, 1]), as diffusers' helper.

    The user's mask is white/1 = repaint. It is binarized at 0.5 and inverted (the UNet reads 1 = keep). The image
    comes back unmasked: the pipeline masks it after encoding, in latent space. PIL images and masks are resized to
    height x width (bicubic, Lanczos); arrays and tensors must already have that size. Tensor images are read as [-1, 1]
    (diffusers' convention), numpy images as 0..255 (uint8) or [0, 1] (float); masks as [0, 1] (or uint8 0..255).
    Masks may be (H, W), (1, H, W), (B, H, W) or (B, 1, H, W); one mask may serve a whole batch of images.
    """
    first = image[0] if isinstance(image, (list, tuple)) else image
    if _is_pil(image):
        pixels = 2.0 * _pil_batch(image, "RGB", height, width, Image.Resampling.BICUBIC, reducing_gap=1) - 1.0
    elif isinstance(first, torch.Tensor):
        pixels = _image_batch(image)
        if pixels.min() < -1 or pixels.max() > 1:
            raise KandinskyError(
                f"image tensor values must lie in [-1, 1], got [{pixels.min():.3g}, {pixels.max():.3g}]; "
                "map a [0, 1] image with image * 2 - 1"
            )
    else:
        pixels = 2.0 * _image_batch(image) - 1.0
    image_hw = tuple(pixels.shape[-2:])
    if image_hw != (height, width):
        raise KandinskyError(
            f"image is {_hw(image_hw)} (height x width) but {_hw((height, width))} was requested; "
            "resize the image or request its size"
        )
    user_mask = _mask_batch(mask, height, width)
    if user_mask.shape[-2:] != image_hw:
        raise KandinskyError(
            f"mask is {_hw(user_mask.shape[-2:])} but the image is {_hw(image_hw)} (height x width); "
            f"resize the mask to {_hw(image_hw)}"
        )
    if user_mask.shape[0] not in (1, pixels.shape[0]):
        raise KandinskyError(
            f"got {user_mask.shape[0]} masks for {pixels.shape[0]} images; pass one mask, or one per image"
        )
    if user_mask.min() < 0 or user_mask.max() > 1:
        raise KandinskyError(
            f"mask values must lie in [0, 1] (1 = repaint), got [{user_mask.min():.3g}, {user_mask.max():.3g}]; "
            "scale a 0..255 float mask by 1/255"
        )
    return (user_mask < 0.5).float(), pixels


def dilate_hole(mask):
    """Grow the hole (mask != 1) of a (B, C, h, w) keep-mask by one pixel, bit-exactly as diffusers' `prepare_mask`."""
    # Like diffusers: channel 0 decides what is hole, every channel is cleared; hole pixels keep their own value.
    hole = (mask[:, :1] != 1).float()
    kernel = torch.tensor(_HOLE_NEIGHBOURS, dtype=hole.dtype, device=hole.device).view(1, 1, 3, 3)
    return mask.masked_fill(F.conv2d(hole, kernel, padding=1) > 0, 0)


def is_inpaint_hole(noise_mask, keep):
    """Whether a noise mask is exactly the hole (1 - keep) of a latent keep-mask, the part inpainting repaints."""
    mask = noise_mask.to(keep.device, keep.dtype)
    return mask.numel() == keep.numel() and torch.equal(mask.reshape(keep.shape), 1 - keep)


def postprocess(decoded, output_type="pil"):
    """Decoder output in [-1, 1] → "pt" (B, 3, H, W) tensor in [0, 1], "np" (B, H, W, 3) float32, or "pil" list."""
    if output_type not in OUTPUT_TYPES:
        raise KandinskyError(
            f"output_type {output_type!r} is not one of {', '.join(OUTPUT_TYPES)}; "
            "for latents, take the sampler's output before decoding"
        )
    images = (decoded * 0.5 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return images
    array = images.cpu().permute(0, 2, 3, 1).float().numpy()
    if output_type == "np":
        return array
    return [Image.fromarray(a) for a in (array * 255).round().astype(np.uint8)]


def clip_image_inputs(images, image_processor_config=None):
    """PIL image(s) or a (B, 3, H, W) tensor in [0, 1] → CLIP pixel_values (B, 3, crop, crop), as CLIPImageProcessor.

    Resize the shortest edge (bicubic), center crop, scale to [0, 1], normalize with the CLIP mean/std — the PIL
    backend of transformers' CLIPImageProcessor, implemented here so the result does not depend on whether
    torchvision is installed (transformers 5 then switches to a torchvision resize with different numbers).
    `image_processor_config` is a `preprocessor_config.json` dict (default: the published Kandinsky one).
    """
    cfg = KANDINSKY_CLIP_PREPROCESSOR if image_processor_config is None else image_processor_config
    disabled = [k for k in ("do_resize", "do_center_crop", "do_rescale", "do_normalize") if not cfg.get(k, True)]
    if disabled:
        raise KandinskyError(
            f"image processor config turns off {', '.join(disabled)}; only the full CLIP preprocessing is supported"
        )
    size = cfg["size"]["shortest_edge"] if isinstance(cfg["size"], dict) else cfg["size"]
    crop = cfg["crop_size"]
    crop_h, crop_w = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop, crop)
    mean = torch.tensor(cfg["image_mean"], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(cfg["image_std"], dtype=torch.float32).view(3, 1, 1)
    pixels = []
    for image in _pil_list(images):
        image = image.convert("RGB")
        w, h = image.size
        # transformers' shortest-edge rule: the long side is truncated, not rounded
        new_size = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        image = image.resize(new_size, resample=cfg.get("resample", Image.Resampling.BICUBIC))
        left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h))
        scaled = torch.from_numpy((np.asarray(image, dtype=np.float64) / 255).astype(np.float32))
        pixels.append((scaled.permute(2, 0, 1) - mean) / std)
    return torch.stack(pixels)


def image_size(image):
    """(height, width) of a PIL image, a (…, 3, H, W) tensor or an (…, H, W, 3) array, or of a list's first item."""
    first = image[0] if isinstance(image, (list, tuple)) else image
    if isinstance(first, torch.Tensor):
        return tuple(first.shape[-2:])
    if isinstance(first, np.ndarray):
        return tuple(first.shape[-3:-1])
    return first.height, first.width


def fit_mask(mask, height, width):
    """A mask (B, H, W) or (H, W) as (B, 1, height, width), resized bilinearly when its size differs, as ComfyUI's
    InpaintModelConditioning resizes its mask to the image."""
    mask = check_finite(torch.as_tensor(mask), "The mask").reshape(-1, 1, *mask.shape[-2:]).float()
    return mask if mask.shape[-2:] == (height, width) else F.interpolate(mask, (height, width), mode="bilinear")


def grow_mask(mask, pixels):
    """A (B, 1, H, W) mask (1 = repaint) grown by `pixels` on every side, as ComfyUI's VAE Encode (for Inpainting)
    grows it (a box filter over the rounded mask, clamped to 1); 0 leaves it as it is."""
    if pixels <= 0:
        return mask
    kernel = torch.ones((1, 1, pixels, pixels), dtype=mask.dtype, device=mask.device)
    grown = F.conv2d(mask.round(), kernel, padding=math.ceil((pixels - 1) / 2)).clamp(0, 1)
    return grown[..., :mask.shape[-2], :mask.shape[-1]]


def paste_back(generated, image, mask):
    """`generated` (B, C, H, W) with `image` (b, C, H, W) put back where `mask` (b, 1, H, W) is 0 and blended where it
    is fractional: the composite core ImageCompositeMasked makes; b rows serve B = k·b generated rows in turn."""
    if generated.shape[-2:] != image.shape[-2:] or mask.shape[-2:] != image.shape[-2:]:
        raise KandinskyError(f"Paste-back needs the generated image, the source and the mask at one size; got "
                             f"{_hw(generated.shape[-2:])}, {_hw(image.shape[-2:])} and {_hw(mask.shape[-2:])}.")
    if generated.shape[0] % image.shape[0] or generated.shape[0] % mask.shape[0]:
        raise KandinskyError(f"Paste-back of {image.shape[0]} source images with {mask.shape[0]} masks cannot serve "
                             f"{generated.shape[0]} generated ones; give as many or one.")
    image = image.to(generated).repeat_interleave(generated.shape[0] // image.shape[0], dim=0)
    mask = mask.to(generated).repeat_interleave(generated.shape[0] // mask.shape[0], dim=0)
    return generated * mask + image * (1 - mask)


def _hw(shape):
    return f"{shape[0]}x{shape[1]}"


def _is_pil(x):
    return isinstance(x, Image.Image) or (isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], Image.Image))


def _pil_batch(images, mode, height, width, resample, reducing_gap=None):
    """PIL image(s) → (B, C, height, width) float32 tensor in [0, 1], converted to `mode` then resized."""
    arrays = []
    for image in [images] if isinstance(images, Image.Image) else images:
        image = image.convert(mode).resize((width, height), resample=resample, reducing_gap=reducing_gap)
        arrays.append((np.asarray(image, dtype=np.float32) / 255.0).reshape(height, width, -1))
    # Channels-last strides, as diffusers builds them: CPU convolutions round differently on other layouts.
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def check_finite(x, what):
    """Raise KandinskyError if tensor `x` is empty or holds NaN or infinite values; `what` names it in the message."""
    if x.numel() == 0:
        raise KandinskyError(f"{what} is empty (shape {tuple(x.shape)}); give it at least one pixel and one batch item")
    if x.device.type != "meta" and not torch.isfinite(x).all():
        raise KandinskyError(f"{what} holds NaN or infinite values; check the nodes or the math that produced it")
    return x


def _as_float(x):
    """A numpy array or tensor as a float32 tensor; uint8 means 0..255."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.array(x, order="C"))  # a copy: the caller's array may be read-only or strided
    if not isinstance(x, torch.Tensor):
        raise KandinskyError(f"unsupported input type {type(x).__name__}; pass a PIL image, numpy array or tensor")
    return check_finite(x.float() / 255 if x.dtype == torch.uint8 else x.float(), f"an input of shape {tuple(x.shape)}")


def _image_batch(image):
    """Tensor(s) (3, H, W) / (B, 3, H, W) or numpy array(s) (H, W, 3) / (B, H, W, 3) → (B, 3, H, W) float32."""
    if isinstance(image, (list, tuple)):
        return torch.cat([_image_batch(i) for i in image])
    pixels = _as_float(image)
    if isinstance(image, np.ndarray):
        pixels = pixels.movedim(-1, -3)  # channels last -> first
    if pixels.ndim == 3:
        pixels = pixels[None]
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise KandinskyError(
            f"expected an RGB image of shape (3, H, W) or (B, 3, H, W) (numpy: (H, W, 3) or (B, H, W, 3)), got "
            f"{tuple(image.shape)}; convert grayscale or RGBA images to RGB"
        )
    return pixels


def _mask_batch(mask, height, width):
    """Mask(s) → (B, 1, H, W) float32; PIL masks become grayscale and are resized to height x width (Lanczos)."""
    if _is_pil(mask):
        return _pil_batch(mask, "L", height, width, Image.Resampling.LANCZOS)
    if isinstance(mask, (list, tuple)):
        return torch.cat([_mask_batch(m, height, width) for m in mask])
    values = _as_float(mask)
    if values.ndim == 2:
        values = values[None, None]
    elif values.ndim == 3:  # (1, H, W) or (B, H, W): either way the channel goes second
        values = values[:, None]
    elif values.ndim != 4 or values.shape[1] != 1:
        raise KandinskyError(
            f"mask shape {tuple(mask.shape)} is not (H, W), (1, H, W), (B, H, W) or (B, 1, H, W); "
            "pass a single-channel mask"
        )
    return values


def _pil_list(images):
    """PIL image(s), or tensor / numpy image(s) in [0, 1] → list of PIL images (arrays rounded to uint8)."""
    if _is_pil(images):
        return [images] if isinstance(images, Image.Image) else list(images)
    pixels = _image_batch(images).detach().clamp(0, 1)
    array = (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]
