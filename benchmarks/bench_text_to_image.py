"""The `text_to_image` kind of bench.py: prompt → prior → decoder → image at 512², kandinsky_core against diffusers'
Kandinsky 2.2 pipelines, at each side's defaults and at identical settings, with load time and peak memory.

--quick (the default on CPU) runs 2 decoder and 2 prior steps and extrapolates the per-step median to the full step
counts; its rows say "extrapolated".
"""
import time

import torch

import harness as H

PROMPT = "a red cat, oil painting"


def _step_clock(device):
    """A list that a callback appends a synced timestamp to at every step."""
    stamps = []

    def tick(*args):
        H.sync(device)
        stamps.append(time.perf_counter())
        return args[-1] if len(args) == 4 else None  # diffusers expects its callback_kwargs back
    return stamps, tick


def _extrapolate(total, stamps, steps):
    """(time for `steps` steps, per-step median) from a run of len(stamps) steps that took `total` seconds."""
    per_step = H.med([b - a for a, b in zip(stamps, stamps[1:])]) if len(stamps) > 1 else total
    return total + (steps - len(stamps)) * per_step, per_step


def _run_ours(spec, device, dtype, g, clocks):
    from kandinsky_core.kandinsky2 import decoder_pipeline, prior_pipeline
    from kandinsky_core.kandinsky2.loading import load_decoder_models, load_prior_models
    from kandinsky_core.weights import read_scheduler_config
    from kandinsky_core.schedulers import dpm_solver_from
    from kandinsky_core.speed import optimize
    (prior_models, decoder), load_s = H.timed(lambda: (load_prior_models(spec["prior"], dtype=dtype, device=device),
                                                       load_decoder_models(spec["decoder"], dtype=dtype, device=device)), device)
    if spec.get("optimize"):
        optimize(decoder.unet)
        optimize(decoder.movq)
    scheduler = dpm_solver_from(read_scheduler_config(spec["decoder"])) if spec["sampler"] == "dpm++" else None
    (emb, neg), prior_s = H.timed(lambda: prior_pipeline.sample_prior(
        prior_models, PROMPT, steps=spec["prior_run_steps"], generator=g, callback=clocks[0][1]), device)
    _, decoder_s = H.timed(lambda: decoder_pipeline.text_to_image(
        decoder, emb, neg, height=spec["size"], width=spec["size"], steps=spec["run_steps"], generator=g,
        scheduler=scheduler, callback=clocks[1][1]), device)
    return load_s, prior_s, decoder_s


def _run_theirs(spec, device, dtype, g, clocks):
    import diffusers
    kw = {"torch_dtype": dtype}
    (prior_pipe, pipe), load_s = H.timed(lambda: (
        diffusers.KandinskyV22PriorPipeline.from_pretrained(spec["prior"], **kw).to(device),
        diffusers.KandinskyV22Pipeline.from_pretrained(spec["decoder"], **kw).to(device)), device)
    prior_pipe.set_progress_bar_config(disable=True)
    pipe.set_progress_bar_config(disable=True)
    out, prior_s = H.timed(lambda: prior_pipe(PROMPT, num_inference_steps=spec["prior_run_steps"], generator=g,
                                              callback_on_step_end=clocks[0][1]), device)
    _, decoder_s = H.timed(lambda: pipe(out.image_embeds, out.negative_image_embeds, height=spec["size"],
                                        width=spec["size"], num_inference_steps=spec["run_steps"], generator=g,
                                        callback_on_step_end=clocks[1][1]), device)
    return load_s, prior_s, decoder_s


@torch.no_grad()
def child(spec, device, memory):
    """Load prior + decoder from disk, then prompt → embeddings → image; times extrapolated to the full step counts."""
    dtype = H.DTYPES[spec["dtype"]]
    clocks = (_step_clock(device), _step_clock(device))
    side_run = _run_ours if spec["side"] == "ours" else _run_theirs
    load_s, prior_s, decoder_s = side_run(spec, device, dtype, torch.Generator().manual_seed(0), clocks)
    prior_total, _ = _extrapolate(prior_s, clocks[0][0], spec["prior_steps"])
    decoder_total, per_step = _extrapolate(decoder_s, clocks[1][0], spec["steps"])
    return {"load_s": load_s, "prior_s": prior_total, "decoder_s": decoder_total, "step_s": per_step,
            "total_s": prior_total + decoder_total, **memory.read()}


def run(args, base, rows):
    """End-to-end rows: each side's defaults, then identical settings."""
    steps = {"prior_steps": 25, "prior_run_steps": 25 if args.full else 2}
    run_steps = (lambda n: n) if args.full else (lambda n: min(n, 2))
    fast = H.fast_dtype(args.device)
    setups = [("defaults", {"side": "ours", "dtype": fast, "sampler": "dpm++", "steps": 25, "optimize": True},
               {"side": "theirs", "dtype": "fp32", "sampler": "ddpm", "steps": 100}),
              ("identical (fp32, DDPM 100)", {"side": "ours", "dtype": "fp32", "sampler": "ddpm", "steps": 100},
               {"side": "theirs", "dtype": "fp32", "sampler": "ddpm", "steps": 100})]
    label = "" if args.full else f" [extrapolated from {run_steps(100)} decoder / 2 prior steps]"
    for name, ours_spec, theirs_spec in [s for s in setups if s[0].split()[0] in args.setups]:
        got = {}
        for spec in (ours_spec, theirs_spec):
            got[spec["side"]] = H.child({**base, **steps, **spec, "task": "text_to_image", "size": 512,
                                         "run_steps": run_steps(spec["steps"])})
        o, t = got["ours"], got["theirs"]
        rows.append(f"text-to-image 512² {name}{label} | ours ({ours_spec['dtype']}, {ours_spec['sampler']} {ours_spec['steps']}) "
                    f"{o['total_s']:.1f}s (prior {o['prior_s']:.1f}s, decoder {o['decoder_s']:.1f}s) | diffusers "
                    f"({theirs_spec['dtype']}, {theirs_spec['sampler']} {theirs_spec['steps']}) {t['total_s']:.1f}s "
                    f"(prior {t['prior_s']:.1f}s, decoder {t['decoder_s']:.1f}s) | ratio {o['total_s'] / t['total_s']:.2f}")
        rows.append(f"  peak memory {name} | ours anon {H.fmt_gb(o['anon_gb'])} GB, RSS {H.fmt_gb(o['rss_gb'])} GB, CUDA "
                    f"{H.fmt_gb(o['cuda_gb'])} GB | diffusers anon {H.fmt_gb(t['anon_gb'])} GB, RSS {H.fmt_gb(t['rss_gb'])} GB, CUDA "
                    f"{H.fmt_gb(t['cuda_gb'])} GB | anon ratio {o['anon_gb'] / t['anon_gb']:.2f}, RSS ratio {o['rss_gb'] / t['rss_gb']:.2f}")
        rows.append(f"  load from safetensors {name} | ours {o['load_s']:.1f}s ({ours_spec['dtype']}) | diffusers "
                    f"{t['load_s']:.1f}s ({theirs_spec['dtype']}) | ratio {o['load_s'] / t['load_s']:.2f}")
