"""Kandinsky 3.1, 3.1 Flash and Kandinsky 3 inpainting from the original ai-forever files, in ComfyUI: the loaders,
the Kandinsky 3 Sampler equal to kandinsky_core's original pipelines, KSampler, Flash through SamplerCustom with
ComfyUI's lcm sampler and Kandinsky 3.1 Flash Sigmas, and inpainting through Kandinsky 3 Inpaint Conditioning.
Checkpoints are the tiny Kandinsky3.1/weights/ folder tiny_original.py writes in the published layout.
"""
import numpy as np
import pytest
import torch
from PIL import Image

from graphs import INPAINT_IMAGE, ORIGINAL_WEIGHTS, SIZE, Graph
from kandinsky_core.kandinsky3 import original as O
from kandinsky_core.kandinsky3 import original_pipeline as OP
from kandinsky_core.kandinsky3.t5 import load_t5
from test_comfy_nodes import check_images, fail, run, saved, saved_latents

PROMPT = "a red cat on a blue mat"
W = ORIGINAL_WEIGHTS
T5 = f"{W}/flan_ul2_encoder/"


@pytest.fixture(scope="module")
def ws(comfy):
    """One websocket for the module (see test_comfy_nodes.ws)."""
    with comfy.listen() as listener:
        yield listener


class OriginalGraph(Graph):
    """A Graph with the original-file Kandinsky 3 nodes."""

    def original(self, unet="kandinsky3.pt", projection="auto (the published pairing)", weight_dtype="default",
                 mode="exact"):
        """(model, clip, movq) links from the tiny weights/ folder (mode exact: compared with the core bit for bit)."""
        model = self.add("Kandinsky3OriginalUNetLoader", unet=f"{W}/{unet}", projection=projection,
                         weight_dtype=weight_dtype, mode=mode)
        clip = self.add("Kandinsky3T5Loader", text_encoder=T5, weight_dtype="default")
        movq = self.add("Kandinsky2MoVQLoader", movq=f"{W}/movq.pt", mode=mode)
        return model[0], clip[0], movq[0]

    def encode(self, clip, text=PROMPT):
        return self.add("CLIPTextEncode", clip=clip, text=text)[0]

    def k3_sampler(self, model, positive, latent, seed=0, steps=4, cfg=4.0, sampler="checkpoint", negative=None):
        inputs = dict(model=model, positive=positive, latent_image=latent, seed=seed, steps=steps, cfg=cfg,
                      sampler=sampler, denoise=1.0)
        return self.add("Kandinsky3Sampler", **inputs, **({"negative": negative} if negative else {}))


def core_models(comfy, unet="kandinsky3.pt"):
    """The same files through kandinsky_core. The T5 as ComfyUI's CLIP holds it on a CPU by default: weights stored in
    fp16 (text_encoder_dtype), computed in fp32."""
    root = comfy.base_dir / "models" / "kandinsky" / W
    models = O.load_original(root / unet, root / "movq.pt", root / "flan_ul2_encoder")
    models.text_encoder = load_t5(root / "flan_ul2_encoder", dtype=torch.float16).float()
    return models


def png_of(image):
    """Save Image's conversion of a (1, H, W, 3) image in [0, 1] (truncating)."""
    return np.clip(255 * image[0], 0, 255).astype(np.uint8)


def close(served, expected, what):
    # The same computation in another process: CPU kernels may round a few 1e-6 differently there, which can move a
    # truncated 8-bit value across one level here and there.
    difference = np.abs(served.astype(int) - expected)
    assert difference.max() <= 1 and difference.mean() < 0.05, (
        f"{what}: served PNG differs from kandinsky_core by up to {difference.max()} levels, {difference.mean():.4f} on average")


def test_original_files_are_listed(comfy):
    info = comfy.object_info()
    options = info["Kandinsky3OriginalUNetLoader"]["input"]["required"]["unet"][1]["options"]
    assert {f"{W}/{n}" for n in ("kandinsky3.pt", "kandinsky3_flash.pt", "kandinsky3_inpainting.pt")} <= set(options)
    assert T5 in info["Kandinsky3T5Loader"]["input"]["required"]["text_encoder"][1]["options"]


@pytest.mark.parametrize("negative", [None, "zero_out"])
def test_sampler_equals_the_core_31_pipeline(comfy, ws, negative):
    """The 3.1 sampler with the null embedding: unconnected, or the positive through ConditioningZeroOut."""
    g = OriginalGraph()
    model, clip, movq = g.original()
    positive = g.encode(clip)
    zero = g.add("ConditioningZeroOut", conditioning=positive)[0] if negative else None
    node = g.k3_sampler(model, positive, g.empty_latent()[0], seed=5, negative=zero)
    save = g.decode_and_save(movq, node[0], f"k31_{negative}")
    (served,) = check_images(saved(comfy, run(comfy, ws, g)[0], save), 1)
    expected = OP.text_to_image(core_models(comfy), PROMPT, height=SIZE, width=SIZE, steps=4, guidance_scale=3.0,
                                generator=torch.Generator().manual_seed(5), output_type="np")
    close(served, png_of(expected), "3.1")


def test_flash_in_the_pack_sampler_and_in_sampler_custom(comfy, ws):
    """The pack's sampler runs the original Flash loop; SamplerCustom with lcm and the Flash sigmas runs the same loop
    from ComfyUI's noise (its first input is √(1 − ᾱ979)·noise, the original's adds 0.031 of a second draw)."""
    g = OriginalGraph()
    model, clip, movq = g.original("kandinsky3_flash.pt")
    positive = g.encode(clip)
    pack = g.k3_sampler(model, positive, g.empty_latent()[0], seed=3, sampler="flash")
    sigmas = g.add("Kandinsky3FlashSigmas", model=model)[0]
    custom = g.add("SamplerCustom", model=model, add_noise=True, noise_seed=3, cfg=1.0, positive=positive,
                   negative=g.add("ConditioningZeroOut", conditioning=positive)[0],
                   sampler=g.add("KSamplerSelect", sampler_name="lcm")[0], sigmas=sigmas,
                   latent_image=g.empty_latent()[0])
    save, latents_saved = g.decode_and_save(movq, pack[0], "flash_pack"), g.save_latent(custom[0], "flash_custom")
    entry, _ = run(comfy, ws, g)
    (served_pack,) = check_images(saved(comfy, entry, save), 1)
    models = core_models(comfy, "kandinsky3_flash.pt")
    expected = OP.flash_text_to_image(models, PROMPT, height=SIZE, width=SIZE, output_type="np",
                                      generator=torch.Generator().manual_seed(3))
    close(served_pack, png_of(expected), "flash, pack sampler")
    positive_core, _ = OP.encode_prompt(models, PROMPT)
    sampler = OP.FlashSampler()
    noise = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(3))
    # ComfyUI's lcm draws its re-noising from a generator of its own: seeded with the seed (0.3.75), or with seed + 1
    # on the CPU (0.30.0); the core loop is run with each and the server's version is the one that matches.
    runs = [OP.sample(models, positive_core, None, noise.shape, sampler=sampler, steps=4, guidance_scale=None,
                      latents=sampler.sqrt_one_minus[979] * noise, generator=torch.Generator().manual_seed(seed))
            for seed in (3, 4)]
    # Latents, not pixels: with random weights Flash's reach ±123 and the MoVQ turns their float-level differences
    # (ComfyUI's σ form against the core's √ᾱ form) into a few 8-bit levels.
    served_custom = saved_latents(comfy, entry, latents_saved)
    difference = min(float((served_custom - latents).abs().max() / latents.abs().max()) for latents in runs)
    assert difference < 1e-5, f"SamplerCustom + lcm + Flash sigmas vs the core Flash loop: {difference:.1e} relative"


@pytest.mark.parametrize("weight_dtype", ["default", "fp8_e4m3fn"])
def test_ksampler_samples_the_31_unet(comfy, ws, weight_dtype):
    """KSampler, with the null embedding from ConditioningZeroOut; fp8 storage casts each layer, the projection too."""
    g = OriginalGraph()
    model, clip, movq = g.original(weight_dtype=weight_dtype)
    positive = g.encode(clip)
    node = g.add("KSampler", model=model, positive=positive, negative=g.add("ConditioningZeroOut", conditioning=positive)[0],
                 latent_image=g.empty_latent()[0], seed=1, steps=3, cfg=4.0, sampler_name="euler_ancestral",
                 scheduler="normal", denoise=1.0)
    save = g.decode_and_save(movq, node[0], f"k31_ksampler_{weight_dtype}")
    check_images(saved(comfy, run(comfy, ws, g)[0], save), 1)


def test_inpainting_equals_the_core_pipeline(comfy, ws):
    g = OriginalGraph()
    model, clip, movq = g.original("kandinsky3_inpainting.pt")
    positive = g.encode(clip)
    loaded = g.load_image(INPAINT_IMAGE)
    image, mask = loaded[0], loaded[1]
    cond = g.add("Kandinsky3InpaintConditioning", positive=positive,
                 negative=g.add("ConditioningZeroOut", conditioning=positive)[0], movq=movq, pixels=image, mask=mask,
                 grow_mask_by=0)
    node = g.k3_sampler(model, cond[0], cond[2], seed=2, cfg=5.0, negative=cond[1])
    save = g.decode_and_save(movq, node[0], "k3_inpaint")
    (served,) = check_images(saved(comfy, run(comfy, ws, g)[0], save), 1)
    rgba = np.asarray(Image.open(comfy.base_dir / "input" / INPAINT_IMAGE)).astype(np.float32) / 255
    pixels = torch.from_numpy(rgba[..., :3]).permute(2, 0, 1)[None] * 2 - 1
    hole = torch.from_numpy(1 - rgba[..., 3])  # Load Image's mask: 1 where transparent
    expected = OP.inpaint(core_models(comfy, "kandinsky3_inpainting.pt"), PROMPT, pixels, hole, steps=4,
                          generator=torch.Generator().manual_seed(2), output_type="np")
    close(served, png_of(expected), "inpainting")


def inpaint_branch(g, sampler, paste_back, prefix):
    """Inpaint Conditioning (paste_back on or off) → the pack's sampler or KSampler → MoVQ Decode → Save Image."""
    model, clip, movq = g.original("kandinsky3_inpainting.pt")
    positive = g.encode(clip)
    loaded = g.load_image(INPAINT_IMAGE)
    cond = g.add("Kandinsky3InpaintConditioning", positive=positive,
                 negative=g.add("ConditioningZeroOut", conditioning=positive)[0], movq=movq, pixels=loaded[0],
                 mask=loaded[1], grow_mask_by=0, paste_back=paste_back)
    if sampler == "KSampler":
        node = g.add("KSampler", model=model, positive=cond[0], negative=cond[1], latent_image=cond[2], seed=4,
                     steps=3, cfg=5.0, sampler_name="euler", scheduler="normal", denoise=1.0)
    else:
        node = g.k3_sampler(model, cond[0], cond[2], seed=4, steps=3, cfg=5.0, negative=cond[1])
    return g.decode_and_save(movq, node[0], prefix)


@pytest.mark.parametrize("sampler", ["Kandinsky3Sampler", "KSampler"])
def test_paste_back_keeps_the_input_outside_the_mask(comfy, ws, sampler):
    """paste_back off (the original) regenerates the kept region as well; on, MoVQ Decode puts the input back there."""
    g = OriginalGraph()
    saves = [inpaint_branch(g, sampler, paste, f"k3_paste_{sampler}_{paste}") for paste in (False, True)]
    history = run(comfy, ws, g)[0]
    (plain,), (pasted,) = (check_images(saved(comfy, history, save), 1) for save in saves)
    rgba = np.asarray(Image.open(comfy.base_dir / "input" / INPAINT_IMAGE)).astype(int)
    kept = rgba[..., 3] == 255
    off, on = (np.abs(image.astype(int) - rgba[..., :3])[kept] for image in (plain, pasted))
    print(f"{sampler}: kept region off the input by {off.mean():.1f} levels on average (max {off.max()}) without "
          f"paste-back, {on.mean():.3f} (max {on.max()}) with it")
    assert off.mean() > 5  # tiny random weights repaint everything: the option is what keeps the input
    assert on.max() <= 1  # the input's own 8-bit values (Save Image truncates x·255, which may land one level low)
    np.testing.assert_array_equal(pasted[~kept], plain[~kept])  # the repainted pixels are the sampler's own


@pytest.mark.parametrize("build, words", [
    (lambda g: g.k3_sampler(g.original("movq.pt")[0], g.encode(g.original()[1]), g.empty_latent()[0]),
     ["is an original Kandinsky 3 movq file, not a unet"]),
    (lambda g: g.k3_sampler(g.original("kandinsky3_inpainting.pt")[0], g.encode(g.original()[1]), g.empty_latent()[0]),
     ["needs an image and a mask", "Kandinsky 3 Inpaint Conditioning"]),
    (lambda g: g.k3_sampler(g.original()[0], g.encode(g.original()[1]), g.empty_latent()[0], sampler="ddpm"),
     ["'ddpm' sampler is not for this UNet"]),
], ids=["movq-as-unet", "inpainting-without-conditioning", "diffusers-sampler-on-original-unet"])
def test_bad_wiring_is_named(comfy, ws, build, words):
    g = OriginalGraph()
    save = g.save(g.decode(g.original()[2], build(g)[0])[0], "bad")
    assert save
    error = fail(comfy, ws, g)
    for word in words:
        assert word in error["exception_message"], error["exception_message"]
