"""Kandinsky 3 in ComfyUI: the UNet as a MODEL (stock KSampler), the T5 as a CLIP (core CLIP Text Encode), the
Kandinsky 3 Sampler equal to kandinsky_core pixel for pixel, the MoVQ through the pack's MoVQ nodes, node definitions,
and clear errors for bad wiring. Checkpoints are the tiny kandinsky-3 folders k3_files.py writes (published layout).

A few checks need ComfyUI's own objects (its noise schedule, conditioning from other text encoders): they import the
pack into this process from the same ComfyUI tree the server runs.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from graphs import INPUT_IMAGE, SIZE, Graph
from k3_files import K3, K3_OTHER_T5, load_core
from kandinsky_core import schedulers as S
from kandinsky_core.kandinsky3 import pipeline as K3P
from test_comfy_nodes import check_images, check_seeds, fail, run, saved, seed_variants

PROMPT = "a red cat on a blue mat"
NODES = {"Kandinsky3UNetLoader", "Kandinsky3T5Loader", "Kandinsky3Sampler"}


@pytest.fixture(scope="module")
def ws(comfy):
    """One websocket for the module (see test_comfy_nodes.ws)."""
    with comfy.listen() as listener:
        yield listener


class K3Graph(Graph):
    """A Graph with the Kandinsky 3 nodes."""

    def k3(self, folder=K3, weight_dtype="default", mode="exact"):
        """UNet loader, T5 loader and MoVQ loader of a tiny kandinsky-3 folder: (model, clip, movq) links (mode exact:
        compared with kandinsky_core bit for bit)."""
        unet = self.add("Kandinsky3UNetLoader", unet=folder, weight_dtype=weight_dtype, mode=mode)
        clip = self.add("Kandinsky3T5Loader", text_encoder=folder, weight_dtype=weight_dtype)
        movq = self.add("Kandinsky2MoVQLoader", movq=folder, mode=mode)
        return unet[0], clip[0], movq[0]

    def encode(self, clip, text=PROMPT):
        """Core CLIP Text Encode."""
        return self.add("CLIPTextEncode", clip=clip, text=text)[0]

    def k3_sampler(self, model, positive, latent, seed=0, steps=3, cfg=4.0, sampler="checkpoint", denoise=1.0,
                   negative=None, **extra):
        """Kandinsky 3 Sampler (negative left unconnected unless given)."""
        inputs = dict(model=model, positive=positive, latent_image=latent, seed=seed, steps=steps, cfg=cfg,
                      sampler=sampler, denoise=denoise, **extra)
        return self.add("Kandinsky3Sampler", **inputs, **({"negative": negative} if negative else {}))

    def ksampler(self, model, positive, negative, latent, seed=0, steps=3, cfg=4.0, **extra):
        """Core KSampler, euler / normal."""
        return self.add("KSampler", model=model, positive=positive, negative=negative, latent_image=latent, seed=seed,
                        steps=steps, cfg=cfg, sampler_name="euler", scheduler="normal", denoise=1.0, **extra)


# --- workflows ---------------------------------------------------------------------------------------------------


def test_stock_ksampler_with_clip_text_encode(comfy, ws):
    g = K3Graph()
    model, clip, movq = g.k3()
    positive, negative = g.encode(clip), g.encode(clip, "")
    latent = g.empty_latent(batch_size=2)[0]
    variants = seed_variants(g, lambda s, **kw: g.ksampler(model, positive, negative, latent, s, **kw), movq, 5,
                             "k3_ksampler")
    first, second = check_seeds(comfy, *run(comfy, ws, g), variants, batch=2)
    assert np.abs(first.astype(int) - second).mean() > 1  # each batch item has its own noise


def test_conditioning_nodes_work_with_the_t5(comfy, ws):
    g = K3Graph()
    model, clip, movq = g.k3()
    cat, dog = g.encode(clip), g.encode(clip, "a green dog in the rain, oil painting")
    combined = g.add("ConditioningCombine", conditioning_1=cat, conditioning_2=dog)[0]
    average = g.add("ConditioningAverage", conditioning_to=cat, conditioning_from=dog,
                    conditioning_to_strength=0.5)[0]
    zero = g.add("ConditioningZeroOut", conditioning=cat)[0]
    latent = g.empty_latent()[0]
    saves = [g.decode_and_save(movq, g.ksampler(model, cond, zero, latent, 5)[0], f"k3_cond_{i}")
             for i, cond in enumerate((cat, combined, average))]
    entry, _ = run(comfy, ws, g)
    images = [check_images(saved(comfy, entry, save), 1)[0] for save in saves]
    assert np.abs(images[0].astype(int) - images[1]).mean() > 1 and np.abs(images[0].astype(int) - images[2]).mean() > 1


# --- equality with kandinsky_core --------------------------------------------------------------------------------


def load_image_like_comfyui(path):
    """An image file as the MoVQ input ComfyUI's Load Image + MoVQ Encode make of it: (1, 3, H, W) in [-1, 1]."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(pixels)[None].movedim(-1, 1) * 2 - 1


def core_image(comfy, sampler, negative_prompt, denoise, seed, steps, cfg):
    """What kandinsky_core makes of the same folder, prompt and seed, as Save Image writes it (uint8)."""
    models = load_core(str(comfy.base_dir / "models" / "kandinsky" / K3))
    scheduler = None if sampler == "checkpoint" else S.dpm_solver_from(S.KANDINSKY_3_DDPM, karras=sampler.endswith("karras"))
    g, generator = cfg - 1, torch.Generator().manual_seed(seed)
    if denoise == 1:
        image = K3P.text_to_image(models, PROMPT, negative_prompt=negative_prompt, height=SIZE, width=SIZE, steps=steps,
                                  guidance_scale=g, generator=generator, scheduler=scheduler, output_type="np")
    else:
        positive, negative = K3P.encode_prompt(models, PROMPT, negative_prompt, guidance_scale=g)
        with torch.no_grad():
            init = models.movq.encode(load_image_like_comfyui(comfy.base_dir / "input" / INPUT_IMAGE))
            latents = K3P.sample_image_to_image(models, positive, negative, init, strength=denoise, steps=steps,
                                                guidance_scale=g, generator=generator, scheduler=scheduler)
            image = K3P.finish(models, latents, "np")
    return np.clip(255 * image[0], 0, 255).astype(np.uint8)  # Save Image's conversion (truncating)


@pytest.mark.parametrize("sampler, negative_prompt, denoise", [
    ("checkpoint", None, 1.0), ("dpm++ 2m karras", "blurry, low quality, watermark", 1.0), ("checkpoint", "", 0.5)],
    ids=["ddpm_no_negative", "dpm_karras_long_negative", "image_to_image"])
def test_sampler_equals_kandinsky_core(comfy, ws, sampler, negative_prompt, denoise):
    seed, steps, cfg = 11, 4, 4.0
    g = K3Graph()
    model, clip, movq = g.k3()
    negative = None if negative_prompt is None else g.encode(clip, negative_prompt)
    if denoise < 1:
        latent = g.add("Kandinsky2MoVQEncode", movq=movq, image=g.load_image()[0])[0]
    else:
        latent = g.empty_latent()[0]
    node = g.k3_sampler(model, g.encode(clip), latent, seed, steps, cfg, sampler, denoise, negative)
    save = g.decode_and_save(movq, node[0], f"k3_core_{sampler}_{denoise}")
    entry, _ = run(comfy, ws, g)
    (served,) = check_images(saved(comfy, entry, save), 1)
    expected = core_image(comfy, sampler, negative_prompt, denoise, seed, steps, cfg)
    difference = np.abs(served.astype(int) - expected)
    # The same computation in another process: its CPU kernels may round a few 1e-6 differently (thread scheduling and
    # buffer alignment reach oneDNN's choices), which can move a truncated 8-bit value across one level here and there.
    assert difference.max() <= 1 and difference.mean() < 0.01, (
        f"the served PNG differs from kandinsky_core by up to {difference.max()} levels, {difference.mean():.4f} on average")


def test_sampler_seeds_and_image_to_image_depends_on_the_image(comfy, ws):
    g = K3Graph()
    model, clip, movq = g.k3()
    positive, image = g.encode(clip), g.load_image()
    latent = g.add("Kandinsky2MoVQEncode", movq=movq, image=image[0])[0]
    variants = seed_variants(g, lambda s, **kw: g.k3_sampler(model, positive, latent, s, denoise=0.6, **kw), movq, 5,
                             "k3_i2i")
    inverted = g.add("Kandinsky2MoVQEncode", movq=movq, image=g.add("ImageInvert", image=image[0])[0])[0]
    other = g.decode_and_save(movq, g.k3_sampler(model, positive, inverted, 5, denoise=0.6)[0], "k3_i2i_inverted")
    entry, messages = run(comfy, ws, g)
    (first,) = check_seeds(comfy, entry, messages, variants)
    (from_inverted,) = check_images(saved(comfy, entry, other), 1)
    assert np.abs(first.astype(int) - from_inverted).mean() > 1


@pytest.mark.parametrize("weight_dtype", ["fp8_e4m3fn", "bf16"])
def test_weight_dtypes_give_nearly_the_same_image(comfy, ws, weight_dtype):
    g = K3Graph()
    images = []
    for dtype in ("default", weight_dtype):
        model, clip, movq = g.k3(weight_dtype=dtype)
        images.append(g.decode_and_save(movq, g.k3_sampler(model, g.encode(clip), g.empty_latent()[0], 3)[0],
                                        f"k3_{dtype}"))
    entry, _ = run(comfy, ws, g)
    default, stored = (check_images(saved(comfy, entry, save), 1)[0].astype(int) for save in images)
    # Same model, weights rounded to 3-8 significant bits: close, not equal (equal would mean the choice is ignored).
    assert 0 < np.abs(default - stored).mean() < 40, np.abs(default - stored).mean()


# --- node definitions ------------------------------------------------------------------------------------------


def test_nodes_are_documented_and_list_the_kandinsky3_folders(comfy):
    info = comfy.object_info()
    assert NODES <= set(info)
    for name in NODES:
        node = info[name]
        assert node["display_name"].startswith("Kandinsky 3 ") and node["category"].startswith("Kandinsky 3")
        assert node["description"].strip(), name
        inputs = {**node["input"]["required"], **node["input"].get("optional", {})}
        assert all(spec[1:] and spec[1].get("tooltip", "").strip() for spec in inputs.values()), name
        assert len(node["output_tooltips"]) == len(node["output"]) and all(node["output_tooltips"]), name
    for loader, key in (("Kandinsky3UNetLoader", "unet"), ("Kandinsky3T5Loader", "text_encoder")):
        options = info[loader]["input"]["required"][key][1]["options"]  # (test_hostile adds broken copies)
        assert {K3, K3_OTHER_T5} <= set(options) and all(o.endswith("/") for o in options), options
    assert "4.0" in info["Kandinsky3Sampler"]["input"]["required"]["cfg"][1]["tooltip"]  # cfg = guidance + 1, said
    # A kandinsky-3 folder is no 2.x decoder, but its MoVQ is the pack's MoVQ Loader's to load.
    assert K3 not in info["Kandinsky2DecoderLoader"]["input"]["required"]["decoder"][1]["options"]
    assert K3 in info["Kandinsky2MoVQLoader"]["input"]["required"]["movq"][1]["options"]


# --- bad wiring ----------------------------------------------------------------------------------------------------


def k3_graph(conditioning="k3", model="k3", sampler="Kandinsky3Sampler", clip_folder=K3):
    """A Kandinsky 3 text-to-image whose model, conditioning or text encoder may be the wrong one."""
    g = K3Graph()
    unet, clip, movq = g.k3()
    if clip_folder != K3:
        clip = g.add("Kandinsky3T5Loader", text_encoder=clip_folder, weight_dtype="default")[0]
    if model == "2.2":
        unet = g.decoder("2.2")[0]
    if conditioning == "2.2":
        positive = g.prior_encode(g.prior("2.2"))[0]
    elif conditioning == "concat":
        positive = g.add("ConditioningConcat", conditioning_to=g.encode(clip), conditioning_from=g.encode(clip, "x"))[0]
    else:
        positive = g.encode(clip)
    latent = g.empty_latent()[0]
    if sampler == "KSampler":
        out = g.ksampler(unet, positive, g.encode(clip, ""), latent, steps=2)
    else:
        out = g.k3_sampler(unet, positive, latent, steps=2)
    g.decode_and_save(movq, out[0], "k3_wiring")
    return g


def k3_into_22(sampler):
    """Kandinsky 3 conditioning (CLIP Text Encode) into the 2.2 decoder."""
    g = K3Graph()
    _, clip, _ = g.k3()
    decoder, positive = g.decoder("2.2"), g.encode(clip)
    if sampler == "KSampler":
        out = g.ksampler(decoder[0], positive, positive, g.empty_latent()[0], steps=2)
    else:
        out = g.sampler(decoder, positive, positive, g.empty_latent()[0])
    g.decode_and_save(decoder[1], out[0], "k3_into_22")
    return g


@pytest.mark.parametrize("bad, node_type, words", [
    pytest.param(k3_graph("2.2"), "Kandinsky3Sampler", ["Kandinsky 2.x", "CLIP Text Encode", "Kandinsky 3 T5 Loader"],
                 id="22_prior_into_k3_sampler"),
    pytest.param(k3_graph("2.2", sampler="KSampler"), "KSampler", ["Kandinsky 2.x", "CLIP Text Encode"],
                 id="22_prior_into_k3_with_ksampler"),
    pytest.param(k3_graph(model="2.2"), "Kandinsky3Sampler", ["Kandinsky 3 UNet Loader"], id="22_model_into_k3_sampler"),
    pytest.param(k3_graph(clip_folder=K3_OTHER_T5), "Kandinsky3Sampler", ["32-wide", "48-wide", "same kandinsky-3"],
                 id="t5_of_another_width"),
    pytest.param(k3_graph(clip_folder=K3_OTHER_T5, sampler="KSampler"), "KSampler", ["32-wide", "48-wide"],
                 id="t5_of_another_width_with_ksampler"),
    pytest.param(k3_graph("concat", sampler="KSampler"), "KSampler", ["attention mask", "ConditioningConcat"],
                 id="concatenated_conditioning"),
    pytest.param(k3_into_22("Kandinsky2DecoderSampler"), "Kandinsky2DecoderSampler",
                 ["Kandinsky 3 text conditioning", "Prior Encode", "Kandinsky 3 UNet Loader"],
                 id="k3_conditioning_into_22_decoder"),
    pytest.param(k3_into_22("KSampler"), "KSampler", ["Kandinsky 3 text conditioning", "Prior Encode"],
                 id="k3_conditioning_into_22_with_ksampler"),
])
def test_bad_wiring_fails_clearly(comfy, ws, bad, node_type, words):
    error = fail(comfy, ws, bad)
    assert error["node_type"] == node_type
    assert error["exception_type"].endswith("KandinskyError"), error["exception_type"]
    for word in words:
        assert word in error["exception_message"], error["exception_message"]


def test_server_keeps_serving_after_bad_wiring(comfy, ws):
    run(comfy, ws, k3_graph())


# --- ComfyUI's objects, in this process ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pack(kandinsky_pack):
    """The pack's node modules, imported with ComfyUI (CPU) from the tree the server runs."""
    from kandinsky_pack.nodes.kandinsky3 import model as k3_model

    return k3_model


def test_model_sampling_is_diffusers_cosine_schedule(pack, comfy):
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.DDPMScheduler.from_config({k: v for k, v in S.KANDINSKY_3_DDPM.items() if k != "_class_name"})
    patcher = pack.load_unet(str(comfy.base_dir / "models" / "kandinsky" / K3))
    sampling = patcher.model.model_sampling
    abar = theirs.alphas_cumprod
    assert torch.equal(sampling.sigmas, ((1 - abar) / abar) ** 0.5)
    # ComfyUI's sigma → timestep is the inverse: every training timestep maps back to itself.
    assert torch.allclose(sampling.timestep(sampling.sigmas).float(), torch.arange(1000).float(), atol=1e-3)


@pytest.mark.parametrize("shape, extra, words", [
    ((1, 77, 768), {"pooled_output": None}, ["768-wide", "another text encoder", "Kandinsky 3 T5 Loader"]),
    ((1, 256, 4096), {"attention_mask": torch.ones(1, 256)}, ["4096-wide", "Stable Diffusion/Flux"]),
    ((1, 1, 1280), {"kandinsky_prompt": "a cat"}, ["Kandinsky 2.x", "1280-dim"]),
], ids=["sd_clip", "flux_t5", "22_prior"])
def test_foreign_conditioning_is_named(pack, shape, extra, words):
    with pytest.raises(Exception) as error:  # the pack's own KandinskyError class (imported under the pack's name)
        pack.check_conditioning(torch.zeros(shape), extra, 4096, "KSampler")
    assert type(error.value).__name__ == "KandinskyError"
    for word in words:
        assert word in str(error.value), str(error.value)


def test_cpu_t5_is_held_while_memory_allows_and_reloaded(pack, comfy, monkeypatch):
    """On the CPU the T5 is no ComfyUI-managed submodule: held from loading; sampling keeps it while the free RAM holds
    what sampling and decoding need, frees it when that is short (ComfyUI's free-memory query capped here), and the
    next encode loads it again (same states); with hold=False it is the patcher's, as on a GPU."""
    import comfy.model_management as mm
    from kandinsky_pack.nodes.common import held as H
    from kandinsky_pack.nodes.kandinsky3 import text as k3_text

    folder = str(comfy.base_dir / "models" / "kandinsky" / K3)
    held, managed = k3_text.load_clip(folder), k3_text.load_clip(folder, hold=False)
    assert held.cond_stage_model.held and held.patcher.model_size() == 0
    assert not managed.cond_stage_model.held and managed.patcher.model_size() > 0
    assert held.cond_stage_model in H.HELD and managed.cond_stage_model not in H.HELD
    reference = managed.encode_from_tokens(managed.tokenize(PROMPT), return_dict=True)
    first = held.encode_from_tokens(held.tokenize(PROMPT), return_dict=True)
    unet = pack.load_unet(str(comfy.base_dir / "models" / "kandinsky" / K3)).model
    noise = torch.zeros(1, 4, 128, 128)  # 1024²: the decode estimate alone is several GB
    needed = unet.memory_required([2, 4, 128, 128])
    assert needed > 0
    monkeypatch.setattr(mm, "get_free_memory", lambda *a, **k: 1 << 50)  # plenty: the T5 stays for the next prompt
    pack.make_room_to_sample(unet, noise)
    assert held.cond_stage_model.held and held.cond_stage_model in H.HELD
    monkeypatch.setattr(mm, "get_free_memory", lambda *a, **k: 2 << 30)  # 2 GiB free: sampling needs more
    pack.make_room_to_sample(unet, noise)
    assert not held.cond_stage_model.held and held.cond_stage_model not in H.HELD
    again = held.encode_from_tokens(held.tokenize(PROMPT), return_dict=True)
    assert held.cond_stage_model.held
    for out in (first, again):
        assert torch.equal(out["cond"], reference["cond"]) and torch.equal(out["attention_mask"], reference["attention_mask"])
    assert not H.make_room(64 << 20) and held.cond_stage_model.held  # a small MoVQ pass fits in 2 GiB beside it
    assert H.make_room() and not held.cond_stage_model.held
