"""Parity of kandinsky_core.schedulers with diffusers' schedulers built from the same published config dicts."""
import diffusers
import pytest
import torch

from kandinsky_core import schedulers as S
from kandinsky_core.errors import KandinskyError

# The scheduler_config.json files as published in the kandinsky-community Kandinsky 2.1 / 2.2 (and prior) Hub repos.
DDIM_21 = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
           "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False, "set_alpha_to_one": False,
           "steps_offset": 1, "prediction_type": "epsilon", "thresholding": False}
DDPM_21 = {"_class_name": "DDPMScheduler", "beta_end": 0.012, "beta_schedule": "linear", "beta_start": 0.00085,
           "clip_sample": False, "clip_sample_range": 2.0, "dynamic_thresholding_ratio": 0.995,
           "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 2.0, "thresholding": True,
           "trained_betas": None, "variance_type": "learned_range"}
DDPM_22 = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
           "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False, "set_alpha_to_one": False,
           "steps_offset": 1, "prediction_type": "epsilon", "thresholding": False}
UNCLIP = {"_class_name": "UnCLIPScheduler", "clip_sample": True, "clip_sample_range": 10.0,
          "num_train_timesteps": 1000, "prediction_type": "sample", "variance_type": "fixed_small_log"}

DECODERS = {
    "ddim21": DDIM_21,
    "ddim21_offset0": {**DDIM_21, "steps_offset": 0},
    "ddpm21": DDPM_21,
    "ddpm22": DDPM_22,
    "ddpm22_clip": {**DDPM_22, "clip_sample": True},
    "ddpm22_offset0": {**DDPM_22, "steps_offset": 0},
}
ALL = {**DECODERS, "unclip": UNCLIP}
# Supported options the published configs leave at one value.
VARIANTS = {
    "ddim_alpha_one_sample_clip": {**DDIM_21, "set_alpha_to_one": True, "prediction_type": "sample",
                                   "clip_sample": True},
    "ddim_threshold_trailing": {**DDIM_21, "thresholding": True, "sample_max_value": 2.0,
                                "timestep_spacing": "trailing"},
    "ddpm_small_log_scaled_linspace": {**DDPM_22, "variance_type": "fixed_small_log",
                                       "beta_schedule": "scaled_linear", "timestep_spacing": "linspace"},
    "ddpm_cosine_sample": {**DDPM_22, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "sample"},
}
STEPS = (1, 2, 10, 25, 50, 100)
SHAPE = (2, 4, 8, 8)


def theirs_for(d):
    """The diffusers scheduler named by the config."""
    return getattr(diffusers, d["_class_name"]).from_config(d)


def dpm_pair(d, karras):
    """(ours, diffusers') DPM-Solver++(2M) on a decoder config; diffusers' DPM cannot take learned_range
    (it slices 3 channels), so it runs on epsilon alone, which is what ours uses of a 2*C-channel output."""
    theirs_cfg = {k: v for k, v in d.items() if k != "variance_type"}
    theirs = diffusers.DPMSolverMultistepScheduler.from_config(
        theirs_cfg, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=karras)
    return S.dpm_solver_from(d, karras=karras), theirs


def model_output(data, variance):
    """A random 8-channel UNet-like output: epsilon, then a variance value in [-1, 1] if `variance`."""
    out = torch.randn((SHAPE[0], 8, *SHAPE[2:]), generator=data)
    return torch.cat([out[:, :4], out[:, 4:].tanh()], dim=1) if variance else out[:, :4]


def run_loop(ours, theirs, n, learned=False, start=0, begin=False, reblend=False, dtype=torch.float32):
    """Denoise with both schedulers on identical random model outputs and identically seeded generators.

    Ours always gets the full 8-channel output; diffusers gets what the Kandinsky pipelines give it (8 channels only
    for learned variance). start > 0 noises a clean sample first (img2img); reblend noises it again after every step
    (2.2 inpainting). Returns the largest |ours - theirs| seen; asserts both generators were drawn alike.
    """
    timesteps = ours.set_timesteps(n)
    theirs.set_timesteps(n)
    assert torch.equal(timesteps, theirs.timesteps)
    data = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(SHAPE, generator=data), torch.randn(SHAPE, generator=data)
    x_ours = x_theirs = torch.randn(SHAPE, generator=data).to(dtype)
    worst = 0.0
    if begin:
        ours.set_begin_index(start)
        theirs.set_begin_index(start)
    if start:
        t = timesteps[start:start + 1].repeat(SHAPE[0])
        x_ours, x_theirs = ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t)
        worst = (x_ours - x_theirs).abs().max().item()
    mask = torch.zeros(SHAPE)
    mask[..., :4] = 1
    g_ours, g_theirs = torch.Generator().manual_seed(42), torch.Generator().manual_seed(42)
    for i, t in enumerate(timesteps[start:], start):
        full = model_output(data, variance=True).to(dtype)
        x_ours = ours.step(full, t, x_ours, generator=g_ours)
        x_theirs = theirs.step(full if learned else full[:, :4], t, x_theirs, generator=g_theirs).prev_sample
        if reblend and i < len(timesteps) - 1:
            t_next = timesteps[i + 1:i + 2]
            known_ours, known_theirs = ours.add_noise(x0, noise, t_next), theirs.add_noise(x0, noise, t_next)
            x_ours = mask * known_ours + (1 - mask) * x_ours
            x_theirs = mask * known_theirs + (1 - mask) * x_theirs
        worst = max(worst, (x_ours.float() - x_theirs.float()).abs().max().item())
    assert x_ours.dtype == x_theirs.dtype == dtype
    assert torch.equal(g_ours.get_state(), g_theirs.get_state())
    return worst


def test_presets_are_the_published_configs():
    assert S.KANDINSKY_2_1_DDIM == DDIM_21
    assert S.KANDINSKY_2_1_DDPM == DDPM_21
    assert S.KANDINSKY_2_2_DDPM == {**DDPM_22, "clip_sample": True}
    assert S.KANDINSKY_PRIOR_UNCLIP == UNCLIP


@pytest.mark.parametrize("name", ALL)
def test_timesteps(name):
    ours, theirs = S.scheduler_from_config(ALL[name]), theirs_for(ALL[name])
    for n in STEPS:
        if name == "unclip" and n == 1:
            continue
        theirs.set_timesteps(n)
        assert torch.equal(ours.set_timesteps(n), theirs.timesteps), n
        assert ours.timesteps.dtype == torch.long


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("cls", ["DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler"])
def test_timestep_spacings(cls, spacing):
    d = {**DDPM_22, "_class_name": cls, "timestep_spacing": spacing}
    ours, theirs = S.scheduler_from_config(d), theirs_for(d)
    for n in (1, 2, 3, 7, 10, 25, 50, 100, 333, 999, 1000):
        theirs.set_timesteps(n)
        if theirs.timesteps.max() >= 1000 and cls != "DPMSolverMultistepScheduler":  # diffusers fails in step
            with pytest.raises(KandinskyError, match="timestep 1000"):
                ours.set_timesteps(n)
            continue
        assert torch.equal(ours.set_timesteps(n), theirs.timesteps), n


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("name", [*DECODERS, "ddpm_cosine_sample"])
def test_dpm_timesteps_and_sigmas(name, karras):
    ours, theirs = dpm_pair({**DECODERS, **VARIANTS}[name], karras)
    for n in STEPS:
        theirs.set_timesteps(n)
        assert torch.equal(ours.set_timesteps(n), theirs.timesteps), n
        assert (ours.sigmas - theirs.sigmas).abs().max().item() < 1e-6


@pytest.mark.parametrize("n", [2, 10, 25])
@pytest.mark.parametrize("name", {**DECODERS, **VARIANTS})
def test_decoder_loop(name, n):
    d = {**DECODERS, **VARIANTS}[name]
    learned = d.get("variance_type") == "learned_range"
    assert run_loop(S.scheduler_from_config(d), theirs_for(d), n, learned=learned) < 1e-5


@pytest.mark.parametrize("n", [2, 10, 25])
def test_prior_loop(n):
    ours, theirs = S.scheduler_from_config(UNCLIP), theirs_for(UNCLIP)
    timesteps = ours.set_timesteps(n)
    theirs.set_timesteps(n)
    data = torch.Generator().manual_seed(0)
    x_ours = x_theirs = torch.randn(2, 32, generator=data)
    g_ours, g_theirs = torch.Generator().manual_seed(42), torch.Generator().manual_seed(42)
    worst = 0.0
    for i, t in enumerate(timesteps):
        pred = 6 * torch.randn(2, 32, generator=data)  # partly beyond clip_sample_range 10
        prev = None if i == n - 1 else timesteps[i + 1]
        x_ours = ours.step(pred, t, x_ours, generator=g_ours, prev_timestep=prev)
        x_theirs = theirs.step(pred, t, x_theirs, prev_timestep=prev, generator=g_theirs).prev_sample
        worst = max(worst, (x_ours - x_theirs).abs().max().item())
    assert worst < 1e-5
    assert torch.equal(g_ours.get_state(), g_theirs.get_state())


def test_prior_step_without_prev_timestep():
    ours, theirs = S.scheduler_from_config(UNCLIP), theirs_for(UNCLIP)
    x, pred = torch.randn(2, 32), 20 * torch.randn(2, 32)
    for t in (999, 500, 1, 0):
        got = ours.step(pred, t, x, generator=torch.Generator().manual_seed(1))
        want = theirs.step(pred, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
        assert (got - want).abs().max().item() < 1e-5


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("name", DECODERS)
def test_dpm_loop(name, karras):
    for n in (1, 2, 5, 25):
        assert run_loop(*dpm_pair(DECODERS[name], karras), n) < 1e-5, n


def test_dpm_cosine_sample_prediction():
    # Karras sigmas on the cosine schedule repeat the first timestep, where diffusers starts one step late
    for n in (1, 2, 5, 25):
        assert run_loop(*dpm_pair(VARIANTS["ddpm_cosine_sample"], karras=False), n) < 1e-5, n


def test_dpm_repeated_timestep_lookup():
    ours, theirs = dpm_pair(DDPM_22, karras=True)
    timesteps = ours.set_timesteps(50)
    theirs.set_timesteps(50)
    assert timesteps[47] == timesteps[48] == 1  # Karras repeats t = 1
    data = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(SHAPE, generator=data), torch.randn(SHAPE, generator=data)
    x_ours, x_theirs = ours.add_noise(x0, noise, timesteps[47:48]), theirs.add_noise(x0, noise, timesteps[47:48])
    assert torch.equal(x_ours, x_theirs)  # both at the second match, sigmas[48]
    absent = torch.tensor([500])  # not in the schedule: the last step's sigma
    assert torch.equal(ours.add_noise(x0, noise, absent), theirs.add_noise(x0, noise, absent))
    for t in timesteps[47:49]:  # so only two steps are left, as in diffusers
        out = torch.randn(SHAPE, generator=data)
        x_ours, x_theirs = ours.step(out, t, x_ours), theirs.step(out, t, x_theirs).prev_sample
    assert torch.equal(x_ours, x_theirs)
    with pytest.raises(KandinskyError, match="set_begin_index"):
        ours.step(out, timesteps[49], x_ours)


@pytest.mark.parametrize("begin", [False, True])
@pytest.mark.parametrize("karras", [False, True])
def test_dpm_img2img_and_inpaint(karras, begin):
    assert run_loop(*dpm_pair(DDPM_22, karras), 25, start=17, begin=begin) < 1e-5
    assert run_loop(*dpm_pair(DDPM_22, karras), 25, begin=begin, reblend=True) < 1e-5


@pytest.mark.parametrize("name", ["ddim21", "ddpm21", "ddpm22_clip"])
def test_img2img_and_inpaint(name):
    d = DECODERS[name]
    learned = d.get("variance_type") == "learned_range"
    assert run_loop(S.scheduler_from_config(d), theirs_for(d), 10, learned=learned, start=7) < 1e-5
    assert run_loop(S.scheduler_from_config(d), theirs_for(d), 10, learned=learned, reblend=True) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_loop(dtype):
    assert run_loop(S.scheduler_from_config(DDPM_21), theirs_for(DDPM_21), 10, learned=True, dtype=dtype) < 1e-3
    assert run_loop(*dpm_pair(DDPM_22, True), 10, dtype=dtype) < 1e-3


@pytest.mark.parametrize("name", ALL)
def test_add_noise(name):
    ours, theirs = S.scheduler_from_config(ALL[name]), theirs_for(ALL[name])
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 421, 999])
    assert torch.equal(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))
    assert torch.equal(ours.add_noise(x0, noise, 421), theirs.add_noise(x0, noise, torch.tensor([421])))


def test_kandinsky21_img2img_add_noise():
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([298, 298])  # int(1000 * 0.3) - 2
    want = diffusers.KandinskyImg2ImgPipeline.add_noise(None, x0, noise, t)
    assert torch.equal(S.add_noise_kandinsky21_img2img(x0, noise, t), want)
    assert torch.equal(S.add_noise_kandinsky21_img2img(x0, noise, 298), want)
    assert not torch.allclose(S.scheduler_from_config(DDIM_21).add_noise(x0, noise, t), want)


@pytest.mark.parametrize("name", ["ddim21", "ddpm22", "unclip"])
def test_predict_x0(name):
    ours, theirs = S.scheduler_from_config(ALL[name]), theirs_for(ALL[name])
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    shape = (2, 32) if name == "unclip" else SHAPE
    x, out = torch.randn(shape), torch.randn(shape)
    t = ours.timesteps[3]
    want = theirs.step(out, t, x, generator=torch.Generator().manual_seed(0)).pred_original_sample
    assert torch.equal(ours.predict_x0(out, t, x), want)
    dpm = S.dpm_solver_from(ALL[name])
    assert torch.equal(dpm.predict_x0(torch.cat([out, out], dim=1), t, x), ours.predict_x0(out, t, x))


def test_full_output_equals_epsilon_for_fixed_variance():
    x, out = torch.randn(SHAPE), torch.randn(2, 8, 8, 8)
    for d in (DDIM_21, DDPM_22):
        ours = S.scheduler_from_config(d)
        ours.set_timesteps(10)
        full = ours.step(out, 501, x, generator=torch.Generator().manual_seed(3))
        eps = ours.step(out[:, :4], 501, x, generator=torch.Generator().manual_seed(3))
        assert torch.equal(full, eps)


def test_dispatch():
    assert type(S.scheduler_from_config(DDIM_21)) is S.DDIMScheduler
    assert type(S.scheduler_from_config(UNCLIP)) is S.UnCLIPScheduler
    assert type(S.scheduler_from_config({"beta_start": 0.00085})) is S.DDPMScheduler
    assert type(S.scheduler_from_config({}, default="DDIMScheduler")) is S.DDIMScheduler
    dpm = S.scheduler_from_config({**DDPM_22, "_class_name": "DPMSolverMultistepScheduler",
                                   "use_karras_sigmas": True, "algorithm_type": "dpmsolver++"})
    assert type(dpm) is S.DPMSolverScheduler and dpm.config.use_karras_sigmas
    assert not S.dpm_solver_from(DDIM_21, karras=False).config.use_karras_sigmas
    ours = S.scheduler_from_config({**DDPM_22, "_diffusers_version": "0.17.0", "made_up_key": 3})
    assert ours.config.beta_start == 0.00085 and ours.config.steps_offset == 1
    assert S.DDPMScheduler().config.clip_sample and S.DDIMScheduler().config.set_alpha_to_one
    assert S.UnCLIPScheduler().config.beta_schedule == "squaredcos_cap_v2"
    assert S.DPMSolverScheduler().config.timestep_spacing == "linspace"
    assert all(s.init_noise_sigma == 1.0 for s in (S.DDIMScheduler(), S.UnCLIPScheduler(), dpm))


@pytest.mark.parametrize("d, words", [
    ({**DDPM_22, "beta_schedule": "sigmoid"}, ["beta_schedule", "sigmoid", "squaredcos_cap_v2"]),
    ({**DDPM_22, "prediction_type": "v_prediction"}, ["v_prediction", "epsilon"]),
    ({**DDPM_22, "timestep_spacing": "uniform"}, ["uniform", "trailing"]),
    ({**DDPM_22, "variance_type": "fixed_large"}, ["fixed_large", "learned_range"]),
    ({**DDIM_21, "trained_betas": [0.1] * 1000}, ["trained_betas"]),
    ({**DDIM_21, "rescale_betas_zero_snr": True}, ["rescale_betas_zero_snr"]),
    ({**UNCLIP, "variance_type": "learned_range"}, ["learned_range", "fixed_small_log"]),
    ({**UNCLIP, "beta_schedule": "linear"}, ["linear", "squaredcos_cap_v2"]),
    ({**DDPM_22, "_class_name": "EulerDiscreteScheduler"}, ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler"]),
    ({**DDPM_22, "_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"},
     ["algorithm_type", "sde-dpmsolver++", "dpmsolver++"]),
    ({**DDPM_22, "_class_name": "DPMSolverMultistepScheduler", "solver_order": 3}, ["solver_order", "3"]),
])
def test_unsupported_config(d, words):
    with pytest.raises(KandinskyError) as err:
        S.scheduler_from_config(d)
    assert all(w in str(err.value) for w in words)


def test_bad_steps_and_calls():
    for sched in (S.DDIMScheduler(), S.DDPMScheduler(), S.UnCLIPScheduler(), S.DPMSolverScheduler()):
        for n in (0, 1001):
            with pytest.raises(KandinskyError, match=str(n)):
                sched.set_timesteps(n)
    with pytest.raises(KandinskyError, match="2 to 1000"):
        S.UnCLIPScheduler().set_timesteps(1)
    x = torch.randn(SHAPE)
    with pytest.raises(KandinskyError, match="set_timesteps"):
        S.DDIMScheduler().step(x, 500, x)
    with pytest.raises(KandinskyError, match="set_timesteps"):
        S.DPMSolverScheduler().step(x, 500, x)
    learned = S.scheduler_from_config(DDPM_21)
    learned.set_timesteps(10)
    with pytest.raises(KandinskyError, match="learned_range"):
        learned.step(x, 900, x)
    with pytest.raises(KandinskyError, match="prev_timestep"):
        learned.step(torch.cat([x, x], dim=1), 901, x)
