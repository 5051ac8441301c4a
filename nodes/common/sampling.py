"""What the pack's two samplers share: scheduler choice, input checks in the nodes' words, and the UNet as the core
loops see it."""
import torch

from ...kandinsky_core import images
from ...kandinsky_core import schedulers as S
from ...kandinsky_core.errors import KandinskyError

SCHEDULERS = ["checkpoint", "ddpm", "ddim", "dpm++ 2m", "dpm++ 2m karras"]
# Conditioning keys core nodes set that the pack's samplers have no way to honour (KSampler does): key → the node.
# "strength" is not among them: KSampler divides each prediction by the strengths that cover it, so the strength of a
# single full-image entry (all these samplers take) cancels there too.
MODIFIERS = {"area": "Conditioning (Set Area)", "mask": "Conditioning (Set Mask)", "control": "Apply ControlNet",
             "gligen": "GLIGEN Textbox Apply", "hooks": "conditioning hooks (Cond Set Props, Create Hook LoRA)"}


def make_scheduler(config, sampler):
    """The core scheduler for a sampler choice, on the noise schedule of the checkpoint's scheduler config."""
    if sampler not in SCHEDULERS:  # ComfyUI 0.3.75 does not check V3 combo values against their options
        raise KandinskyError(f"Unknown sampler {sampler!r}; pick one of {', '.join(SCHEDULERS)}.")
    if sampler == "checkpoint":
        return S.scheduler_from_config(config)
    if sampler.startswith("dpm++"):
        return S.dpm_solver_from(config, karras=sampler.endswith("karras"))
    return S.scheduler_from_config({**config, "_class_name": "DDPMScheduler" if sampler == "ddpm" else "DDIMScheduler"})


def check_modifiers(cond, node, name):
    """Refuse what core conditioning nodes added to `cond` that `node` would otherwise drop, pointing to KSampler."""
    for _, extra in cond:
        found = [what for key, what in MODIFIERS.items() if extra.get(key) is not None]
        if (extra.get("start_percent", 0.0), extra.get("end_percent", 1.0)) != (0.0, 1.0):
            found.append(f"Conditioning (Set Timestep Range) {extra.get('start_percent', 0.0)}-"
                         f"{extra.get('end_percent', 1.0)}")
        if found:
            raise KandinskyError(f"The {name} conditioning carries {', '.join(found)}, which the {node} cannot "
                                 "honour; use KSampler with this model (it honours them), or remove those nodes.")


def check_latent(latent, node, fix, keep=None):
    """Refuse a latent with a noise mask (Set Latent Noise Mask), which `node` would otherwise ignore; on the
    inpainting path (`keep` from Kandinsky Inpaint Conditioning) the mask that node set is the hole it repaints."""
    mask = latent.get("noise_mask")
    if mask is not None and (keep is None or not images.is_inpaint_hole(mask, keep)):
        raise KandinskyError(f"The latent_image carries a noise mask (Set Latent Noise Mask), which the {node} cannot "
                             f"honour; {fix}")


def check_denoise(denoise, steps):
    """Refuse a denoise the core loops cannot run, in the nodes' words (the core calls it strength)."""
    if not 0 <= denoise <= 1:
        raise KandinskyError(f"denoise must be between 0 and 1, got {denoise}; use 1 for text-to-image.")
    if 0 < denoise < 1 and int(steps * denoise) < 1:
        raise KandinskyError(f"denoise {denoise} with {steps} steps leaves no step to run; raise denoise or steps "
                             "(denoise × steps must be at least 1), or set denoise to 0 to pass the latent through.")


def repeats(embeddings, latents):
    """How many latents each embedding row gets."""
    if latents % embeddings:
        raise KandinskyError(f"{latents} latents for {embeddings} embeddings: the latent batch must be a multiple of the "
                             "conditioning batch.")
    return latents // embeddings


class Computing(torch.nn.Module):
    """The UNet as the core loops see it: on the load device in the compute dtype (the core reads both from the first
    parameter; with fp8 storage or low-VRAM partial loading the UNet's own weights say neither)."""

    def __init__(self, unet, dtype, device):
        super().__init__()
        self.probe = torch.nn.Parameter(torch.empty(0, dtype=dtype, device=device), requires_grad=False)
        self.unet, self.config = unet, unet.config

    def forward(self, *args, **kwargs):
        return self.unet(*args, **kwargs)

    def __getattr__(self, name):  # the rest of the UNet's interface (its layers, e.g. Kandinsky 3's text projection)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("unet"), name)


