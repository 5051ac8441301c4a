"""Kandinsky 3 solver accuracy: how far few-step samplers land from a 1000-step deterministic reference.

Tiny random UNet (every weight random, as the tiny checkpoint writer makes it), one starting noise, guidance 3 with
the zero negative. Prints |x − x_ref| / |x_ref| of the final latents, where x_ref is the same probability-flow ODE
(K3's cosine schedule, no clipping) solved with many DPM-Solver++(2M) steps; half as many steps show how converged
it is. Run: `python benchmarks/k3_solver.py [--size 128] [--reference-steps 400]`.
"""
import argparse
import time

import torch

from kandinsky_core import schedulers as S
from kandinsky_core.kandinsky3 import pipeline as P
from kandinsky_core.kandinsky3.tiny import tiny_models


def main():
    """Print one line per sampler."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128, help="image side; the latent is 1/8 of it")
    p.add_argument("--reference-steps", type=int, default=400)
    args = p.parse_args()
    (unet, _), (movq, _) = tiny_models()
    models = P.Kandinsky3Models(unet.float(), movq.float(), None)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, args.size // 8, args.size // 8, generator=g)
    context = torch.randn(1, 8, unet.config.encoder_hid_dim, generator=g)
    positive = (context, torch.tensor([[1] * 6 + [0] * 2]))
    negative = (torch.zeros_like(context), torch.zeros_like(positive[1]))
    ode = {**S.KANDINSKY_3_DDPM, "clip_sample": False}

    def run(scheduler, steps):
        return P.sample_text_to_image(models, positive, negative, noise.shape, steps=steps, latents=noise,
                                      scheduler=scheduler, generator=torch.Generator().manual_seed(1))

    start = time.perf_counter()
    # The reference and the solvers all start at t = 999 ("trailing" spacing; Karras starts at the top sigma too):
    # on this cosine schedule a start at 961 ("leading" + 1, the checkpoint's) is a different ODE problem.
    trailing = {**ode, "timestep_spacing": "trailing", "steps_offset": 0}
    reference = run(S.dpm_solver_from(trailing, karras=False), args.reference_steps)
    print(f"reference: DPM-Solver++(2M), {args.reference_steps} trailing steps, in {time.perf_counter() - start:.0f}s")
    runs = {f"DPM-Solver++(2M), {args.reference_steps // 2} trailing steps (convergence check)":
            (S.dpm_solver_from(trailing, karras=False), args.reference_steps // 2),
            "DPM-Solver++(2M) Karras, 25 steps": (S.dpm_solver_from(ode, karras=True), 25),
            "DPM-Solver++(2M), 25 trailing steps": (S.dpm_solver_from(trailing, karras=False), 25),
            "DDIM, 25 trailing steps": (S.DDIMScheduler.from_config(trailing), 25),
            "DDIM, 100 trailing steps": (S.DDIMScheduler.from_config(trailing), 100)}
    for name, (scheduler, steps) in runs.items():
        error = ((run(scheduler, steps) - reference).norm() / reference.norm()).item()
        print(f"{name}: {error:.4f}")

if __name__ == "__main__":
    main()
