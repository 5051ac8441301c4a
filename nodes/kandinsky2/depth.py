"""A transformers depth-estimation model as a ComfyUI-managed object: the KANDINSKY2_DEPTH_MODEL value."""
import comfy.model_management as mm
import comfy.model_patcher
import torch

from ...kandinsky_core.kandinsky2 import depth
from .prior import Holder


class Depth:
    """The depth model and its image processor, the model behind a patcher."""

    def __init__(self, model, processor, load_device, offload_device):
        self.model, self.processor = model, processor
        self.patcher = comfy.model_patcher.ModelPatcher(Holder(model), load_device=load_device, offload_device=offload_device)

    def ready(self):
        """Load onto the compute device through ComfyUI's memory manager; returns (model, processor)."""
        # Whole: partial (lowvram) loading needs comfy.ops layers, and transformers builds plain torch ones.
        mm.load_models_gpu([self.patcher], force_full_load=True)
        return self.model, self.processor


def load_depth(path):
    """A depth-estimation model folder as a `Depth`, weights kept on the offload device until used."""
    device, offload = mm.get_torch_device(), mm.unet_offload_device()
    dtype = torch.float16 if mm.should_use_fp16(device) else torch.float32
    model, processor = depth.load_depth_model(path, dtype=dtype, device=offload)
    return Depth(model, processor, device, offload)
