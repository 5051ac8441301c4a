"""Image-side nodes: MoVQ encode/decode (in tiles when memory is short), inpainting inputs, depth maps and hints."""
import logging

import comfy.model_management as mm
import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..kandinsky_core import depth, images, tiling
from ..kandinsky_core.decoder_pipeline import latent_keep_mask
from ..kandinsky_core.errors import KandinskyError
from . import paths, progress, types
from .comfy_compat import is_oom
from .depth_component import load_depth

FALLBACK_TILE = 512  # tile side in pixels when a whole decode or encode runs out of memory
# Activation memory per image pixel per byte of the MoVQ's dtype. Measured on the full MoVQ (CPU, fp32): about 1,000
# for decode and 700 for encode; doubled for CUDA workspaces and allocator slack (ComfyUI uses 2,178 for the SD VAE).
DECODE_MEMORY_PER_PIXEL = 2200
ENCODE_MEMORY_PER_PIXEL = 1400


def require_movq(movq):
    """The MoVQ, or a clear error where a decoder loaded from a single UNet file left none."""
    if movq is None:
        raise KandinskyError("No MoVQ is connected: a decoder loaded from a single UNet file has none. Load one with "
                             "Kandinsky MoVQ Loader and connect its movq output.")
    return movq


def with_keys(cond, **keys):
    """A copy of a CONDITIONING list whose dicts carry `keys` too; the input is left as it was."""
    return [[t, {**d, **keys}] for t, d in cond]


def movq_pixels(image):
    """A ComfyUI IMAGE (B, H, W, C) in [0, 1] as MoVQ input (B, 3, H, W) in [-1, 1] (alpha dropped)."""
    return image[..., :3].movedim(-1, 1) * 2 - 1


def comfy_image(pixels):
    """(B, 3, H, W) in [0, 1] as a ComfyUI IMAGE (B, H, W, 3) on the intermediate device."""
    return pixels.movedim(1, -1).to(mm.intermediate_device(), torch.float32)


def encodable(image, f):
    """An IMAGE as MoVQ input, centre-cropped to multiples of `f` pixels as core VAE Encode does (100x70 -> 96x64)."""
    return images.crop_to_multiple(movq_pixels(images.check_finite(image, "The image to encode")), f)


def fit_mask(mask, height, width):
    """A MASK as (B, 1, height, width), resized bilinearly when its size differs, as core InpaintModelConditioning."""
    mask = images.check_finite(mask, "The mask").reshape(-1, 1, *mask.shape[-2:]).float()
    return mask if mask.shape[-2:] == (height, width) else F.interpolate(mask, (height, width), mode="bilinear")


def memory(per_pixel, batch, height, width, dtype):
    """Bytes of activations for a MoVQ pass over `batch` images of height x width pixels."""
    return per_pixel * batch * height * width * mm.dtype_size(dtype)


def encode(movq, image, node_id=None):
    """MoVQ latents (B, 4, H/8, W/8) of an IMAGE: whole, or in tiles if the whole image does not fit in memory."""
    movq = require_movq(movq)
    x = encodable(image, movq.model.config.scale_factor)
    b, _, h, w = x.shape
    model = movq.ready(memory_required=memory(ENCODE_MEMORY_PER_PIXEL, b, h, w, movq.dtype))
    x = x.to(movq.patcher.load_device, movq.dtype)
    try:
        return model.encode(x).to(mm.intermediate_device(), torch.float32)
    except Exception as err:  # noqa: BLE001 (is_oom decides; anything else goes on up)
        if not is_oom(err):
            raise
        logging.warning("Kandinsky MoVQ Encode ran out of memory on the whole image; encoding %d-pixel tiles.",
                        FALLBACK_TILE)
    # Outside the except block, so the failed attempt's tensors are released before the retry.
    mm.soft_empty_cache()
    f, overlap = movq.model.config.scale_factor, FALLBACK_TILE // 4
    callback = progress.step_callback(b * tiling.tile_count(h // f, w // f, FALLBACK_TILE // f, overlap // f), node_id)
    return tiling.encode_tiled(model, x, FALLBACK_TILE, overlap, output_device=mm.intermediate_device(), callback=callback)


def decode(movq, z, tile_size=0, node_id=None):
    """IMAGE from MoVQ latents; tile_size 0 = whole (tiles on out-of-memory), else tiles of that many pixels."""
    movq = require_movq(movq)
    if 0 < tile_size < 64:
        raise KandinskyError(f"tile_size {tile_size} is too small: use 0 (automatic) or 64 pixels and up.")
    if z.ndim != 4:
        raise KandinskyError(f"Kandinsky latents are (B, 4, h, w), got shape {tuple(z.shape)}; use latents of a "
                             "Kandinsky model here (decode other models' latents with their own VAE).")
    f = movq.model.config.scale_factor
    b, _, h, w = images.check_finite(z, "The latent to decode").shape
    side = (h * f, w * f) if tile_size == 0 else (min(tile_size, h * f), min(tile_size, w * f))
    model = movq.ready(memory_required=memory(DECODE_MEMORY_PER_PIXEL, 1 if tile_size else b, *side, movq.dtype))
    z = z.to(movq.patcher.load_device, movq.dtype)
    if tile_size == 0:
        try:
            return comfy_image(images.postprocess(model.decode(z), "pt"))
        except Exception as err:  # noqa: BLE001 (is_oom decides; anything else goes on up)
            if not is_oom(err):
                raise
            logging.warning("Kandinsky MoVQ Decode ran out of memory on the whole image; decoding %d-pixel tiles.",
                            FALLBACK_TILE)
        mm.soft_empty_cache()  # outside the except block, so the failed attempt's tensors are gone
        tile_size = FALLBACK_TILE
    tile = tile_size // f
    callback = progress.step_callback(b * tiling.tile_count(h, w, tile, tile // 4), node_id)
    out = tiling.decode_tiled(model, z, tile, tile // 4, output_device=mm.intermediate_device(), callback=callback)
    return comfy_image(images.postprocess(out, "pt"))


class MoVQEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky2MoVQEncode", display_name="Kandinsky MoVQ Encode", category=f"{types.CATEGORY}/latent",
            description="Encodes images into Kandinsky latents with the MoVQ (in tiles if the whole image does not fit "
                        "in memory), e.g. for image-to-image with KSampler's denoise below 1.",
            inputs=[types.MoVQ.Input("movq", tooltip="The MoVQ, from the Decoder Loader or the MoVQ Loader."),
                    io.Image.Input("image", tooltip="Images of any size: as with VAE Encode, sides that are not "
                                                    "multiples of 8 are centre-cropped to the multiple below (100x70 "
                                                    "-> 96x64).")],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The MoVQ latents, 1/8 of the image size.")],
            hidden=[io.Hidden.unique_id])

    @classmethod
    def execute(cls, movq, image):
        return io.NodeOutput({"samples": encode(movq, image, cls.hidden.unique_id)})


class MoVQDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky2MoVQDecode", display_name="Kandinsky MoVQ Decode", category=f"{types.CATEGORY}/latent",
            description="Decodes Kandinsky latents into images with the MoVQ, whole or in overlapping tiles.",
            inputs=[types.MoVQ.Input("movq", tooltip="The MoVQ, from the Decoder Loader or the MoVQ Loader."),
                    io.Latent.Input("samples", tooltip="Kandinsky latents, e.g. from KSampler or the Decoder Sampler."),
                    io.Int.Input("tile_size", default=0, min=0, max=8192, step=64,
                                 tooltip="0: decode the whole image, falling back to 512-pixel tiles if memory runs "
                                         "out. Otherwise: always decode in tiles of this many pixels (less memory; "
                                         "tiles can show faint seams).")],
            outputs=[io.Image.Output(display_name="image", tooltip="The decoded images.")],
            hidden=[io.Hidden.unique_id])

    @classmethod
    def execute(cls, movq, samples, tile_size):
        return io.NodeOutput(decode(movq, samples["samples"], tile_size, cls.hidden.unique_id))


class InpaintConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky2InpaintConditioning", display_name="Kandinsky Inpaint Conditioning",
            category=f"{types.CATEGORY}/conditioning",
            description="Prepares inpainting with a Kandinsky inpainting decoder: adds the image's MoVQ latents and the "
                        "mask to both conditionings and returns the latent to sample.",
            inputs=[io.Conditioning.Input("positive", tooltip="Positive conditioning from a Kandinsky prior node."),
                    io.Conditioning.Input("negative", tooltip="Negative conditioning from a Kandinsky prior node."),
                    types.MoVQ.Input("movq", tooltip="The MoVQ, from the Decoder Loader or the MoVQ Loader."),
                    io.Image.Input("pixels", tooltip="The image to inpaint, any size: centre-cropped to multiples of "
                                                     "8 as VAE Encode does."),
                    io.Mask.Input("mask", tooltip="Where to repaint (white, >= 0.5); one mask or one per image, "
                                                  "resized to the image if its size differs (Load Image gives 64x64 "
                                                  "for images without alpha).")],
            outputs=[io.Conditioning.Output(display_name="positive",
                                            tooltip="Positive conditioning with the inpainting inputs."),
                     io.Conditioning.Output(display_name="negative",
                                            tooltip="Negative conditioning with the inpainting inputs."),
                     io.Latent.Output(display_name="latent", tooltip="The image's latents with the hole (at latent size) "
                                                                     "as noise mask, for the sampler.")],
            hidden=[io.Hidden.unique_id])

    @classmethod
    def execute(cls, positive, negative, movq, pixels, mask):
        f = require_movq(movq).model.config.scale_factor
        image, hole = encodable(pixels, f), images.crop_to_multiple(fit_mask(mask, *pixels.shape[1:3]), f)
        keep, _ = images.prepare_mask_and_masked_image(image, hole, *image.shape[-2:])
        latents = encode(movq, pixels, cls.hidden.unique_id)  # crops the image as above
        keep = latent_keep_mask(keep, latents.shape[-2:]).to(latents.device)
        keys = {"kandinsky_inpaint_latents": latents, "kandinsky_inpaint_keep": keep}
        # The latent-size hole (1 = repaint) makes KSampler's blend the 2.2 pipeline's, dilation included.
        return io.NodeOutput(with_keys(positive, **keys), with_keys(negative, **keys),
                             {"samples": latents, "noise_mask": 1 - keep})


class DepthModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky2DepthModelLoader", display_name="Kandinsky Depth Model Loader",
            category=f"{types.CATEGORY}/loaders",
            description="Loads a transformers depth-estimation model (DPT, Depth Anything, ...) from models/kandinsky, "
                        "to make depth hints for the Kandinsky 2.2 depth decoder.",
            inputs=[io.Combo.Input("depth_model", options=paths.entries("depth"),
                                   tooltip="A depth-estimation model folder (config.json, weights, "
                                           "preprocessor_config.json), e.g. Intel/dpt-large, in models/kandinsky.")],
            outputs=[types.DepthModel.Output(display_name="depth_model", tooltip="For Kandinsky Depth Estimate.")])

    @classmethod
    def execute(cls, depth_model):
        return io.NodeOutput(load_depth(paths.resolve(depth_model)))


class DepthEstimate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky2DepthEstimate", display_name="Kandinsky Depth Estimate", category=f"{types.CATEGORY}/image",
            description="Estimates a depth map (near = bright, normalised per image) as the Kandinsky 2.2 depth "
                        "decoder expects its hint.",
            inputs=[types.DepthModel.Input("depth_model", tooltip="From Kandinsky Depth Model Loader."),
                    io.Image.Input("image", tooltip="The images to estimate depth for.")],
            outputs=[io.Image.Output(display_name="depth", tooltip="Depth maps in [0, 1], gray in 3 channels, at the "
                                                                   "input size.")])

    @classmethod
    def execute(cls, depth_model, image):
        model, processor = depth_model.ready()
        return io.NodeOutput(comfy_image(depth.estimate_depth(model, processor, image[..., :3].movedim(-1, 1))))


class ApplyDepthHint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky2ApplyDepthHint", display_name="Kandinsky Apply Depth Hint",
            category=f"{types.CATEGORY}/conditioning",
            description="Adds a depth map as the hint of the Kandinsky 2.2 depth decoder (kandinsky-2-2-controlnet-"
                        "depth) to both conditionings.",
            inputs=[io.Conditioning.Input("positive", tooltip="Positive conditioning from a Kandinsky 2.2 prior node."),
                    io.Conditioning.Input("negative", tooltip="Negative conditioning from a Kandinsky 2.2 prior node."),
                    io.Image.Input("hint", tooltip="A depth map (near = bright), e.g. from Kandinsky Depth Estimate; "
                                                   "resized to the latent's image size if it differs.")],
            outputs=[io.Conditioning.Output(display_name="positive", tooltip="Positive conditioning with the hint."),
                     io.Conditioning.Output(display_name="negative", tooltip="Negative conditioning with the hint.")])

    @classmethod
    def execute(cls, positive, negative, hint):
        if hint.ndim != 4 or hint.shape[-1] < 3:
            raise KandinskyError(f"The depth hint must be an IMAGE (B, H, W, 3), got shape {tuple(hint.shape)}; "
                                 "connect the output of Kandinsky Depth Estimate or another image node.")
        return io.NodeOutput(with_keys(positive, kandinsky_hint=hint), with_keys(negative, kandinsky_hint=hint))


NODES = [MoVQEncode, MoVQDecode, InpaintConditioning, DepthModelLoader, DepthEstimate, ApplyDepthHint]
