"""Kandinsky 3 kinds of benchmarks/bench.py: UNet step, T5 encode and load, kandinsky_core against diffusers'
`Kandinsky3UNet` and transformers' `T5EncoderModel` on the same random weights.

    python benchmarks/bench.py --only k3_unet,k3_t5                        # CPU: fp32 + bf16 at 256², 512²; bf16 T5
    python benchmarks/bench_k3.py                                          # the same: bench.py, K3 kinds by default
    python benchmarks/bench.py --only load --models "3 UNet,3 T5"          # load times and anonymous peak memory
    python benchmarks/bench.py --only k3_unet,k3_t5,load --models "3 UNet,3 T5" --k3-tiny   # dry run, tiny models

The weights are kandinsky-3's published layout with random values (`harness.write_k3_folder`: fp16-variant files, the
T5 in shards with fp32 `wo`), read from --k3-folder (default: the folder k3_memory.py writes; written there if absent,
~28 GB); --k3-tiny writes tiny models into <workdir>/k3-tiny instead (a dry run: its rows are not figures). The same
command on a GPU steps the UNet in fp16 and bf16 at 768² and 1024² and encodes with the T5 in fp16 (fp32 `wo`) and
bf16, and adds CUDA max allocated.

A full-size UNet is 12 GB in fp32 and the T5 17.4 GB in bf16, so each child process loads ONE side; it saves its
output under <workdir>/k3-out and the parent compares the two sides' files afterwards (bit-exact, or the relative
L2 distance). Sides alternate process by process; a side's --repeats run back to back inside its process (each
process pays a whole load). The guided UNet step is batch 2 at t = 500: the unconditional row all zeros and fully
masked (as the pipelines pass it without a negative prompt), the prompt row PROMPT_TOKENS real T5 states and one
zeroed padding position of TOKENS (the longest context the pipelines keep). The T5 encodes one prompt padded to 128
tokens with its mask, as diffusers' Kandinsky3Pipeline.encode_prompt does.
"""
import os
import tempfile

import torch

import harness as H

TOKENS, PROMPT_TOKENS = 128, 127
DEFAULT_FOLDER = os.path.join(tempfile.gettempdir(), "k3_memory", "models", "kandinsky", "kandinsky-3")  # k3_memory.py's
ORACLE = {"k3_unet": "diffusers", "k3_t5": "transformers"}


def add_arguments(parser):
    """The Kandinsky 3 options of bench.py."""
    parser.add_argument("--k3-folder", default=DEFAULT_FOLDER, help="kandinsky-3 folder of random weights (written "
                        "there if absent, ~28 GB)")
    parser.add_argument("--k3-tiny", action="store_true", help="tiny Kandinsky 3 models in <workdir>/k3-tiny: a dry run")
    parser.add_argument("--movq-sizes", default="768,1024", help="MoVQ decode sizes, comma separated")
    parser.add_argument("--k3-sizes", help="K3 UNet step sizes, comma separated (default 256,512 on CPU, 768,1024 on CUDA)")


def setup(args, base, rows):
    """Write (once) the kandinsky-3 folder the K3 parts need, add it to `base` and a row naming it to `rows`."""
    folder = os.path.join(args.workdir, "k3-tiny", "kandinsky-3") if args.k3_tiny else args.k3_folder
    if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, "model_index.json")):
        raise SystemExit(f"{folder} has no model_index.json: it is being written or its writing stopped. Wait for it, "
                         "or delete the folder to have it written again.")
    H.write_k3_folder(folder, args.k3_tiny)
    base["folders"]["k3"] = folder
    base["outputs"] = os.path.join(args.workdir, "k3-out-tiny" if args.k3_tiny else "k3-out")
    base["k3_tiny"] = args.k3_tiny
    os.makedirs(base["outputs"], exist_ok=True)
    rows.append(f"Kandinsky 3 weights: {folder}" + (H.TINY_NOTE if args.k3_tiny else ""))


# ---------------------------------------------------------------- both sides' loaders and calls

def ours_unet(path, dtype, device):
    """kandinsky_core's Kandinsky 3 UNet from its unet/ folder; dtype None keeps the file's."""
    from kandinsky_core.kandinsky3.loading import load_unet
    return load_unet(path, dtype=dtype, device=device)


def theirs_unet(path, dtype, device):
    """diffusers' Kandinsky3UNet from the unet/ folder's fp16 variant, as its pipelines load it."""
    import diffusers
    return diffusers.Kandinsky3UNet.from_pretrained(path, variant="fp16", torch_dtype=dtype).to(device).eval()


def ours_t5(path, dtype, device):
    """kandinsky_core's Flan-UL2 encoder from text_encoder/ (fp16 keeps every `wo` in fp32)."""
    from kandinsky_core.kandinsky3.t5 import load_t5
    return load_t5(path, dtype=dtype, device=device)


def theirs_t5(path, dtype, device):
    """transformers' T5EncoderModel from text_encoder/'s fp16 shards (fp16 keeps `wo` in fp32 there too)."""
    from transformers import T5EncoderModel
    return T5EncoderModel.from_pretrained(path, variant="fp16", dtype=dtype).to(device).eval()


def preload():
    """Import what the K3 loaders import, so that no side pays an import (diffusers' are lazy) inside its timing."""
    import diffusers
    import transformers
    import kandinsky_core.kandinsky3.loading  # noqa: F401
    return diffusers.Kandinsky3UNet, transformers.T5EncoderModel


def unet_step(side, unet, x, t, context, mask):
    """One guided UNet forward, called as each side's pipeline calls it ("fast" is ours in the nodes' fast mode)."""
    if side != "theirs":
        return unet(x, t, context, mask)
    return unet(x, t, encoder_hidden_states=context, encoder_attention_mask=mask).sample


def unet_inputs(width, size, device, dtype):
    """Latents, timestep, T5 states (2, TOKENS, width) and mask: row 0 unconditional, row 1 the prompt."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, size // 8, size // 8, generator=g)
    context = torch.zeros(2, TOKENS, width)
    context[1, :PROMPT_TOKENS] = torch.randn(PROMPT_TOKENS, width, generator=g)
    mask = torch.zeros(2, TOKENS, dtype=torch.bool)
    mask[1, :PROMPT_TOKENS] = True
    return x.to(device, dtype), torch.tensor(500, device=device), context.to(device, dtype), mask.to(device)


def t5_encode(side, model, ids, mask):
    """Last hidden states of one side's T5 for token ids and their mask."""
    if side == "ours":
        return model(ids, mask)
    return model(input_ids=ids, attention_mask=mask).last_hidden_state


# ---------------------------------------------------------------- child processes: one side each

def _load(loader, path, dtype, device, memory):
    """(model, {"load_s", "model_anon_gb", "load_peak_anon_gb"}): one side loaded, the anonymous memory it holds
    afterwards, and the process's anonymous peak while loading."""
    preload()
    memory.reset()
    start = memory.anon_now()
    model, load_s = H.timed(lambda: loader(path, dtype, device), device)
    return model, {"load_s": load_s, "model_anon_gb": memory.anon_now() - start,
                   "load_peak_anon_gb": memory.read()["anon_gb"]}


@torch.no_grad()
def child_unet(spec, device, memory):
    """One side's guided UNet steps at each size: times, FLOPs, peak memory; each output saved for the comparison."""
    from torch.utils.flop_counter import FlopCounterMode
    from kandinsky_core.kandinsky3.loading import read_unet_config
    dtype, side = H.DTYPES[spec["dtype"]], spec["side"]
    path = os.path.join(spec["folders"]["k3"], "unet")
    width = read_unet_config(path).encoder_hid_dim
    unet, result = _load(theirs_unet if side == "theirs" else ours_unet, path, dtype, device, memory)
    if side == "fast":  # the nodes' default mode: channels_last convolution weights
        from kandinsky_core.speed import optimize
        unet = optimize(unet)
    result["matmul_peak"] = H.matmul_peak(dtype, device) if side == "ours" else None  # the rows use ours
    result["sizes"] = {}
    for size in spec["sizes"]:
        inputs = unet_inputs(width, size, device, dtype)
        memory.reset()
        loaded = memory.anon_now()
        counter = FlopCounterMode(display=False)
        with counter:  # also the warm-up
            out = unet_step(side, unet, *inputs)
        times = [H.timed(lambda: unet_step(side, unet, *inputs), device)[1] for _ in range(spec["repeats"])]
        peak = memory.read()
        H.save(spec, size, out)
        result["sizes"][str(size)] = {"flops": counter.get_total_flops(), "times": times,
                                      "step_anon_gb": peak["anon_gb"] - loaded, "cuda_gb": peak["cuda_gb"]}
    return result


@torch.no_grad()
def child_t5(spec, device, memory):
    """One side's T5: load, first and repeated encodes of the prompt, peak memory; the output saved for the comparison."""
    from kandinsky_core.kandinsky3.tokenizer import load_tokenizer
    dtype, side, folder = H.DTYPES[spec["dtype"]], spec["side"], spec["folders"]["k3"]
    ids, mask = (t.to(device) for t in load_tokenizer(folder)(H.K3_PROMPT, max_length=TOKENS))
    model, result = _load(ours_t5 if side == "ours" else theirs_t5, os.path.join(folder, "text_encoder"), dtype, device,
                          memory)
    memory.reset()
    loaded = memory.anon_now()
    out, first_s = H.timed(lambda: t5_encode(side, model, ids, mask), device)
    times = [H.timed(lambda: t5_encode(side, model, ids, mask), device)[1] for _ in range(spec["repeats"])]
    peak = memory.read()
    H.save(spec, "prompt", out)
    return {**result, "first_s": first_s, "times": times, "tokens": int(mask.sum()),
            "anon_gb": max(peak["anon_gb"], result["load_peak_anon_gb"]), "encode_anon_gb": peak["anon_gb"] - loaded,
            "cuda_gb": peak["cuda_gb"]}


# ---------------------------------------------------------------- the rows

def per_device(args, cpu, cuda):
    """`cuda` on a GPU, else `cpu`."""
    return cuda if args.device.type == "cuda" else cpu


def label(base):
    """'K3' or 'K3 TINY', the start of every Kandinsky 3 row."""
    return "K3 TINY" if base.get("k3_tiny") else "K3"


def sides(base, spec, names=("ours", "theirs")):
    """{side: result} of one child per side, in the order of `names`, for the same spec."""
    return {side: H.child({**base, **spec, "side": side}) for side in names}


def compare(base, spec, what):
    """The two sides' saved outputs compared, named after this task's oracle."""
    return H.compare({**base, **spec}, what, ORACLE[spec["task"]])


def cuda_note(o, t):
    """', CUDA max allocated ours X GB, ... ' on a GPU, else ''."""
    return "" if o["cuda_gb"] is None else f", CUDA max allocated ours {o['cuda_gb']:.2f} GB, {t['cuda_gb']:.2f} GB"


def run_unet(args, base, rows):
    """K3 UNet step rows per dtype and size: medians, ratio, distance, FLOPs against that dtype's matmul peak."""
    default = per_device(args, "256,512", "768,1024")
    sizes = [int(s) for s in (args.k3_sizes or default).split(",")]
    for dtype in per_device(args, ("fp32", "bf16"), ("fp16", "bf16")):
        spec = {"task": "k3_unet", "dtype": dtype, "sizes": sizes, "repeats": args.repeats}
        got = sides(base, spec, ("ours", "fast", "theirs"))
        o, f, t = got["ours"], got["fast"], got["theirs"]
        peak = o["matmul_peak"]
        rows.append(f"{label(base)} UNet {dtype}: matmul peak (4096²) {peak / 1e9:.1f} GFLOP/s | load ours {o['load_s']:.1f}s "
                    f"+{o['model_anon_gb']:.2f} GB anon (process peak {o['load_peak_anon_gb']:.2f} GB), diffusers "
                    f"{t['load_s']:.1f}s +{t['model_anon_gb']:.2f} GB (peak {t['load_peak_anon_gb']:.2f} GB)")
        for size in sizes:
            ro, rt = o["sizes"][str(size)], t["sizes"][str(size)]
            ours, theirs = H.med(ro["times"]), H.med(rt["times"])
            fast = H.med(f["sizes"][str(size)]["times"])
            distance = H.compare({**base, **spec}, size, "exact", sides=("fast", "ours"))
            rows.append(f"{label(base)} UNet step {dtype} {size}² batch 2, {TOKENS} tokens | ours {ours:.3f}s | diffusers "
                        f"{theirs:.3f}s | ratio {ours / theirs:.2f} | {compare(base, spec, size)} | fast (the nodes' "
                        f"default) {fast:.3f}s, ratio {fast / theirs:.2f}, {distance} | "
                        f"{ro['flops'] / 1e12:.2f} TFLOP, ours {100 * ro['flops'] / ours / peak:.0f}% of peak, diffusers "
                        f"{100 * ro['flops'] / theirs / peak:.0f}% | step peak anon above the model ours "
                        f"+{ro['step_anon_gb']:.2f} GB, diffusers +{rt['step_anon_gb']:.2f} GB{cuda_note(ro, rt)}")


def run_t5(args, base, rows):
    """K3 T5 encode rows per dtype: load, first and median encode, peak anonymous memory, distance."""
    for dtype in per_device(args, ("bf16",), ("fp16", "bf16")):
        spec = {"task": "k3_t5", "dtype": dtype, "repeats": args.repeats}
        got = sides(base, spec)
        o, t = got["ours"], got["theirs"]
        ours, theirs = H.med(o["times"]), H.med(t["times"])
        wo = " (fp32 wo)" if dtype == "fp16" else ""
        rows.append(f"{label(base)} T5 encode {dtype}{wo}, 1 prompt of {o['tokens']} tokens padded to {TOKENS} | ours "
                    f"{ours:.3f}s (first {o['first_s']:.3f}s) | transformers {theirs:.3f}s (first {t['first_s']:.3f}s) | "
                    f"ratio {ours / theirs:.2f} | {compare(base, spec, 'prompt')} | load ours {o['load_s']:.1f}s, "
                    f"transformers {t['load_s']:.1f}s | peak anon ours {o['anon_gb']:.2f} GB (model +{o['model_anon_gb']:.2f}, "
                    f"encode +{o['encode_anon_gb']:.2f}), transformers {t['anon_gb']:.2f} GB (model "
                    f"+{t['model_anon_gb']:.2f}, encode +{t['encode_anon_gb']:.2f}){cuda_note(o, t)}")


def load_cases(args, base, name):
    """(label, ours spec, [oracle specs]) for "3 UNet" / "3 T5", whose files are fp16: kept, converted, fp8, cold."""
    spec = {**base, "task": "load", "model": name, "cold": False}
    ours, theirs = {**spec, "side": "ours"}, {**spec, "side": "theirs"}
    cases = [("fp16 file → fp16", {**ours, "dtype": "fp16"}, [{**theirs, "dtype": "fp16"}]),
             ("fp16 file → bf16", {**ours, "dtype": "bf16"}, [{**theirs, "dtype": "bf16"}])]
    if args.fp8:  # the oracles have no fp8 load: compared with their unconverted one
        cases.append(("fp16 file → fp8 e4m3fn", {**ours, "dtype": "fp8"}, [{**theirs, "dtype": "fp16"}]))
    cases.append(("cold page cache, fp16 file → fp16", {**ours, "dtype": "fp16", "cold": True},
                  [{**theirs, "dtype": "fp16", "cold": True}]))
    return cases


# The "3 UNet" and "3 T5" entries of bench_load.MODELS: fp16 files, hence their own load cases; "preload" imports what
# a side would otherwise import inside its timing.
LOAD_MODELS = {
    "3 UNet": {"folder": "k3", "path": "unet", "ours": ours_unet, "theirs": theirs_unet, "cases": load_cases,
               "preload": preload},
    "3 T5": {"folder": "k3", "path": "text_encoder", "ours": ours_t5, "theirs": theirs_t5, "cases": load_cases,
             "preload": preload, "oracle": "transformers"},
}


if __name__ == "__main__":  # bench.py's command line, its --only defaulting to the Kandinsky 3 kinds
    import bench
    bench.main(only="k3_unet,k3_t5")
