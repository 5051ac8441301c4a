"""The Kandinsky 3 UNet as a ComfyUI MODEL: KSampler, every sampler and scheduler, and the latent nodes work with it.

It predicts ε on the checkpoint's cosine ("squaredcos_cap_v2") schedule, which ComfyUI's discrete model sampling has
under the same name. CONDITIONING comes from CLIP Text Encode with the Kandinsky 3 CLIP (text.py): T5 hidden
states (B, L, d) with the prompt's attention mask and a marker in its dict; anything else is refused by name here.
The UNet is built with `comfy.ops`, so fp8 weight storage and ComfyUI's low-VRAM partial loading apply to it.
A UNet from the original ai-forever files (Kandinsky 3.0 / 3.1 / Flash / inpainting) is the same MODEL with the
original's conditioning: the T5 states projected and zeroed where padded, and its `null_embedding` for a negative from
ConditioningZeroOut; the 9-channel inpainting UNet reads its extra input from Kandinsky 3 Inpaint Conditioning.
"""
import os

import comfy.conds
import comfy.model_base
import comfy.model_management as mm
import comfy.ops
import comfy.supported_models_base
import torch

from ...kandinsky_core import schedulers as S
from ...kandinsky_core import weights
from ...kandinsky_core.errors import KandinskyError
from ...kandinsky_core.kandinsky3 import loading as K3L
from ...kandinsky_core.kandinsky3 import original as K3O
from ...kandinsky_core.kandinsky3 import original_pipeline as K3OP
from ..common import held, modes, paths
from ..common.comfy_compat import model_patcher
from ..common.movq import KandinskyLatent
from ..common.movq_nodes import DECODE_MEMORY_PER_PIXEL, memory

SUPPORTED_DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# The loaders' weight_dtype choices, as core's Load Diffusion Model: "default" lets ComfyUI pick for the device.
WEIGHT_DTYPES = {"default": None, "fp16": torch.float16, "bf16": torch.bfloat16,
                 "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
MARKER = "kandinsky3_text_width"  # conditioning dict key: set by the Kandinsky 3 CLIP to its T5's width
MASK = "attention_mask"  # conditioning dict key: the T5 attention mask (B, L), 1 for real tokens
INPAINT = "kandinsky3_inpaint"  # conditioning dict key: the inpainting UNet's keep-mask and masked-image latents


def make_room_to_sample(model, noise):
    """Free the T5s a CPU-only setup holds (text.py) if the free RAM would not hold sampling `noise` with guidance and
    decoding the images (held.py: the held weights stay while they fit)."""
    b, _, h, w = noise.shape
    needed = model.memory_required([2 * b, *noise.shape[1:]]) + memory(DECODE_MEMORY_PER_PIXEL, b, 8 * h, 8 * w, torch.float32)
    held.make_room(needed)


class Kandinsky3ModelConfig(comfy.supported_models_base.BASE):
    """How ComfyUI treats the Kandinsky 3 UNet: ε-prediction over 1000 steps of diffusers' cosine betas."""

    unet_config = {"disable_unet_model_creation": True}
    unet_extra_config = {}
    latent_format = KandinskyLatent
    # ComfyUI's float64 "cosine" is diffusers' squaredcos_cap_v2 up to 3e-4 in σ; Kandinsky3 replaces it with the exact
    # fp32 table ("squaredcos_cap_v2" itself crashes ComfyUI 0.3.75's schedule code: it returns a numpy array).
    sampling_settings = {"beta_schedule": "cosine"}
    memory_usage_factor = 2.0
    supported_inference_dtypes = SUPPORTED_DTYPES


class Kandinsky3Net(torch.nn.Module):
    """ComfyUI's calling convention around the core UNet: T5 states from the cross-attn slot, mask as an extra cond."""

    def __init__(self, unet, null_embedding=None):
        super().__init__()
        self.unet = unet
        self.null_embedding = null_embedding  # set for the original files: their conditioning is the original's

    @property
    def dtype(self):
        """Weight dtype, which ComfyUI reads."""
        return next(self.unet.parameters()).dtype

    def forward(self, x, timesteps, context=None, control=None, transformer_options={}, kandinsky3_mask=None, **kwargs):
        if self.null_embedding is None:
            return self.unet(x, timesteps, context, kandinsky3_mask)
        null = self.null_embedding.to(x.device)
        return self.unet(x, timesteps, *K3OP.condition(self.unet, context, kandinsky3_mask, null), projected=True)


class Kandinsky3(comfy.model_base.BaseModel):
    """The Kandinsky 3 UNet inside ComfyUI's model management, with the folder's scheduler config for our sampler."""

    def __init__(self, model_config, unet, scheduler_config=None, device=None, null_embedding=None):
        super().__init__(model_config, comfy.model_base.ModelType.EPS, device=device)
        self.diffusion_model = Kandinsky3Net(unet, null_embedding)
        self.scheduler_config = scheduler_config or S.KANDINSKY_3_DDPM
        abar = S.scheduler_from_config(self.scheduler_config).alphas_cumprod
        self.model_sampling.set_sigmas(((1 - abar) / abar) ** 0.5)  # the checkpoint's own schedule, as the core's

    def extra_conds(self, **kwargs):
        make_room_to_sample(self, kwargs["noise"])  # sampling starts: the text is encoded
        hidden, mask = check_conditioning(kwargs.get("cross_attn"), kwargs, self.diffusion_model.unet.config.encoder_hid_dim,
                                          "KSampler")
        # CONDRegular batches only equal lengths: a prompt and a negative of other lengths run as separate UNet calls,
        # as in the core (padding would change the UNet's pooled text embedding, which averages every position).
        out = {"c_crossattn": comfy.conds.CONDRegular(hidden), "kandinsky3_mask": comfy.conds.CONDRegular(mask)}
        if self.diffusion_model.unet.config.in_channels == 9:
            out["c_concat"] = comfy.conds.CONDNoiseShape(inpaint_concat(kwargs.get(INPAINT), kwargs["noise"]))
        return out

    @property
    def original(self):
        """Whether this UNet came from the original ai-forever files (original conditioning and samplers)."""
        return self.diffusion_model.null_embedding is not None


def inpaint_concat(concat, noise):
    """The inpainting UNet's extra channels (keep-mask, masked-image latents), checked against the latent sampled."""
    if concat is None:
        raise KandinskyError("The Kandinsky 3 inpainting UNet needs an image and a mask: add Kandinsky 3 Inpaint "
                             "Conditioning between CLIP Text Encode and the sampler.")
    if concat.shape[-2:] != noise.shape[-2:]:
        raise KandinskyError(f"The inpainting image ({concat.shape[-1] * 8}x{concat.shape[-2] * 8}) and the latent being "
                             f"sampled ({noise.shape[-1] * 8}x{noise.shape[-2] * 8}) differ in size; sample the latent "
                             "that Kandinsky 3 Inpaint Conditioning outputs.")
    return concat


def without_weightless_casts(ops):
    """`ops` whose GroupNorm also runs without affine parameters: ComfyUI's casting layers (fp8, manual cast) assume a
    weight, and the UNet's time-conditioned norms have none."""

    class GroupNorm(ops.GroupNorm):
        def forward(self, x):
            if self.weight is None:
                return torch.nn.functional.group_norm(x, self.num_groups, None, None, self.eps)
            return super().forward(x)

    return type(f"{ops.__name__}WithPlainGroupNorm", (ops,), {"GroupNorm": GroupNorm})


def check_conditioning(hidden, extra, width, node):
    """(hidden states, float mask) of one Kandinsky 3 conditioning entry, or a KandinskyError saying what to connect."""
    where = f"The Kandinsky 3 model (in {node})"
    fix = "connect CLIP Text Encode with the CLIP output of Kandinsky 3 T5 Loader"
    if hidden is None or hidden.ndim != 3:
        shape = None if hidden is None else tuple(hidden.shape)
        raise KandinskyError(f"{where} got conditioning of shape {shape}, not T5 text states; {fix}.")
    if MARKER not in extra:
        if hidden.shape[1] == 1 or any(k.startswith("kandinsky_") for k in extra):
            raise KandinskyError(f"{where} got Kandinsky 2.x image-embedding conditioning ({hidden.shape[-1]}-dim, from "
                                 f"a Kandinsky prior node); those go to a Kandinsky 2 decoder. Here, {fix}.")
        raise KandinskyError(f"{where} got {hidden.shape[-1]}-wide conditioning from another text encoder (a Stable "
                             f"Diffusion/Flux CLIP or T5); {fix}.")
    if hidden.shape[-1] != width:
        raise KandinskyError(f"{where} takes {width}-wide T5 states but got {hidden.shape[-1]}-wide ones: the T5 loaded "
                             f"by Kandinsky 3 T5 Loader is not this UNet's text encoder; load both from the same "
                             "kandinsky-3 folder.")
    mask = extra.get(MASK)
    if mask is None or tuple(mask.shape) != tuple(hidden.shape[:2]):
        found = None if mask is None else tuple(mask.shape)
        raise KandinskyError(f"{where}: the conditioning's attention mask {found} does not match its {tuple(hidden.shape[:2])} "
                             "tokens (ConditioningConcat joins texts without their masks); use one CLIP Text Encode "
                             "per prompt, or Conditioning (Combine).")
    return hidden, mask.float()


def check_weight_dtype(weight_dtype):
    """Refuse a weight_dtype the loaders do not offer (ComfyUI 0.3.75 does not check V3 combo values)."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise KandinskyError(f"Unknown weight_dtype {weight_dtype!r}; pick one of {', '.join(WEIGHT_DTYPES)}.")


def _ops(weight_dtype, params, model_options, stored=None):
    """(storage dtype, model config, comfy.ops) for a UNet of `params` parameters stored in `stored`, as core's UNet
    loader picks them."""
    load_device = mm.get_torch_device()
    dtype = WEIGHT_DTYPES[weight_dtype] or mm.unet_dtype(model_params=params, supported_dtypes=SUPPORTED_DTYPES,
                                                         weight_dtype=stored)
    manual_cast = mm.unet_manual_cast(dtype, load_device, SUPPORTED_DTYPES)
    model_config = Kandinsky3ModelConfig(Kandinsky3ModelConfig.unet_config)
    model_config.set_inference_dtype(dtype, manual_cast)
    ops = (model_options or {}).get("custom_operations") or comfy.ops.pick_operations(dtype, manual_cast, load_device=load_device)
    return dtype, model_config, without_weightless_casts(ops)


def load_original_unet(path, projection=None, weight_dtype="default", model_options=None, mode="fast"):
    """An original Kandinsky 3 UNet file (and its projection file; None: the published one beside it, or the one a 3.0
    file holds) as a ComfyUI MODEL patcher, weights stored in `weight_dtype` and laid out for `mode`."""
    check_weight_dtype(weight_dtype)
    modes.check(mode, "Kandinsky 3.1 UNet Loader")
    projection = projection or K3O.published_projection(path)
    shapes = K3O.read_shapes(path)
    dtype, model_config, ops = _ops(weight_dtype, sum(int(torch.Size(s).numel()) for s in shapes.values()), model_options)
    load_device, offload = mm.get_torch_device(), mm.unet_offload_device()
    unet, null = K3O.load_unet(path, projection, dtype=dtype, device=offload, operations=ops)
    unet = modes.apply(unet.eval(), mode)
    model = Kandinsky3(model_config, unet, None, device=offload, null_embedding=null.float())
    return model_patcher(model, load_device, offload)


def load_unet(folder, weight_dtype="default", model_options=None, mode="fast"):
    """A kandinsky-3 folder's UNet (or a file Kandinsky Save Model wrote) as a ComfyUI MODEL patcher, weights stored
    in `weight_dtype` on the offload device and laid out for `mode` (modes.py);
    `model_options` as core's UNet loader takes them ("custom_operations": e.g. a quantised-weight pack's layers)."""
    check_weight_dtype(weight_dtype)
    modes.check(mode, "Kandinsky 3 UNet Loader")
    if os.path.isfile(folder):
        return _load_unet_file(folder, weight_dtype, model_options, mode)
    if not paths.is_kandinsky3(folder):
        raise KandinskyError(f"{folder} is not a kandinsky-3 folder: its unet/config.json must exist and name "
                             "Kandinsky3UNet; copy the unet/ folder of kandinsky-community/kandinsky-3.")
    weights_file = weights.weights_path(os.path.join(folder, "unet"))
    params = sum(int(torch.Size(s).numel()) for s in weights.read_shapes(weights_file).values())
    dtype, model_config, ops = _ops(weight_dtype, params, model_options)
    load_device, offload = mm.get_torch_device(), mm.unet_offload_device()
    unet = K3L.load_unet(folder, dtype=dtype, device=offload, operations=ops)
    scheduler = None
    if os.path.isfile(os.path.join(folder, "scheduler", "scheduler_config.json")):
        scheduler = weights.read_scheduler_config(folder)
    model = Kandinsky3(model_config, modes.apply(unet.eval(), mode), scheduler, device=offload)
    return model_patcher(model, load_device, offload)


def _load_unet_file(path, weight_dtype, model_options, mode):
    """A UNet file Kandinsky Save Model wrote (3.0 or an original one, with its null_embedding); "default" keeps the
    stored dtype where ComfyUI would (core's UNet loader's rule), and a stored dtype that is kept is mapped."""
    shapes = weights.read_shapes(path)
    params = sum(int(torch.Size(s).numel()) for key, s in shapes.items() if key != K3L.NULL_KEY)
    dtype, model_config, ops = _ops(weight_dtype, params, model_options, weights.main_dtype(path))
    load_device, offload = mm.get_torch_device(), mm.unet_offload_device()
    unet, null, scheduler = K3L.load_unet_file(path, dtype=dtype, device=offload, operations=ops)
    null = None if null is None else null.float()
    model = Kandinsky3(model_config, modes.apply(unet, mode), scheduler, device=offload, null_embedding=null)
    return model_patcher(model, load_device, offload)
