"""What the inpainting nodes of both families share: conditioning dicts that carry the inpainting inputs, and the
latent key that asks MoVQ Decode to paste the input back."""

# LATENT dict key: {"image": (B, 3, H, W) in [-1, 1], "mask": (B, 1, H, W), 1 = repaint} of the image to inpaint.
# KSampler and SamplerCustom copy a latent's other keys to their output, the pack's samplers carry this one, so
# Kandinsky MoVQ Decode finds it beside the sampled latents.
PASTE_BACK = "kandinsky_paste_back"


def with_keys(cond, **keys):
    """A copy of a CONDITIONING list whose dicts carry `keys` too; the input is left as it was."""
    return [[t, {**d, **keys}] for t, d in cond]


def carried(latent):
    """The keys of an input LATENT that a sampler's output keeps (the paste-back request)."""
    return {PASTE_BACK: latent[PASTE_BACK]} if PASTE_BACK in latent else {}
