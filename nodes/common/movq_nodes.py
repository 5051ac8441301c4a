"""MoVQ nodes for both families: loading, and encode/decode (in tiles when memory is short)."""
import logging

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ...kandinsky_core import images, tiling
from ...kandinsky_core.errors import KandinskyError
from . import modes, paths, progress, types
from .comfy_compat import is_oom
from .inpaint import PASTE_BACK
from .movq import load_movq

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


def movq_pixels(image):
    """A ComfyUI IMAGE (B, H, W, C) in [0, 1] as MoVQ input (B, 3, H, W) in [-1, 1] (alpha dropped)."""
    return image[..., :3].movedim(-1, 1) * 2 - 1


def comfy_image(pixels):
    """(B, 3, H, W) in [0, 1] as a ComfyUI IMAGE (B, H, W, 3) on the intermediate device."""
    return pixels.movedim(1, -1).to(mm.intermediate_device(), torch.float32)


def encodable(image, f):
    """An IMAGE as MoVQ input, centre-cropped to multiples of `f` pixels as core VAE Encode does (100x70 -> 96x64)."""
    return images.crop_to_multiple(movq_pixels(images.check_finite(image, "The image to encode")), f)


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


def pasted(decoded, paste):
    """Decoded pixels with the input put back where the mask keeps it, when Inpaint Conditioning asked for it."""
    if paste is None:
        return decoded
    try:
        return images.paste_back(decoded, paste["image"], paste["mask"])
    except KandinskyError as err:
        raise KandinskyError(f"Kandinsky MoVQ Decode cannot paste the inpainted image back: {err} Sample the latent "
                             "Inpaint Conditioning gave at its size, or turn its paste_back off.") from None


def decode(movq, z, tile_size=0, node_id=None, paste=None):
    """IMAGE from MoVQ latents; tile_size 0 = whole (tiles on out-of-memory), else tiles of that many pixels; `paste`:
    a PASTE_BACK entry to composite the decoded image with."""
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
            return comfy_image(images.postprocess(pasted(model.decode(z), paste), "pt"))
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
    return comfy_image(images.postprocess(pasted(out, paste), "pt"))


class MoVQLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky2MoVQLoader", display_name="Kandinsky MoVQ Loader", category=f"{types.CATEGORY}/loaders",
            description="Loads the MoVQ (Kandinsky's VAE) from a decoder folder, a movq/ folder or a single file.",
            inputs=[io.Combo.Input("movq", options=paths.entries("movq"),
                                   tooltip="A folder with a movq/ part, or a MoVQ weights file, in models/kandinsky."),
                    modes.mode_input()],
            outputs=[types.MoVQ.Output(display_name="movq", tooltip="For MoVQ Encode / Decode and Inpaint Conditioning.")])

    @classmethod
    def execute(cls, movq, mode="fast"):
        return io.NodeOutput(load_movq(paths.resolve(movq, kind="movq"), mode))


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
            description="Decodes Kandinsky latents into images with the MoVQ, whole or in overlapping tiles; pastes the "
                        "input image back around the repainted part when Kandinsky 3 Inpaint Conditioning's "
                        "paste_back is on.",
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
        paste = samples.get(PASTE_BACK)
        return io.NodeOutput(decode(movq, samples["samples"], tile_size, cls.hidden.unique_id, paste))


NODES = [MoVQLoader, MoVQEncode, MoVQDecode]
