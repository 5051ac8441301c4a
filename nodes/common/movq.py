"""The MoVQ (Kandinsky's VAE, shared by 2.x and 3) as a ComfyUI-managed object, and the latent format of its latents."""
import comfy.latent_formats
import comfy.model_management as mm
import comfy.ops
import torch

from ...kandinsky_core.movq import load_movq as load_core_movq
from . import held, modes
from .comfy_compat import model_patcher


class KandinskyLatent(comfy.latent_formats.LatentFormat):
    """MoVQ latents, used unscaled (the 0.18215 in movq/config.json is never applied by Kandinsky)."""

    latent_channels = 4
    scale_factor = 1.0


class MoVQ:
    """The KANDINSKY2_MOVQ value: the core MoVQ behind a patcher."""

    def __init__(self, model, load_device, offload_device):
        self.model = model
        self.patcher = model_patcher(model, load_device, offload_device)  # the class core's VAELoader uses

    @property
    def dtype(self):
        """Weight dtype."""
        return next(self.model.parameters()).dtype

    def ready(self, memory_required=0):
        """Load onto the compute device (making room for `memory_required` bytes of activations); returns the MoVQ."""
        held.make_room(memory_required)  # a T5 held in RAM stays if the pass fits beside it
        mm.load_models_gpu([self.patcher], memory_required=memory_required)
        return self.model


def load_movq(path, mode="fast", node="Kandinsky MoVQ Loader"):
    """A MoVQ (repo folder, movq/ folder or single file) as a `MoVQ`, laid out for `mode` (modes.py)."""
    modes.check(mode, node)
    device, offload = mm.vae_device(), mm.vae_offload_device()
    dtype = mm.vae_dtype(device, [torch.bfloat16, torch.float32])
    model = load_core_movq(path, dtype=dtype, device=offload, operations=comfy.ops.manual_cast)
    return MoVQ(modes.apply(model, mode), device, offload)
