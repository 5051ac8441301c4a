"""The `load` kind of bench.py: load time and peak memory of one model per MODELS entry, kandinsky_core against
diffusers (or transformers), each load in a fresh process, at the file's dtype, converted, to fp8 and from a cold
page cache.

    python benchmarks/bench.py --only load --models "2.2 UNet"   # load times and anonymous peak memory only
    python benchmarks/bench.py --only load --models "3 UNet,3 T5"
"""
import json
import os
import time

import torch

import bench_k3
import harness as H


def _ours_component(kind):
    def load(path, dtype, device):
        from kandinsky_core.kandinsky2.loading import load_component
        return load_component(path, kind, dtype=dtype, device=device)
    return load


def _theirs_component(cls):
    def load(path, dtype, device):
        import diffusers
        folder, name = os.path.split(path) if os.path.isfile(path) else (path, None)
        variant = name.split(".")[-2] if name and name.count(".") > 1 else None  # diffusion_pytorch_model.fp16.safetensors
        return getattr(diffusers, cls).from_pretrained(folder, torch_dtype=dtype, variant=variant).to(device).eval()
    return load


def _preload(cls):
    """Import diffusers' lazily imported `cls` before the timing starts (either side would otherwise pay it)."""
    def preload():
        import diffusers
        getattr(diffusers, cls)
    return preload


# What to benchmark: one entry per model, so another family (Kandinsky 3: UNet, T5) adds rows by adding entries. Each
# names its folder (a key of base["folders"]: "decoder" and "prior" from harness.write_22_weights, "k3" from
# bench_k3.setup) and how either side loads it from a path in there.
MODELS = {
    "2.2 UNet": {"folder": "decoder", "path": "unet", "ours": _ours_component("unet"),
                 "theirs": _theirs_component("UNet2DConditionModel"), "preload": _preload("UNet2DConditionModel")},
    "2.2 prior": {"folder": "prior", "path": "prior", "ours": _ours_component("prior"),
                  "theirs": _theirs_component("PriorTransformer"), "preload": _preload("PriorTransformer")},
    **bench_k3.LOAD_MODELS,
}


def model_path(spec, name, path=None):
    """Absolute path of a MODELS entry (or of `path` inside its folder)."""
    entry = MODELS[name]
    return os.path.join(spec["folders"][entry["folder"]], path or entry["path"])


def fp16_copy(spec, name):
    """The entry's weights as an fp16 file beside the fp32 one (diffusers' "fp16" variant naming), written once."""
    folder = model_path(spec, name)
    path = os.path.join(folder, "diffusion_pytorch_model.fp16.safetensors")
    if not os.path.isfile(path):
        from safetensors.torch import save_file
        from kandinsky_core.weights import iter_tensors, weights_path
        save_file(dict(iter_tensors(weights_path(folder), dtype=torch.float16)), path)
    return os.path.relpath(path, spec["folders"][MODELS[name]["folder"]])


def load_cases(args, base, name):
    """(label, ours spec, [diffusers specs to compare with]) for one MODELS entry: same dtype, converting, cold cache."""
    fast = "bf16" if args.device.type == "cuda" or H.fast_dtype(args.device) == "bf16" else "fp16"
    spec = {**base, "task": "load", "model": name, "cold": False}
    ours, theirs = {**spec, "side": "ours"}, {**spec, "side": "theirs"}
    cases = [("fp32 file → fp32", {**ours, "dtype": "fp32"}, [{**theirs, "dtype": "fp32"}])]
    cases.append((f"fp32 file → {fast}", {**ours, "dtype": fast}, [{**theirs, "dtype": fast}, {**theirs, "dtype": "fp32"}]))
    if args.fp8 and name == "2.2 UNet":
        half = {"file": fp16_copy(base, name)}
        cases.append(("fp16 file → fp8 e4m3fn", {**ours, **half, "dtype": "fp8"}, [{**theirs, **half, "dtype": "fp16"}]))
    cases.append((f"cold page cache, fp32 file → {fast}", {**ours, "dtype": fast, "cold": True},
                  [{**theirs, "dtype": "fp32", "cold": True}]))
    return cases


def _first_pass(model, device):
    """Read every weight once: a memory-mapped load only pays for its pages here."""
    return H.timed(lambda: sum(float(p.float().sum()) for p in model.state_dict().values()), device)[1]


@torch.no_grad()
def child(spec, device, memory):
    """One load of a MODELS entry: wall and CPU seconds, peak RSS and anonymous memory above the start."""
    dtype = H.DTYPES.get(spec["dtype"])
    path = model_path(spec, spec["model"], spec.get("file"))
    import diffusers  # noqa: F401  imported by both sides so neither pays its import inside the timing
    import kandinsky_core.kandinsky2.loading  # noqa: F401
    MODELS[spec["model"]].get("preload", lambda: None)()
    if spec["cold"]:
        H.set_page_cache(H.weight_files(path), cold=True)
    memory.reset()
    base, cpu = memory.read(), time.process_time()
    model, load_s = H.timed(lambda: MODELS[spec["model"]][spec["side"]](path, dtype, device), device)
    cpu, peak = time.process_time() - cpu, memory.read()
    sizes = [t.numel() * t.element_size() for t in model.state_dict().values()]
    return {"load_s": load_s, "cpu_s": cpu, "touch_s": _first_pass(model, device), "model_gb": sum(sizes) / H.GB,
            "largest_gb": max(sizes) / H.GB, "anon_gb": peak["anon_gb"] - base["anon_gb"],
            "rss_gb": peak["rss_gb"] - base["rss_gb"], "cuda_gb": peak["cuda_gb"]}


def _case_line(label, o, theirs, got, oracle):
    """One load row: ours against each oracle spec of the case."""
    bound = o["model_gb"] + o["largest_gb"]
    line = (f"  {label} | ours {o['load_s']:.2f}s (CPU {o['cpu_s']:.2f}s, +pass {o['load_s'] + o['touch_s']:.2f}s), "
            f"peak anon +{o['anon_gb']:.2f} GB (model {o['model_gb']:.2f} + largest tensor {o['largest_gb']:.2f} "
            f"= {bound:.2f}: {'within' if o['anon_gb'] <= bound else 'OVER'}), RSS +{o['rss_gb']:.2f} GB")
    for t in theirs:
        t_got = got[json.dumps(t, sort_keys=True)]
        line += (f" | {oracle} {t['dtype']} {t_got['load_s']:.2f}s (CPU {t_got['cpu_s']:.2f}s, +pass "
                 f"{t_got['load_s'] + t_got['touch_s']:.2f}s), anon +{t_got['anon_gb']:.2f} GB: ratio "
                 f"{o['load_s'] / t_got['load_s']:.2f} (+pass {(o['load_s'] + o['touch_s']) / (t_got['load_s'] + t_got['touch_s']):.2f})")
    return line + (f", CUDA {o['cuda_gb']:.2f} GB" if o["cuda_gb"] is not None else "")


def run(args, base, rows):
    """Load rows per MODELS entry: medians of alternating runs, each in a fresh process, with anonymous peak memory."""
    for name in args.models:
        cases = MODELS[name].get("cases", load_cases)(args, base, name)
        oracle = MODELS[name].get("oracle", "diffusers")
        specs = {json.dumps(s, sort_keys=True): s for _, ours, theirs in cases for s in [ours] + theirs}
        runs = {key: [] for key in specs}
        for _ in range(args.repeats):
            for key, spec in specs.items():  # every case's runs interleave with every other's
                runs[key].append(H.child(spec))
        got = {key: {k: (None if rs[0][k] is None else H.med([r[k] for r in rs])) for k in rs[0]} for key, rs in runs.items()}
        first = got[next(iter(got))]
        rows.append(f"load {name} ({first['model_gb']:.2f} GB as {cases[0][1]['dtype']}), {args.device}, medians of {args.repeats}; "
                    "'+pass' adds one read of every weight, where a memory-mapped load pays for its pages")
        for label, ours, theirs in cases:
            rows.append(_case_line(label, got[json.dumps(ours, sort_keys=True)], theirs, got, oracle))
