"""The `movq` kind of bench.py: 2.2 MoVQ decode at --movq-sizes (768² and 1024²), whole on both sides, in the nodes'
fast mode (channels_last, with its distance to the exact decode) and our tiled decode, with the memory above the
loaded model."""
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
        if spec["side"] == "fast":
            from kandinsky_core.speed import optimize
            movq = optimize(movq)
        tile = spec.get("tile")
        decode = (lambda z: movq.decode(z)) if tile is None else (lambda z: tiling.decode_tiled(movq, z, tile, tile // 4))
    z = torch.randn(1, 4, spec["size"] // 8, spec["size"] // 8, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    memory.reset()
    base = memory.read()
    outs = [H.timed(lambda: decode(z), device) for _ in range(spec["repeats"])]
    peak = memory.read()
    if spec.get("tile") is None:  # the tiled run would overwrite the whole decode it is not compared with
        H.save(spec, spec["size"], outs[-1][0])
    times = [t for _, t in outs]
    return {"times": times, "rss_gb": peak["rss_gb"] - base["rss_gb"],
            "cuda_gb": None if peak["cuda_gb"] is None else peak["cuda_gb"] - base["cuda_gb"]}


def run(args, base, rows):
    """MoVQ decode rows per size: whole (both sides, and ours fast) and our tiled decode with 64-latent tiles."""
    for size in (int(s) for s in args.movq_sizes.split(",")):
        got = {}
        spec = {"task": "movq", "dtype": "fp32", "size": size, "repeats": args.repeats}
        for side, tile in (("ours", None), ("fast", None), ("theirs", None), ("ours", 64)):
            name = side if tile is None else f"ours tiled {tile}"
            got[name] = H.child({**base, **spec, "side": side, "tile": tile})
        o, t, tiled, fast = got["ours"], got["theirs"], got["ours tiled 64"], H.med(got["fast"]["times"])
        distance = H.compare({**base, **spec}, size, "exact", sides=("fast", "ours"))
        rows.append(f"MoVQ decode fp32 {size}² | ours {H.med(o['times']):.2f}s +{o['rss_gb']:.2f} GB | diffusers "
                    f"{H.med(t['times']):.2f}s +{t['rss_gb']:.2f} GB | ratio time {H.med(o['times']) / H.med(t['times']):.2f}, "
                    f"memory {o['rss_gb'] / t['rss_gb']:.2f} | fast (the nodes' default) {fast:.2f}s, ratio "
                    f"{fast / H.med(t['times']):.2f}, {distance} | ours tiled (64-latent tiles) {H.med(tiled['times']):.2f}s "
                    f"+{tiled['rss_gb']:.2f} GB" + ("" if tiled["cuda_gb"] is None else f" (CUDA +{tiled['cuda_gb']:.2f} GB)"))
