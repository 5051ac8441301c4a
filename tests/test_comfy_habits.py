"""ComfyUI's habits on a real server: masks of any size, images of any size into MoVQ Encode, every latent size Empty
Latent Image offers through both samplers and every decoder, shared noise for smooth animations, and example
workflows that name only files the missing-models dialog accepts."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from graphs import INPAINT_IMAGE, Graph
from test_comfy_nodes import check_images, run, saved, saved_latents, ws  # noqa: F401 (ws is a fixture)

WORKFLOWS = sorted((Path(__file__).parent.parent / "example_workflows").glob("*.json"))


def scaled(g, image, width, height):
    """Core Upscale Image of an IMAGE link to width x height (stretched)."""
    return g.add("ImageScale", image=image, upscale_method="bilinear", width=width, height=height, crop="disabled")


def test_a_small_mask_is_resized_to_the_image(comfy, ws):
    g = Graph()
    prior, decoder = g.prior(), g.decoder("2.2-inpaint")
    cond, image = g.prior_encode(prior), scaled(g, g.load_image()[0], 128, 128)
    outputs = {}
    # Load Image's 64x64 mask: a transparent centre, and the all-zero mask it gives images without alpha
    for name, source in (("hole", INPAINT_IMAGE), ("no_alpha", None)):
        mask = g.load_image(source)[1] if source else g.load_image()[1]
        inpaint = g.add("Kandinsky2InpaintConditioning", positive=cond[0], negative=cond[1], movq=decoder[1],
                        pixels=image[0], mask=mask)
        for seed in (5, 6):
            outputs[name, seed] = g.decode_and_save(decoder[1], g.sampler(decoder, inpaint[0], inpaint[1], inpaint[2],
                                                                          seed)[0], f"habits_mask_{name}")
    entry, _ = run(comfy, ws, g)
    got = {key: check_images(saved(comfy, entry, save), 1, 128, 128)[0].astype(int) for key, save in outputs.items()}
    change = np.abs(got["hole", 5] - got["hole", 6]).mean(axis=-1)  # what the seed repaints
    centre, corners = change[40:88, 40:88].mean(), np.concatenate([change[:16, :16], change[-16:, -16:]]).mean()
    assert centre > 3 * corners, "the 64x64 mask's central hole must become the 128x128 image's central hole"
    assert np.abs(got["no_alpha", 5] - got["no_alpha", 6]).mean() < centre / 3, "an empty mask repaints nothing"


def test_movq_encode_centre_crops_like_vae_encode(comfy, ws):
    g = Graph()
    decoder, image = g.decoder(), scaled(g, g.load_image()[0], 100, 70)
    latent = g.add("Kandinsky2MoVQEncode", movq=decoder[1], image=image[0])
    # what core VAE Encode keeps (x=2, y=3), and the same crop one pixel to the right: what an off-by-one would give
    crops = [g.add("ImageCrop", image=image[0], width=96, height=64, x=x, y=3) for x in (2, 3)]
    encoded = [latent] + [g.add("Kandinsky2MoVQEncode", movq=decoder[1], image=crop[0]) for crop in crops]
    latents = [g.save_latent(node[0], "habits_encode") for node in encoded]
    decoded = g.decode_and_save(decoder[1], latent[0], "habits_encode")
    entry, _ = run(comfy, ws, g)
    odd, exact, shifted = (saved_latents(comfy, entry, node) for node in latents)
    assert odd.shape == (1, 4, 8, 12)
    # The same pixels reach the MoVQ by two routes (cropped after the conversion to MoVQ input, or before it), so the
    # convolutions may see them in different memory layouts and round differently: equal to rounding, judged against
    # what a crop one pixel off does.
    same, off_by_one = float((odd - exact).abs().max()), float((odd - shifted).abs().max())
    assert same < 1e-3 * off_by_one, (f"the centre crop's latents differ by {same:.3g}, those of a crop one pixel "
                                      f"off by {off_by_one:.3g}")
    check_images(saved(comfy, entry, decoded), 1, 64, 96)


def latent_and_conditioning(g, variant, width, height):
    """(decoder, positive/negative node, latent link) for a text-to-image (or inpainting, depth) run at that size."""
    prior, decoder = g.prior(variant[:3]), g.decoder(variant)
    cond = g.prior_encode(prior)
    if variant.endswith("inpaint"):
        image = scaled(g, g.load_image(INPAINT_IMAGE)[0], width, height)
        cond = g.add("Kandinsky2InpaintConditioning", positive=cond[0], negative=cond[1], movq=decoder[1],
                     pixels=image[0], mask=g.load_image(INPAINT_IMAGE)[1])
        return decoder, cond, cond[2]
    if variant == "2.2-depth":
        cond = g.depth_hint(cond, g.depth_map(g.load_image()[0])[0])  # a 64x64 hint, resized to the latent
    return decoder, cond, g.empty_latent(width, height)[0]


@pytest.mark.parametrize("variant", ["2.1", "2.2", "2.2-inpaint", "2.2-depth"])
def test_every_decoder_samples_sizes_that_are_not_multiples_of_64(comfy, ws, variant):
    width, height = 72, 40  # 9 x 5 latents: odd for the tiny UNet (multiples of 2) as for the real one (8)
    g = Graph()
    decoder, cond, latent = latent_and_conditioning(g, variant, width, height)
    ours = g.sampler(decoder, cond[0], cond[1], latent, 5)
    stock = g.add("KSampler", model=decoder[0], positive=cond[0], negative=cond[1], latent_image=latent, seed=5,
                  steps=2, cfg=4.0, sampler_name="euler", scheduler="normal", denoise=1.0)
    saves = [g.decode_and_save(decoder[1], node[0], f"habits_size{variant}") for node in (ours, stock)]
    entry, _ = run(comfy, ws, g)
    for save in saves:
        check_images(saved(comfy, entry, save), 1, height, width)


def test_shared_noise_makes_frames_differ_only_by_their_embedding(comfy, ws):
    frames = 3
    g = Graph()
    prior, decoder = g.prior(), g.decoder()
    a, b = g.prior_encode(prior, "a red cat"), g.prior_encode(prior, "a blue house")
    path = g.add("Kandinsky2InterpolateBatch", embedding_a=a[0], embedding_b=b[0], frames=frames, mode="linear")
    latent = g.empty_latent(batch_size=frames)[0]
    # One embedding for a batch of latents: every item gets exactly the same embedding.
    runs = {"shared": (a[0], {"shared_noise": True}), "own": (a[0], {"shared_noise": False}), "default": (a[0], {}),
            "path": (path[0], {"shared_noise": True})}
    samplers = {name: g.sampler(decoder, cond, a[1], latent, 5, **extra) for name, (cond, extra) in runs.items()}
    latents = {name: g.save_latent(node[0], f"habits_noise_{name}") for name, node in samplers.items()}
    frames_saved = g.decode_and_save(decoder[1], samplers["path"][0], "habits_noise_path")
    entry, _ = run(comfy, ws, g)
    got = {name: saved_latents(comfy, entry, node) for name, node in latents.items()}
    apart = lambda x, y: float((x - y).abs().max())
    by_noise, by_embedding = apart(got["own"][0], got["own"][1]), apart(got["path"][0], got["path"][-1])
    assert by_noise > 0.1, "without shared noise each frame has its own noise"
    assert by_embedding > 1e-3, "the embedding still changes the frames"
    # Compared as latents, and to rounding: identical rows in different batch positions go through batched CPU
    # kernels (the UNet's and MoVQ's oneDNN convolutions) that may round each position differently.
    same = max(apart(got["shared"][0], row) for row in got["shared"][1:])
    assert same < 1e-3 * min(by_noise, by_embedding), (
        f"same embedding, same noise: the frames differ by {same:.3g}; a different embedding moves them by "
        f"{by_embedding:.3g}, each frame's own noise by {by_noise:.3g}")
    # The same run as "own" (off is the default): same computation, same data, same shapes, so bit for bit.
    assert torch.equal(got["own"], got["default"]), "off must keep the results without it"
    # Frame 0 has embedding a in both batches, but the other rows differ, so it is held to rounding as well.
    first = apart(got["path"][0], got["shared"][0])
    assert first < 1e-3 * by_embedding, (f"frame 0 is embedding a either way: it differs by {first:.3g}, a different "
                                         f"embedding moves frames by {by_embedding:.3g}")
    check_images(saved(comfy, entry, frames_saved), frames)


def test_the_animation_example_shares_noise():
    workflow = json.loads((Path(__file__).parent.parent / "example_workflows" /
                           "kandinsky22_interpolation_animation.json").read_text())
    (sampler,) = [n for n in workflow["nodes"] if n["type"] == "Kandinsky2DecoderSampler"]
    assert sampler["widgets_values"][-1] is True


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflows_name_only_files_the_missing_models_dialog_accepts(path):
    models = json.loads(path.read_text()).get("models", [])
    assert models, "each example lists the checkpoints it needs"
    bad = [m["name"] for m in models if not m["name"].endswith((".safetensors", ".sft"))]
    assert not bad, f"ComfyUI's missing-models dialog only allows .safetensors and .sft: {bad}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_checkpoints_left_out_of_models_are_explained_in_a_note(path):
    workflow = json.loads(path.read_text())
    chosen = {n["widgets_values"][0] for n in workflow["nodes"]
              if n["type"].startswith(("Kandinsky2", "Kandinsky3")) and n["type"].endswith("Loader")}
    notes = " ".join(n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "MarkdownNote")
    for folder in chosen:
        if not any(m["name"].startswith(folder) for m in workflow["models"]):  # published only as .bin or .pt
            assert f"models/kandinsky/{folder}" in notes and (".bin" in notes or ".pt" in notes), \
                f"the note must say where {folder} goes"
