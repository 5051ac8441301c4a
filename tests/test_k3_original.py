"""Kandinsky 3.0 / 3.1 / Flash / inpainting from the original ai-forever files, against the original code.

The fixtures in tests/fixtures/k3_original/ are what the original code (ai-forever/Kandinsky-3 a4c9e92) computed from
the numpy-seeded tiny weights of `kandinsky_core.kandinsky3.tiny_original`; `tools/k3_original_fixtures.py` remakes
them from a checkout of it. Here the same weights are written in the published file layouts, loaded through our
loaders and run through our models, samplers and pipelines.
"""
import gzip
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kandinsky_core.errors import KandinskyError
from kandinsky_core.kandinsky3 import original as O
from kandinsky_core.kandinsky3 import original_pipeline as OP
from kandinsky_core.kandinsky3 import tiny_original as TO
from kandinsky_core.kandinsky3.unet import UNET3, UNet
from kandinsky_core import images, movq
from kandinsky_core.movq import MOVQ_K3, MoVQ

FIXTURES = Path(__file__).parent / "fixtures" / "k3_original"
CASES = json.loads((FIXTURES / "cases.json").read_text())
# fp32: the same arithmetic in another order (SDPA against einsum attention), relative to the output's scale; the
# fixtures were made with AVX-512 kernels, and AVX2 ones round differently again (measured up to 1.4e-5).
REL_TOL = 3e-5
PIPELINE_TOL = 1e-4  # images in [0, 1] (8-bit levels are 3.9e-3 apart)
# Flash predicts x0 at t = 979, dividing by √ᾱ = 0.031: with random weights its tiny latents reach ±136, and the
# UNet's last float bits grow 30-fold into the image (measured 6.7e-4, a sixth of an 8-bit level).
# Measured 6.8e-3 on an AMX Xeon (1.7 8-bit levels): 1e-2 still separates rounding from a wrong step, which moves
# the image by tenths.
FLASH_PIPELINE_TOL = 1e-2
# The 3.1 sampler's first step (t = 999) divides ε by √ᾱ = 4.9e-5: the UNet's last float bits (REL_TOL apart across
# CPUs) become differences of order one in the x0 estimate, which dynamic thresholding clamps to the percentile range
# only where it saturates. What survives in the unclamped values reached 1.4e-3 on an AMX Xeon (base3), where the
# AVX-512 cores that made the fixtures agree to 3e-5. A wrong sampler formula moves latents by tenths.
SAMPLER_TOL = 5e-3


@pytest.fixture(scope="module")
def fx():
    return load_file(FIXTURES / "cases.safetensors")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every original layout, written from the fixtures' weights: 3.1 (UNet + projection file), 3.0 (projection
    inside), inpainting, movq.pt and the flan_ul2_encoder/ folder with the fixtures' tokenizer."""
    root = tmp_path_factory.mktemp("k3_original")
    unet, projection, null = TO.original_unet_state()
    out = {"unet": TO.write_unet(root / "kandinsky3.pt", unet, null),
           "unet30": TO.write_unet(root / "kandinsky3_30.pt", unet, null, projection_3_0=projection),
           "inpaint": TO.write_unet(root / "kandinsky3_inpainting.pt", {**unet, **TO.inpainting_in_layer()}, null),
           "movq": TO.write_movq(root / "movq.pt", TO.original_movq_state())}
    encoder = TO.write_flan_ul2_encoder(root / "flan_ul2_encoder", projections={"projection.pt": projection})
    for name in ("spiece.model", "added_tokens.json", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(FIXTURES / name, encoder / name)
    out.update(encoder=encoder, projection=encoder / "projection.pt", null=null, state=(unet, projection))
    return out


@pytest.fixture(scope="module")
def models(files):
    return O.load_original(files["unet"], files["movq"], files["encoder"], files["projection"])


@pytest.fixture(scope="module")
def inpaint_models(files, models):
    unet, null = O.load_unet(files["inpaint"], files["projection"])
    return OP.OriginalModels(unet, models.movq, null, models.text_encoder, models.tokenizer)


def max_diff(a, b):
    return float((a.double() - b.double()).abs().max())


def rel_diff(a, b):
    """The largest difference relative to the reference's scale (at least 1)."""
    return max_diff(a, b) / max(1.0, float(b.abs().max()))


def test_time_features_are_computed_as_the_original():
    """At the published width the original's frequencies round differently from diffusers': up to 6e-5 apart. Ours
    agrees with the original to a few float32 steps of sin/cos near 1 (vectorised sin/cos kernels differ by CPU:
    1.9e-6 measured on an AMX Xeon), well apart from diffusers' order of operations."""
    fx = load_file(FIXTURES / "cases.safetensors")
    original = UNet(replace(UNET3, time_features="original"), device="meta")
    diffusers = UNet(UNET3, device="meta")
    assert max_diff(original.time_features(fx["time.t"]), fx["time.features"]) < 5e-6
    assert max_diff(diffusers.time_features(fx["time.t"]), fx["time.features"]) > 1e-5


def test_full_size_key_sets_map_onto_ours():
    keys = json.loads(gzip.open(FIXTURES / "full_size_keys.json.gz", "rt").read())
    counts = {name: (len(v), sum(math.prod(s) for _, s in v)) for name, v in keys.items()}
    assert counts == {"unet4": (1068, 3_038_562_820), "unet9": (1068, 3_038_571_460), "movq": (430, 270_603_567)}
    for name, config in [("unet4", UNET3), ("unet9", replace(UNET3, in_channels=9, out_channels=4))]:
        ours = {k: tuple(v.shape) for k, v in UNet(config, device="meta").state_dict().items()}
        mapped = {O.unet_key(k): tuple(s) for k, s in keys[name]}
        assert mapped == {k: s for k, s in ours.items() if k not in O.PROJECTION_KEYS.values()}
        assert all(TO.original_unet_key(O.unet_key(k)) == k for k, _ in keys[name])
    ours = {k: tuple(v.shape) for k, v in MoVQ(MOVQ_K3, device="meta").state_dict().items()}
    del ours["quantize.embedding.weight"]
    mapped = {movq.original_key(k, 4): tuple(s) for k, s in keys["movq"]}
    assert mapped.keys() == ours.keys()
    assert all(tuple(mapped[k][:2]) == ours[k][:2] for k in ours)  # attention 1×1 convolutions become linear weights
    assert all(TO.original_movq_key(movq.original_key(k, 4), 4)[0] == k for k, _ in keys["movq"])


def test_every_layout_loads_into_the_same_models(files):
    unet31, null31 = O.load_unet(files["unet"], files["projection"])
    unet30, null30 = O.load_unet(files["unet30"])
    assert torch.equal(null31, files["null"]) and torch.equal(null30, files["null"])
    assert all(torch.equal(a, b) for a, b in zip(unet31.state_dict().values(), unet30.state_dict().values()))
    assert unet31.config == TO.ORIGINAL_UNET_TINY
    inpaint, _ = O.load_unet(files["inpaint"], files["projection"])
    assert (inpaint.config.in_channels, inpaint.config.output_channels) == (9, 4)
    half, _ = O.load_unet(files["unet"], files["projection"], dtype=torch.bfloat16)
    assert all(v.dtype == torch.bfloat16 for v in half.state_dict().values())
    assert not any(p.requires_grad for p in unet31.parameters())


def test_unet_forward_matches_the_original(fx, files):
    for name, path in [("unet4", files["unet"]), ("unet9", files["inpaint"])]:
        unet, _ = O.load_unet(path, files["projection"])
        with torch.no_grad():
            out = unet(fx[f"{name}.x"], fx["unet.t"], fx["unet.context"], fx["unet.mask"].float(), projected=True)
        assert rel_diff(out, fx[f"{name}.out"]) < REL_TOL, name


def test_movq_matches_the_original(fx, models):
    with torch.no_grad():
        latent = models.movq.encode(fx["movq.image"])
        assert rel_diff(latent, fx["movq.latent"]) < REL_TOL
        assert rel_diff(models.movq.decode(fx["movq.latent"]), fx["movq.decoded"]) < REL_TOL


def test_conditioning_matches_the_original(fx, models):
    ids, _ = models.tokenizer([CASES["prompt"]], max_length=128)
    assert torch.equal(ids[0], fx["cond.none.ids"])
    positive, negative = OP.encode_prompt(models, CASES["prompt"])
    assert negative is None
    # 1e-5: T5 and projection in fp32, kernels of another CPU (AVX2 measured 1.9e-6); the contexts are O(1)
    assert max_diff(positive[0], fx["cond.none.context"]) < 1e-5 and torch.equal(positive[1], fx["cond.none.mask"])
    null = OP.null_conditioning(positive, models.null_embedding)
    assert torch.equal(null[0][:, 0], models.null_embedding[None]) and not null[0][:, 1:].any()
    assert null[1].tolist() == [[1] + [0] * (positive[1].shape[1] - 1)]
    # A negative as long as the prompt: the original's truncation and mask change nothing, so both agree.
    _, same = OP.encode_prompt(models, CASES["prompt"], CASES["negatives"]["same"])
    assert max_diff(same[0], fx["cond.same.neg_context"]) < 1e-5 and torch.equal(same[1], fx["cond.same.neg_mask"])


@pytest.mark.parametrize("name", ["short", "long"])
def test_negative_prompts_are_encoded_whole(fx, models, name):
    """The original cuts a negative to the prompt's token count (kandinsky-3#18) and lets a shorter one attend the
    prompt's padding; ours is the negative prompt encoded on its own."""
    text = CASES["negatives"][name]
    _, negative = OP.encode_prompt(models, CASES["prompt"], text)
    alone, _ = OP.encode_prompt(models, text)
    assert torch.equal(negative[0], alone[0]) and torch.equal(negative[1], alone[1])
    tokens = int(models.tokenizer([text], max_length=128)[1].sum())
    assert int(negative[1].sum()) == tokens != int(fx[f"cond.{name}.neg_mask"].sum())


def sampler_inputs(fx):
    return (fx["unet.context"][:1].repeat(2, 1, 1), fx["unet.mask"][:1].repeat(2, 1).float())


@pytest.mark.parametrize("name", ["base4", "base3", "flash", "inpaint4"])
def test_samplers_match_the_original(fx, models, inpaint_models, name):
    case = CASES["samplers"][name]
    m = inpaint_models if name.startswith("inpaint") else models
    flash = name == "flash"
    sampler = OP.FlashSampler() if flash else OP.OriginalSampler(case["percentile"])
    concat = torch.cat([fx["sampler.mask"], fx["sampler.masked_latent"]], dim=1) if m is inpaint_models else None
    steps = []
    out = OP.sample(m, sampler_inputs(fx), None, (2, 4, 8, 16), sampler=sampler, steps=len(case["times"]),
                    guidance_scale=None if flash else case["guidance"], concat=concat,
                    generator=torch.Generator().manual_seed(case["seed"]), callback=lambda info: steps.append(info["t"]))
    assert steps == case["times"]
    assert rel_diff(out, fx[f"sampler.{name}"]) < SAMPLER_TOL


def test_sampler_never_returns_nan(fx, models):
    """For 1 and 5 steps the original's float32 sqrt(1 - ᾱs - σ²) is of -6e-8: its image is NaN (black); ours is
    the same step with that square root taken as 0."""
    assert fx["sampler.base5"].isnan().all()
    for steps in (1, 5):
        out = OP.sample(models, sampler_inputs(fx), None, (2, 4, 8, 16), sampler=OP.OriginalSampler(0.99), steps=steps,
                        generator=torch.Generator().manual_seed(7))
        assert out.isfinite().all() and out.abs().max() < 10


def test_pipelines_match_the_original(fx, models, inpaint_models):
    seed, negative = CASES["pipelines"]["seed"], CASES["pipelines"]["negative"]
    common = dict(steps=4, output_type="pt")
    got = {"t2i": OP.text_to_image(models, CASES["prompt"], height=64, width=64, generator=gen(seed), **common),
           "t2i_negative": OP.text_to_image(models, CASES["prompt"], negative_prompt=negative, height=64, width=64,
                                            generator=gen(seed), **common),
           "flash": OP.flash_text_to_image(models, CASES["prompt"], height=128, width=64, generator=gen(seed),
                                           output_type="pt")}
    image = (fx["pipeline.inpaint_image"].permute(2, 0, 1).float() / 255 * 2 - 1)[None]
    got["inpaint"] = OP.inpaint(inpaint_models, CASES["prompt"], image, fx["pipeline.inpaint_mask"],
                                generator=gen(seed), **common)
    for name, out in got.items():
        tol = FLASH_PIPELINE_TOL if name == "flash" else PIPELINE_TOL
        assert max_diff(out, fx[f"pipeline.{name}"]) < tol, f"{name}: {max_diff(out, fx[f'pipeline.{name}']):.2e}"


def test_inpainting_takes_a_negative_prompt(fx, inpaint_models):
    """The original's inpainting pipeline crashes on one (prepare_batch leaves its ids unbatched)."""
    image = (fx["pipeline.inpaint_image"].permute(2, 0, 1).float() / 255 * 2 - 1)[None]
    out = OP.inpaint(inpaint_models, CASES["prompt"], image, fx["pipeline.inpaint_mask"], negative_prompt="blurry",
                     steps=2, generator=gen(0), output_type="pt")
    assert out.shape == (1, 3, 64, 64) and out.isfinite().all()


def test_paste_back_keeps_the_input_outside_the_mask(fx, inpaint_models):
    """Not in the original (it regenerates the whole image): paste_back composites like core ImageCompositeMasked."""
    image = (fx["pipeline.inpaint_image"].permute(2, 0, 1).float() / 255 * 2 - 1)[None]
    mask = fx["pipeline.inpaint_mask"].float().reshape(1, 1, *image.shape[-2:])
    run = dict(steps=2, output_type="pt")
    plain = OP.inpaint(inpaint_models, CASES["prompt"], image, mask, generator=gen(3), **run)
    pasted = OP.inpaint(inpaint_models, CASES["prompt"], image, mask, generator=gen(3), paste_back=True, **run)
    kept, hole = (mask == 0).expand_as(pasted), (mask == 1).expand_as(pasted)
    assert kept.any() and hole.any()
    source = image * 0.5 + 0.5
    assert max_diff(pasted[kept], source[kept]) < 1e-6  # the input itself, up to the [-1, 1] round trip
    assert max_diff(pasted[hole], plain[hole]) == 0  # the repainted pixels are the pipeline's own
    assert max_diff(plain[kept], source[kept]) > 0.05  # tiny random weights: without it the input is not kept


def test_paste_back_serves_a_batch_and_names_a_size_mismatch():
    generated, image = torch.zeros(4, 3, 8, 8), torch.ones(2, 3, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    out = images.paste_back(generated, image, mask)
    assert (out[..., :4] == 0).all() and (out[..., 4:] == 1).all()
    with pytest.raises(KandinskyError, match="at one size"):
        images.paste_back(generated, image[..., :4], mask)
    with pytest.raises(KandinskyError, match="cannot serve 4"):
        images.paste_back(generated, torch.ones(3, 3, 8, 8), mask)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_bad_files_are_named(files, tmp_path):
    with pytest.raises(KandinskyError, match="is an original Kandinsky 3 movq file, not a unet"):
        O.load_unet(files["movq"], files["projection"])
    with pytest.raises(KandinskyError, match="is an original Kandinsky 3 unet file, not a projection"):
        O.load_unet(files["unet"], files["unet"])
    cut = tmp_path / "cut.pt"
    cut.write_bytes(Path(files["unet"]).read_bytes()[:5000])
    with pytest.raises(KandinskyError, match="cut.pt is not a loadable PyTorch weights file"):
        O.load_unet(cut, files["projection"])
    narrow = tmp_path / "narrow.pt"
    TO.write_projection(narrow, {k: v[:4] if k == "0.weight" else v[:4] for k, v in files["state"][1].items()})
    with pytest.raises(KandinskyError, match="projection maps the text to 4 channels but the UNet attends to 8"):
        O.load_unet(files["unet"], narrow)


class Exploit:
    def __reduce__(self):
        return (print, ("a pickle that runs code",))


def test_foreign_and_unsafe_files_are_refused_unread(files, tmp_path):
    bomb = tmp_path / "bomb.pt"
    torch.save({"unet": Exploit()}, bomb)
    unsafe = r"bomb.pt holds Python objects besides tensors \(print\), which are refused unread"
    with pytest.raises(KandinskyError, match=unsafe):
        O.load_unet(bomb, files["projection"])
    from kandinsky_core.kandinsky2.unet import UNET_22_TINY, UNet as UNet22
    decoder = tmp_path / "decoder22.pt"
    torch.save(UNet22(UNET_22_TINY).state_dict(), decoder)
    with pytest.raises(KandinskyError, match="not an original Kandinsky 3 UNet, projection or MoVQ file: it looks like "
                                             "a Kandinsky 2.x decoder UNet"):
        O.load_unet(decoder, files["projection"])


def test_the_published_projection_is_found_beside_the_unet(files, tmp_path):
    assert O.published_projection(files["unet"]) == str(files["projection"])
    assert O.published_projection(files["inpaint"]) is None  # this tiny folder has no projection_inpainting.pt
    loose = tmp_path / "my_unet.pt"
    shutil.copy(files["unet"], loose)
    with pytest.raises(KandinskyError, match="holds no text projection: give its projection file too"):
        O.load_unet(loose)
