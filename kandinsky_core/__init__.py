"""Kandinsky 2.1, 2.2 and 3 in plain PyTorch: models, schedulers, loading and sampling; no diffusers, no ComfyUI."""

__version__ = "0.1.0"
