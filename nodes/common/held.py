"""Models the pack holds in RAM outside ComfyUI's model management (the Kandinsky 3 T5 on a CPU-only setup), and the
rule that frees them, ComfyUI's own for the models it manages: a model stays until its memory is wanted.

ComfyUI frees models before a step only on a GPU; a CPU-only ComfyUI never does, so the pack asks the same question
of the free RAM before sampling and before each MoVQ pass: if what that pass needs would not fit beside the held
models, they go (the next encode of a new prompt loads them again); if it fits, a new prompt is encoded at once.
"""
import ctypes
import weakref

import comfy.model_management as mm
import torch

HELD = weakref.WeakSet()  # objects with a release() that frees their weights


def hold(model):
    """Count `model` (which has `release()`) as held in RAM."""
    HELD.add(model)


def forget(model):
    """`model` no longer holds weights."""
    HELD.discard(model)


def make_room(needed=None):
    """Release the held models if the free RAM is short of `needed` bytes plus ComfyUI's inference reserve (None:
    release them in any case); True if they were released."""
    if not HELD:
        return False
    if needed is not None and mm.get_free_memory(torch.device("cpu")) >= needed + mm.minimum_inference_memory():
        return False
    for model in list(HELD):
        model.release()
    try:  # hand the freed heap back to the system (glibc keeps it otherwise)
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: its allocator returns memory its own way
        pass
    return True
