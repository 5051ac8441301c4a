"""Text-to-image from local checkpoint folders: `python -m kandinsky_core --prior DIR --decoder DIR --prompt TEXT`
(Kandinsky 2.x) or `python -m kandinsky_core --kandinsky3 DIR --prompt TEXT`.

`--tiny` writes tiny random checkpoints in the published layout first, so the whole path runs on a fresh machine.
"""
import argparse
import os
import sys
import tempfile
import time

import torch

from .errors import KandinskyError
from .kandinsky2 import decoder_pipeline, prior_pipeline, tiny
from .kandinsky2.loading import load_decoder_models, load_prior_models
from .kandinsky3 import pipeline as k3_pipeline
from .kandinsky3 import tiny as k3_tiny
from .kandinsky3.loading import load_kandinsky3
from .schedulers import dpm_solver_from
from .weights import read_scheduler_config

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv=None):
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m kandinsky_core", description=__doc__.splitlines()[0])
    p.add_argument("--prior", help="kandinsky-2-x-prior folder")
    p.add_argument("--decoder", help="kandinsky-2-x decoder folder (kandinsky-2-1 or kandinsky-2-2-decoder)")
    p.add_argument("--kandinsky3", help="kandinsky-3 folder (instead of --prior and --decoder)")
    p.add_argument("--prompt", default="a red cat, oil painting")
    p.add_argument("--negative-prompt", default=None, help="negative prompt for the prior (and the 2.1 decoder)")
    p.add_argument("--height", type=int, default=None, help="multiple of 64 (default 512; 64 with --tiny)")
    p.add_argument("--width", type=int, default=None, help="multiple of 64 (default 512; 64 with --tiny)")
    p.add_argument("--steps", type=int, default=None, help="decoder steps (default 100; 25 with --sampler dpm++)")
    p.add_argument("--prior-steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=None, help="decoder guidance scale (default 4; Kandinsky 3: 3)")
    p.add_argument("--prior-guidance", type=float, default=4.0)
    p.add_argument("--sampler", choices=["checkpoint", "dpm++", "dpm++karras"], default="checkpoint",
                   help="checkpoint: the folder's own scheduler (DDPM for 2.2, DDIM for 2.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--out", default="kandinsky.png")
    p.add_argument("--tiny", choices=["2.1", "2.2", "3"], nargs="?", const="2.2", default=None,
                   help="generate tiny random checkpoints (version 2.2 unless given) and use them")
    return p.parse_args(argv)


def tiny_folders(version):
    """Write tiny checkpoints into a temporary folder; return (prior, decoder) paths."""
    root = tempfile.mkdtemp(prefix="kandinsky-tiny-")
    name = "kandinsky-2-1" if version == "2.1" else "kandinsky-2-2-decoder"
    config, pipeline_class = tiny.DECODERS[name]
    prior = tiny.write_prior(os.path.join(root, f"kandinsky-{version.replace('.', '-')}-prior"), version=version)
    return prior, tiny.write_decoder(os.path.join(root, name), config, pipeline_class=pipeline_class)


def progress(label):
    """A per-step callback printing a one-line progress bar."""
    def callback(info):
        done = info["step"] + 1
        bar = "#" * (20 * done // info["total"])
        print(f"\r{label} [{bar:<20}] {done}/{info['total']}", end="\n" if done == info["total"] else "", flush=True)
    return callback


def run_kandinsky3(args):
    """Kandinsky 3: load the folder (or tiny checkpoints), text to image, save; returns the output path."""
    folder = args.kandinsky3
    if args.tiny:
        folder = k3_tiny.write_kandinsky3(os.path.join(tempfile.mkdtemp(prefix="kandinsky3-tiny-"), "kandinsky-3"))
    size = 64 if args.tiny else 1024
    dtype, device = DTYPES[args.dtype], torch.device(args.device)
    start = time.perf_counter()
    models = load_kandinsky3(folder, dtype=dtype, device=device)
    print(f"loaded Kandinsky 3 in {time.perf_counter() - start:.1f}s")
    karras = args.sampler == "dpm++karras"
    scheduler = None if args.sampler == "checkpoint" else dpm_solver_from(read_scheduler_config(folder), karras=karras)
    image = k3_pipeline.text_to_image(
        models, args.prompt, negative_prompt=args.negative_prompt, height=args.height or size, width=args.width or size,
        steps=args.steps or 25, guidance_scale=3.0 if args.guidance is None else args.guidance,
        generator=torch.Generator().manual_seed(args.seed), scheduler=scheduler, callback=progress("unet   "))[0]
    image.save(args.out)
    print(f"wrote {args.out} ({image.width}x{image.height}) in {time.perf_counter() - start:.1f}s")
    return args.out


def run(args):
    """Load, sample the prior, decode, save; returns the output path."""
    if args.kandinsky3 or args.tiny == "3":
        return run_kandinsky3(args)
    prior_dir, decoder_dir = tiny_folders(args.tiny) if args.tiny else (args.prior, args.decoder)
    if not prior_dir or not decoder_dir:
        raise KandinskyError("Give --prior and --decoder folders, or --tiny to generate tiny test checkpoints.")
    size = 64 if args.tiny else 512
    height, width = args.height or size, args.width or size
    dtype, device = DTYPES[args.dtype], torch.device(args.device)
    start = time.perf_counter()
    prior = load_prior_models(prior_dir, dtype=dtype, device=device)
    decoder = load_decoder_models(decoder_dir, dtype=dtype, device=device)
    if prior.embedding_dim != decoder.unet.config.image_embed_dim:
        raise KandinskyError(f"The prior makes {prior.embedding_dim}-dim embeddings but the decoder takes "
                             f"{decoder.unet.config.image_embed_dim}-dim ones: use a prior and decoder of the same version.")
    print(f"loaded Kandinsky {decoder.version} ({decoder.unet.config.variant}) in {time.perf_counter() - start:.1f}s")
    generator = torch.Generator().manual_seed(args.seed)
    emb, neg = prior_pipeline.sample_prior(prior, args.prompt, args.negative_prompt, steps=args.prior_steps,
                                           guidance_scale=args.prior_guidance, generator=generator, callback=progress("prior  "))
    karras = args.sampler == "dpm++karras"
    scheduler = None if args.sampler == "checkpoint" else dpm_solver_from(read_scheduler_config(decoder_dir), karras=karras)
    steps = args.steps or (100 if scheduler is None else 25)
    image = decoder_pipeline.text_to_image(decoder, emb, neg, prompt=args.prompt, negative_prompt=args.negative_prompt,
                                           height=height, width=width, steps=steps,
                                           guidance_scale=4.0 if args.guidance is None else args.guidance,
                                           generator=generator, scheduler=scheduler, callback=progress("decoder"))[0]
    image.save(args.out)
    print(f"wrote {args.out} ({width}x{height}) in {time.perf_counter() - start:.1f}s")
    return args.out


def main(argv=None):
    """Entry point; bad input exits with the error message, not a traceback."""
    try:
        run(parse_args(argv))
    except KandinskyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
