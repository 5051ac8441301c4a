"""Noise schedulers for Kandinsky 2.x, its priors and Kandinsky 3: DDIM, DDPM, UnCLIP and DPM-Solver++(2M), step
for step as in diffusers 0.42.

Each class reads a diffusers `scheduler_config.json` dict (`from_config`), lays out inference timesteps
(`set_timesteps`), takes one denoising step (`step`) and noises clean samples (`add_noise`). Noise is drawn with the
shapes and in the order diffusers draws it, so one shared `torch.Generator` gives bit-identical random sequences.
`step` accepts the UNet's full 2*C-channel output (epsilon, then learned variance) as well as C channels.
"""
import math
from dataclasses import dataclass

import torch

from .config import from_dict
from .errors import KandinskyError

# Published scheduler configs (kandinsky-community Hub repos), for checkpoints that come without one.
KANDINSKY_2_1_DDIM = {
    "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.00085,
    "beta_end": 0.012, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
    "prediction_type": "epsilon", "thresholding": False,
}
# kandinsky-2-1/ddpm_scheduler: the only config that uses the UNet's learned variance.
KANDINSKY_2_1_DDPM = {
    "_class_name": "DDPMScheduler", "beta_end": 0.012, "beta_schedule": "linear", "beta_start": 0.00085,
    "clip_sample": False, "clip_sample_range": 2.0, "dynamic_thresholding_ratio": 0.995, "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "sample_max_value": 2.0, "thresholding": True, "trained_betas": None,
    "variance_type": "learned_range",
}
# kandinsky-2-2-decoder main; clip_sample true is inferred from copies that loaded it (the inpaint repo keeps false).
KANDINSKY_2_2_DDPM = {
    "_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.00085,
    "beta_end": 0.012, "clip_sample": True, "set_alpha_to_one": False, "steps_offset": 1,
    "prediction_type": "epsilon", "thresholding": False,
}
# kandinsky-community/kandinsky-3 scheduler/ (main): cosine betas (beta_start/end unused), x0 clipped to [-1, 1] on
# unscaled MoVQ latents, "leading" spacing + 1. DDPMScheduler and DPMSolverScheduler (dpm_solver_from) read it as it is.
KANDINSKY_3_DDPM = {
    "_class_name": "DDPMScheduler", "beta_end": 0.012, "beta_schedule": "squaredcos_cap_v2", "beta_start": 0.00085,
    "clip_sample": True, "clip_sample_range": 1.0, "dynamic_thresholding_ratio": 0.995, "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False, "steps_offset": 1,
    "thresholding": False, "timestep_spacing": "leading", "trained_betas": None, "variance_type": "fixed_small",
}
KANDINSKY_PRIOR_UNCLIP = {
    "_class_name": "UnCLIPScheduler", "clip_sample": True, "clip_sample_range": 10.0, "num_train_timesteps": 1000,
    "prediction_type": "sample", "variance_type": "fixed_small_log",
}


@dataclass
class SchedulerConfig:
    """The `scheduler_config.json` keys these schedulers read; defaults are diffusers' DDPMScheduler defaults."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    trained_betas: tuple | None = None
    rescale_betas_zero_snr: bool = False
    prediction_type: str = "epsilon"
    variance_type: str | None = "fixed_small"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    timestep_spacing: str = "leading"
    use_karras_sigmas: bool = False


_COMMON_CHOICES = {
    "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
    "prediction_type": ("epsilon", "sample"),
    "timestep_spacing": ("leading", "linspace", "trailing"),
    "trained_betas": (None,),
    "rescale_betas_zero_snr": (False,),
}

# DPMSolverMultistepScheduler options this solver fixes, each at diffusers' default value.
_DPM_FIXED = {
    "algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint", "lower_order_final": True,
    "euler_at_final": False, "final_sigmas_type": "zero", "lambda_min_clipped": -math.inf, "use_lu_lambdas": False,
    "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_flow_sigmas": False,
    "use_dynamic_shifting": False,
}


def _cosine_betas(n, max_beta=0.999):
    """Improved-DDPM cosine schedule ("squaredcos_cap_v2", Nichol & Dhariwal 2021), betas capped at `max_beta`."""
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)],
                        dtype=torch.float32)


def _betas(config):
    """The training beta schedule in float32, as diffusers builds it."""
    n = config.num_train_timesteps
    if config.beta_schedule == "linear":
        return torch.linspace(config.beta_start, config.beta_end, n, dtype=torch.float32)
    if config.beta_schedule == "scaled_linear":
        return torch.linspace(config.beta_start ** 0.5, config.beta_end ** 0.5, n, dtype=torch.float32) ** 2
    return _cosine_betas(n)


def _spaced_timesteps(spacing, n, num_train, offset):
    """n descending integer timesteps with diffusers' "linspace"/"leading"/"trailing" spacing (arXiv:2305.08891 t.2)."""
    if spacing == "trailing":
        return (torch.arange(num_train, 0, -num_train / n, dtype=torch.float64).round() - 1).long()
    if spacing == "linspace":
        t = (torch.arange(n, dtype=torch.float64) * ((num_train - 1) / max(n - 1, 1))).round()
    else:
        t = torch.arange(n, dtype=torch.float64) * (num_train // n) + offset
    return t.flip(0).long()


def _add_noise(alphas_cumprod, x0, noise, t):
    """sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise, with t an int or one timestep per sample."""
    abar = alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[torch.as_tensor(t, device=x0.device)]
    shape = (-1,) + (1,) * (x0.ndim - 1)
    return (abar ** 0.5).reshape(shape) * x0 + ((1 - abar) ** 0.5).reshape(shape) * noise


def _split_variance(model_output, sample):
    """(prediction, learned-variance channels or None): the Kandinsky UNet emits epsilon then v in [-1, 1]."""
    if model_output.shape[1] == 2 * sample.shape[1]:
        return model_output.split(sample.shape[1], dim=1)
    return model_output, None


def _threshold(x0, ratio, max_value):
    """Imagen's dynamic thresholding per sample: s = clamp(quantile(|x0|, ratio), 1, max); x0 = clamp(x0, -s, s) / s."""
    flat = x0.reshape(x0.shape[0], -1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()  # quantile needs float32/64
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(1, max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(x0.dtype)


def _randn(like, generator):
    """Noise shaped like `like`, drawn on the generator's device (CPU without one), then moved to `like`'s device."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _posterior_mean(x0, sample, abar_t, abar_prev, alpha, beta):
    """Mean of q(x_prev | x_t, x0), DDPM paper eq. 7; alpha and beta are the step's own (1 - beta = alpha)."""
    return (abar_prev ** 0.5 * beta) / (1 - abar_t) * x0 + alpha ** 0.5 * (1 - abar_prev) / (1 - abar_t) * sample


class _Scheduler:
    """Shared pieces: config reading and checking, the beta schedule, the x0 estimate, clipping and add_noise."""

    _defaults = {}
    _choices = _COMMON_CHOICES
    init_noise_sigma = 1.0

    def __init__(self, config=None):
        self.config = from_dict(SchedulerConfig, self._defaults) if config is None else config
        for key, supported in self._choices.items():
            value = getattr(self.config, key)
            if value not in supported:
                raise KandinskyError(f"{type(self).__name__} does not support {key}={value!r}; "
                                     f"use one of {supported}.")
        self.betas = _betas(self.config)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.one = torch.tensor(1.0)
        self.timesteps = torch.arange(self.config.num_train_timesteps - 1, -1, -1)
        self.num_inference_steps = None

    @classmethod
    def from_config(cls, d):
        """Build from a diffusers `scheduler_config.json` dict; keys this scheduler does not read are ignored."""
        return cls(from_dict(SchedulerConfig, {**cls._defaults, **d}))

    def _check_steps(self, n, least=1):
        """Raise unless `least` <= n <= num_train_timesteps, then remember n."""
        top = self.config.num_train_timesteps
        if not least <= n <= top:
            raise KandinskyError(f"{type(self).__name__}: {n} inference steps is out of range; use {least} to {top}.")
        self.num_inference_steps = n

    def _x0(self, model_output, sample, abar_t):
        """The model's estimate of the clean sample."""
        if self.config.prediction_type == "sample":
            return model_output
        return (sample - (1 - abar_t) ** 0.5 * model_output) / abar_t ** 0.5

    def _clip(self, x0):
        """Dynamic thresholding or plain clamping of the x0 estimate, as configured."""
        c = self.config
        if c.thresholding:
            return _threshold(x0, c.dynamic_thresholding_ratio, c.sample_max_value)
        if c.clip_sample:
            return x0.clamp(-c.clip_sample_range, c.clip_sample_range)
        return x0

    def set_timesteps(self, n):
        """Lay out n inference timesteps (descending LongTensor, also kept as `self.timesteps`)."""
        self._check_steps(n)
        c = self.config
        timesteps = _spaced_timesteps(c.timestep_spacing, n, c.num_train_timesteps, c.steps_offset)
        if timesteps[0] >= c.num_train_timesteps:
            raise KandinskyError(f"{n} steps with steps_offset {c.steps_offset} reach timestep {int(timesteps[0])}, "
                                 f"past the schedule's {c.num_train_timesteps}; use fewer steps.")
        self.timesteps = timesteps
        return self.timesteps

    def add_noise(self, x0, noise, t):
        """Noise clean samples to timestep t (an int, or a tensor with one timestep per sample)."""
        return _add_noise(self.alphas_cumprod, x0, noise, t)

    def set_begin_index(self, begin_index=0):
        """Where a shortened (img2img) run starts; only the multistep DPM-Solver needs to know."""

    def predict_x0(self, model_output, t, sample):
        """The unclipped clean-sample estimate at training timestep t, e.g. for previews; changes no state."""
        model_output, _ = _split_variance(model_output, sample)
        return self._x0(model_output, sample, self.alphas_cumprod[int(t)])


class DDIMScheduler(_Scheduler):
    """Deterministic DDIM sampling with eta = 0 (Song et al. 2020, arXiv:2010.02502), as diffusers' DDIMScheduler."""

    def __init__(self, config=None):
        super().__init__(config)
        self.final_alpha_cumprod = self.one if self.config.set_alpha_to_one else self.alphas_cumprod[0]

    def step(self, model_output, t, sample, generator=None, prev_timestep=None):
        """x at the previous timestep (t - train_steps // n unless given); eta = 0, so `generator` is never drawn."""
        if self.num_inference_steps is None:
            raise KandinskyError("DDIMScheduler.step needs the step count: call set_timesteps(n) first.")
        t = int(t)
        prev = t - self.config.num_train_timesteps // self.num_inference_steps
        prev = prev if prev_timestep is None else int(prev_timestep)
        model_output, _ = _split_variance(model_output, sample)
        abar_t = self.alphas_cumprod[t]
        abar_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        x0 = self._x0(model_output, sample, abar_t)
        eps = model_output
        if self.config.prediction_type == "sample":
            eps = (sample - abar_t ** 0.5 * x0) / (1 - abar_t) ** 0.5
        x0 = self._clip(x0)
        return abar_prev ** 0.5 * x0 + (1 - abar_prev) ** 0.5 * eps


class DDPMScheduler(_Scheduler):
    """Ancestral DDPM sampling (Ho et al. 2020, arXiv:2006.11239), as diffusers' DDPMScheduler.

    Variance: "fixed_small" (posterior variance), "fixed_small_log" (the same via exp/log) or "learned_range"
    (improved DDPM: log-variance interpolated between posterior and beta by the UNet's second C channels).
    """

    _choices = {**_COMMON_CHOICES, "variance_type": ("fixed_small", "fixed_small_log", "learned_range")}

    def _previous(self, t):
        """The timestep after t in `self.timesteps` (-1 after the last)."""
        hits = (self.timesteps == t).nonzero().flatten()
        if len(hits) == 0:
            raise KandinskyError(f"DDPMScheduler: timestep {t} is not in the schedule; pass prev_timestep "
                                 "or use a timestep from set_timesteps().")
        i = int(hits[0]) + 1
        return int(self.timesteps[i]) if i < len(self.timesteps) else -1

    def step(self, model_output, t, sample, generator=None, prev_timestep=None):
        """x at the previous timestep (next in the schedule unless given); draws one noise tensor when t > 0."""
        t = int(t)
        prev = self._previous(t) if prev_timestep is None else int(prev_timestep)
        model_output, v = _split_variance(model_output, sample)
        kind = self.config.variance_type
        if kind == "learned_range" and v is None:
            raise KandinskyError("DDPMScheduler with variance_type 'learned_range' needs the UNet's full output "
                                 f"(2 x {sample.shape[1]} channels: epsilon, then variance); "
                                 f"got {model_output.shape[1]}.")
        abar_t = self.alphas_cumprod[t]
        abar_prev = self.alphas_cumprod[prev] if prev >= 0 else self.one
        alpha = abar_t / abar_prev
        beta = 1 - alpha
        x0 = self._clip(self._x0(model_output, sample, abar_t))
        mean = _posterior_mean(x0, sample, abar_t, abar_prev, alpha, beta)
        if t == 0:
            return mean
        noise = _randn(model_output, generator)
        var = torch.clamp((1 - abar_prev) / (1 - abar_t) * beta, min=1e-20)
        if kind == "fixed_small":
            std = var ** 0.5
        elif kind == "fixed_small_log":
            std = torch.exp(0.5 * torch.log(var))
        else:
            frac = (v + 1) / 2
            std = torch.exp(0.5 * (frac * torch.log(beta) + (1 - frac) * torch.log(var)))
        return mean + std * noise


class UnCLIPScheduler(_Scheduler):
    """DDPM sampling over skipped timesteps with "fixed_small_log" variance, as diffusers' UnCLIPScheduler (priors).

    Timesteps are round(i * 999 / (n - 1)), descending; the prior passes the next one as `prev_timestep`.
    """

    _defaults = {"beta_schedule": "squaredcos_cap_v2", "variance_type": "fixed_small_log"}
    _choices = {"beta_schedule": ("squaredcos_cap_v2",), "variance_type": ("fixed_small_log",),
                "prediction_type": ("epsilon", "sample")}

    def set_timesteps(self, n):
        """Lay out n >= 2 timesteps from num_train_timesteps - 1 down to 0 (descending LongTensor)."""
        self._check_steps(n, least=2)
        self.timesteps = _spaced_timesteps("linspace", n, self.config.num_train_timesteps, 0)
        return self.timesteps

    def step(self, model_output, t, sample, generator=None, prev_timestep=None):
        """x at prev_timestep (t - 1 if None); draws one noise tensor when t > 0."""
        t = int(t)
        prev = t - 1 if prev_timestep is None else int(prev_timestep)
        abar_t = self.alphas_cumprod[t]
        abar_prev = self.alphas_cumprod[prev] if prev >= 0 else self.one
        if prev == t - 1:
            beta, alpha = self.betas[t], self.alphas[t]
        else:
            beta = 1 - abar_t / abar_prev
            alpha = 1 - beta
        x0 = self._x0(model_output, sample, abar_t)
        if self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        mean = _posterior_mean(x0, sample, abar_t, abar_prev, alpha, beta)
        if t == 0:
            return mean
        noise = _randn(model_output, generator)
        var = (1 - abar_prev) / (1 - abar_t) * beta
        return mean + torch.exp(0.5 * torch.log(torch.clamp(var, min=1e-20))) * noise


def _sigma_to_t(sigmas, log_train_sigmas):
    """Fractional timesteps where the training schedule has these sigmas, linear in log sigma (as k-diffusion)."""
    log_s = sigmas.clamp(min=1e-10).log()
    table = log_train_sigmas.double()
    low = (torch.searchsorted(table, log_s, right=True) - 1).clamp(0, len(table) - 2)
    w = ((table[low] - log_s) / (table[low] - table[low + 1])).clamp(0, 1)
    return (1 - w) * low + w * (low + 1)


class DPMSolverScheduler(_Scheduler):
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095): multistep second-order ODE solver on the data (x0)
    prediction in log-SNR time, with optional Karras et al. 2022 (arXiv:2206.00364) sigmas, rho = 7.

    Same results as diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2) with its
    other defaults: the first step (and first after set_timesteps) and the last step are first order (DPM-Solver++1,
    i.e. DDIM), the final sigma is 0, and "linspace" spacing unless the config names another. The solver keeps the
    previous x0 estimate between steps; set_timesteps resets it. Deterministic: draws no noise.
    For img2img, `set_begin_index(i)` starts at timesteps[i] (diffusers' semantics); init_noise_sigma is 1.
    """

    _defaults = {"timestep_spacing": "linspace"}

    def __init__(self, config=None):
        super().__init__(config)
        self.sigmas = None
        self._train_sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self._reset()

    @classmethod
    def from_config(cls, d):
        """Build from a diffusers scheduler config dict (any VP config: DDPM, DDIM, DPMSolverMultistep)."""
        for key, value in _DPM_FIXED.items():
            if d.get(key, value) != value:
                raise KandinskyError(f"DPMSolverScheduler implements {key}={value!r} only; got {d[key]!r}.")
        return super().from_config(d)

    def _reset(self):
        """Forget the solver history and the start index."""
        self._prev_x0 = None
        self._step_index = None
        self._begin_index = None

    def set_timesteps(self, n):
        """Lay out n timesteps and their n + 1 sigmas (the last 0); resets the solver history."""
        self._check_steps(n)
        c = self.config
        if c.use_karras_sigmas:
            lo, hi = self._train_sigmas[0].item(), self._train_sigmas[-1].item()
            ramp = torch.linspace(0, 1, n, dtype=torch.float64)
            sigmas = (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
            t = _sigma_to_t(sigmas, self._train_sigmas.log())
            timesteps = (t if c.beta_schedule == "squaredcos_cap_v2" else t.round()).long()
        else:
            timesteps = self._spaced(n)
            # diffusers interpolates, which holds the end value for a timestep pushed past it by steps_offset
            sigmas = self._train_sigmas[timesteps.clamp(max=c.num_train_timesteps - 1)]
        self.sigmas = torch.cat([sigmas.float(), torch.zeros(1)])
        self.timesteps = timesteps
        self._reset()
        return self.timesteps

    def _spaced(self, n):
        """Spaced timesteps; diffusers' DPM lays "linspace"/"leading" out over n + 1 points and drops the last."""
        c = self.config
        if c.timestep_spacing == "trailing":
            return _spaced_timesteps("trailing", n, c.num_train_timesteps, c.steps_offset)
        return _spaced_timesteps(c.timestep_spacing, n + 1, c.num_train_timesteps, c.steps_offset)[:-1]

    def set_begin_index(self, begin_index=0):
        """Start sampling (and add_noise) at timesteps[begin_index] instead of looking the timestep up."""
        self._begin_index = begin_index

    def _index_for(self, t):
        """diffusers' index_for_timestep: the second match if t repeats, the last step if t is absent."""
        hits = (self.timesteps == int(t)).nonzero().flatten()
        if len(hits) == 0:
            return len(self.timesteps) - 1
        return int(hits[1] if len(hits) > 1 else hits[0])

    def _alpha_sigma(self, i):
        """VP coefficients alpha, sigma and log-SNR lambda for self.sigmas[i] (= sigma / alpha)."""
        s = self.sigmas[i]
        alpha = 1 / ((s ** 2 + 1) ** 0.5)
        sigma = s * alpha
        return alpha, sigma, torch.log(alpha) - torch.log(sigma)

    def step(self, model_output, t, sample, generator=None, prev_timestep=None):
        """x at the next sigma; `generator` and `prev_timestep` are accepted for a uniform interface, unused."""
        if self.sigmas is None:
            raise KandinskyError("DPMSolverScheduler.step needs a schedule: call set_timesteps(n) first.")
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else self._index_for(t)
        i = self._step_index
        if i >= len(self.timesteps):
            raise KandinskyError(f"DPMSolverScheduler: all {len(self.timesteps)} steps are taken. A repeated start "
                                 "timestep is looked up at its second match; call set_begin_index(i) first.")
        model_output, _ = _split_variance(model_output, sample)
        alpha_s, sigma_s, lambda_s = self._alpha_sigma(i)
        x0 = model_output
        if self.config.prediction_type == "epsilon":
            x0 = (sample - sigma_s * model_output) / alpha_s
        if self.config.thresholding:
            x0 = _threshold(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)
        alpha_t, sigma_t, lambda_t = self._alpha_sigma(i + 1)
        h = lambda_t - lambda_s
        coeff = alpha_t * (torch.exp(-h) - 1.0)
        x = (sigma_t / sigma_s) * sample.float() - coeff * x0
        if self._prev_x0 is not None and i < len(self.timesteps) - 1:
            r = (lambda_s - self._alpha_sigma(i - 1)[2]) / h
            x = x - 0.5 * coeff * ((1.0 / r) * (x0 - self._prev_x0))
        self._prev_x0 = x0
        self._step_index += 1
        return x.to(x0.dtype)

    def add_noise(self, x0, noise, t):
        """alpha * x0 + sigma * noise at the step t starts (the begin/current index once set_begin_index was used)."""
        t = torch.as_tensor(t).reshape(-1)
        if self._begin_index is None:
            index = [self._index_for(v) for v in t]
        else:
            index = [self._step_index if self._step_index is not None else self._begin_index] * len(t)
        s = self.sigmas.to(device=x0.device, dtype=x0.dtype)[index].reshape((-1,) + (1,) * (x0.ndim - 1))
        alpha = 1 / ((s ** 2 + 1) ** 0.5)
        return alpha * x0 + s * alpha * noise


SCHEDULERS = {"DDIMScheduler": DDIMScheduler, "DDPMScheduler": DDPMScheduler, "UnCLIPScheduler": UnCLIPScheduler,
              "DPMSolverMultistepScheduler": DPMSolverScheduler}


def scheduler_from_config(d, default="DDPMScheduler"):
    """The scheduler a diffusers config dict names in `_class_name` (`default` when it names none)."""
    name = d.get("_class_name", default)
    if name not in SCHEDULERS:
        raise KandinskyError(f"Scheduler class {name!r} is not supported; use one of {tuple(SCHEDULERS)}.")
    return SCHEDULERS[name].from_config(d)


def dpm_solver_from(d, karras=True):
    """A DPM-Solver++(2M) scheduler on the noise schedule of any decoder config dict (DDIM or DDPM)."""
    return DPMSolverScheduler.from_config({**d, "use_karras_sigmas": karras})


def add_noise_kandinsky21_img2img(x0, noise, t):
    """Kandinsky 2.1 img2img's own noising: betas linspace(1e-4, 0.02, 1000), whatever the sampling scheduler."""
    betas = torch.linspace(0.0001, 0.02, 1000, dtype=torch.float32)
    return _add_noise(torch.cumprod(1.0 - betas, dim=0), x0, noise, t)
