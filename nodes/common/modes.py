"""The loaders' `mode` input: the fast path ComfyUI users get by default, or the exact one.

"fast" stores the convolution weights in channels_last order, so that oneDNN (CPU) and cuDNN run the UNet and MoVQ
convolutions without reordering every weight and activation on every call; it only changes float rounding (about
2e-6 relative in fp32, within bf16's own rounding in bf16). "exact" keeps kandinsky_core's default layout, whose
results equal diffusers' (and the original ai-forever code's) bit for bit.
"""
from comfy_api.latest import io

from ...kandinsky_core import speed
from ...kandinsky_core.errors import KandinskyError

MODES = ("fast", "exact")
TIP = ("fast: convolution weights in channels_last order, about 20 % faster UNet steps and MoVQ decodes on a CPU; "
       "results differ from exact by float rounding only. exact: bit for bit the results of diffusers (2.x, 3.0) and "
       "of the original ai-forever code (3.1), for comparisons.")


def mode_input():
    """The loaders' optional `mode` combo (optional: API prompts saved before it existed keep validating)."""
    return io.Combo.Input("mode", options=list(MODES), default="fast", optional=True, tooltip=TIP)


def check(mode, node):
    """Refuse a mode other than fast and exact, naming the node (ComfyUI 0.3.75 does not check V3 combo values)."""
    if mode not in MODES:
        raise KandinskyError(f"{node}: unknown mode {mode!r}; pick fast or exact.")


def apply(model, mode):
    """`model` laid out for a checked `mode` ("fast": channels_last convolution weights, in place)."""
    return speed.optimize(model) if mode == "fast" else model
