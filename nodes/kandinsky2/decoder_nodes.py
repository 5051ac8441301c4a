"""The Kandinsky decoder sampler: kandinsky_core's own loops (DDPM, DDIM, DPM-Solver++) on a decoder MODEL."""
import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ...kandinsky_core.errors import KandinskyError
from ...kandinsky_core.kandinsky2 import decoder_pipeline as D
from ..common import types
from ..common.progress import step_callback
from ..common.sampling import SCHEDULERS, Computing, check_denoise, check_latent, check_modifiers, make_scheduler, repeats
from .decoder_model import KandinskyDecoder, check_embeddings, hint_tensor

SAMPLERS = SCHEDULERS  # every core scheduler: DDIM is 2.1's own


def decoder_of(model):
    """The KandinskyDecoder inside a MODEL, or a clear error for any other model."""
    decoder = getattr(model, "model", None)
    if not isinstance(decoder, KandinskyDecoder):
        raise KandinskyError(f"Kandinsky Decoder Sampler needs a MODEL from Kandinsky Decoder Loader, got "
                             f"{type(decoder).__name__}; use KSampler for other models.")
    return decoder


def read_conditioning(cond, name, decoder):
    """(image embeddings (B, dim), extra dict) of a single-entry Kandinsky CONDITIONING."""
    if len(cond) != 1:
        raise KandinskyError(f"The {name} conditioning has {len(cond)} entries (combined conditioning); the Kandinsky "
                             "Decoder Sampler takes one: average embeddings with Kandinsky Interpolate instead, or use "
                             "KSampler, which combines conditioning.")
    check_modifiers(cond, "Kandinsky Decoder Sampler", name)
    emb, extra = cond[0]
    return check_embeddings(emb, decoder.variant, decoder.diffusion_model.unet.config.image_embed_dim, extra)[:, 0], extra


SHARED_NOISE_TIP = ("Give every batch item the same noise (the first item's), so the items differ only by their "
                    "embedding: smooth Interpolate Batch animations. Off: each item gets its own noise.")


class DecoderSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Kandinsky2DecoderSampler", display_name="Kandinsky Decoder Sampler", category=f"{types.CATEGORY}/sampling",
            description="Samples a Kandinsky decoder with the checkpoint's own scheduler (or DPM-Solver++), exactly as "
                        "kandinsky_core and diffusers do for the same seed. Text-to-image at denoise 1, image-to-image "
                        "below; inpainting and depth come from the conditioning.",
            inputs=[
                io.Model.Input("model", tooltip="A decoder from Kandinsky Decoder Loader."),
                io.Conditioning.Input("positive", tooltip="Image embedding from the prior nodes."),
                io.Conditioning.Input("negative", tooltip="Negative image embedding from the prior nodes."),
                io.Latent.Input("latent_image", tooltip="Sets the size (any multiple of 8 pixels) and batch (Empty "
                                                        "Latent Image), or the image to re-draw when denoise < 1 "
                                                        "(Kandinsky MoVQ Encode)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the initial noise (a CPU generator: same image on any device)."),
                io.Int.Input("steps", default=50, min=1, max=999, tooltip="Denoising steps; diffusers uses 100 with "
                                                                           "DDPM, 20-30 suffice with DPM++."),
                io.Float.Input("guidance_scale", default=4.0, min=1.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance; 1 disables it (and the negative)."),
                io.Combo.Input("sampler", options=SAMPLERS, default="checkpoint",
                               tooltip="checkpoint: the folder's scheduler (DDPM for 2.2, DDIM for 2.1)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Image-to-image strength: 1 ignores latent_image, lower values keep more of it, "
                                       "0 returns it unchanged (as KSampler does)."),
                # optional: API prompts saved before this input existed lack it
                io.Boolean.Input("shared_noise", default=False, optional=True, tooltip=SHARED_NOISE_TIP),
            ],
            outputs=[io.Latent.Output(tooltip="MoVQ latents; decode with Kandinsky MoVQ Decode.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, steps, guidance_scale, sampler, denoise,
                shared_noise=False):
        decoder = decoder_of(model)
        emb, extra = read_conditioning(positive, "positive", decoder)
        neg, neg_extra = read_conditioning(negative, "negative", decoder)
        check_latent(latent_image, "Kandinsky Decoder Sampler", "use an inpainting decoder with Kandinsky Inpaint "
                     "Conditioning, or KSampler, which denoises inside it.", extra.get("kandinsky_inpaint_keep"))
        if denoise == 0:  # as KSampler: nothing to denoise, the latent comes back as it is
            return io.NodeOutput(dict(latent_image))
        core = ready_models(model, decoder, sampler)
        init = latent_image["samples"]
        n = repeats(emb.shape[0], init.shape[0])
        needs_hint = "kandinsky_hint" in extra or decoder.variant == "2.2-depth"
        hint = hint_tensor(extra.get("kandinsky_hint"), init) if needs_hint else None
        cond = D.conditioning(core, emb, neg, extra.get("kandinsky_prompt"), neg_extra.get("kandinsky_prompt"), n, guidance_scale, hint)
        run = dict(steps=steps, guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(seed),
                   callback=step_callback(steps, cls.hidden.unique_id, model), shared_noise=shared_noise)
        latents = sample(core, cond, init, extra, denoise, run)
        return io.NodeOutput({"samples": latents.to(mm.intermediate_device(), torch.float32)})


def ready_models(model, decoder, sampler):
    """The decoder loaded by ComfyUI, as the core's DecoderModels computing on the load device in the compute dtype."""
    mm.load_models_gpu([model])
    net = decoder.diffusion_model
    dtype = decoder.manual_cast_dtype or next(net.unet.parameters()).dtype
    return D.DecoderModels(Computing(net.unet, dtype, model.load_device), None,
                           make_scheduler(decoder.scheduler_config, sampler), net.text_encoder, decoder.tokenizer)


def sample(core, cond, init, extra, denoise, run):
    """Pick the core loop: inpainting (from the conditioning), image-to-image (denoise < 1) or text-to-image."""
    device = next(core.unet.parameters()).device
    check_denoise(denoise, run["steps"])
    if core.unet.config.in_channels == 9:
        if "kandinsky_inpaint_latents" not in extra or denoise < 1:
            raise KandinskyError("The inpainting decoder needs Kandinsky Inpaint Conditioning and denoise 1.")
        latents, keep = extra["kandinsky_inpaint_latents"].to(device), extra["kandinsky_inpaint_keep"].to(device)
        return D.sample_inpaint(core, cond, latents, keep, tuple(init.shape), **run)
    if denoise < 1:
        return D.sample_image_to_image(core, cond, init.to(device), strength=denoise, **run)
    return D.sample_text_to_image(core, cond, tuple(init.shape), **run)


NODES = [DecoderSampler]
