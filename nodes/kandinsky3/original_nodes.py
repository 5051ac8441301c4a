"""Nodes for the original ai-forever Kandinsky 3.0 / 3.1 files: the UNet loader (base, Flash, inpainting), Flash's
sigmas for ComfyUI's custom sampling, and the inpainting conditioning.

The T5 of Kandinsky 3.1 (weights/flan_ul2_encoder/) loads with Kandinsky 3 T5 Loader and movq.pt with Kandinsky MoVQ
Loader. The Kandinsky 3 Sampler samples these UNets as the original code does ("checkpoint": the 3.1 sampler;
"flash": Flash's four steps); KSampler and SamplerCustom work with them as with any MODEL.
"""
import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ...kandinsky_core import images
from ...kandinsky_core.errors import KandinskyError
from ...kandinsky_core.kandinsky3 import original_pipeline as K3OP
from ..common import modes, paths, types
from ..common.inpaint import PASTE_BACK, with_keys
from ..common.movq_nodes import movq_pixels, require_movq
from .model import INPAINT, WEIGHT_DTYPES, load_original_unet

CATEGORY = "Kandinsky 3"
AUTO = "auto (the published pairing)"
MULTIPLE = 64  # Kandinsky 3 images: sides multiples of 64 pixels


class OriginalUNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky3OriginalUNetLoader", display_name="Kandinsky 3.1 UNet Loader (original .pt)",
            category=f"{CATEGORY}/loaders",
            description="Loads an original ai-forever Kandinsky 3 UNet file as a MODEL: Kandinsky 3.1 (kandinsky3.pt), "
                        "3.1 Flash (kandinsky3_flash.pt), inpainting (kandinsky3_inpainting.pt, 3.0 or 3.1) or the "
                        "3.0 kandinsky3.pt, with its text projection. fp8 storage and low-VRAM loading apply.",
            inputs=[io.Combo.Input("unet", options=paths.original_files(),
                                   tooltip="The UNet .pt file, in models/kandinsky (e.g. Kandinsky3.1/weights/)."),
                    io.Combo.Input("projection", options=[AUTO] + paths.original_files(), default=AUTO,
                                   tooltip="The UNet's text projection: auto takes the one a 3.0 file holds, else the "
                                           "file published with it (projection.pt for kandinsky3.pt, "
                                           "projection_flash.pt for kandinsky3_flash.pt, projection_inpainting.pt for "
                                           "kandinsky3_inpainting.pt, beside it or in flan_ul2_encoder/)."),
                    io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                                   tooltip="How the weights are stored (the files are fp32): default lets ComfyUI "
                                           "choose for the device; fp8 takes a quarter of the memory."),
                    modes.mode_input()],
            outputs=[io.Model.Output(display_name="model", tooltip="The UNet as a ComfyUI model, with the original's "
                                                                   "conditioning and null embedding.")])

    @classmethod
    def execute(cls, unet, projection, weight_dtype, mode="fast"):
        chosen = None if projection == AUTO else paths.resolve(projection)
        return io.NodeOutput(load_original_unet(paths.resolve(unet), chosen, weight_dtype, mode=mode))


class FlashSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky3FlashSigmas", display_name="Kandinsky 3.1 Flash Sigmas", category=f"{CATEGORY}/sampling",
            description="The four timesteps Kandinsky 3.1 Flash was distilled for (979, 729, 479, 229) as SIGMAS, for "
                        "SamplerCustom with the lcm sampler and cfg 1: the Flash loop in ComfyUI's own sampling.",
            inputs=[io.Model.Input("model", tooltip="The Flash UNet (Kandinsky 3.1 UNet Loader).")],
            outputs=[io.Sigmas.Output(tooltip="For SamplerCustom (sampler: lcm, cfg 1).")])

    @classmethod
    def execute(cls, model):
        sigmas = model.get_model_object("model_sampling").sigmas
        if len(sigmas) != 1000:
            raise KandinskyError(f"Kandinsky 3.1 Flash Sigmas needs a model on a 1000-step schedule (Kandinsky 3), got "
                                 f"{len(sigmas)} steps; connect the Flash UNet.")
        return io.NodeOutput(K3OP.flash_sigmas(sigmas.float().cpu()))


def inpaint_inputs(movq, pixels, mask, grow_mask_by, paste_back=False):
    """(keep-mask and masked-image latents concatenated, the LATENT to sample) of an IMAGE and a MASK: both
    centre-cropped to multiples of 64, the mask resized to the image first, as core InpaintModelConditioning does; with
    paste_back the LATENT carries image and mask for MoVQ Decode."""
    image = images.crop_to_multiple(movq_pixels(images.check_finite(pixels, "The image to inpaint")), MULTIPLE)
    if min(image.shape[-2:]) < MULTIPLE:
        raise KandinskyError(f"Kandinsky 3 inpaints images of at least {MULTIPLE}x{MULTIPLE} pixels (sides multiples of "
                             f"{MULTIPLE}); this one is {pixels.shape[2]}x{pixels.shape[1]}.")
    hole = images.crop_to_multiple(images.fit_mask(mask, *pixels.shape[1:3]), MULTIPLE)
    hole = images.grow_mask(hole, grow_mask_by)
    movq = require_movq(movq)
    device, dtype = movq.patcher.load_device, movq.dtype
    concat = K3OP.inpaint_concat(movq.ready(), image.to(device, dtype), hole.to(device, dtype))
    concat = concat.to(mm.intermediate_device(), torch.float32)
    latent = {"samples": torch.zeros((concat.shape[0], 4, *concat.shape[-2:]), device=mm.intermediate_device())}
    if paste_back:
        latent[PASTE_BACK] = {"image": image.to(mm.intermediate_device()), "mask": hole.to(mm.intermediate_device())}
    return concat, latent


class InpaintConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky3InpaintConditioning", display_name="Kandinsky 3 Inpaint Conditioning",
            category=f"{CATEGORY}/conditioning",
            description="Prepares inpainting with the Kandinsky 3 inpainting UNet (kandinsky3_inpainting.pt): adds the "
                        "mask and the MoVQ latents of the masked image to both conditionings, as the original pipeline "
                        "prepares them, and returns the latent to sample (from noise, as the original).",
            inputs=[io.Conditioning.Input("positive", tooltip="CLIP Text Encode with the Kandinsky 3 CLIP."),
                    io.Conditioning.Input("negative", tooltip="The negative prompt, or ConditioningZeroOut of the "
                                                              "positive for the original's default (no negative)."),
                    types.MoVQ.Input("movq", tooltip="The MoVQ (Kandinsky MoVQ Loader, movq.pt)."),
                    io.Image.Input("pixels", tooltip="The image to inpaint: centre-cropped to multiples of 64 pixels."),
                    io.Mask.Input("mask", tooltip="Where to repaint (white); resized to the image if its size differs."),
                    io.Int.Input("grow_mask_by", default=0, min=0, max=64,
                                 tooltip="Grow the mask by this many pixels first (0: as the original; the original "
                                         "notebook grows it by about 4)."),
                    io.Boolean.Input("paste_back", default=False, optional=True,
                                     tooltip="Off: the image is regenerated around the repainted part too, as in the "
                                             "original. On: Kandinsky MoVQ Decode puts the input's pixels back where "
                                             "the mask keeps them (blended along a soft mask's edge).")],
            outputs=[io.Conditioning.Output(display_name="positive", tooltip="Positive conditioning with the inpainting "
                                                                              "inputs."),
                     io.Conditioning.Output(display_name="negative", tooltip="Negative conditioning with the inpainting "
                                                                              "inputs."),
                     io.Latent.Output(display_name="latent", tooltip="An empty latent of the cropped image's size (with "
                                                                     "the paste-back request when it is on).")])

    @classmethod
    def execute(cls, positive, negative, movq, pixels, mask, grow_mask_by, paste_back=False):
        concat, latent = inpaint_inputs(movq, pixels, mask, grow_mask_by, paste_back)
        keys = {INPAINT: concat}
        return io.NodeOutput(with_keys(positive, **keys), with_keys(negative, **keys), latent)


NODES = [OriginalUNetLoader, FlashSigmas, InpaintConditioning]
