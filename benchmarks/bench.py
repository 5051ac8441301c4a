"""kandinsky_core against diffusers on full-size Kandinsky 2.2 models with the same random weights.

    python benchmarks/bench.py            # --quick on CPU, --full on a GPU
    python benchmarks/bench.py --full --sizes 256,512,768
    python benchmarks/bench.py --only load --models "2.2 UNet"   # load times and anonymous peak memory only
    python benchmarks/bench.py --only k3_unet,k3_t5              # Kandinsky 3 UNet step and T5 encode (bench_k3.py)
    python benchmarks/bench.py --only load --models "3 UNet,3 T5"
    python benchmarks/bench.py --only k3_unet,k3_t5,load --models "3 UNet,3 T5" --k3-tiny   # K3 dry run (tiny models)

Random weights are written once, diffusers `save_pretrained` layout, into --workdir; both sides load them from there
(that load is the load-time figure; `--only load` measures each MODELS entry at its file's dtype, converted, and
from a cold page cache). Every measurement runs in a fresh child process, so peak memory belongs to one
side only; the two sides alternate. The prior's CLIP towers are stand-ins of the published width and one layer: both
sides run the same transformers code for them, so they would only add the same seconds and gigabytes to both.

--quick runs few decoder and prior steps and extrapolates the per-step median to the full step count; those rows say
"extrapolated". Needs the test extra (diffusers). The Kandinsky 3 parts (k3_unet, k3_t5, the "3 UNet" and "3 T5"
load rows) are in bench_k3.py: kandinsky-3's published layout of random weights, one side per process.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import bench_k3  # noqa: E402  the Kandinsky 3 parts, in their own file
bench_k3.register(sys.modules[__name__])  # they use this module's helpers
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}
PROMPT = "a red cat, oil painting"


class PeakMemory:
    """Peak resident memory since `reset`, polled from /proc in a thread: all of it (RSS) and the anonymous part (what
    the process really owns; RSS also counts page cache of memory-mapped files, which the kernel drops at will), plus
    CUDA max allocated."""

    def __init__(self, device):
        self.device, self._stop = device, False
        self.peak = self.now()
        threading.Thread(target=self._poll, daemon=True).start()

    @staticmethod
    def now():
        """{"rss", "anon"} in bytes, from /proc/self/status."""
        fields = {}
        with open("/proc/self/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "RssAnon"):
                    fields[name] = int(value.split()[0]) * 1024
        return {"rss": fields["VmRSS"], "anon": fields["RssAnon"]}

    def _poll(self):
        while not self._stop:
            now = self.now()
            self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}
            time.sleep(0.002)

    def reset(self):
        """Start a new peak from now."""
        self.peak = self.now()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def read(self):
        """{"rss_gb", "anon_gb", "cuda_gb"} peaks since the last reset."""
        now = self.now()
        self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}
        cuda = torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else None
        return {"rss_gb": self.peak["rss"] / 2**30, "anon_gb": self.peak["anon"] / 2**30, "cuda_gb": cuda}


def sync(device):
    """Wait for queued GPU work so wall-clock times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    """(result, seconds) of `fn()`."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def fast_dtype(device):
    """Name of kandinsky_core's fastest native dtype on `device`."""
    from kandinsky_core.speed import fast_dtype as core_fast_dtype
    return {v: k for k, v in DTYPES.items()}[core_fast_dtype(device)]


# ---------------------------------------------------------------- weights on disk

def write_weights(root):
    """Random full-size 2.2 decoder (UNet, MoVQ, DDPM) and prior (prior, stand-in towers) folders, once."""
    import diffusers
    from dataclasses import asdict
    from transformers import (CLIPImageProcessorPil, CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer,
                              CLIPVisionConfig, CLIPVisionModelWithProjection)
    from kandinsky_core import schedulers
    from kandinsky_core.config import to_dict
    from kandinsky_core.images import KANDINSKY_CLIP_PREPROCESSOR
    from kandinsky_core.movq import MOVQ
    from kandinsky_core.prior import PRIOR_22
    from kandinsky_core.tiny_tokenizers import tiny_clip_text_config, tiny_clip_vision_config, write_clip_tokenizer
    from kandinsky_core.unet import UNET_22

    def plain(d):
        return {k: v for k, v in d.items() if k != "_class_name"}

    decoder, prior = os.path.join(root, "decoder"), os.path.join(root, "prior")
    if not os.path.isfile(os.path.join(decoder, "model_index.json")):
        torch.manual_seed(0)
        unet = diffusers.UNet2DConditionModel(**asdict(UNET_22), class_embed_type=None)
        movq = diffusers.VQModel(**plain(to_dict(MOVQ, "VQModel")))
        scheduler = diffusers.DDPMScheduler.from_config(plain(schedulers.KANDINSKY_2_2_DDPM))
        diffusers.KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq).save_pretrained(decoder)
        del unet, movq
    if not os.path.isfile(os.path.join(prior, "model_index.json")):
        torch.manual_seed(1)
        model = diffusers.PriorTransformer.from_config(plain(to_dict(PRIOR_22, "PriorTransformer")))
        with torch.no_grad():  # left at zeros/ones by diffusers' init, which would make the prior trivial
            for p in (model.positional_embedding, model.prd_embedding, model.clip_mean):
                p.normal_(0, 0.02)
        dim = PRIOR_22.embedding_dim
        text = CLIPTextModelWithProjection(CLIPTextConfig(**{**tiny_clip_text_config(), "hidden_size": dim, "projection_dim": dim,
                                                             "num_attention_heads": dim // 64, "num_hidden_layers": 1}))
        image = CLIPVisionModelWithProjection(CLIPVisionConfig(**{**tiny_clip_vision_config(), "projection_dim": dim}))
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(os.path.join(root, "clip-tokenizer")))
        diffusers.KandinskyV22PriorPipeline(
            prior=model, image_encoder=image, text_encoder=text, tokenizer=tokenizer,
            scheduler=diffusers.UnCLIPScheduler.from_config(plain(schedulers.KANDINSKY_PRIOR_UNCLIP)),
            image_processor=CLIPImageProcessorPil(**KANDINSKY_CLIP_PREPROCESSOR)).save_pretrained(prior)
    return decoder, prior


# ---------------------------------------------------------------- child-process measurements

def _ours_component(kind):
    def load(path, dtype, device):
        from kandinsky_core.loading import load_component
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
# names its folder (a key of the folders write_weights returns) and how either side loads it from a path in there.
MODELS = {
    "2.2 UNet": {"folder": "decoder", "path": "unet", "ours": _ours_component("unet"),
                 "theirs": _theirs_component("UNet2DConditionModel"), "preload": _preload("UNet2DConditionModel")},
    "2.2 prior": {"folder": "prior", "path": "prior", "ours": _ours_component("prior"),
                  "theirs": _theirs_component("PriorTransformer"), "preload": _preload("PriorTransformer")},
    # fp16 files: their own load cases; "preload" imports what a side would otherwise import inside its timing
    "3 UNet": {"folder": "k3", "path": "unet", "ours": bench_k3.ours_unet, "theirs": bench_k3.theirs_unet,
               "cases": bench_k3.load_cases, "preload": bench_k3.preload},
    "3 T5": {"folder": "k3", "path": "text_encoder", "ours": bench_k3.ours_t5, "theirs": bench_k3.theirs_t5,
             "cases": bench_k3.load_cases, "preload": bench_k3.preload, "oracle": "transformers"},
}


def model_path(spec, name, path=None):
    """Absolute path of a MODELS entry (or of `path` inside its folder)."""
    entry = MODELS[name]
    return os.path.join(spec["folders"][entry["folder"]], path or entry["path"])


def load_unet(side, folder, dtype, device):
    """One side's UNet from the decoder folder."""
    return MODELS["2.2 UNet"][side](os.path.join(folder, "unet"), dtype, device)


def unet_step(side, unet, x, t, emb):
    """One guided UNet forward (batch 2: negative and positive)."""
    if side == "ours":
        return unet(x, t, emb)
    return unet(x, t, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": emb}).sample


def matmul_peak(dtype, device, n=4096, repeats=3):
    """Best FLOP/s of an n x n matmul in `dtype`: the machine's practical peak."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    torch.mm(a, b)
    return max(2 * n ** 3 / timed(lambda: torch.mm(a, b), device)[1] for _ in range(repeats))


CALLS = {"ours": "ours", "fast": "ours", "theirs": "theirs"}  # how each side of child_unet is called


@torch.no_grad()
def child_unet(spec, device, memory):
    """Guided UNet step times, all sides alternating in this one process, plus FLOPs, matmul peak and how far our
    opt-in fast mode (`speed.optimize`: channels_last) lands from the exact result."""
    from torch.utils.flop_counter import FlopCounterMode
    from kandinsky_core.speed import optimize
    dtype = DTYPES[spec["dtype"]]
    unets = {side: load_unet(side, spec["decoder"], dtype, device) for side in ("ours", "theirs")}
    unets["fast"] = optimize(load_unet("ours", spec["decoder"], dtype, device))
    results = {"matmul_peak": matmul_peak(dtype, device), "sizes": {}}
    for size in spec["sizes"]:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 4, size // 8, size // 8, generator=g).to(device, dtype)
        emb = torch.randn(2, 1280, generator=g).to(device, dtype)
        t = torch.tensor(500, device=device)
        counter = FlopCounterMode(display=False)
        with counter:  # also the warm-up of our side
            out = {"ours": unet_step("ours", unets["ours"], x, t, emb)}
        out.update({side: unet_step(CALLS[side], unets[side], x, t, emb) for side in ("theirs", "fast")})
        exact = out["ours"].float()
        times = {side: [] for side in unets}
        for _ in range(spec["repeats"]):
            for side in unets:
                times[side].append(timed(lambda: unet_step(CALLS[side], unets[side], x, t, emb), device)[1])
        results["sizes"][size] = {"flops": counter.get_total_flops(), **times,
                                  "bit_exact": torch.equal(out["ours"], out["theirs"]),
                                  "fast_distance": ((out["fast"].float() - exact).norm() / exact.norm()).item()}
    return results


def _step_clock(device):
    """A list that a callback appends a synced timestamp to at every step."""
    stamps = []

    def tick(*args):
        sync(device)
        stamps.append(time.perf_counter())
        return args[-1] if len(args) == 4 else None  # diffusers expects its callback_kwargs back
    return stamps, tick


def _extrapolate(total, stamps, steps):
    """(time for `steps` steps, per-step median) from a run of len(stamps) steps that took `total` seconds."""
    per_step = statistics.median(b - a for a, b in zip(stamps, stamps[1:])) if len(stamps) > 1 else total
    return total + (steps - len(stamps)) * per_step, per_step


def _run_ours(spec, device, dtype, g, clocks):
    from kandinsky_core import decoder_pipeline, prior_pipeline
    from kandinsky_core.loading import load_decoder_models, load_prior_models, read_scheduler_config
    from kandinsky_core.schedulers import dpm_solver_from
    from kandinsky_core.speed import optimize
    (prior_models, decoder), load_s = timed(lambda: (load_prior_models(spec["prior"], dtype=dtype, device=device),
                                                     load_decoder_models(spec["decoder"], dtype=dtype, device=device)), device)
    if spec.get("optimize"):
        optimize(decoder.unet)
        optimize(decoder.movq)
    scheduler = dpm_solver_from(read_scheduler_config(spec["decoder"])) if spec["sampler"] == "dpm++" else None
    (emb, neg), prior_s = timed(lambda: prior_pipeline.sample_prior(
        prior_models, PROMPT, steps=spec["prior_run_steps"], generator=g, callback=clocks[0][1]), device)
    _, decoder_s = timed(lambda: decoder_pipeline.text_to_image(
        decoder, emb, neg, height=spec["size"], width=spec["size"], steps=spec["run_steps"], generator=g,
        scheduler=scheduler, callback=clocks[1][1]), device)
    return load_s, prior_s, decoder_s


def _run_theirs(spec, device, dtype, g, clocks):
    import diffusers
    kw = {"torch_dtype": dtype}
    (prior_pipe, pipe), load_s = timed(lambda: (
        diffusers.KandinskyV22PriorPipeline.from_pretrained(spec["prior"], **kw).to(device),
        diffusers.KandinskyV22Pipeline.from_pretrained(spec["decoder"], **kw).to(device)), device)
    prior_pipe.set_progress_bar_config(disable=True)
    pipe.set_progress_bar_config(disable=True)
    out, prior_s = timed(lambda: prior_pipe(PROMPT, num_inference_steps=spec["prior_run_steps"], generator=g,
                                            callback_on_step_end=clocks[0][1]), device)
    _, decoder_s = timed(lambda: pipe(out.image_embeds, out.negative_image_embeds, height=spec["size"],
                                      width=spec["size"], num_inference_steps=spec["run_steps"], generator=g,
                                      callback_on_step_end=clocks[1][1]), device)
    return load_s, prior_s, decoder_s


@torch.no_grad()
def child_text_to_image(spec, device, memory):
    """Load prior + decoder from disk, then prompt → embeddings → image; times extrapolated to the full step counts."""
    dtype = DTYPES[spec["dtype"]]
    clocks = (_step_clock(device), _step_clock(device))
    run = _run_ours if spec["side"] == "ours" else _run_theirs
    load_s, prior_s, decoder_s = run(spec, device, dtype, torch.Generator().manual_seed(0), clocks)
    prior_total, _ = _extrapolate(prior_s, clocks[0][0], spec["prior_steps"])
    decoder_total, per_step = _extrapolate(decoder_s, clocks[1][0], spec["steps"])
    return {"load_s": load_s, "prior_s": prior_total, "decoder_s": decoder_total, "step_s": per_step,
            "total_s": prior_total + decoder_total, **memory.read()}


@torch.no_grad()
def child_movq(spec, device, memory):
    """MoVQ decode of random latents at one size: memory above the loaded model, and time."""
    dtype = DTYPES[spec["dtype"]]
    if spec["side"] == "theirs":
        import diffusers
        movq = diffusers.VQModel.from_pretrained(spec["decoder"], subfolder="movq", torch_dtype=dtype).to(device).eval()
        decode = lambda z: movq.decode(z, force_not_quantize=True).sample
    else:
        from kandinsky_core import tiling
        from kandinsky_core.loading import load_component
        movq = load_component(os.path.join(spec["decoder"], "movq"), "movq", dtype=dtype, device=device)
        tile = spec.get("tile")
        decode = (lambda z: movq.decode(z)) if tile is None else (lambda z: tiling.decode_tiled(movq, z, tile, tile // 4))
    z = torch.randn(1, 4, spec["size"] // 8, spec["size"] // 8, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    memory.reset()
    base = memory.read()
    times = [timed(lambda: decode(z), device)[1] for _ in range(spec["repeats"])]
    peak = memory.read()
    return {"times": times, "rss_gb": peak["rss_gb"] - base["rss_gb"],
            "cuda_gb": None if peak["cuda_gb"] is None else peak["cuda_gb"] - base["cuda_gb"]}


@torch.no_grad()
def child_solver(spec, device, memory):
    """Final latents from one starting noise: ours DPM++ 25 and diffusers' DDPM / DDIM 100 against a 1000-step DDIM."""
    import diffusers
    from kandinsky_core import decoder_pipeline as D, schedulers
    from kandinsky_core.decoder_pipeline import DecoderModels
    from kandinsky_core.loading import load_decoder_models
    if spec["decoder"] is None:  # --quick: a tiny UNet with diffusers' default init; the full model takes ~1000 steps too long
        from dataclasses import asdict
        from kandinsky_core.movq import MOVQ_TINY, MoVQ
        from kandinsky_core.unet import UNET_22_TINY, UNet
        torch.manual_seed(0)
        their_unet = diffusers.UNet2DConditionModel(**asdict(UNET_22_TINY), class_embed_type=None).eval()
        ours = DecoderModels(UNet(UNET_22_TINY).eval(), MoVQ(MOVQ_TINY).eval(), None)
        ours.unet.load_state_dict(their_unet.state_dict())
        dim = UNET_22_TINY.image_embed_dim
    else:
        ours = load_decoder_models(spec["decoder"], device=device)
        their_unet = diffusers.UNet2DConditionModel.from_pretrained(spec["decoder"], subfolder="unet").to(device).eval()
        dim = 1280
    size, g = spec["size"], torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, size // 8, size // 8, generator=g).to(device)
    emb, neg = (torch.randn(1, dim, generator=g).to(device) for _ in range(2))
    ode = {**schedulers.KANDINSKY_2_2_DDPM, "clip_sample": False}
    cond = D.conditioning(ours, emb, neg, None, None, 1, 4.0)

    def ours_run(scheduler, steps):
        return D.sample_text_to_image(ours, cond, noise.shape, steps=steps, guidance_scale=4.0, latents=noise,
                                      scheduler=scheduler, generator=torch.Generator().manual_seed(1))

    def theirs_run(cls, config, steps):
        scheduler = getattr(diffusers, cls).from_config({k: v for k, v in config.items() if k != "_class_name"})
        # output_type="latent" never runs the MoVQ; the pipeline only reads its 8x scale factor from the config.
        movq = diffusers.VQModel(block_out_channels=(8,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
                                 up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8)
        pipe = diffusers.KandinskyV22Pipeline(unet=their_unet, scheduler=scheduler, movq=movq)
        pipe.set_progress_bar_config(disable=True)
        return pipe(emb, neg, height=size, width=size, num_inference_steps=steps, latents=noise.clone(),
                    output_type="latent", generator=torch.Generator().manual_seed(1)).images

    reference = ours_run(schedulers.DDIMScheduler.from_config({**ode, "steps_offset": 0}), 1000)  # 1000 steps need offset 0
    runs = {"ours DPM++(2M) Karras, 25 steps": ours_run(schedulers.dpm_solver_from(ode), 25),
            "diffusers DDIM, 100 steps": theirs_run("DDIMScheduler", ode, 100),
            "diffusers DDPM (checkpoint config), 100 steps": theirs_run("DDPMScheduler", schedulers.KANDINSKY_2_2_DDPM, 100)}
    return {name: ((x.float() - reference).norm() / reference.norm()).item() for name, x in runs.items()}


def drop_page_cache(path):
    """Evict a file (or every file in a folder) from the page cache, for a cold-cache load."""
    files = [path] if os.path.isfile(path) else [os.path.join(path, n) for n in os.listdir(path)]
    for file in files:
        with open(file, "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _first_pass(model, device):
    """Read every weight once: a memory-mapped load only pays for its pages here."""
    return timed(lambda: sum(float(p.float().sum()) for p in model.state_dict().values()), device)[1]


@torch.no_grad()
def child_load(spec, device, memory):
    """One load of a MODELS entry: wall and CPU seconds, peak RSS and anonymous memory above the start."""
    dtype = DTYPES.get(spec["dtype"])
    path = model_path(spec, spec["model"], spec.get("file"))
    import diffusers  # noqa: F401  imported by both sides so neither pays its import inside the timing
    import kandinsky_core.loading  # noqa: F401
    MODELS[spec["model"]].get("preload", lambda: None)()
    if spec["cold"]:
        drop_page_cache(path)
    memory.reset()
    base, cpu = memory.read(), time.process_time()
    model, load_s = timed(lambda: MODELS[spec["model"]][spec["side"]](path, dtype, device), device)
    cpu, peak = time.process_time() - cpu, memory.read()
    sizes = [t.numel() * t.element_size() for t in model.state_dict().values()]
    return {"load_s": load_s, "cpu_s": cpu, "touch_s": _first_pass(model, device), "model_gb": sum(sizes) / 2**30,
            "largest_gb": max(sizes) / 2**30, "anon_gb": peak["anon_gb"] - base["anon_gb"],
            "rss_gb": peak["rss_gb"] - base["rss_gb"], "cuda_gb": peak["cuda_gb"]}


CHILDREN = {"load": child_load, "unet": child_unet, "text_to_image": child_text_to_image, "movq": child_movq, "solver": child_solver,
            **bench_k3.CHILDREN}


def child_main(spec):
    """Run one measurement; print its JSON result as the last stdout line."""
    device = torch.device(spec["device"])
    memory = PeakMemory(device)
    result = CHILDREN[spec["task"]](spec, device, memory)
    print(json.dumps(result))


def child(spec):
    """Run a measurement in a fresh interpreter (so its peak memory is its own) and return its result."""
    label = " ".join(str(spec[k]) for k in ("task", "model", "side", "dtype", "size", "sampler", "file") if spec.get(k))
    label += " (cold cache)" if spec.get("cold") else ""
    print(f"  running {label} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                         stdout=subprocess.PIPE, text=True, check=True)
    print(f"    done in {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the run and the table

class Table(list):
    """Rows of the result table, each printed as soon as it is measured."""

    def append(self, row):
        """Keep and print one row."""
        super().append(row)
        print(row, flush=True)


def med(xs):
    """Median."""
    return statistics.median(xs)


def fmt_gb(x):
    """Gigabytes, or '-'."""
    return "-" if x is None else f"{x:.2f}"


def fp16_copy(spec, name):
    """The entry's weights as an fp16 file beside the fp32 one (diffusers' "fp16" variant naming), written once."""
    folder = model_path(spec, name)
    path = os.path.join(folder, "diffusion_pytorch_model.fp16.safetensors")
    if not os.path.isfile(path):
        from safetensors.torch import save_file
        from kandinsky_core.loading import iter_tensors, weights_path
        save_file(dict(iter_tensors(weights_path(folder), dtype=torch.float16)), path)
    return os.path.relpath(path, spec["folders"][MODELS[name]["folder"]])


def load_cases(args, base, name):
    """(label, ours spec, [diffusers specs to compare with]) for one MODELS entry: same dtype, converting, cold cache."""
    fast = "bf16" if args.device.type == "cuda" or fast_dtype(args.device) == "bf16" else "fp16"
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


def bench_load(args, base, rows):
    """Load rows per MODELS entry: medians of alternating runs, each in a fresh process, with anonymous peak memory."""
    for name in args.models:
        cases = MODELS[name].get("cases", load_cases)(args, base, name)
        oracle = MODELS[name].get("oracle", "diffusers")
        specs = {json.dumps(s, sort_keys=True): s for _, ours, theirs in cases for s in [ours] + theirs}
        runs = {key: [] for key in specs}
        for _ in range(args.repeats):
            for key, spec in specs.items():  # every case's runs interleave with every other's
                runs[key].append(child(spec))
        got = {key: {k: (None if rs[0][k] is None else med([r[k] for r in rs])) for k in rs[0]} for key, rs in runs.items()}
        first = got[next(iter(got))]
        rows.append(f"load {name} ({first['model_gb']:.2f} GB as {cases[0][1]['dtype']}), {args.device}, medians of {args.repeats}; "
                    "'+pass' adds one read of every weight, where a memory-mapped load pays for its pages")
        for label, ours, theirs in cases:
            o = got[json.dumps(ours, sort_keys=True)]
            bound = o["model_gb"] + o["largest_gb"]
            line = (f"  {label} | ours {o['load_s']:.2f}s (CPU {o['cpu_s']:.2f}s, +pass {o['load_s'] + o['touch_s']:.2f}s), "
                    f"peak anon +{o['anon_gb']:.2f} GB (model {o['model_gb']:.2f} + largest tensor {o['largest_gb']:.2f} "
                    f"= {bound:.2f}: {'within' if o['anon_gb'] <= bound else 'OVER'}), RSS +{o['rss_gb']:.2f} GB")
            for t in theirs:
                t_got = got[json.dumps(t, sort_keys=True)]
                line += (f" | {oracle} {t['dtype']} {t_got['load_s']:.2f}s (CPU {t_got['cpu_s']:.2f}s, +pass "
                         f"{t_got['load_s'] + t_got['touch_s']:.2f}s), anon +{t_got['anon_gb']:.2f} GB: ratio "
                         f"{o['load_s'] / t_got['load_s']:.2f} (+pass {(o['load_s'] + o['touch_s']) / (t_got['load_s'] + t_got['touch_s']):.2f})")
            rows.append(line + (f", CUDA {o['cuda_gb']:.2f} GB" if o["cuda_gb"] is not None else ""))


def bench_unet(args, base, rows):
    """UNet step rows: per (dtype, sizes) case, medians, ratio, FLOP/s against the matmul peak."""
    cases = [("fp32", args.sizes)]
    if args.device.type == "cuda":
        cases += [("fp16", [768, 1024]), ("bf16", [768, 1024])]
    elif fast_dtype(args.device) == "bf16":
        cases += [("bf16", [512])]
    for dtype, sizes in cases:
        r = child({**base, "task": "unet", "dtype": dtype, "sizes": sizes, "repeats": args.repeats})
        peak = r["matmul_peak"]
        rows.append(f"matmul peak ({dtype}, 4096²): {peak / 1e9:.1f} GFLOP/s")
        for size, s in r["sizes"].items():
            ours, theirs = med(s["ours"]), med(s["theirs"])
            fast = med(s["fast"])
            rows.append(f"UNet step {dtype} {size}² batch 2 | ours {ours:.3f}s ({'bit-exact' if s['bit_exact'] else 'NOT bit-exact'}"
                        f") | diffusers {theirs:.3f}s | ratio {ours / theirs:.2f} | ours opt-in channels_last {fast:.3f}s, ratio "
                        f"{fast / theirs:.2f}, |fast - exact| / |exact| {s['fast_distance']:.1e} | {s['flops'] / 1e12:.2f} TFLOP, ours "
                        f"{100 * s['flops'] / ours / peak:.0f}% of peak, fast {100 * s['flops'] / fast / peak:.0f}%, diffusers "
                        f"{100 * s['flops'] / theirs / peak:.0f}%")


def bench_text_to_image(args, base, rows):
    """End-to-end rows: each side's defaults, then identical settings."""
    steps = {"prior_steps": 25, "prior_run_steps": 25 if args.full else 2}
    run = (lambda n: n) if args.full else (lambda n: min(n, 2))
    fast = fast_dtype(args.device)
    setups = [("defaults", {"side": "ours", "dtype": fast, "sampler": "dpm++", "steps": 25, "optimize": True},
               {"side": "theirs", "dtype": "fp32", "sampler": "ddpm", "steps": 100}),
              ("identical (fp32, DDPM 100)", {"side": "ours", "dtype": "fp32", "sampler": "ddpm", "steps": 100},
               {"side": "theirs", "dtype": "fp32", "sampler": "ddpm", "steps": 100})]
    label = "" if args.full else f" [extrapolated from {run(100)} decoder / 2 prior steps]"
    for name, ours_spec, theirs_spec in [s for s in setups if s[0].split()[0] in args.setups]:
        got = {}
        for spec in (ours_spec, theirs_spec):
            got[spec["side"]] = child({**base, **steps, **spec, "task": "text_to_image", "size": 512,
                                       "run_steps": run(spec["steps"])})
        o, t = got["ours"], got["theirs"]
        rows.append(f"text-to-image 512² {name}{label} | ours ({ours_spec['dtype']}, {ours_spec['sampler']} {ours_spec['steps']}) "
                    f"{o['total_s']:.1f}s (prior {o['prior_s']:.1f}s, decoder {o['decoder_s']:.1f}s) | diffusers "
                    f"({theirs_spec['dtype']}, {theirs_spec['sampler']} {theirs_spec['steps']}) {t['total_s']:.1f}s "
                    f"(prior {t['prior_s']:.1f}s, decoder {t['decoder_s']:.1f}s) | ratio {o['total_s'] / t['total_s']:.2f}")
        rows.append(f"  peak memory {name} | ours anon {fmt_gb(o['anon_gb'])} GB, RSS {fmt_gb(o['rss_gb'])} GB, CUDA "
                    f"{fmt_gb(o['cuda_gb'])} GB | diffusers anon {fmt_gb(t['anon_gb'])} GB, RSS {fmt_gb(t['rss_gb'])} GB, CUDA "
                    f"{fmt_gb(t['cuda_gb'])} GB | anon ratio {o['anon_gb'] / t['anon_gb']:.2f}, RSS ratio {o['rss_gb'] / t['rss_gb']:.2f}")
        rows.append(f"  load from safetensors {name} | ours {o['load_s']:.1f}s ({ours_spec['dtype']}) | diffusers "
                    f"{t['load_s']:.1f}s ({theirs_spec['dtype']}) | ratio {o['load_s'] / t['load_s']:.2f}")


def bench_movq(args, base, rows):
    """MoVQ decode rows at 768² and 1024²: whole (both sides) and our tiled decode with 64-latent tiles."""
    for size in (768, 1024):
        got = {}
        for side, tile in (("ours", None), ("theirs", None), ("ours", 64)):
            name = side if tile is None else f"ours tiled {tile}"
            got[name] = child({**base, "task": "movq", "side": side, "tile": tile, "dtype": "fp32", "size": size,
                               "repeats": args.repeats})
        o, t, tiled = got["ours"], got["theirs"], got["ours tiled 64"]
        rows.append(f"MoVQ decode fp32 {size}² | ours {med(o['times']):.2f}s +{o['rss_gb']:.2f} GB | diffusers "
                    f"{med(t['times']):.2f}s +{t['rss_gb']:.2f} GB | ratio time {med(o['times']) / med(t['times']):.2f}, "
                    f"memory {o['rss_gb'] / t['rss_gb']:.2f} | ours tiled (64-latent tiles) {med(tiled['times']):.2f}s "
                    f"+{tiled['rss_gb']:.2f} GB" + ("" if tiled["cuda_gb"] is None else f" (CUDA +{tiled['cuda_gb']:.2f} GB)"))


def bench_solver(args, base, rows):
    """Solver accuracy rows: relative L2 distance of final latents to a 1000-step DDIM reference."""
    size = 64 if args.full else 256
    r = child({**base, "task": "solver", "size": size, "decoder": base["decoder"] if args.full else None})
    model = "full-size UNet" if args.full else "tiny random UNet (UNET_22_TINY)"
    for name, err in r.items():
        rows.append(f"solver accuracy, {model} at {size}², |x - x_ref| / |x_ref| vs 1000-step DDIM | {name}: {err:.4f}")


def main():
    """Parse options, write weights once, run the measurements, print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few repeats, extrapolated end-to-end (default on CPU)")
    p.add_argument("--full", action="store_true", help="more repeats, every step run (default on a GPU)")
    p.add_argument("--sizes", default="256,512,768", help="UNet step sizes, comma separated")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "kandinsky-bench"))
    p.add_argument("--only", default="load,unet,text_to_image,movq,solver", help="which parts, comma separated")
    p.add_argument("--models", default="2.2 UNet,2.2 prior", help="MODELS entries the load part covers, comma separated")
    p.add_argument("--no-fp8", dest="fp8", action="store_false", help="skip the fp16 → fp8 load (writes an fp16 copy)")
    p.add_argument("--setups", default="defaults,identical", help="text-to-image setups, comma separated")
    p.add_argument("--repeats", type=int, help="runs per side and case (default 2 quick, 5 full)")
    bench_k3.add_arguments(p)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child_main(json.loads(args.child))
    args.device = torch.device(args.device)
    args.full = args.full or (not args.quick and args.device.type == "cuda")
    args.repeats = args.repeats or (5 if args.full else 2)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.models = args.models.split(",")
    start, only, rows = time.perf_counter(), args.only.split(","), Table()
    rows.append(f"machine: {torch.get_num_threads()} threads, {args.device}"
            f"{' ' + torch.cuda.get_device_name() if args.device.type == 'cuda' else ''}, torch {torch.__version__}, "
            f"mode {'full' if args.full else 'quick'}, load average {os.getloadavg()[0]:.1f}")
    two = any(p != "load" and p not in bench_k3.PARTS for p in only) or (  # 2.2 weights needed
        "load" in only and any(MODELS[m]["folder"] != "k3" for m in args.models))
    decoder, prior = write_weights(args.workdir) if two else (None, None)
    base = {"device": str(args.device), "decoder": decoder, "prior": prior, "folders": {"decoder": decoder, "prior": prior}}
    bench_k3.setup(args, base, only, rows)
    parts = {"load": bench_load, "unet": bench_unet, "text_to_image": bench_text_to_image, "movq": bench_movq, "solver": bench_solver,
             **bench_k3.PARTS}
    for name in only:
        parts[name](args, base, rows)
    rows.append(f"benchmark wall time {time.perf_counter() - start:.0f}s, load average now {os.getloadavg()[0]:.1f} "
                f"(15 min: {os.getloadavg()[2]:.1f})")


if __name__ == "__main__":
    main()
