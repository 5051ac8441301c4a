"""Run ComfyUI's main.py with its DynamicVRAM weight path on, as main.py turns it on for NVIDIA GPUs.

Usage (from the ComfyUI folder): python dynamic_vram_main.py [main.py's arguments]

main.py enables DynamicVRAM only on NVIDIA (not WSL) and never with --cpu. There it first initialises the comfy-aimdo
library (`comfy_aimdo.control.init`, which also serves ComfyUI's memory-mapped safetensors reading), then, right after
importing `comfy.model_patcher` and before any node is loaded, sets `comfy.memory_management.aimdo_enabled = True` and
`comfy.model_patcher.CoreModelPatcher = ModelPatcherDynamic`. This launcher does the same three things in a --cpu
run, so every layer that `comfy.ops` builds creates its weights only when a state dict reaches it, files load through
aimdo's mapping, and every loader that asks for `CoreModelPatcher` gets the dynamic class (which hands a CPU load
device on to the classic ModelPatcher, as it does on a GPU machine). What needs a GPU is left out: aimdo's devices
(`init_devices`), which stream weights into VRAM as the layers run.
"""
import importlib.abc
import importlib.util
import os
import runpy
import sys

PATCHED = "comfy.model_patcher"


def enable(model_patcher):
    """What main.py does once DynamicVRAM initialised."""
    import comfy.memory_management

    model_patcher.CoreModelPatcher = model_patcher.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True
    print("dynamic_vram_main: DynamicVRAM weight path on (aimdo_enabled, CoreModelPatcher = ModelPatcherDynamic)",
          flush=True)


class AfterImport(importlib.abc.MetaPathFinder):
    """Runs `enable` as soon as comfy.model_patcher has been executed, whoever imports it first."""

    def find_spec(self, name, path, target=None):
        if name != PATCHED:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            enable(module)

        spec.loader.exec_module = exec_module
        return spec


if __name__ == "__main__":
    import comfy_aimdo.control

    comfy_aimdo.control.init()
    sys.meta_path.insert(0, AfterImport())
    sys.argv = ["main.py", *sys.argv[1:]]
    sys.path[0] = os.getcwd()  # main.py's own folder, as `python main.py` would have it
    runpy.run_path("main.py", run_name="__main__")
