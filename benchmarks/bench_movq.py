"""The `movq` kind of bench.py: 2.2 MoVQ decode at 768² and 1024², whole on both sides and our tiled decode, with the
memory above the loaded model."""
import os

import torch

import harness as H


@torch.no_grad()
def child(spec, device, memory):
    """MoVQ decode of random latents at one size: memory above the loaded model, and time."""
    dtype = H.DTYPES[spec["dtype"]]
    if spec["side"] == "theirs":
        import diffusers
        movq = diffusers.VQModel.from_pretrained(spec["decoder"], subfolder="movq", torch_dtype=dtype).to(device).eval()
        decode = lambda z: movq.decode(z, force_not_quantize=True).sample
    else:
        from kandinsky_core import tiling
        from kandinsky_core.kandinsky2.loading import load_component
        movq = load_component(os.path.join(spec["decoder"], "movq"), "movq", dtype=dtype, device=device)
        tile = spec.get("tile")
        decode = (lambda z: movq.decode(z)) if tile is None else (lambda z: tiling.decode_tiled(movq, z, tile, tile // 4))
    z = torch.randn(1, 4, spec["size"] // 8, spec["size"] // 8, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    memory.reset()
    base = memory.read()
    times = [H.timed(lambda: decode(z), device)[1] for _ in range(spec["repeats"])]
    peak = memory.read()
    return {"times": times, "rss_gb": peak["rss_gb"] - base["rss_gb"],
            "cuda_gb": None if peak["cuda_gb"] is None else peak["cuda_gb"] - base["cuda_gb"]}


def run(args, base, rows):
    """MoVQ decode rows at 768² and 1024²: whole (both sides) and our tiled decode with 64-latent tiles."""
    for size in (768, 1024):
        got = {}
        for side, tile in (("ours", None), ("theirs", None), ("ours", 64)):
            name = side if tile is None else f"ours tiled {tile}"
            got[name] = H.child({**base, "task": "movq", "side": side, "tile": tile, "dtype": "fp32", "size": size,
                                 "repeats": args.repeats})
        o, t, tiled = got["ours"], got["theirs"], got["ours tiled 64"]
        rows.append(f"MoVQ decode fp32 {size}² | ours {H.med(o['times']):.2f}s +{o['rss_gb']:.2f} GB | diffusers "
                    f"{H.med(t['times']):.2f}s +{t['rss_gb']:.2f} GB | ratio time {H.med(o['times']) / H.med(t['times']):.2f}, "
                    f"memory {o['rss_gb'] / t['rss_gb']:.2f} | ours tiled (64-latent tiles) {H.med(tiled['times']):.2f}s "
                    f"+{tiled['rss_gb']:.2f} GB" + ("" if tiled["cuda_gb"] is None else f" (CUDA +{tiled['cuda_gb']:.2f} GB)"))
