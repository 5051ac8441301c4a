"""Kandinsky 3 through the ComfyUI API with full-size random weights: peak memory and time, against diffusers.

    python benchmarks/k3_memory.py                        # full size, fp8 weights, 1024², 25 steps (~30 GB disk)
    python benchmarks/k3_memory.py --size 512 --steps 4   # 512² if a 1024² step takes too long on the CPU
    python benchmarks/k3_memory.py --tiny                 # dry run of the whole script on tiny models (seconds)

Random weights are written once into --workdir in kandinsky-3's published layout (fp16-variant files, the T5 in
shards with fp32 `wo`), tensor by tensor so that writing never holds the 8.7 B-parameter T5 in memory. Then:
1. a ComfyUI server (this pack; `--cpu` unless CUDA is there, `--lowvram` on a GPU) runs Kandinsky 3 UNet Loader +
   Kandinsky 3 T5 Loader (`--weight-dtype`) → CLIP Text Encode → Kandinsky 3 Sampler → MoVQ Decode; reported: the
   server's peak RSS (VmHWM), load time (the loader nodes), T5 encode time (CLIP Text Encode), time per step (the
   sampler's progress messages), and on a GPU the peak device memory in use (polled from /system_stats);
2. in a child process, diffusers' Kandinsky3Pipeline on the same folder at its recommended settings (variant fp16,
   torch_dtype fp16; model CPU offload on a GPU): its peak RSS (and CUDA max allocated) and time, or the error it
   stops with. Needs the test extra (diffusers); --no-diffusers skips it.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from kandinsky_core import schedulers  # noqa: E402
from kandinsky_core.config import to_dict  # noqa: E402
from kandinsky_core.kandinsky3.t5 import FLAN_UL2, T5Encoder  # noqa: E402
from kandinsky_core.kandinsky3.tiny_text import T5_TINY, write_tokenizer  # noqa: E402
from kandinsky_core.kandinsky3.unet import UNET3, UNET3_TINY, UNet  # noqa: E402
from kandinsky_core.movq import MOVQ_K3, MoVQ  # noqa: E402
from kandinsky_core.tiny import MOVQ_TINY8  # noqa: E402

FP16 = "diffusion_pytorch_model.fp16.safetensors"
BLOCKS_PER_SHARD = 4
PROMPT = "a red cat sitting on a windowsill, oil painting, high quality"
GB = 2**30


def random_tensor(key, shape, g, dtype):
    """A weight of a sensible scale: norms near 1, biases 0, matrices randn / sqrt(fan-in)."""
    if len(shape) == 1:
        return (torch.ones if key.endswith("weight") else torch.zeros)(shape, dtype=dtype)
    fan_in = torch.Size(shape[1:]).numel()
    return (torch.randn(shape, generator=g) * fan_in ** -0.5).to(dtype)


def write_module(module, config, folder, seed):
    """config.json and one fp16 safetensors file of random weights for a meta-device module."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    g = torch.Generator().manual_seed(seed)
    sd = {k: random_tensor(k, t.shape, g, torch.float16) for k, t in module.state_dict().items()}
    save_file(sd, os.path.join(folder, FP16), metadata={"format": "pt"})


def write_t5(folder, config, seed):
    """The published text_encoder/ layout: shards of BLOCKS_PER_SHARD blocks, fp16 with fp32 `wo`, an fp16 index."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config.to_dict(), f, indent=2, sort_keys=True)
    shapes = T5Encoder(config, device="meta").state_dict()
    groups = {}
    for key in shapes:  # embedding and final norm go with the first and last blocks
        block = int(key.split(".")[2]) if key.startswith("encoder.block.") else (0 if key == "shared.weight" else -1)
        groups.setdefault(block // BLOCKS_PER_SHARD if block >= 0 else (config.num_layers - 1) // BLOCKS_PER_SHARD,
                          []).append(key)
    g, weight_map, total = torch.Generator().manual_seed(seed), {}, 0
    for i, keys in sorted(groups.items()):
        name = f"model.fp16-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        part = {}
        for key in keys:
            dtype = torch.float32 if key.endswith("DenseReluDense.wo.weight") else torch.float16
            part[key] = random_tensor(key, shapes[key].shape, g, dtype)
        save_file(part, os.path.join(folder, name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
        total += sum(t.numel() * t.element_size() for t in part.values())
        del part
    with open(os.path.join(folder, "model.safetensors.index.fp16.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def write_folder(folder, tiny):
    """A kandinsky-3 folder of random weights (skipped when its model_index.json exists)."""
    if os.path.isfile(os.path.join(folder, "model_index.json")):
        return folder
    unet, movq, t5 = (UNET3_TINY, MOVQ_TINY8, T5_TINY) if tiny else (UNET3, MOVQ_K3, FLAN_UL2)
    write_module(UNet(unet, device="meta"), to_dict(unet, "Kandinsky3UNet"), os.path.join(folder, "unet"), 0)
    write_module(MoVQ(movq).to("meta"), to_dict(movq, "VQModel"), os.path.join(folder, "movq"), 1)
    write_t5(os.path.join(folder, "text_encoder"), t5, 2)
    write_tokenizer(os.path.join(folder, "tokenizer"))
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(schedulers.KANDINSKY_3_DDPM, f, indent=2)
    with open(os.path.join(folder, "model_index.json"), "w") as f:  # as published (kandinsky3_tech.md §1.1)
        json.dump({"_class_name": "Kandinsky3Pipeline", "_diffusers_version": "0.24.0.dev0",
                   "movq": ["diffusers", "VQModel"], "scheduler": ["diffusers", "DDPMScheduler"],
                   "text_encoder": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "T5Tokenizer"],
                   "unet": ["diffusers", "Kandinsky3UNet"]}, f, indent=2)
    return folder


def workflow(args):
    """The API prompt: loaders → CLIP Text Encode → Kandinsky 3 Sampler → MoVQ Decode → Save Image."""
    from graphs import Graph

    g = Graph()
    unet = g.add("Kandinsky3UNetLoader", unet="kandinsky-3/", weight_dtype=args.weight_dtype)
    clip = g.add("Kandinsky3T5Loader", text_encoder="kandinsky-3/", weight_dtype=args.weight_dtype)
    movq = g.add("Kandinsky2MoVQLoader", movq="kandinsky-3/")
    text = g.add("CLIPTextEncode", clip=clip[0], text=PROMPT)
    latent = g.empty_latent(args.size, args.size)
    sampler = g.add("Kandinsky3Sampler", model=unet[0], positive=text[0], latent_image=latent[0], seed=0,
                    steps=args.steps, cfg=4.0, sampler="checkpoint", denoise=1.0)
    g.save(g.decode(movq[0], sampler[0], args.tile)[0], "k3_memory")
    return g.prompt, {"loaders": [unet.id, clip.id, movq.id], "encode": text.id, "sampler": sampler.id}


def node_names(prompt):
    """{node id: class_type} of an API prompt."""
    return {i: n["class_type"] for i, n in prompt.items()}


def memory(pid):
    """{VmHWM, VmRSS, RssAnon, RssFile} of a process from /proc, bytes."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}


def run_comfyui(args, base, cuda):
    """The workflow on a ComfyUI server whose base directory is `base`; returns the measured figures."""
    from comfy_server import REPO, ComfyServer

    prompt, nodes = workflow(args)
    names = node_names(prompt)
    with ComfyServer(base, pack_dir=REPO, pack_name="comfyui-kandinsky2", cpu=not cuda,
                     extra_args=["--lowvram"] if cuda else []) as server, server.listen() as ws:
        stamps, vram, seen, start, node, by_node = [], 0, 0, time.monotonic(), None, {}
        prompt_id = server.queue(prompt)
        while not ws.for_prompt(prompt_id, ("execution_success", "execution_error", "execution_interrupted")):
            now = time.monotonic()
            stamps += [(now, m) for m in ws.messages[seen:]]
            seen = len(stamps)
            node = next((m["data"]["node"] for _, m in reversed(stamps) if m["type"] == "executing"), None)
            rss = memory(server.process.pid)  # which node the peak falls in, and how much of it is file pages
            if rss["VmRSS"] > by_node.get(node, {}).get("VmRSS", 0):
                by_node[node] = rss
            if cuda:
                (device,) = server._json("GET", "/system_stats")["devices"][:1]
                vram = max(vram, device["vram_total"] - device["vram_free"])
            if now - start > args.timeout:
                server.interrupt(prompt_id)
                raise TimeoutError(f"the ComfyUI run took over {args.timeout} s")
            time.sleep(0.05)
        entry = server.wait(prompt_id, timeout=60)
        stamps += [(time.monotonic(), m) for m in ws.messages[seen:]]
        if entry["status"]["status_str"] != "success":
            return {"error": [m for m in entry["status"]["messages"] if m[0] == "execution_error"]}
        out = figures(stamps, nodes, memory(server.process.pid)["VmHWM"], vram)
        return dict(out, rss_by_node_gb={names.get(n, n): {k: round(v / GB, 2) for k, v in r.items() if k != "VmHWM"}
                                         for n, r in by_node.items()})


def node_durations(stamps):
    """{node id: seconds} from one prompt's (arrival time, message) pairs: each `executing` message to the next."""
    starts = [(t, m["data"]["node"]) for t, m in stamps if m["type"] == "executing"]
    return {node: later - t for (t, node), (later, _) in zip(starts, starts[1:]) if node is not None}


def figures(stamps, nodes, rss, vram):
    """Per-node durations from the `executing` messages, per-step time from the sampler's `progress` messages."""
    duration = node_durations(stamps)
    steps = [t for t, m in stamps if m["type"] == "progress" and m["data"]["node"] == nodes["sampler"]]
    per_step = statistics.median(b - a for a, b in zip(steps, steps[1:])) if len(steps) > 1 else None
    return {"peak_rss_gb": rss / GB, "load_s": sum(duration.get(n, 0) for n in nodes["loaders"]),
            "t5_encode_s": duration.get(nodes["encode"]), "step_s": per_step, "sampler_s": duration.get(nodes["sampler"]),
            "peak_vram_gb": vram / GB if vram else None}


DIFFUSERS_CHILD = """
import json, sys, time, torch, diffusers
folder, size, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cuda, out = torch.cuda.is_available(), {}
try:
    t = time.monotonic()
    pipe = diffusers.Kandinsky3Pipeline.from_pretrained(folder, variant="fp16", torch_dtype=torch.float16)
    if cuda:
        pipe.enable_model_cpu_offload()
    out["load_s"] = time.monotonic() - t
    t = time.monotonic()
    pipe("a red cat sitting on a windowsill, oil painting, high quality", num_inference_steps=steps, height=size,
         width=size, generator=torch.Generator().manual_seed(0))
    out["run_s"] = time.monotonic() - t
except Exception as err:
    out["error"] = f"{type(err).__name__}: {str(err)[:300]}"
out["cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
with open("/proc/self/status") as f:
    out["peak_rss_gb"] = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 2**20
print("RESULT " + json.dumps(out))
"""


def run_diffusers(args, folder):
    """diffusers on the same folder in a child process: figures, or the error (a kill by the OOM killer included)."""
    try:
        done = subprocess.run([sys.executable, "-c", DIFFUSERS_CHILD, folder, str(args.size), str(args.steps)],
                              capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {args.timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        return {"error": f"exit code {done.returncode} (killed by signal {-done.returncode} if negative): "
                         f"{done.stderr.strip()[-300:]}"}
    return json.loads(lines[-1][7:])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny models: a dry run of the script")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "k3_memory"),
                   help="ComfyUI base directory; the weights go to its models/kandinsky/kandinsky-3/")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--weight-dtype", default="fp8_e4m3fn", choices=["default", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"])
    p.add_argument("--tile", type=int, default=0, help="MoVQ Decode tile_size (0: whole, tiles on out-of-memory)")
    p.add_argument("--timeout", type=int, default=6 * 3600)
    p.add_argument("--no-diffusers", action="store_true")
    args = p.parse_args()
    base = args.workdir + ("-tiny" if args.tiny and not args.workdir.endswith("-tiny") else "")
    folder = os.path.join(base, "models", "kandinsky", "kandinsky-3")
    t = time.monotonic()
    write_folder(folder, args.tiny)
    cuda = torch.cuda.is_available()
    print(f"weights in {folder} ({time.monotonic() - t:.0f} s); {'CUDA' if cuda else 'CPU'}; {args.size}², "
          f"{args.steps} steps, {args.weight_dtype}{' (TINY models: a dry run, not the figures)' if args.tiny else ''}")
    ours = run_comfyui(args, base, cuda)
    print("ComfyUI + this pack:", json.dumps(ours, indent=1))
    if not args.no_diffusers:
        print("diffusers:", json.dumps(run_diffusers(args, folder), indent=1))


if __name__ == "__main__":
    main()
