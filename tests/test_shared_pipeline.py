"""What the pipelines share: one sampling loop, the family split (Kandinsky 3 imports no 2.x module), frozen loaded
models, entry points without autograd, per-family guidance defaults, and configs checked before any weights."""
import ast
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kandinsky_core.kandinsky2 import decoder_pipeline as D
from kandinsky_core.kandinsky2 import depth
from kandinsky_core.kandinsky2 import loading as L
from kandinsky_core.kandinsky2 import prior_pipeline as P
from kandinsky_core import sampling
from kandinsky_core.kandinsky2 import tiny
from kandinsky_core.errors import Cancelled, KandinskyError
from kandinsky_core.kandinsky3 import loading as K3L
from kandinsky_core.kandinsky3 import pipeline as K3
from kandinsky_core.kandinsky3 import tiny as k3_tiny
from kandinsky_core.kandinsky3.t5 import load_t5
from kandinsky_core.kandinsky3.tiny_text import T5_TINY

CORE = Path(__file__).resolve().parents[1] / "kandinsky_core"
TWO_X = {"decoder_pipeline", "prior_pipeline", "unet", "prior", "text_encoder", "mixing", "depth", "lora", "tiny"}
TWO_X_LOADERS = {"load_decoder_models", "load_prior_models", "load_mclip"}


def imports(path):
    """(module relative to kandinsky_core, imported name) for every relative `from` import of a core file."""
    package = path.parent.relative_to(CORE).parts
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1] + ((node.module,) if node.module else ())
            for alias in node.names:
                yield ".".join(base), alias.name


def test_kandinsky3_imports_no_2x_module():
    for path in (CORE / "kandinsky3").glob("*.py"):
        for module, name in imports(path):
            assert module not in TWO_X and not (module == "" and name in TWO_X), (path.name, module, name)
            assert name not in TWO_X_LOADERS, (path.name, name)
        used = {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)}
        assert not used & TWO_X_LOADERS, path.name


def test_no_private_name_crosses_modules():
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        private = [name for _, name in imports(path) if name.startswith("_")]
        relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
        modules = {a.asname or a.name for n in relative for a in n.names}
        private += [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                    and n.value.id in modules and n.attr.startswith("_") and not n.attr.startswith("__")]
        assert not private, (path.relative_to(CORE), private)


class Halving:
    """A toy scheduler: every step halves the sample; its x0 estimate is the model output."""

    def step(self, model_output, t, sample, generator=None):
        return sample / 2 + 0 * model_output

    def predict_x0(self, model_output, t, sample):
        return model_output


def test_loop_calls_the_model_steps_and_reports():
    calls, seen = [], []

    def model(x, t):
        calls.append((x.clone(), int(t)))
        return x + 1

    def callback(info):
        seen.append((info["step"], info["total"], info["t"], info["denoised"]()))

    x = torch.ones(1, 2, requires_grad=True)
    out = sampling.denoise(model, Halving(), x, torch.tensor([7, 3]), callback=callback)
    assert torch.equal(out, torch.full((1, 2), 0.25)) and not out.requires_grad
    assert [t for _, t in calls] == [7, 3] and torch.equal(calls[1][0], torch.full((1, 2), 0.5))
    assert [s[:3] for s in seen] == [(0, 2, 7), (1, 2, 3)] and torch.equal(seen[1][3], torch.full((1, 2), 1.5))
    with pytest.raises(Cancelled, match="step 1 of 2"):
        sampling.denoise(model, Halving(), x, torch.tensor([7, 3]), callback=lambda info: False)


def test_guidance_error_names_each_family_default():
    nan = math.nan
    with pytest.raises(KandinskyError, match=r"\(3 is the published default\)"):
        K3.sample_text_to_image(None, (torch.zeros(1, 2, 4), torch.ones(1, 2)), None, (1, 4, 8, 8), guidance_scale=nan)
    with pytest.raises(KandinskyError, match=r"\(4 is the published default\)"):
        P.sample_prior(None, "a cat", guidance_scale=nan)
    with pytest.raises(KandinskyError, match=r"\(4 is the published default\)"):
        D.conditioning(SimpleNamespace(unet=torch.nn.Linear(1, 1)), torch.zeros(1, 4), None, None, None, 1, nan)
    with pytest.raises(KandinskyError, match=r"about 10\.$"):
        sampling.check_guidance(nan)


def all_frozen(*models):
    return all(not p.requires_grad for m in models for p in m.parameters())


@pytest.fixture(scope="module")
def k3_folder(tmp_path_factory):
    return k3_tiny.write_kandinsky3(str(tmp_path_factory.mktemp("hub") / "kandinsky-3"))


def test_loaded_models_are_frozen(k3_folder, tmp_path):
    k3 = K3L.load_kandinsky3(k3_folder, dtype=torch.float32)
    assert all_frozen(k3.unet, k3.movq, k3.text_encoder)
    decoder = L.load_decoder_models(tiny.write_decoder(str(tmp_path / "d21"), tiny.DECODERS["kandinsky-2-1"][0]))
    assert all_frozen(decoder.unet, decoder.movq, decoder.text_encoder)
    prior = L.load_prior_models(tiny.write_prior(str(tmp_path / "p22")))
    assert all_frozen(prior.prior, prior.text_encoder, prior.image_encoder)
    assert all_frozen(depth.load_depth_model(tiny.write_depth_model(str(tmp_path / "dpt")))[0])


def test_kandinsky3_latents_decode_with_autograd_on():
    (unet, _), (movq, _) = k3_tiny.tiny_models()
    models = K3.Kandinsky3Models(unet.float().requires_grad_(True), movq.float().requires_grad_(True), None)
    assert torch.is_grad_enabled()
    latents = K3.encode_image(models, torch.rand(1, 3, 64, 64))
    assert not latents.requires_grad
    image = K3.finish(models, latents, "np")
    assert isinstance(image, np.ndarray) and image.shape == (1, 64, 64, 3)


def test_decoder_latents_decode_with_autograd_on(tmp_path):
    folder = tiny.write_decoder(str(tmp_path / "d22"), tiny.DECODERS["kandinsky-2-2-decoder"][0])
    models = L.load_decoder_models(folder)
    models.unet.requires_grad_(True), models.movq.requires_grad_(True)
    latents = D.encode_image(models, torch.rand(1, 3, 64, 64), 64, 64, 1)
    cond = D.conditioning(models, torch.zeros(1, 48), torch.zeros(1, 48), None, None, 1, 4.0)
    assert not latents.requires_grad and not any(c.requires_grad for c in cond.values())
    assert D.finish(models, latents, "np").shape == (1, 64, 64, 3)


def test_prior_entry_points_run_without_autograd(tmp_path):
    models = L.load_prior_models(tiny.write_prior(str(tmp_path / "p22")))
    for part in (models.prior, models.text_encoder, models.image_encoder):
        part.requires_grad_(True)
    cond = P.encode_prompts(models, ["a cat"], None, 1, False)
    assert not any(c.requires_grad for c in cond.values())
    assert not P.zero_image_embeds(models, 2).requires_grad


def test_every_config_is_checked_before_any_weights(k3_folder, tmp_path):
    folder = shutil.copytree(k3_folder, tmp_path / "kandinsky-3")
    unet = folder / "unet" / k3_tiny.WEIGHTS
    unet.write_bytes(unet.read_bytes()[:1000])  # reading the UNet would fail first
    config = folder / "text_encoder" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "d_model": 4096, "num_heads": 64, "d_kv": 64,
                                  "d_ff": 10240}))
    with pytest.raises(KandinskyError, match="not the Kandinsky 3 Flan-UL2 encoder"):
        K3L.load_kandinsky3(str(folder))


def test_t5_config_that_does_not_fit_its_weights_says_which_to_copy(k3_folder, tmp_path):
    folder = shutil.copytree(Path(k3_folder) / "text_encoder", tmp_path / "text_encoder")
    (folder / "config.json").write_text(json.dumps({**T5_TINY.to_dict(), "d_ff": 40}))
    origin = r"copy the one that came with them \(kandinsky-3's text_encoder/config\.json\)"
    with pytest.raises(KandinskyError, match=origin):
        load_t5(str(folder))
    (folder / "config.json").write_text(json.dumps({**T5_TINY.to_dict(), "num_layers": T5_TINY.num_layers + 1}))
    with pytest.raises(KandinskyError, match="9 missing tensors.*a shard may be missing or belong to another model"):
        load_t5(str(folder))
