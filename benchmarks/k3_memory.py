"""Kandinsky 3 through the ComfyUI API with full-size random weights: peak memory and time, against diffusers.

    python benchmarks/k3_memory.py                        # full size, fp8 weights, 1024², 25 steps (~30 GB disk)
    python benchmarks/k3_memory.py --size 512 --steps 4   # 512² if a 1024² step takes too long on the CPU
    python benchmarks/k3_memory.py --tiny                 # dry run of the whole script on tiny models (seconds)
    python benchmarks/k3_memory.py --flash --size 512     # Kandinsky 3.1 Flash from the original files, 4 steps

--flash writes random weights in the original 3.1 layout too (`Kandinsky3.1/weights/kandinsky3_flash.pt`, fp32,
12.2 GB, with `flan_ul2_encoder/projection_flash.pt`) and samples them with the Kandinsky 3.1 UNet Loader and the
Kandinsky 3 Sampler's flash sampler (4 unguided UNet calls); the T5 and the MoVQ come from the same kandinsky-3
folder (the same models). diffusers has no pipeline for it, so that side is skipped.

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
import json
import os
import subprocess
import sys
import time

import torch

import harness as H
import k3_original

MEMORY_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")
ORIGINAL = "Kandinsky3.1/weights"  # in models/kandinsky, as ai-forever/Kandinsky3.1 publishes it
FLASH_FILES = ("kandinsky3_flash.pt", "projection_flash.pt")


def workflow(args):
    """The API prompt: loaders → CLIP Text Encode → Kandinsky 3 Sampler → MoVQ Decode → Save Image."""
    from graphs import Graph
    g = Graph()
    if args.flash:
        unet = g.add("Kandinsky3OriginalUNetLoader", unet=f"{ORIGINAL}/{FLASH_FILES[0]}",
                     projection="auto (the published pairing)", weight_dtype=args.weight_dtype, mode="fast")
    else:
        unet = g.add("Kandinsky3UNetLoader", unet="kandinsky-3/", weight_dtype=args.weight_dtype)
    clip = g.add("Kandinsky3T5Loader", text_encoder="kandinsky-3/", weight_dtype=args.weight_dtype)
    movq = g.add("Kandinsky2MoVQLoader", movq="kandinsky-3/")
    text = g.add("CLIPTextEncode", clip=clip[0], text=H.K3_PROMPT)
    latent = g.empty_latent(args.size, args.size)
    sampler = g.add("Kandinsky3Sampler", model=unet[0], positive=text[0], latent_image=latent[0], seed=0,
                    steps=4 if args.flash else args.steps, cfg=4.0, sampler="flash" if args.flash else "checkpoint",
                    denoise=1.0)
    g.save(g.decode(movq[0], sampler[0], args.tile)[0], "k3_memory")
    return g.prompt, {"loaders": [unet.id, clip.id, movq.id], "encode": text.id, "sampler": sampler.id}


def node_names(prompt):
    """{node id: class_type} of an API prompt."""
    return {i: n["class_type"] for i, n in prompt.items()}


def run_comfyui(args, base, cuda):
    """The workflow on a ComfyUI server whose base directory is `base`; returns the measured figures."""
    prompt, nodes = workflow(args)
    names = node_names(prompt)
    with H.comfy_server(base, cuda, ["--lowvram"] if cuda else []) as server, server.listen() as ws:
        stamps, vram, seen, start, node, by_node = [], 0, 0, time.monotonic(), None, {}
        prompt_id = server.queue(prompt)
        while not ws.for_prompt(prompt_id, ("execution_success", "execution_error", "execution_interrupted")):
            now = time.monotonic()
            stamps += [(now, m) for m in ws.messages[seen:]]
            seen = len(stamps)
            node = next((m["data"]["node"] for _, m in reversed(stamps) if m["type"] == "executing"), None)
            # which node the peak falls in, and how much of it is file pages
            rss = H.proc_status(server.process.pid, MEMORY_FIELDS)
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
            return {"error": H.execution_errors(entry)}
        out = figures(stamps, nodes, H.proc_status(server.process.pid, ("VmHWM",))["VmHWM"], vram)
        return dict(out, rss_by_node_gb={names.get(n, n): {k: round(v / H.GB, 2) for k, v in r.items() if k != "VmHWM"}
                                         for n, r in by_node.items()})


def figures(stamps, nodes, rss, vram):
    """Per-node durations from the `executing` messages, per-step time from the sampler's `progress` messages."""
    duration = H.node_durations(stamps)
    steps = [t for t, m in stamps if m["type"] == "progress" and m["data"]["node"] == nodes["sampler"]]
    per_step = H.med([b - a for a, b in zip(steps, steps[1:])]) if len(steps) > 1 else None
    return {"peak_rss_gb": rss / H.GB, "load_s": sum(duration.get(n, 0) for n in nodes["loaders"]),
            "t5_encode_s": duration.get(nodes["encode"]), "step_s": per_step, "sampler_s": duration.get(nodes["sampler"]),
            "peak_vram_gb": vram / H.GB if vram else None}


DIFFUSERS_CHILD = """
import json, sys, time, torch, diffusers
folder, size, steps, prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
cuda, out = torch.cuda.is_available(), {}
try:
    t = time.monotonic()
    pipe = diffusers.Kandinsky3Pipeline.from_pretrained(folder, variant="fp16", torch_dtype=torch.float16)
    if cuda:
        pipe.enable_model_cpu_offload()
    out["load_s"] = time.monotonic() - t
    t = time.monotonic()
    pipe(prompt, num_inference_steps=steps, height=size, width=size, generator=torch.Generator().manual_seed(0))
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
        command = [sys.executable, "-c", DIFFUSERS_CHILD, folder, str(args.size), str(args.steps), H.K3_PROMPT]
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {args.timeout} s"}
    result = H.result_of(done.stdout)
    if result is None:
        return {"error": f"exit code {done.returncode} (killed by signal {-done.returncode} if negative): "
                         f"{done.stderr.strip()[-300:]}"}
    return result


def main():
    """Write the weights once, run this pack through ComfyUI, then diffusers; print the figures of both."""
    p = H.comfy_parser(__doc__, "k3_memory", "the weights go to its models/kandinsky/kandinsky-3/")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--weight-dtype", default="fp8_e4m3fn", choices=H.WEIGHT_DTYPES)
    p.add_argument("--tile", type=int, default=0, help="MoVQ Decode tile_size (0: whole, tiles on out-of-memory)")
    p.add_argument("--timeout", type=int, default=6 * 3600)
    p.add_argument("--no-diffusers", action="store_true")
    p.add_argument("--flash", action="store_true", help="Kandinsky 3.1 Flash from the original files (4 steps)")
    args = p.parse_args()
    base = H.comfy_base(args)
    folder = os.path.join(base, "models", "kandinsky", "kandinsky-3")
    t = time.monotonic()
    H.write_k3_folder(folder, args.tiny)
    if args.flash:
        k3_original.write_weights(os.path.join(base, "models", "kandinsky", ORIGINAL), args.tiny, *FLASH_FILES)
    cuda = torch.cuda.is_available()
    model = "3.1 Flash (original files), 4 steps" if args.flash else f"3.0 (kandinsky-3 folder), {args.steps} steps"
    print(f"weights in {folder} ({time.monotonic() - t:.0f} s); {'CUDA' if cuda else 'CPU'}; {args.size}², "
          f"{model}, {args.weight_dtype}{H.TINY_NOTE if args.tiny else ''}")
    ours = run_comfyui(args, base, cuda)
    print("ComfyUI + this pack:", json.dumps(ours, indent=1))
    if not args.no_diffusers and not args.flash:
        print("diffusers:", json.dumps(run_diffusers(args, folder), indent=1))


if __name__ == "__main__":
    main()
