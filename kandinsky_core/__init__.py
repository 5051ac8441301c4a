"""Kandinsky 2.1 and 2.2 in plain PyTorch: models, schedulers, loading and sampling; no diffusers, no ComfyUI."""

__version__ = "0.1.0"
