"""Kandinsky 2 image-side nodes: inpainting inputs, depth maps and hints."""
from comfy_api.latest import io

from ...kandinsky_core import images
from ...kandinsky_core.errors import KandinskyError
from ...kandinsky_core.kandinsky2 import depth
from ...kandinsky_core.kandinsky2.decoder_pipeline import latent_keep_mask
from ..common import paths, types
from ..common.inpaint import with_keys
from ..common.movq_nodes import comfy_image, encodable, encode, require_movq
from .depth import load_depth


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
        image, hole = encodable(pixels, f), images.crop_to_multiple(images.fit_mask(mask, *pixels.shape[1:3]), f)
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


NODES = [InpaintConditioning, DepthModelLoader, DepthEstimate, ApplyDepthHint]
