"""The Kandinsky 2 prior as a ComfyUI-managed object: each of its torch modules sits behind a ModelPatcher."""
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import torch

from ...kandinsky_core.kandinsky2 import loading


class Holder(torch.nn.Module):
    """Gives ModelPatcher a module it may set `.device` on (transformers models make that a read-only property)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner


class Prior:
    """The KANDINSKY2_PRIOR value: the core `PriorModels` plus one patcher per network."""

    def __init__(self, models, load_device, offload_device):
        self.models = models
        modules = (models.prior, Holder(models.text_encoder), Holder(models.image_encoder))
        self.patchers = [comfy.model_patcher.ModelPatcher(m, load_device=load_device, offload_device=offload_device)
                         for m in modules]

    @property
    def version(self):
        """'2.1' or '2.2'."""
        return self.models.version

    def ready(self):
        """Load the networks onto the compute device through ComfyUI's memory manager; returns the core models."""
        # Whole: the CLIP towers are plain transformers layers, which ModelPatcher cannot load partially.
        mm.load_models_gpu(self.patchers, force_full_load=True)
        return self.models


def _dtype(device, preferred):
    return torch.float32 if mm.is_device_cpu(device) else preferred


def load_prior(path):
    """A prior repo folder as a `Prior`, weights kept on the offload device until used."""
    device, offload = mm.text_encoder_device(), mm.text_encoder_offload_device()
    dtype = _dtype(device, mm.text_encoder_dtype(device))
    models = loading.load_prior_models(path, dtype=dtype, device=offload, operations=comfy.ops.manual_cast)
    return Prior(models, device, offload)
