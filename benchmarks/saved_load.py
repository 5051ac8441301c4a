"""Convert once, map ever after: a converting load of the full-size random 2.2 UNet (bench.py's fp32 file), the
Kandinsky Save Model file of the result, and warm loads of that file in its own dtype (mapped), per storage dtype.

    python benchmarks/bench.py --only load --models "2.2 UNet"   # writes <workdir>/decoder/unet once
    python benchmarks/saved_load.py /tmp/kandinsky-bench/decoder/unet
"""
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kandinsky_core import speed  # noqa: E402
from kandinsky_core.kandinsky2 import loading as L  # noqa: E402


def seconds(fn):
    """(result, wall seconds) of fn()."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(unet, repeats=3):
    """Print one line per storage dtype."""
    with tempfile.TemporaryDirectory() as folder:
        for dtype, name in ((torch.float8_e4m3fn, "fp8"), (torch.bfloat16, "bf16")):
            model, convert = seconds(lambda: L.load_component(unet, "unet", dtype=dtype))
            path = os.path.join(folder, f"unet_{name}.safetensors")
            _, save = seconds(lambda m=model: L.save_unet(path, m))
            del model
            loads = [seconds(lambda: L.load_component(path, "unet", dtype=dtype)) for _ in range(repeats)]
            _, layout = seconds(lambda: speed.optimize(loads[-1][0]))
            print(f"2.2 UNet fp32 file -> {name}: converting load {convert:.2f}s, save {save:.2f}s, saved file loaded "
                  f"as {name} (mapped) {min(s for _, s in loads):.3f}s warm, fast mode's channels_last +{layout:.2f}s")


if __name__ == "__main__":
    main(sys.argv[1])
