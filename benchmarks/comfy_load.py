"""Cold load through ComfyUI: time from queueing a prompt to the first sampling step, Kandinsky 3 against SDXL.

    python benchmarks/comfy_load.py                  # full size, warm and cold page cache, 256², 3 steps, 2 repeats
    python benchmarks/comfy_load.py --cold --repeats 3
    python benchmarks/comfy_load.py --tiny           # dry run on tiny models (the server starts take most of it)
    COMFYUI_DIR=.comfyui030/ComfyUI COMFYUI_PYTHON=.comfyui030/venv/bin/python python benchmarks/comfy_load.py --tiny

Both sides run core KSampler (same sampler, scheduler, cfg, seed, steps, latent) in a FRESH ComfyUI server per run,
so the model is cold in ComfyUI; the sides alternate. Random fp16 weights are written once into --workdir:
- ours: the Kandinsky 3 UNet (3.06 B parameters) in a kandinsky-3 folder (no MoVQ: the latent is saved, not decoded)
  → Kandinsky 3 UNet Loader; its text encoder is a stand-in T5 of the published width (Flan-UL2's d_model, heads and
  d_ff) with ONE layer → Kandinsky 3 T5 Loader → CLIP Text Encode;
- core: an SDXL UNet (2.57 B) in ComfyUI's own key layout, built on the meta device inside ComfyUI's python from its
  SDXL model config and checked to be detected as SDXL → Load Diffusion Model (weight_dtype default); its text
  encoders are stand-ins of CLIP-L and CLIP-G → DualCLIPLoader (sdxl) → CLIP Text Encode. ComfyUI builds both CLIPs
  at full depth from its own configs whatever the file holds, and tells them apart by layer keys, so the stand-ins
  hold just those layers (CLIP-L: 0 and 1 of 12; CLIP-G: 30 of 32); the layers missing from the files stay
  uninitialised (the conditioning is meaningless, CLIP-G's half NaN; only its shape and the time matter).
As bench.py does with its CLIP stand-ins, the text encoders are cut down so they cost little on either side; their
time is a row of its own, and the first step is also given without it.

Per run: first step = (arrival of the sampler's first `progress` message) − (its step count × the median time per
step from the later messages) − (time of POST /prompt); text encoder loader + CLIP Text Encode and the UNet loader
node (each node's time from the `executing` messages); step time; per GB of UNet weights, the first step without the
text encoder and the UNet loader. Cache modes: `warm` reads every weight file of the side once before its server
starts, `cold` evicts them from the page cache (fsync + posix_fadvise DONTNEED). --tiny: a tiny Kandinsky 3 UNet and
an SD1.5-like UNet cut to one level (CLIPLoader with the CLIP-L stand-in), at 64². Runs on CUDA when ComfyUI's
python has it (without --cpu), else on the CPU.
"""
import json
import os
import subprocess
import sys
import time
from dataclasses import replace

import harness as H  # first: it puts the repository and tests/ on the path
from comfy_server import COMFYUI_DIR, COMFYUI_PYTHON
from graphs import Graph
from kandinsky_core.kandinsky3.t5 import FLAN_UL2
from kandinsky_core.kandinsky3.tiny_text import T5_TINY
from kandinsky_core.kandinsky3.unet import UNET3, UNET3_TINY

K3 = "kandinsky-3-standin"  # under models/kandinsky/
CORE_UNET = "sdxl-unet-random.safetensors"  # under models/diffusion_models/
CLIPS = {"clip_l": "clip-l-standin.safetensors", "clip_g": "clip-g-standin.safetensors"}  # under models/text_encoders/
# The layers each stand-in holds: the keys ComfyUI tells CLIP-L (layers 0 and 1) and CLIP-G (layer 30) apart by.
CLIP_LAYERS = {"clip_l": (0, 1), "clip_g": (30,)}
SAMPLER, SCHEDULER, CFG = "euler", "normal", 4.0
GB = 1e9  # decimal, as the published sizes (K3 6.1 GB, SDXL 5.1 GB fp16)
# The SDXL UNet layout besides the keys ComfyUI recognises SDXL by (supported_models.SDXL.unet_config), as its
# detection reads it from a published SDXL file; the tiny one is an SD1.5 UNet cut to one level.
CORE_LAYOUT = {"in_channels": 4, "out_channels": 4, "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
               "transformer_depth_middle": 10, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
               "use_spatial_transformer": True, "legacy": False, "num_classes": "sequential", "image_size": 32,
               "use_checkpoint": False, "use_temporal_resblock": False}
TINY_LAYOUT = {"in_channels": 4, "out_channels": 4, "num_res_blocks": [1], "channel_mult": [1],
               "transformer_depth": [1], "transformer_depth_middle": 1, "transformer_depth_output": [1, 1],
               "use_spatial_transformer": True, "legacy": False, "image_size": 32, "use_checkpoint": False,
               "use_temporal_resblock": False}

# Runs in ComfyUI's python, in its tree: the shapes of ComfyUI's own UNet and CLIP modules, and its verdict on the UNet.
SHAPES_CHILD = """
import json, sys
sys.path.insert(0, ".")
from comfy.cli_args import args
args.cpu = True  # shapes only, on the meta device
import torch, comfy.model_detection, comfy.sd1_clip, comfy.sdxl_clip, comfy.supported_models
target, layout, clips = getattr(comfy.supported_models, sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3].split(",")
unet = target({**target.unet_config, **layout}).get_model({}, device="meta").diffusion_model.state_dict()
detected = comfy.model_detection.model_config_from_unet(unet, "")
modules = {"clip_l": comfy.sd1_clip.SDClipModel, "clip_g": comfy.sdxl_clip.SDXLClipG}
shapes = {name: {k: list(t.shape) for k, t in modules[name](device="meta").transformer.state_dict().items()}
          for name in clips}
print("RESULT " + json.dumps({"unet": {k: list(t.shape) for k, t in unet.items()}, "clips": shapes,
                              "detected": type(detected).__name__, "cuda": torch.cuda.is_available()}))
"""


def core_shapes(tiny):
    """ComfyUI's SDXL (--tiny: SD1.5-like) UNet and CLIP shapes, from its own python; refuses a UNet it misdetects."""
    target, layout, clips = ("SD15", TINY_LAYOUT, ["clip_l"]) if tiny else ("SDXL", CORE_LAYOUT, list(CLIPS))
    done = subprocess.run([COMFYUI_PYTHON, "-c", SHAPES_CHILD, target, json.dumps(layout), ",".join(clips)],
                          cwd=COMFYUI_DIR, capture_output=True, text=True, timeout=600)
    out = H.result_of(done.stdout)
    if out is None:
        raise RuntimeError(f"ComfyUI's python could not build the {target} shapes:\n{done.stderr[-2000:]}")
    if out["detected"] != target:
        raise RuntimeError(f"ComfyUI detects the random {target} UNet as {out['detected']}, not {target}")
    return out


def write_core(models, tiny):
    """The core side's UNet and CLIP stand-ins (skipped when present); returns CUDA availability."""
    out = core_shapes(tiny)
    unet = os.path.join(models, "diffusion_models", CORE_UNET)
    if not os.path.isfile(unet):
        for seed, (name, shapes) in enumerate(out["clips"].items(), 10):
            keep = {k: s for k, s in shapes.items()
                    if ".layers." not in k or any(f".layers.{n}." in k for n in CLIP_LAYERS[name])}
            H.save_random(keep, os.path.join(models, "text_encoders", CLIPS[name]), seed)
        H.save_random(out["unet"], unet + ".part", 3)
        os.replace(unet + ".part", unet)  # last: its presence means the side is complete
    return out["cuda"]


def write_ours(folder, tiny):
    """A kandinsky-3 folder with the UNet, a one-layer stand-in T5, tokenizer and scheduler (skipped when present)."""
    done = os.path.join(folder, "written")
    if os.path.isfile(done):
        return
    H.write_k3_parts(folder, UNET3_TINY if tiny else UNET3, replace(T5_TINY if tiny else FLAN_UL2, num_layers=1))
    open(done, "w").close()


def side_files(models, side, tiny):
    """{"unet": [...], "text": [...]}: the weight files one side's run reads."""
    if side == "ours":
        folder = os.path.join(models, "kandinsky", K3)
        return {"unet": H.weight_files(os.path.join(folder, "unet")),
                "text": H.weight_files(os.path.join(folder, "text_encoder"))}
    clips = ["clip_l"] if tiny else list(CLIPS)
    return {"unet": [os.path.join(models, "diffusion_models", CORE_UNET)],
            "text": [os.path.join(models, "text_encoders", CLIPS[c]) for c in clips]}


def workflow(side, args):
    """The API prompt: UNet loader, text encoder loader → CLIP Text Encode → KSampler → Save Latent."""
    g = Graph()
    if side == "ours":
        unet = g.add("Kandinsky3UNetLoader", unet=f"{K3}/", weight_dtype=args.weight_dtype)
        clip = g.add("Kandinsky3T5Loader", text_encoder=f"{K3}/", weight_dtype=args.weight_dtype)
    else:
        unet = g.add("UNETLoader", unet_name=CORE_UNET, weight_dtype="default")
        clip = (g.add("CLIPLoader", clip_name=CLIPS["clip_l"], type="stable_diffusion") if args.tiny else
                g.add("DualCLIPLoader", clip_name1=CLIPS["clip_l"], clip_name2=CLIPS["clip_g"], type="sdxl"))
    text = g.add("CLIPTextEncode", clip=clip[0], text=H.K3_PROMPT)
    latent = g.empty_latent(args.size, args.size)
    sampler = g.add("KSampler", model=unet[0], positive=text[0], negative=text[0], latent_image=latent[0], seed=0,
                    steps=args.steps, cfg=CFG, sampler_name=SAMPLER, scheduler=SCHEDULER, denoise=1.0)
    g.save_latent(sampler[0], "comfy_load")
    return g.prompt, {"unet": unet.id, "clip": clip.id, "encode": text.id, "sampler": sampler.id}


class StampedMessages(list):
    """The Listener's message list, stamped with time.monotonic() as each message arrives."""

    def __init__(self):
        super().__init__()
        self.times = []

    def append(self, message):
        """Keep `message` with its arrival time."""
        self.times.append(time.monotonic())
        super().append(message)


def timings(stamped, nodes, posted):
    """Seconds: first step (from POST), UNet loader, text encoder loader + encode, step, from one prompt's
    (arrival time, message) pairs."""
    took = H.node_durations(stamped)
    # Newer ComfyUI throttles progress messages (e.g. steps 1 and 3 of 3): time per step from the step counts.
    progress = [(t, m["data"]["value"]) for t, m in stamped
                if m["type"] == "progress" and m["data"].get("node") == nodes["sampler"]]
    per_step = [(b - a) / (vb - va) for (a, va), (b, vb) in zip(progress, progress[1:]) if vb > va]
    if not per_step:
        raise RuntimeError(f"the sampler sent {len(progress)} progress messages; run at least 2 steps")
    step = H.med(per_step)
    (t, value), *_ = progress
    first, text = t - value * step - posted, took.get(nodes["clip"], 0) + took.get(nodes["encode"], 0)
    return {"first_step_s": first, "text_s": text, "without_text_s": first - text,
            "unet_loader_s": took.get(nodes["unet"]), "step_s": step}


def run(side, args, base, files, cold):
    """One prompt of `side` in a fresh server after setting the page cache; its timings."""
    H.set_page_cache(files["unet"] + files["text"], cold)
    prompt, nodes = workflow(side, args)
    with H.comfy_server(base, args.cuda) as server, server.listen() as ws:
        ws.messages = StampedMessages()
        posted = time.monotonic()
        prompt_id = server.queue(prompt)
        ws.wait_for(prompt_id, timeout=args.timeout)
        entry = server.wait(prompt_id, timeout=60)
        if entry["status"]["status_str"] != "success":
            raise RuntimeError(f"{side} failed: {json.dumps(H.execution_errors(entry))[:2000]}\n{server.log_tail()}")
        stamped = [(t, m) for t, m in zip(ws.messages.times, ws.messages)
                   if (m.get("data") or {}).get("prompt_id") == prompt_id]
    return timings(stamped, nodes, posted)


def rows(results, args, sizes, cuda):
    """bench.py-style rows: per cache mode, medians of ours, core, and their ratio."""
    def line(mode, label, key, per_gb=False):
        unit, scale = (" s/GB", sizes) if per_gb else ("s", {"ours": 1, "core": 1})
        o, c = (H.med([r[key] for r in results[mode][s]]) / scale[s] for s in ("ours", "core"))
        return f"  {label} | ours {o:.3f}{unit} | core {c:.3f}{unit} | ratio {o / c:.2f}"

    out = []
    for mode in results:
        out.append(f"{mode} page cache, cold model (fresh server per run), {args.size}², {args.steps} steps {SAMPLER}/"
                   f"{SCHEDULER} cfg {CFG}, {'CUDA' if cuda else 'CPU'}, medians of {args.repeats}; ours Kandinsky 3 "
                   f"UNet ({sizes['ours']:.2f} GB), core {'SD1.5-like' if args.tiny else 'SDXL'} UNet "
                   f"({sizes['core']:.2f} GB){H.TINY_NOTE if args.tiny else ''}")
        out += [line(mode, "POST /prompt → first sampling step", "first_step_s"),
                line(mode, "  of which text encoder loader + CLIP Text Encode (stand-ins)", "text_s"),
                line(mode, "first sampling step without the text encoder", "without_text_s"),
                line(mode, "UNet loader node", "unet_loader_s"),
                line(mode, "sampling step", "step_s"),
                line(mode, "first step without the text encoder, per GB of UNet weights", "without_text_s", True),
                line(mode, "UNet loader node, per GB of UNet weights", "unet_loader_s", True)]
    return out


def main():
    """Write both sides' weights once, run them alternately in fresh servers per cache mode, print the rows."""
    p = H.comfy_parser(__doc__, "comfy_load", "the weights go under its models/")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--size", type=int, help="image size, latent size / 8 (default 256; --tiny: 64)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--cold", action="store_true", help="only cold page cache runs")
    p.add_argument("--warm", action="store_true", help="only warm page cache runs")
    p.add_argument("--weight-dtype", default="default", choices=H.WEIGHT_DTYPES,
                   help="our loaders' weight_dtype (core's Load Diffusion Model stays at default)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per prompt")
    args = p.parse_args()
    args.size = args.size or (64 if args.tiny else 256)
    base = H.comfy_base(args)
    models = os.path.join(base, "models")
    t = time.monotonic()
    args.cuda = write_core(models, args.tiny)
    write_ours(os.path.join(models, "kandinsky", K3), args.tiny)
    files = {side: side_files(models, side, args.tiny) for side in ("ours", "core")}
    sizes = {side: sum(os.path.getsize(path) for path in paths["unet"]) / GB for side, paths in files.items()}
    print(f"weights in {models} ({time.monotonic() - t:.0f} s); ComfyUI {COMFYUI_DIR}", flush=True)
    modes = [m for m, only in (("warm", args.warm), ("cold", args.cold)) if only or not (args.warm or args.cold)]
    results = {mode: {"ours": [], "core": []} for mode in modes}
    for i in range(args.repeats):
        for mode in modes:
            for side in ("ours", "core") if i % 2 == 0 else ("core", "ours"):
                r = run(side, args, base, files[side], mode == "cold")
                results[mode][side].append(r)
                figures = ", ".join(f"{k} {v:.3f}" for k, v in r.items())
                print(f"  {mode} {side}: {figures}", file=sys.stderr, flush=True)
    print("\n".join(rows(results, args, sizes, args.cuda)))


if __name__ == "__main__":
    main()
