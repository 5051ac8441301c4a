"""Kandinsky 3's scheduler config (cosine betas, clip_sample, leading spacing + 1, fixed_small) through our DDPM and
DPM-Solver++(2M) ± Karras, step for step against diffusers' DDPMScheduler and DPMSolverMultistepScheduler."""
import pytest
import torch

import diffusers
from kandinsky_core import schedulers as S

CONFIG = {k: v for k, v in S.KANDINSKY_3_DDPM.items() if k != "_class_name"}
KINDS = {
    "ddpm": (lambda: S.scheduler_from_config(S.KANDINSKY_3_DDPM), lambda: diffusers.DDPMScheduler.from_config(CONFIG)),
    "dpm++": (lambda: S.dpm_solver_from(S.KANDINSKY_3_DDPM, karras=False),
              lambda: diffusers.DPMSolverMultistepScheduler.from_config(CONFIG, use_karras_sigmas=False)),
    "dpm++karras": (lambda: S.dpm_solver_from(S.KANDINSKY_3_DDPM, karras=True),
                    lambda: diffusers.DPMSolverMultistepScheduler.from_config(CONFIG, use_karras_sigmas=True)),
}


def test_published_timesteps():
    ours = S.scheduler_from_config(S.KANDINSKY_3_DDPM)
    assert ours.set_timesteps(25).tolist() == list(range(961, 0, -40))
    assert ours.set_timesteps(5).tolist() == [801, 601, 401, 201, 1]
    assert abs(ours.alphas_cumprod[961].item() - 0.0035030) < 1e-7
    assert abs(ours.betas[0].item() - 4.1284e-05) < 1e-9 and ours.betas[-1].item() == pytest.approx(0.999)


def fake_eps(x, t):
    """A deterministic stand-in for the UNet whose x0 estimates leave [-1, 1], so clip_sample is exercised."""
    return torch.sin(3 * x + int(t) / 100) * 2


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("steps", [2, 5, 25])
def test_loop_matches_diffusers_exactly(kind, steps):
    ours, theirs = (make() for make in KINDS[kind])
    timesteps = ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    assert torch.equal(timesteps, theirs.timesteps)
    ours.set_begin_index(0)  # Karras on this cosine schedule repeats its first timesteps: start at index 0 as pipelines do
    if hasattr(theirs, "set_begin_index"):
        theirs.set_begin_index(0)
    x = y = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    for t in timesteps:
        x = ours.step(fake_eps(x, t), t, x, generator=g1)
        y = theirs.step(fake_eps(y, t), t, y, generator=g2).prev_sample
        assert torch.equal(x, y)


@pytest.mark.parametrize("steps, strength, expected", [(25, 0.3, [241, 201, 161, 121, 81, 41, 1]), (10, 0.75, [601, 501, 401, 301, 201, 101, 1]),
                                                      (5, 0.75, [401, 201, 1])])
def test_image_to_image_schedule_tail(steps, strength, expected):
    from kandinsky_core.sampling import timesteps_for as _timesteps

    ours = S.scheduler_from_config(S.KANDINSKY_3_DDPM)
    assert _timesteps(ours, steps, strength).tolist() == expected
    x0, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    theirs = diffusers.DDPMScheduler.from_config(CONFIG)
    t = torch.tensor(expected[:1])
    assert torch.equal(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))
