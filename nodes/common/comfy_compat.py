"""ComfyUI's own choices, handed to the pack's models, in one place: which patcher holds a model, what counts as
running out of memory, and which attention kernel the core calls. Each works on every ComfyUI the pack supports
(0.3.75 lacks `CoreModelPatcher` and `is_oom`; 0.30.0 and newer have both)."""
import comfy.cli_args
import comfy.model_management as mm
import comfy.model_patcher

from ...kandinsky_core import attention


def model_patcher(model, load_device, offload_device):
    """A patcher of the class core's UNet and VAE loaders use: under DynamicVRAM (ComfyUI 0.30.0+ on NVIDIA) that is
    ModelPatcherDynamic, which streams weights to the GPU as the layers run; elsewhere the classic ModelPatcher."""
    cls = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    return cls(model, load_device=load_device, offload_device=offload_device)


def is_oom(err):
    """True if `err` means the device ran out of memory (newer ComfyUI also counts torch.AcceleratorError's)."""
    check = getattr(mm, "is_oom", None)
    return check(err) if check is not None else isinstance(err, mm.OOM_EXCEPTION)


def chosen_attention():
    """ComfyUI's attention function if a flag or the device chose one, else None.

    Without a flag on a device where PyTorch attention is not the default (a CPU), ComfyUI falls back to its split
    attention; the core's fused SDPA is exact and faster there, so the pack keeps it."""
    import comfy.ldm.modules.attention as comfy_attention

    args = comfy.cli_args.args
    chosen = (args.use_split_cross_attention or args.use_quad_cross_attention or mm.sage_attention_enabled()
              or mm.flash_attention_enabled() or mm.xformers_enabled() or mm.pytorch_attention_enabled())
    return comfy_attention.optimized_attention if chosen else None


def as_core_attention(optimized):
    """Wrap a ComfyUI attention function `(q, k, v, heads, mask)` as the core's `(q, k, v, heads, mask, scale)`."""

    def attend(q, k, v, heads, mask=None, scale=None):
        if scale is not None:  # ComfyUI's kernels always scale by 1/sqrt(head width): fold the requested scale into q
            q = q * (scale * (q.shape[-1] // heads) ** 0.5)
        return optimized(q, k, v, heads, mask=None if mask is None else mask.to(q.dtype))

    return attend


def use_comfy_attention():
    """Route the core's attention through ComfyUI's choice (--use-sage-attention, --use-flash-attention, xformers,
    --use-split/quad-cross-attention, PyTorch attention on GPUs), or keep the core's SDPA where nothing was chosen."""
    optimized = chosen_attention()
    attention.set_attention(None if optimized is None else as_core_attention(optimized))
