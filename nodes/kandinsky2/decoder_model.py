"""The Kandinsky decoder as a ComfyUI MODEL, so the stock KSampler, samplers, schedulers and latent nodes work with it.

CONDITIONING carries the CLIP image embedding as a (B, 1, dim) cross-attn tensor; its dict may add the prompt (2.1,
encoded here by the decoder's own text encoder), a depth hint (`kandinsky_hint`, an IMAGE) and inpainting inputs
(`kandinsky_inpaint_latents`, `kandinsky_inpaint_keep`).
"""
import os

import comfy.conds
import comfy.model_base
import comfy.model_management as mm
import comfy.ops
import comfy.supported_models_base
import comfy.utils
import torch

from ...kandinsky_core import schedulers as S
from ...kandinsky_core import weights
from ...kandinsky_core.errors import KandinskyError
from ...kandinsky_core.kandinsky2 import loading
from ...kandinsky_core.kandinsky2.decoder_pipeline import unet_any_size
from ...kandinsky_core.kandinsky2.text_encoder import encode_text
from ..common import modes
from ..common.comfy_compat import model_patcher
from ..common.movq import KandinskyLatent

SUPPORTED_DTYPES = [torch.float16, torch.bfloat16, torch.float32]
DEFAULT_SCHEDULERS = {"2.1": S.KANDINSKY_2_1_DDIM, "2.2": S.KANDINSKY_2_2_DDPM}


class KandinskyModelConfig(comfy.supported_models_base.BASE):
    """How ComfyUI should treat the decoder: an ε-predicting DDPM over 1000 steps."""

    unet_config = {"disable_unet_model_creation": True}
    unet_extra_config = {}
    latent_format = KandinskyLatent
    # diffusers' "linear" betas (linspace 0.00085..0.012) are what ComfyUI calls "sqrt_linear".
    sampling_settings = {"beta_schedule": "sqrt_linear", "linear_start": 0.00085, "linear_end": 0.012}
    memory_usage_factor = 1.5
    supported_inference_dtypes = SUPPORTED_DTYPES


class DecoderNet(torch.nn.Module):
    """ComfyUI's calling convention around the core UNet: embeddings from the cross-attn slot, ε out."""

    def __init__(self, unet, text_encoder=None):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    @property
    def dtype(self):
        """Weight dtype, which ComfyUI reads to cast inputs."""
        return next(self.unet.parameters()).dtype

    def forward(self, x, timesteps, context=None, control=None, transformer_options={}, kandinsky_text_embeds=None,
                kandinsky_text_hidden=None, kandinsky_hint=None, **kwargs):
        # Any latent size Empty Latent Image offers: padded to the UNet's multiple and cropped back.
        out = unet_any_size(self.unet, x, timesteps, image_embeds=context[:, 0], text_embeds=kandinsky_text_embeds,
                            text_hidden_states=kandinsky_text_hidden, hint=kandinsky_hint)
        return out[:, :4]  # ComfyUI samplers bring their own variance: drop the learned-variance channels


class KandinskyDecoder(comfy.model_base.BaseModel):
    """A Kandinsky 2.1 / 2.2 decoder (any variant) inside ComfyUI's model management."""

    def __init__(self, model_config, unet, text_encoder=None, tokenizer=None, scheduler_config=None, device=None):
        super().__init__(model_config, comfy.model_base.ModelType.EPS, device=device)
        self.diffusion_model = DecoderNet(unet, text_encoder)
        self.tokenizer = tokenizer
        self.variant = unet.config.variant
        self.scheduler_config = scheduler_config or DEFAULT_SCHEDULERS[self.variant[:3]]

    def extra_conds(self, **kwargs):
        out = {"c_crossattn": comfy.conds.CONDCrossAttn(check_embeddings(kwargs.get("cross_attn"), self.variant,
                                                                         self.diffusion_model.unet.config.image_embed_dim,
                                                                         kwargs))}
        batch = kwargs["cross_attn"].shape[0]
        if self.variant.startswith("2.1"):
            pooled, hidden = self.encode_prompt(kwargs.get("kandinsky_prompt"), batch, kwargs["device"])
            out["kandinsky_text_embeds"] = comfy.conds.CONDRegular(pooled)
            out["kandinsky_text_hidden"] = comfy.conds.CONDRegular(hidden)
        if self.variant == "2.2-depth":
            out["kandinsky_hint"] = comfy.conds.CONDRegular(hint_tensor(kwargs.get("kandinsky_hint"), kwargs["noise"]))
        if self.variant.endswith("inpaint"):
            out["c_concat"] = comfy.conds.CONDNoiseShape(inpaint_concat(kwargs))
        return out

    def encode_prompt(self, prompt, batch, device):
        """MCLIP text conditioning for 2.1, computed on the sampling device (under low-VRAM or DynamicVRAM loading
        the encoder's weights stay on the offload device; its layers cast them to where the input is)."""
        if prompt is None:
            raise KandinskyError("The Kandinsky 2.1 decoder reads the prompt from its conditioning: connect Kandinsky Prior "
                                 "Encode (or Image Embedding) from a 2.1 prior, not other conditioning.")
        encoder = self.diffusion_model.text_encoder
        pooled, hidden, _ = encode_text(self.tokenizer, encoder, [prompt] * batch, device)
        return pooled, hidden


def check_embeddings(cross_attn, variant, dim, extra=None):
    """Refuse conditioning that is not a Kandinsky image embedding of the decoder's width, saying what to connect."""
    if extra and "kandinsky3_text_width" in extra:  # the marker the Kandinsky 3 CLIP puts in its conditioning
        raise KandinskyError(f"The Kandinsky {variant} decoder got Kandinsky 3 text conditioning (CLIP Text Encode with "
                             "the Kandinsky 3 T5); it needs image-embedding conditioning from Kandinsky Prior Encode, "
                             "or use that conditioning with a model from Kandinsky 3 UNet Loader.")
    if cross_attn is None or cross_attn.ndim != 3 or cross_attn.shape[1] != 1:
        shape = None if cross_attn is None else tuple(cross_attn.shape)
        raise KandinskyError(f"The Kandinsky {variant} decoder got text-encoder conditioning of shape {shape} (e.g. from "
                             "CLIP Text Encode); it needs image-embedding conditioning from Kandinsky Prior Encode.")
    if cross_attn.shape[-1] != dim:
        source = {768: "a Kandinsky 2.1 prior", 1280: "a Kandinsky 2.2 prior"}.get(cross_attn.shape[-1], "another prior")
        raise KandinskyError(f"The Kandinsky {variant} decoder takes {dim}-dim image embeddings but got "
                             f"{cross_attn.shape[-1]}-dim ones from {source}; use the prior of the decoder's version.")
    return cross_attn


def hint_tensor(hint, noise):
    """A depth IMAGE (B, H, W, 3) as the UNet's (B, 3, 8h, 8w) hint, resized to the latent size if needed."""
    if hint is None:
        raise KandinskyError("The Kandinsky 2.2 depth decoder needs a depth hint: add Kandinsky Apply Depth Hint to the "
                             "conditioning.")
    hint = hint.movedim(-1, 1)[:, :3]
    size = (noise.shape[-2] * 8, noise.shape[-1] * 8)
    if tuple(hint.shape[-2:]) != size:
        hint = comfy.utils.common_upscale(hint, size[1], size[0], "bilinear", "disabled")
    return hint


def inpaint_concat(kwargs):
    """The inpainting UNet's extra channels: masked-image latents then the keep mask (1 = keep)."""
    latents, keep = kwargs.get("kandinsky_inpaint_latents"), kwargs.get("kandinsky_inpaint_keep")
    if latents is None or keep is None:
        raise KandinskyError("The Kandinsky inpainting decoder needs an image and a mask: add Kandinsky Inpaint "
                             "Conditioning between the prior and the sampler.")
    noise = kwargs["noise"]
    if latents.shape[-2:] != noise.shape[-2:]:
        raise KandinskyError(f"The inpainting image ({latents.shape[-1] * 8}x{latents.shape[-2] * 8}) and the latent being "
                             f"sampled ({noise.shape[-1] * 8}x{noise.shape[-2] * 8}) differ in size; sample the latent "
                             "that Kandinsky Inpaint Conditioning outputs.")
    return torch.cat([latents * keep, keep], dim=1)


def load_decoder(path, model_options=None, mode="fast"):
    """A decoder repo folder or a single UNet file as a MODEL patcher, laid out for `mode` (modes.py); `model_options`
    as core's UNet loader takes them ("custom_operations": the layer classes, e.g. a quantised-weight pack's)."""
    modes.check(mode, "Kandinsky Decoder Loader")
    unet_path = weights.component_path(path, "unet")
    config = loading.read_config(unet_path, "unet")
    weights_file = weights.weights_path(unet_path)
    params = sum(int(torch.Size(s).numel()) for s in weights.read_shapes(weights_file).values())
    load_device, offload = mm.get_torch_device(), mm.unet_offload_device()
    dtype = mm.unet_dtype(model_params=params, supported_dtypes=SUPPORTED_DTYPES)
    manual_cast = mm.unet_manual_cast(dtype, load_device, SUPPORTED_DTYPES)
    model_config = KandinskyModelConfig(KandinskyModelConfig.unet_config)
    model_config.set_inference_dtype(dtype, manual_cast)
    ops = (model_options or {}).get("custom_operations") or comfy.ops.pick_operations(dtype, manual_cast, load_device=load_device)
    unet = modes.apply(loading.load_component(unet_path, "unet", dtype=dtype, device=offload, operations=ops), mode)
    text_encoder = tokenizer = None
    if config.variant.startswith("2.1"):
        if not os.path.isdir(path):
            raise KandinskyError("A Kandinsky 2.1 decoder needs its text encoder: load the kandinsky-2-1 folder, not a lone "
                                 "UNet file.")
        text_encoder = loading.load_mclip(os.path.join(path, "text_encoder"), dtype=dtype, device=offload, operations=ops)
        tokenizer = loading.load_tokenizer(os.path.join(path, "tokenizer"), "xlmr")
    scheduler = weights.read_metadata_config(path, "scheduler")  # a saved file's, if it has one
    if os.path.isfile(os.path.join(path, "scheduler", "scheduler_config.json")):
        scheduler = weights.read_scheduler_config(path)
    model = KandinskyDecoder(model_config, unet.eval(), text_encoder, tokenizer, scheduler, device=offload)
    return model_patcher(model, load_device, offload)
