"""Loader nodes: prior, decoder (as a ComfyUI MODEL, with its MoVQ) and MoVQ, from models/kandinsky."""
import os

from comfy_api.latest import io

from ...kandinsky_core.preview import latent_rgb_factors
from ..common import modes, paths, types
from ..common.movq import load_movq
from .decoder_model import load_decoder
from .prior import load_prior


class PriorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky2PriorLoader", display_name="Kandinsky Prior Loader", category=f"{types.CATEGORY}/loaders",
            description="Loads a Kandinsky 2.1 or 2.2 prior folder (prior, CLIP text and image towers, tokenizer, scheduler).",
            inputs=[io.Combo.Input("prior", options=paths.entries("prior"),
                                   tooltip="A kandinsky-2-1-prior or kandinsky-2-2-prior folder in models/kandinsky.")],
            outputs=[types.Prior.Output(display_name="prior", tooltip="The prior, for Prior Encode, Image Embedding, "
                                                                      "Emb2Emb and Interpolate.")])

    @classmethod
    def execute(cls, prior):
        return io.NodeOutput(load_prior(paths.resolve(prior)))


class DecoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky2DecoderLoader", display_name="Kandinsky Decoder Loader", category=f"{types.CATEGORY}/loaders",
            description="Loads a Kandinsky decoder (2.1, 2.2, inpainting or depth; detected from the files) as a MODEL for "
                        "KSampler or the Kandinsky Decoder Sampler, with the MoVQ of the same folder.",
            inputs=[io.Combo.Input("decoder", options=paths.entries("decoder"),
                                   tooltip="A decoder folder (kandinsky-2-2-decoder, kandinsky-2-1, ...-inpaint, "
                                           "kandinsky-2-2-controlnet-depth) or a single UNet file in models/kandinsky."),
                    modes.mode_input()],
            outputs=[io.Model.Output(display_name="model", tooltip="The decoder UNet as a ComfyUI model."),
                     types.MoVQ.Output(display_name="movq", tooltip="The folder's MoVQ image encoder/decoder (none for a "
                                                                    "single UNet file: use Kandinsky MoVQ Loader).")])

    @classmethod
    def execute(cls, decoder, mode="fast"):
        path = paths.resolve(decoder, kind="decoder")
        model = load_decoder(path, mode=mode)
        movq = None
        if os.path.isdir(os.path.join(path, "movq")):
            movq = load_movq(path, mode, "Kandinsky Decoder Loader")
            fmt = model.model.latent_format  # this model's own instance: previews fitted to its MoVQ
            fmt.latent_rgb_factors, fmt.latent_rgb_factors_bias = (t.tolist() for t in latent_rgb_factors(movq.model))
        return io.NodeOutput(model, movq)


NODES = [PriorLoader, DecoderLoader]
