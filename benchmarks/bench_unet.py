"""The `unet` kind of bench.py: the guided 2.2 UNet step (batch 2), kandinsky_core exact and with its opt-in
channels_last mode against diffusers, all sides alternating in one process, with FLOP/s against the matmul peak.

    python benchmarks/bench.py --only unet --sizes 512 --repeats 3
"""
import os

import torch

import bench_load
import harness as H

CALLS = {"ours": "ours", "fast": "ours", "theirs": "theirs"}  # how each side of `child` is called


def load_unet(side, folder, dtype, device):
    """One side's UNet from the decoder folder."""
    return bench_load.MODELS["2.2 UNet"][side](os.path.join(folder, "unet"), dtype, device)


def unet_step(side, unet, x, t, emb):
    """One guided UNet forward (batch 2: negative and positive)."""
    if side == "ours":
        return unet(x, t, emb)
    return unet(x, t, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": emb}).sample


@torch.no_grad()
def child(spec, device, memory):
    """Guided UNet step times, all sides alternating in this one process, plus FLOPs, matmul peak and how far our
    opt-in fast mode (`speed.optimize`: channels_last) lands from the exact result."""
    from torch.utils.flop_counter import FlopCounterMode
    from kandinsky_core.speed import optimize
    dtype = H.DTYPES[spec["dtype"]]
    unets = {side: load_unet(side, spec["decoder"], dtype, device) for side in ("ours", "theirs")}
    unets["fast"] = optimize(load_unet("ours", spec["decoder"], dtype, device))
    results = {"matmul_peak": H.matmul_peak(dtype, device), "sizes": {}}
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
                times[side].append(H.timed(lambda: unet_step(CALLS[side], unets[side], x, t, emb), device)[1])
        results["sizes"][size] = {"flops": counter.get_total_flops(), **times,
                                  "bit_exact": torch.equal(out["ours"], out["theirs"]),
                                  "fast_distance": ((out["fast"].float() - exact).norm() / exact.norm()).item()}
    return results


def run(args, base, rows):
    """UNet step rows: per (dtype, sizes) case, medians, ratio, FLOP/s against the matmul peak."""
    cases = [("fp32", args.sizes)]
    if args.device.type == "cuda":
        cases += [("fp16", [768, 1024]), ("bf16", [768, 1024])]
    elif H.fast_dtype(args.device) == "bf16":
        cases += [("bf16", [512])]
    for dtype, sizes in cases:
        r = H.child({**base, "task": "unet", "dtype": dtype, "sizes": sizes, "repeats": args.repeats})
        peak = r["matmul_peak"]
        rows.append(f"matmul peak ({dtype}, 4096²): {peak / 1e9:.1f} GFLOP/s")
        for size, s in r["sizes"].items():
            ours, theirs = H.med(s["ours"]), H.med(s["theirs"])
            fast = H.med(s["fast"])
            rows.append(f"UNet step {dtype} {size}² batch 2 | ours {ours:.3f}s ({'bit-exact' if s['bit_exact'] else 'NOT bit-exact'}"
                        f") | diffusers {theirs:.3f}s | ratio {ours / theirs:.2f} | ours opt-in channels_last {fast:.3f}s, ratio "
                        f"{fast / theirs:.2f}, |fast - exact| / |exact| {s['fast_distance']:.1e} | {s['flops'] / 1e12:.2f} TFLOP, ours "
                        f"{100 * s['flops'] / ours / peak:.0f}% of peak, fast {100 * s['flops'] / fast / peak:.0f}%, diffusers "
                        f"{100 * s['flops'] / theirs / peak:.0f}%")
