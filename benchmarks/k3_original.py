"""Kandinsky 3.1 from the original fp32 files at full size: the converting load, and what Flash's 4 calls cost.

    python benchmarks/k3_original.py --workdir /tmp/k3o              # full size (12.2 GB written once)
    python benchmarks/k3_original.py --workdir /tmp/k3o --tiny       # dry run on tiny files (seconds)

Random weights are written once in the original 3.1 layout (`kandinsky3.pt`: {"unet", "null_embedding"}, fp32;
`flan_ul2_encoder/projection.pt`), each tensor in its own storage as the published pickles hold them. Then, each in
its own process:
1. `original.load_unet` with `--dtypes` (fp8_e4m3fn, bf16): wall and CPU seconds, peak anonymous memory against the
   converted model plus the largest fp32 tensor (what a load that never holds more than one tensor in fp32 needs);
2. Flash against the base sampler at `--size`: one unguided UNet call (batch 1, as each of Flash's 4) and one
   guided call (batch 2, as each of the 3.1 sampler's 50 and the 3.0 release's 25 steps), in bf16.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

import harness as H

ROOT = os.path.join(H.HERE, "..")
sys.path.insert(0, ROOT)
DTYPES = {"fp8_e4m3fn": torch.float8_e4m3fn, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def write_weights(workdir, tiny, unet_name="kandinsky3.pt", projection_name="projection.pt"):
    """kandinsky3.pt and flan_ul2_encoder/projection.pt (random; or Flash's names, same shapes) in `workdir`, unless
    already there."""
    from kandinsky_core.kandinsky3 import tiny_original as TO
    from kandinsky_core.kandinsky3.unet import UNET3, UNet
    unet_file = os.path.join(workdir, unet_name)
    projection_file = os.path.join(workdir, "flan_ul2_encoder", projection_name)
    if os.path.isfile(unet_file) and os.path.isfile(projection_file):
        return unet_file, projection_file
    os.makedirs(os.path.dirname(projection_file), exist_ok=True)
    config = TO.ORIGINAL_UNET_TINY if tiny else UNET3
    g = torch.Generator().manual_seed(0)
    unet = {}
    for key, meta in UNet(config, device="meta").state_dict().items():
        unet[key] = torch.empty(meta.shape).normal_(0, meta.shape[-1] ** -0.5 if meta.ndim > 1 else 0.2, generator=g)
    projection = {k: unet.pop(v) for k, v in TO.PROJECTION_KEYS.items()}
    null = torch.randn(config.cross_attention_dim, generator=g)
    original = {TO.original_unet_key(k): v for k, v in unet.items()}
    del unet
    TO.write_unet(unet_file, original, null, config=config) if tiny else torch.save(
        {"unet": original, "null_embedding": null}, unet_file)
    TO.write_projection(projection_file, projection)
    return unet_file, projection_file


def child_load(spec):
    """Load the UNet file into `spec["dtype"]`: seconds, CPU seconds, anonymous memory peak and model size."""
    from kandinsky_core.kandinsky3 import original
    memory = H.PeakMemory(torch.device("cpu"))
    memory.reset()
    start_anon, cpu = memory.anon_now(), time.process_time()
    (unet, _), seconds = H.timed(lambda: original.load_unet(spec["unet"], spec["projection"],
                                                            dtype=DTYPES[spec["dtype"]]), torch.device("cpu"))
    model = sum(p.numel() * p.element_size() for p in unet.parameters()) / H.GB
    largest = max(p.numel() for p in unet.parameters()) * 4 / H.GB
    return {"load_s": seconds, "cpu_s": time.process_time() - cpu, "peak_anon_gb": memory.read()["anon_gb"] - start_anon,
            "model_gb": model, "largest_fp32_gb": largest}


@torch.no_grad()
def child_calls(spec):
    """Seconds of one UNet call at batch 1 and at batch 2 (median of `repeats`), bf16."""
    from kandinsky_core.kandinsky3 import original
    unet, null = original.load_unet(spec["unet"], spec["projection"], dtype=torch.bfloat16)
    c = unet.config
    latent = spec["size"] // 8
    out = {}
    for batch in (1, 2):
        x = torch.randn(batch, 4, latent, latent, dtype=torch.bfloat16)
        context = torch.randn(batch, 16, c.cross_attention_dim, dtype=torch.bfloat16)
        mask = torch.ones(batch, 16)
        times = [H.timed(lambda: unet(x, torch.full((batch,), 979.0), context, mask, projected=True),
                         torch.device("cpu"))[1] for _ in range(spec["repeats"])]
        out[f"call_b{batch}_s"] = H.med(times)
    return out


CHILDREN = {"load": child_load, "calls": child_calls}


def run_child(spec):
    print(f"  running {spec['task']} {spec.get('dtype', '')} ...", file=sys.stderr, flush=True)
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE, text=True,
                         check=True)
    return H.result_of(out.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", help="where the random weights are written (once) and read (required)")
    p.add_argument("--tiny", action="store_true", help="tiny files: a dry run of the script")
    p.add_argument("--dtypes", default="fp8_e4m3fn,bf16")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(H.RESULT + json.dumps(CHILDREN[spec["task"]](spec)))
        return
    if not args.workdir:
        p.error("--workdir is required")
    start = time.perf_counter()
    unet_file, projection_file = write_weights(args.workdir, args.tiny)
    print(f"weights: {os.path.getsize(unet_file) / H.GB:.2f} GiB ({time.perf_counter() - start:.0f} s)")
    base = {"unet": unet_file, "projection": projection_file}
    for dtype in args.dtypes.split(","):
        r = run_child({**base, "task": "load", "dtype": dtype})
        print(f"load as {dtype}: {r['load_s']:.1f} s (CPU {r['cpu_s']:.1f} s), peak anonymous +{r['peak_anon_gb']:.2f} "
              f"GiB against model {r['model_gb']:.2f} + largest fp32 tensor {r['largest_fp32_gb']:.2f} GiB")
    size = 64 if args.tiny else args.size
    r = run_child({**base, "task": "calls", "size": size, "repeats": args.repeats})
    flash, base31, base30 = 4 * r["call_b1_s"], 50 * r["call_b2_s"], 25 * r["call_b2_s"]
    print(f"UNet call at {size}² bf16: batch 1 {r['call_b1_s']:.2f} s, batch 2 (guided) {r['call_b2_s']:.2f} s")
    print(f"sampling: Flash 4 calls {flash:.1f} s; 3.1 base 50 guided steps {base31:.1f} s (Flash {flash / base31:.3f}x); "
          f"the 3.0 release's 25 steps {base30:.1f} s (Flash {flash / base30:.3f}x)")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
