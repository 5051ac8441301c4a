"""What every benchmark shares: measuring (timing, peak memory, the page cache), child processes, random weights in
the published layouts, runs through ComfyUI (k3_memory.py, comfy_load.py) and the result table.

A measurement runs in a fresh child process so that its peak memory is its own: `child(spec)` starts bench.py
`--child SPEC`, which runs the kind named by spec["task"] and prints its result as a `RESULT {json}` line
(`result_of` reads it back; the ComfyUI scripts' helper children speak the same). Outputs too large for JSON are
saved by each side (`save`) and compared by the parent from the two files (`compare`).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]  # kandinsky_core; the ComfyUI server helpers of the tests
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}
GB = 2**30
K3_PROMPT = "a red cat sitting on a windowsill, oil painting, high quality"
TINY_NOTE = " (TINY models: a dry run, not the figures)"
RESULT = "RESULT "


# ---------------------------------------------------------------- measuring

def proc_status(pid="self", names=("VmRSS", "RssAnon")):
    """{name: bytes} of the given /proc/PID/status memory fields."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {name: int(fields[name].split()[0]) * 1024 for name in names}


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
        fields = proc_status()
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
        cuda = torch.cuda.max_memory_allocated() / GB if self.device.type == "cuda" else None
        return {"rss_gb": self.peak["rss"] / GB, "anon_gb": self.peak["anon"] / GB, "cuda_gb": cuda}

    def anon_now(self):
        """Anonymous memory in use now, GB (`read()` gives the peak since the last reset)."""
        return self.now()["anon"] / GB


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


def matmul_peak(dtype, device, n=4096, repeats=3):
    """Best FLOP/s of an n x n matmul in `dtype`: the machine's practical peak."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    torch.mm(a, b)
    return max(2 * n ** 3 / timed(lambda: torch.mm(a, b), device)[1] for _ in range(repeats))


def node_durations(stamps):
    """{node id: seconds} from one ComfyUI prompt's (arrival time, message) pairs: each `executing` message to the next."""
    starts = [(t, m["data"]["node"]) for t, m in stamps if m["type"] == "executing"]
    return {node: later - t for (t, node), (later, _) in zip(starts, starts[1:]) if node is not None}


def weight_files(path):
    """The safetensors files a load reads: `path` itself, or those in the folder `path`."""
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".safetensors"))


def set_page_cache(files, cold):
    """Evict the files from the page cache (cold), or read each through once (warm)."""
    for path in files:
        with open(path, "rb") as f:
            if cold:
                os.fsync(f.fileno())  # dirty pages (a freshly written file) are not evicted
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                while f.read(1 << 24):
                    pass


# ---------------------------------------------------------------- child processes

def result_of(stdout):
    """The object of the last `RESULT {json}` line of a child's stdout, or None when it printed none."""
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT)]
    return json.loads(lines[-1][len(RESULT):]) if lines else None


def child_main(spec, children):
    """Run one measurement, `children[spec["task"]](spec, device, memory)`; print its result as the RESULT line."""
    device = torch.device(spec["device"])
    result = children[spec["task"]](spec, device, PeakMemory(device))
    print(RESULT + json.dumps(result))


def child(spec):
    """Run a measurement in a fresh bench.py process (so its peak memory is its own) and return its result."""
    label = " ".join(str(spec[k]) for k in ("task", "model", "side", "dtype", "size", "sampler", "file") if spec.get(k))
    label += " (cold cache)" if spec.get("cold") else ""
    print(f"  running {label} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, os.path.join(HERE, "bench.py"), "--child", json.dumps(spec)],
                         stdout=subprocess.PIPE, text=True, check=True)
    print(f"    done in {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)
    result = result_of(out.stdout)
    if result is None:
        raise RuntimeError(f"the {label} child printed no result:\n{out.stdout[-2000:]}")
    return result


def output_file(spec, what):
    """Where a child saves one side's output for the comparison."""
    return os.path.join(spec["outputs"], f"{spec['task']}-{spec['side']}-{spec['dtype']}-{what}.pt")


def save(spec, what, out):
    """Save one output (on the CPU) for the comparison."""
    torch.save(out.detach().cpu(), output_file(spec, what))


def compare(spec, what, oracle, sides=("ours", "theirs")):
    """'bit-exact', or the relative L2 distance of the first side's output to the second's, which `oracle` names (both
    read from the children's files)."""
    ours, theirs = (torch.load(output_file({**spec, "side": side}, what), weights_only=True) for side in sides)
    if torch.equal(ours, theirs):
        return "bit-exact"
    ours, theirs = ours.float(), theirs.float()
    finite = "" if torch.isfinite(ours).all() and torch.isfinite(theirs).all() else ", NOT FINITE"
    return f"|{sides[0]} - {oracle}| / |{oracle}| {((ours - theirs).norm() / theirs.norm()).item():.1e}{finite}"


# ---------------------------------------------------------------- random weights on disk

def write_22_weights(root):
    """Random full-size 2.2 decoder (UNet, MoVQ, DDPM) and prior (prior, stand-in towers) folders, once."""
    import diffusers
    from dataclasses import asdict
    from transformers import (CLIPImageProcessorPil, CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer,
                              CLIPVisionConfig, CLIPVisionModelWithProjection)
    from kandinsky_core import schedulers
    from kandinsky_core.config import to_dict
    from kandinsky_core.images import KANDINSKY_CLIP_PREPROCESSOR
    from kandinsky_core.movq import MOVQ
    from kandinsky_core.kandinsky2.prior import PRIOR_22
    from kandinsky_core.kandinsky2.tiny_tokenizers import tiny_clip_text_config, tiny_clip_vision_config, write_clip_tokenizer
    from kandinsky_core.kandinsky2.unet import UNET_22

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


FP16 = "diffusion_pytorch_model.fp16.safetensors"
BLOCKS_PER_SHARD = 4


def random_tensor(key, shape, g, dtype):
    """A weight of a sensible scale: norms near 1, biases 0, matrices randn / sqrt(fan-in)."""
    if len(shape) == 1:
        return (torch.ones if key.endswith("weight") else torch.zeros)(shape, dtype=dtype)
    fan_in = torch.Size(shape[1:]).numel()
    return (torch.randn(shape, generator=g) * fan_in ** -0.5).to(dtype)


def save_random(shapes, path, seed):
    """One fp16 safetensors file of random weights of the given {key: shape}."""
    g = torch.Generator().manual_seed(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: random_tensor(k, s, g, torch.float16) for k, s in shapes.items()}, path, metadata={"format": "pt"})


def write_json(path, data, **dump):
    """`data` as JSON at `path`, its folder made."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, **dump)


def write_module(module, config, folder, seed):
    """config.json and one fp16 safetensors file of random weights for a meta-device module."""
    write_json(os.path.join(folder, "config.json"), config, sort_keys=True)
    save_random({k: t.shape for k, t in module.state_dict().items()}, os.path.join(folder, FP16), seed)


def write_t5(folder, config, seed):
    """The published text_encoder/ layout: shards of BLOCKS_PER_SHARD blocks, fp16 with fp32 `wo`, an fp16 index."""
    from kandinsky_core.kandinsky3.t5 import T5Encoder
    write_json(os.path.join(folder, "config.json"), config.to_dict(), sort_keys=True)
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
    write_json(os.path.join(folder, "model.safetensors.index.fp16.json"),
               {"metadata": {"total_size": total}, "weight_map": weight_map})


def write_k3_parts(folder, unet, t5, movq=None):
    """unet/, text_encoder/, tokenizer/, scheduler/ (and movq/ when given a config) of a kandinsky-3 folder."""
    from kandinsky_core import schedulers
    from kandinsky_core.config import to_dict
    from kandinsky_core.kandinsky3.tiny_text import write_tokenizer
    from kandinsky_core.kandinsky3.unet import UNet
    from kandinsky_core.movq import MoVQ
    write_module(UNet(unet, device="meta"), to_dict(unet, "Kandinsky3UNet"), os.path.join(folder, "unet"), 0)
    if movq is not None:
        write_module(MoVQ(movq).to("meta"), to_dict(movq, "VQModel"), os.path.join(folder, "movq"), 1)
    write_t5(os.path.join(folder, "text_encoder"), t5, 2)
    write_tokenizer(os.path.join(folder, "tokenizer"))
    write_json(os.path.join(folder, "scheduler", "scheduler_config.json"), schedulers.KANDINSKY_3_DDPM)


def write_k3_folder(folder, tiny):
    """A kandinsky-3 folder of random weights (skipped when its model_index.json exists)."""
    from kandinsky_core.kandinsky3.t5 import FLAN_UL2
    from kandinsky_core.kandinsky3.tiny_text import T5_TINY
    from kandinsky_core.kandinsky3.unet import UNET3, UNET3_TINY
    from kandinsky_core.movq import MOVQ_K3
    from kandinsky_core.kandinsky2.tiny import MOVQ_TINY8
    if os.path.isfile(os.path.join(folder, "model_index.json")):
        return folder
    unet, movq, t5 = (UNET3_TINY, MOVQ_TINY8, T5_TINY) if tiny else (UNET3, MOVQ_K3, FLAN_UL2)
    write_k3_parts(folder, unet, t5, movq)
    write_json(os.path.join(folder, "model_index.json"),  # as kandinsky-community/kandinsky-3 publishes it
               {"_class_name": "Kandinsky3Pipeline", "_diffusers_version": "0.24.0.dev0",
                "movq": ["diffusers", "VQModel"], "scheduler": ["diffusers", "DDPMScheduler"],
                "text_encoder": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "T5Tokenizer"],
                "unet": ["diffusers", "Kandinsky3UNet"]})
    return folder


# ---------------------------------------------------------------- runs through ComfyUI

WEIGHT_DTYPES = ["default", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"]  # the loaders' weight_dtype choices


def comfy_parser(doc, name, weights_help):
    """The ComfyUI scripts' argument parser: --tiny, and --workdir (default <tmp>/NAME) as the server's base folder."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny models: a dry run of the script")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), name),
                   help=f"ComfyUI base directory; {weights_help}")
    return p


def comfy_base(args):
    """The server's base folder: --workdir, with "-tiny" appended for --tiny so tiny and full weights never mix."""
    return args.workdir + ("-tiny" if args.tiny and not args.workdir.endswith("-tiny") else "")


def comfy_server(base, cuda, extra_args=()):
    """A ComfyServer (not started) with this pack, on the CPU unless `cuda` (then ComfyUI picks the device)."""
    from comfy_server import REPO, ComfyServer
    return ComfyServer(base, pack_dir=REPO, pack_name="comfyui-kandinsky2", cpu=not cuda, extra_args=list(extra_args))


def execution_errors(entry):
    """The `execution_error` messages of a finished prompt's history entry."""
    return [m for m in entry["status"]["messages"] if m[0] == "execution_error"]


# ---------------------------------------------------------------- the table

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
