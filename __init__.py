"""Kandinsky 2.1, 2.2 and 3 for ComfyUI, natively. ComfyUI loads this package; `kandinsky_core` works without it."""
try:
    import comfy_api.latest  # noqa: F401  (only present inside ComfyUI)
except ImportError:
    pass
else:
    from .nodes import comfy_entrypoint  # noqa: F401

WEB_DIRECTORY = "./web"
