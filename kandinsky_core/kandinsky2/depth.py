"""Depth hints for the Kandinsky 2.2 depth decoder, from a local transformers depth-estimation model.

The depth decoder was trained on relative depth images with near = bright, as `transformers.pipeline(
"depth-estimation")` renders them (diffusers' Kandinsky controlnet example feeds that pipeline's depth image / 255):
the model's prediction resized bicubically to the image size, then min-max normalised per image. DPT and Depth Anything
predict relative inverse depth, which is already near = bright; models that predict distance (ZoeDepth, GLPN, metric
Depth Anything) are flipped so near stays bright. The result is kept in float rather than rounded to 8 bits.
"""
import os

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from transformers import AutoImageProcessor, AutoModelForDepthEstimation

from .. import images
from ..errors import KandinskyError

DISTANCE_MODEL_TYPES = ("zoedepth", "glpn")  # predicted_depth grows with distance; the others predict inverse depth


def load_depth_model(folder, dtype=torch.float32, device="cpu"):
    """(model, image processor) from a local transformers depth-estimation folder (`save_pretrained` layout)."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise KandinskyError(f"{folder} has no config.json, so it is not a transformers model folder; download a "
                             "depth-estimation model such as Intel/dpt-large or depth-anything/Depth-Anything-V2-Small-hf "
                             "(all its files) into models/kandinsky.")
    try:
        model = AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True, dtype=dtype)
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise KandinskyError(f"{folder} is not a complete transformers depth-estimation model ({e}); use a folder such "
                             "as Intel/dpt-large or depth-anything/Depth-Anything-V2-Small-hf with its config.json, "
                             "weights and preprocessor_config.json.") from e
    return model.to(device).eval().requires_grad_(False), processor


def _predicts_distance(config):
    return config.model_type in DISTANCE_MODEL_TYPES or getattr(config, "depth_estimation_type", None) == "metric"


@torch.no_grad()
def estimate_depth(model, processor, pixels):
    """Images (B, 3, H, W) in [0, 1] -> depth maps (B, 3, H, W) in [0, 1], near = bright, on the images' device."""
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise KandinskyError(f"depth estimation needs RGB images of shape (B, 3, H, W), got {tuple(pixels.shape)}; "
                             "convert grayscale or RGBA images to RGB.")
    images.check_finite(pixels, "The image to estimate depth for")
    height, width = pixels.shape[-2:]
    # 8-bit frames, as the depth pipeline reads image files: the processor then resizes and normalises them its way.
    frames = list((pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    # Channels-last stated outright: the processor guesses the layout, and takes a 1- or 3-pixel-tall frame for planar.
    inputs = processor(images=frames, return_tensors="pt", input_data_format="channels_last")
    predicted = model(pixel_values=inputs["pixel_values"].to(model.device, model.dtype)).predicted_depth
    depth = F.interpolate(predicted.float()[:, None], size=(height, width), mode="bicubic", align_corners=False)
    if _predicts_distance(model.config):
        depth = -depth
    low, high = depth.amin((2, 3), keepdim=True), depth.amax((2, 3), keepdim=True)
    depth = (depth - low) / (high - low).clamp_min(torch.finfo(depth.dtype).tiny)  # a flat prediction gives 0, not NaN
    return depth.expand(-1, 3, -1, -1).to(pixels.device)
