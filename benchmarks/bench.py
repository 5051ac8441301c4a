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
"extrapolated". Needs the test extra (diffusers). Each kind (an --only name) is a module of its own, registered in
KINDS below: bench_load, bench_unet, bench_text_to_image, bench_movq, bench_solver, and the Kandinsky 3 ones (k3_unet,
k3_t5, the "3 UNet" and "3 T5" load rows) in bench_k3.py: kandinsky-3's published layout of random weights, one side
per process. What they share (children, timing, memory, weights, the table) is harness.py.
"""
import argparse
import json
import os
import time
from collections import namedtuple

import torch

import bench_k3
import bench_load
import bench_movq
import bench_solver
import bench_text_to_image
import bench_unet
import harness as H

# run: the parent's part, which starts children and adds rows; child: one measurement in a child process; folder:
# the weights it reads (a key of base["folders"]; None for load, whose --models entries name theirs).
Kind = namedtuple("Kind", "run child folder")
KINDS = {
    "load": Kind(bench_load.run, bench_load.child, None),
    "unet": Kind(bench_unet.run, bench_unet.child, "decoder"),
    "text_to_image": Kind(bench_text_to_image.run, bench_text_to_image.child, "decoder"),
    "movq": Kind(bench_movq.run, bench_movq.child, "decoder"),
    "solver": Kind(bench_solver.run, bench_solver.child, "decoder"),
    "k3_unet": Kind(bench_k3.run_unet, bench_k3.child_unet, "k3"),
    "k3_t5": Kind(bench_k3.run_t5, bench_k3.child_t5, "k3"),
}


def parse_args(only):
    """The command line; `only` is the default of --only."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few repeats, extrapolated end-to-end (default on CPU)")
    p.add_argument("--full", action="store_true", help="more repeats, every step run (default on a GPU)")
    p.add_argument("--sizes", default="256,512,768", help="UNet step sizes, comma separated")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "kandinsky-bench"))
    p.add_argument("--only", default=only, help="which parts, comma separated")
    p.add_argument("--models", default="2.2 UNet,2.2 prior", help="MODELS entries the load part covers, comma separated")
    p.add_argument("--no-fp8", dest="fp8", action="store_false", help="skip the fp16 → fp8 load (writes an fp16 copy)")
    p.add_argument("--setups", default="defaults,identical", help="text-to-image setups, comma separated")
    p.add_argument("--repeats", type=int, help="runs per side and case (default 2 quick, 5 full)")
    bench_k3.add_arguments(p)
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args()


def weights(args, only, rows):
    """Write (once) the weight folders the parts in `only` read; the base spec every child gets."""
    folders = {bench_load.MODELS[m]["folder"] for m in args.models} if "load" in only else set()
    folders |= {KINDS[p].folder for p in only if p != "load"}
    decoder, prior = H.write_22_weights(args.workdir) if folders & {"decoder", "prior"} else (None, None)
    base = {"device": str(args.device), "decoder": decoder, "prior": prior, "folders": {"decoder": decoder, "prior": prior},
            "outputs": os.path.join(args.workdir, "outputs")}
    os.makedirs(base["outputs"], exist_ok=True)
    if "k3" in folders:
        bench_k3.setup(args, base, rows)
    return base


def main(only="load,unet,text_to_image,movq,solver"):
    """Parse options, write weights once, run the measurements, print the table."""
    args = parse_args(only)
    if args.child:
        return H.child_main(json.loads(args.child), {name: kind.child for name, kind in KINDS.items()})
    args.device = torch.device(args.device)
    args.full = args.full or (not args.quick and args.device.type == "cuda")
    args.repeats = args.repeats or (5 if args.full else 2)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.models = args.models.split(",")
    start, only, rows = time.perf_counter(), args.only.split(","), H.Table()
    rows.append(f"machine: {torch.get_num_threads()} threads, {args.device}"
                f"{' ' + torch.cuda.get_device_name() if args.device.type == 'cuda' else ''}, torch {torch.__version__}, "
                f"mode {'full' if args.full else 'quick'}, load average {os.getloadavg()[0]:.1f}")
    base = weights(args, only, rows)
    for name in only:
        KINDS[name].run(args, base, rows)
    rows.append(f"benchmark wall time {time.perf_counter() - start:.0f}s, load average now {os.getloadavg()[0]:.1f} "
                f"(15 min: {os.getloadavg()[2]:.1f})")


if __name__ == "__main__":
    main()
