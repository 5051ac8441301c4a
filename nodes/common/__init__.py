"""What both families' nodes share: folders, types, progress, ComfyUI compatibility, the MoVQ and sampler checks."""
