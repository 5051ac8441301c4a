"""What the pack's samplers do with inputs KSampler has an answer for, on a real server: denoise 0 returns the latent
unchanged (KSampler's answer), and a conditioning strength on a single entry changes nothing (KSampler divides each
prediction by the strengths covering it, so it cancels there too). The modifiers the samplers refuse (area, mask,
timestep range, noise mask, Combine) are rows of test_hostile.py.
"""
import pytest
import torch

from test_comfy_nodes import run, saved_latents
from test_k3_comfy import K3Graph


@pytest.fixture(scope="module")
def ws(comfy):
    with comfy.listen() as listener:
        yield listener


def ksampler(g, model, positive, negative, latent, denoise=1.0, seed=2, steps=3):
    return g.add("KSampler", model=model, positive=positive, negative=negative, latent_image=latent, seed=seed,
                 steps=steps, cfg=4.0, sampler_name="euler", scheduler="normal", denoise=denoise)[0]


def latents(comfy, ws, g, links):
    """{name: the LATENT samples Save Latent wrote} for {name: link}, in one prompt."""
    saves = {name: g.save_latent(link, f"modifiers_{name}") for name, link in links.items()}
    entry, _ = run(comfy, ws, g)
    return {name: saved_latents(comfy, entry, save) for name, save in saves.items()}


def test_denoise_0_returns_the_latent_unchanged(comfy, ws):
    g = K3Graph()
    model, clip, movq = g.k3()
    k3_in = g.add("Kandinsky2MoVQEncode", movq=movq, image=g.load_image()[0])[0]
    decoder, cond = g.decoder("2.2"), g.prior_encode(g.prior("2.2"))
    k22_in = g.add("Kandinsky2MoVQEncode", movq=decoder[1], image=g.load_image()[0])[0]
    out = latents(comfy, ws, g, {
        "k3_in": k3_in, "k3_out": g.k3_sampler(model, g.encode(clip), k3_in, denoise=0.0)[0],
        "k22_in": k22_in, "k22_out": g.sampler(decoder, cond[0], cond[1], k22_in, denoise=0.0)[0],
        "ksampler": ksampler(g, model, g.encode(clip), g.encode(clip, ""), k3_in, denoise=0.0)})
    assert out["k3_in"].abs().max() > 0 and out["k3_in"].shape == out["k3_out"].shape
    assert torch.equal(out["k3_out"], out["k3_in"]) and torch.equal(out["k22_out"], out["k22_in"])
    assert torch.allclose(out["ksampler"], out["k3_in"], rtol=0, atol=1e-6)  # what KSampler does


def test_strength_of_a_single_entry_changes_nothing_as_in_ksampler(comfy, ws):
    g = K3Graph()
    model, clip, _ = g.k3()
    plain, negative = g.encode(clip), g.encode(clip, "")
    strong = g.add("ConditioningSetAreaStrength", conditioning=plain, strength=3.0)[0]
    latent = g.empty_latent()[0]
    decoder, cond = g.decoder("2.2"), g.prior_encode(g.prior("2.2"))
    strong22 = g.add("ConditioningSetAreaStrength", conditioning=cond[0], strength=3.0)[0]
    out = latents(comfy, ws, g, {
        "k3": g.k3_sampler(model, plain, latent)[0], "k3_strong": g.k3_sampler(model, strong, latent)[0],
        "k22": g.sampler(decoder, cond[0], cond[1], latent)[0],
        "k22_strong": g.sampler(decoder, strong22, cond[1], latent)[0],
        "ks": ksampler(g, model, plain, negative, latent), "ks_strong": ksampler(g, model, strong, negative, latent)})
    assert torch.equal(out["k3_strong"], out["k3"]) and torch.equal(out["k22_strong"], out["k22"])
    assert (out["ks"] - out["k3"]).abs().max() > 1e-3  # KSampler samples otherwise: the check below means something
    # KSampler: strength 3 cancels too, to the rounding of (3·ε)/3 (the tiny random UNet's latents reach 1e4)
    assert torch.allclose(out["ks_strong"], out["ks"], rtol=1e-5, atol=1e-5)

