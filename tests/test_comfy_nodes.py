"""The pack's nodes on a real ComfyUI server: every workflow through /prompt, equality with kandinsky_core, the node
definitions, Cancel and progress, and clear errors for bad wiring (the server keeps serving after each).

Checkpoints and input images are the tiny ones conftest.py writes; results come from /history and /view.
"""
import io
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from comfy_server import PromptError
from graphs import DECODERS, DEPTH_MODEL, INPAINT_IMAGE, PRIORS, SINGLE_UNET, SIZE, Graph, interpolate_slots
from kandinsky_core.kandinsky2 import decoder_pipeline as D
from kandinsky_core.kandinsky2 import loading
from kandinsky_core.kandinsky2 import prior_pipeline as P

SNAPSHOT = Path(__file__).parent / "snapshots" / "object_info.json"
PREFIX = "Kandinsky2"
PREFIXES = (PREFIX, "Kandinsky3")  # every node id of the pack starts with one of these
NODES = {f"{PREFIX}{name}" for name in (
    "PriorLoader", "DecoderLoader", "MoVQLoader", "PriorEncode", "ImageEmbedding", "Emb2Emb", "Interpolate",
    "InterpolateBatch", "MoVQEncode", "MoVQDecode", "InpaintConditioning", "DepthModelLoader", "DepthEstimate",
    "ApplyDepthHint", "DecoderSampler", "PriorLoRA")} | {"Kandinsky3UNetLoader", "Kandinsky3T5Loader", "Kandinsky3Sampler",
                                                    "Kandinsky3OriginalUNetLoader", "Kandinsky3FlashSigmas",
                                                    "Kandinsky3InpaintConditioning", "Kandinsky3SaveModel"}
# The node-definition fields the pack's schemas set. Newer ComfyUIs add more on their own (0.30.0: search_aliases,
# price_badge, dev_only, is_input_list ..., all at their defaults), which the snapshot must not depend on.
SCHEMA_FIELDS = ("name", "display_name", "description", "category", "python_module", "input", "input_order", "output",
                 "output_is_list", "output_name", "output_tooltips", "output_node", "deprecated", "experimental",
                 "api_node")
MODEL_LISTS = {"Kandinsky2PriorLoader": "prior", "Kandinsky2DecoderLoader": "decoder", "Kandinsky2MoVQLoader": "movq",
               "Kandinsky2DepthModelLoader": "depth_model",
               "Kandinsky2PriorLoRA": "lora_name", "Kandinsky3UNetLoader": "unet",
               "Kandinsky3T5Loader": "text_encoder"}  # node: its input listing a model folder


@pytest.fixture(scope="module")
def ws(comfy):
    """One websocket for the whole module: reconnecting with the same client id races with the server dropping the
    old socket, which can take the new one with it."""
    with comfy.listen() as listener:
        yield listener


def error_text(entry):
    """The execution_error of a history entry as readable text, for assertion messages."""
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    return "\n".join(f"{e['node_type']}: {e['exception_message']}\n{''.join(e['traceback'])}" for e in errors)


def submit(comfy, ws, graph, timeout=120):
    """Run a prompt to its end; return (history entry, its websocket messages)."""
    prompt_id = comfy.queue(graph.prompt)
    entry = comfy.wait(prompt_id, timeout)
    return entry, ws.wait_for(prompt_id, timeout=10)


def run(comfy, ws, graph, timeout=120):
    """Run a prompt that must succeed; return (history entry, websocket messages)."""
    entry, messages = submit(comfy, ws, graph, timeout)
    assert entry["status"]["status_str"] == "success", error_text(entry)
    return entry, messages


def fail(comfy, ws, graph):
    """Run a prompt that must fail while executing; return its execution_error data."""
    entry, messages = submit(comfy, ws, graph)
    errors = [m["data"] for m in messages if m["type"] == "execution_error"]
    assert entry["status"]["status_str"] == "error" and len(errors) == 1, messages[-1]
    return errors[0]


def executed(messages):
    """Ids of the nodes that really ran (cached ones get no `executing` message)."""
    return {m["data"]["node"] for m in messages if m["type"] == "executing"}


def saved(comfy, entry, save):
    """PNG bytes of the images a Save Image node wrote, in batch order."""
    return [comfy.get_image(i["filename"], i["subfolder"], i["type"]) for i in entry["outputs"][save.id]["images"]]


def saved_latents(comfy, entry, save):
    """The LATENT samples a Save Latent node wrote."""
    (file,) = entry["outputs"][save.id]["latents"]
    return safetensors.torch.load(comfy.get_image(file["filename"], file["subfolder"], file["type"]))["latent_tensor"]


def pixels(png):
    """A PNG as a uint8 (H, W, 3) array."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def check_images(pngs, batch, height=SIZE, width=SIZE):
    """`batch` images of the given size that are not flat (NaN or a dead model decode to one colour)."""
    assert len(pngs) == batch
    images = [pixels(png) for png in pngs]
    for image in images:
        assert image.shape == (height, width, 3)
        assert image.std() > 2, "flat image"
    return images


def seed_variants(graph, sample, movq, seed, prefix):
    """Save `sample(seed)` twice and `sample(seed + 1)` once; returns [(sampler, save)] in that order.

    `sample(seed, **extra)` adds a sampler node. The repeat gets an input no node declares: ComfyUI leaves it out
    when executing but counts it in its cache key, so the repeat is computed again instead of served from the cache.
    """
    variants = []
    for s, extra in ((seed, {}), (seed, {"cache_buster": 1}), (seed + 1, {})):
        sampler = sample(s, **extra)
        variants.append((sampler, graph.decode_and_save(movq, sampler[0], prefix)))
    return variants


def check_seeds(comfy, entry, messages, variants, batch=1, height=SIZE, width=SIZE):
    """The runs of `seed_variants`: all computed, the same seed gives the same PNG bytes, the next seed other pixels."""
    assert {sampler.id for sampler, _ in variants} <= executed(messages), "a sampler was served from the cache"
    first, again, other = (saved(comfy, entry, save) for _, save in variants)
    assert first == again, "the same seed gave different PNGs"
    images = check_images(first, batch, height, width)
    for image, different in zip(images, check_images(other, batch, height, width)):
        assert np.abs(image.astype(int) - different).mean() > 1
    return images


def text_to_image(graph, version="2.2", decoder=None, batch_size=1, width=SIZE, height=SIZE, prior_steps=2):
    """Prior, decoder, prompt embedding and empty latent: the common start of a text-to-image graph."""
    prior, decoder = graph.prior(version), graph.decoder(decoder or version)
    cond = graph.prior_encode(prior, batch_size=batch_size, steps=prior_steps)
    return decoder, cond, graph.empty_latent(width, height, batch_size)


# --- workflows ---------------------------------------------------------------------------------------------------


def test_text_to_image_22_batch_and_orientation(comfy, ws):
    g = Graph()
    decoder, cond, latent = text_to_image(g, "2.2", batch_size=2, width=2 * SIZE)
    variants = seed_variants(g, lambda s, **kw: g.sampler(decoder, cond[0], cond[1], latent[0], s, steps=3, **kw),
                             decoder[1], 5, "t2i22")
    entry, messages = run(comfy, ws, g)
    first, second = check_seeds(comfy, entry, messages, variants, batch=2, width=2 * SIZE)
    assert np.abs(first.astype(int) - second).mean() > 1  # each batch item has its own noise and embedding


def test_text_to_image_21(comfy, ws):
    g = Graph()
    decoder, cond, latent = text_to_image(g, "2.1")
    variants = seed_variants(g, lambda s, **kw: g.sampler(decoder, cond[0], cond[1], latent[0], s, **kw),
                             decoder[1], 5, "t2i21")
    check_seeds(comfy, *run(comfy, ws, g), variants)


def test_image_to_image_depends_on_the_image(comfy, ws):
    g = Graph()
    prior, decoder = g.prior(), g.decoder()
    cond, image = g.prior_encode(prior), g.load_image()
    latent = g.add("Kandinsky2MoVQEncode", movq=decoder[1], image=image[0])
    variants = seed_variants(g, lambda s, **kw: g.sampler(decoder, cond[0], cond[1], latent[0], s, steps=4,
                                                          denoise=0.5, **kw), decoder[1], 5, "i2i")
    inverted = g.add("Kandinsky2MoVQEncode", movq=decoder[1], image=g.add("ImageInvert", image=image[0])[0])
    other_image = g.decode_and_save(decoder[1], g.sampler(decoder, cond[0], cond[1], inverted[0], 5, steps=4,
                                                          denoise=0.5)[0], "i2i_inverted")
    entry, messages = run(comfy, ws, g)
    (image,) = check_seeds(comfy, entry, messages, variants)
    (from_inverted,) = check_images(saved(comfy, entry, other_image), 1)
    assert np.abs(image.astype(int) - from_inverted).mean() > 1


@pytest.mark.parametrize("version", ["2.2", "2.1"])
def test_inpainting(comfy, ws, version):
    g = Graph()
    prior, decoder = g.prior(version), g.decoder(f"{version}-inpaint")
    cond, image = g.prior_encode(prior), g.load_image(INPAINT_IMAGE)  # mask: 1 in the transparent central square
    inpaint = g.inpaint(cond, decoder[1], image)
    variants = seed_variants(g, lambda s, **kw: g.sampler(decoder, inpaint[0], inpaint[1], inpaint[2], s, **kw),
                             decoder[1], 5, f"inpaint{version}")
    entry, messages = run(comfy, ws, g)
    (first,) = check_seeds(comfy, entry, messages, variants)
    other = pixels(saved(comfy, entry, variants[2][1])[0])
    if version == "2.2":  # 2.2 puts the kept latents back after every step; 2.1 leaves keeping them to the model
        change = np.abs(first.astype(int) - other).mean(axis=-1)
        hole = np.zeros(change.shape, dtype=bool)
        hole[SIZE // 4: -SIZE // 4, SIZE // 4: -SIZE // 4] = True
        reach = np.zeros_like(hole)  # the hole grown by a latent pixel plus the MoVQ decoder's reach
        reach[SIZE // 8: -SIZE // 8, SIZE // 8: -SIZE // 8] = True
        assert change[hole].mean() > 3 * change[~reach].mean()  # the seed repaints the hole, not the kept image


def test_interpolation_of_a_text_and_an_image(comfy, ws):
    g = Graph()
    prior, decoder, image = g.prior(), g.decoder(), g.load_image()
    mix = g.add("Kandinsky2Interpolate", prior=prior[0], seed=3, steps=2, guidance_scale=4.0,
                **interpolate_slots(text_1="a red cat", weight_1=0.6, image_2=image[0], weight_2=0.4))
    text_only = g.add("Kandinsky2Interpolate", prior=prior[0], seed=3, steps=2, guidance_scale=4.0,
                      **interpolate_slots(text_1="a red cat", weight_1=0.6, image_2=image[0], weight_2=0.0))
    latent = g.empty_latent()
    variants = seed_variants(g, lambda s, **kw: g.sampler(decoder, mix[0], mix[1], latent[0], s, **kw),
                             decoder[1], 5, "interpolate")
    without_image = g.decode_and_save(decoder[1], g.sampler(decoder, text_only[0], text_only[1], latent[0], 5)[0],
                                      "interpolate_text")
    entry, messages = run(comfy, ws, g)
    (image,) = check_seeds(comfy, entry, messages, variants)
    (text_image,) = check_images(saved(comfy, entry, without_image), 1)
    assert np.abs(image.astype(int) - text_image).mean() > 1  # the image slot counts


def test_emb2emb(comfy, ws):
    g = Graph()
    prior, decoder, image = g.prior(), g.decoder(), g.load_image()
    cond = g.add("Kandinsky2Emb2Emb", prior=prior[0], image=image[0], prompt="a red cat", negative_prompt="",
                 strength=0.5, seed=3, steps=4, guidance_scale=4.0)
    latent = g.empty_latent()
    variants = seed_variants(g, lambda s, **kw: g.sampler(decoder, cond[0], cond[1], latent[0], s, **kw),
                             decoder[1], 5, "emb2emb")
    check_seeds(comfy, *run(comfy, ws, g), variants)


@pytest.mark.parametrize("denoise", [1.0, 0.5], ids=["text_to_image", "image_to_image"])
def test_depth(comfy, ws, denoise):
    g = Graph()
    prior, decoder, image = g.prior(), g.decoder("2.2-depth"), g.load_image()
    cond = g.prior_encode(prior)
    depth = g.depth_map(image[0])
    hinted = g.depth_hint(cond, depth[0])
    latent = g.add("Kandinsky2MoVQEncode", movq=decoder[1], image=image[0]) if denoise < 1 else g.empty_latent()
    variants = seed_variants(g, lambda s, **kw: g.sampler(decoder, hinted[0], hinted[1], latent[0], s, steps=4,
                                                          denoise=denoise, **kw), decoder[1], 5, "depth")
    other_hint = g.depth_hint(cond, g.add("ImageInvert", image=depth[0])[0])
    inverted = g.sampler(decoder, other_hint[0], other_hint[1], latent[0], 5, steps=4, denoise=denoise)
    latents = [g.save_latent(sampler[0], "depth") for sampler in (variants[0][0], inverted)]
    depth_map = g.save(depth[0], "depth_map")
    entry, messages = run(comfy, ws, g)
    check_seeds(comfy, entry, messages, variants)
    # The hint counts. Compared as latents: the tiny UNet's random hint block passes little of it through (latents
    # move by about 1e-3), which leaves most pixels as they were.
    hinted_latents, inverted_latents = (saved_latents(comfy, entry, node) for node in latents)
    assert (hinted_latents - inverted_latents).abs().max() > 1e-5
    (gray,) = check_images(saved(comfy, entry, depth_map), 1)
    assert (gray == gray[..., :1]).all() and gray.min() < 10 and gray.max() > 245  # gray, normalised per image


@pytest.mark.parametrize("variant", ["2.2", "2.2-depth", "2.2-inpaint", "2.1"])
def test_stock_ksampler(comfy, ws, variant):
    g = Graph()
    prior, decoder = g.prior(variant[:3]), g.decoder(variant)
    cond = g.prior_encode(prior)
    if variant == "2.2-depth":
        cond = g.depth_hint(cond, g.depth_map(g.load_image()[0])[0])
    if variant == "2.2-inpaint":
        cond = g.inpaint(cond, decoder[1], g.load_image(INPAINT_IMAGE))  # its latent carries the noise mask
        latent = cond[2]
    else:
        latent = g.empty_latent()[0]

    def ksampler(seed, **extra):
        return g.add("KSampler", model=decoder[0], positive=cond[0], negative=cond[1], latent_image=latent,
                     seed=seed, steps=3, cfg=4.0, sampler_name="euler", scheduler="normal", denoise=1.0, **extra)

    variants = seed_variants(g, ksampler, decoder[1], 5, f"ksampler{variant}")
    check_seeds(comfy, *run(comfy, ws, g), variants)


@pytest.mark.parametrize("mode", ["slerp", "linear"])
def test_interpolate_batch_gives_one_image_per_frame(comfy, ws, mode):
    frames = 4
    g = Graph()
    prior, decoder = g.prior(), g.decoder()
    a, b = g.prior_encode(prior, "a red cat"), g.prior_encode(prior, "a blue house")
    path = g.add("Kandinsky2InterpolateBatch", embedding_a=a[0], embedding_b=b[0], frames=frames, mode=mode)
    sampler = g.sampler(decoder, path[0], a[1], g.empty_latent(batch_size=frames)[0], 5)
    save = g.decode_and_save(decoder[1], sampler[0], f"frames_{mode}")
    entry, _ = run(comfy, ws, g)
    images = check_images(saved(comfy, entry, save), frames)
    for previous, image in itertools.pairwise(images):
        assert np.abs(previous.astype(int) - image).mean() > 1


# --- equality with kandinsky_core --------------------------------------------------------------------------------


def test_fast_mode_default_lands_within_rounding_of_exact(comfy, ws):
    """The loaders' default mode (fast: channels_last convolution weights) samples the same image as exact up to float
    rounding: a few 8-bit levels at most on these tiny random models, far below any visible change."""
    served = {}
    for mode in ("fast", "exact"):
        g = Graph()
        prior, decoder = g.prior("2.2"), g.decoder("2.2", mode=mode)
        cond = g.prior_encode(prior, "a red cat", seed=7, steps=2)
        sampler = g.sampler(decoder, cond[0], cond[1], g.empty_latent()[0], 11, steps=2)
        save = g.decode_and_save(decoder[1], sampler[0], f"mode_{mode}")
        entry, _ = run(comfy, ws, g)
        (served[mode],) = check_images(saved(comfy, entry, save), 1)
    difference = np.abs(served["fast"].astype(int) - served["exact"].astype(int))
    assert difference.max() <= 3 and difference.mean() < 0.05, (difference.max(), difference.mean())


@pytest.mark.parametrize("version", ["2.2", "2.1"])
def test_sampler_equals_kandinsky_core(comfy, ws, version):
    prompt, prior_seed, seed, steps, guidance = "a red cat", 7, 11, 3, 4.0
    g = Graph()
    prior, decoder = g.prior(version), g.decoder(version)
    cond = g.prior_encode(prior, prompt, seed=prior_seed, steps=steps, guidance_scale=guidance)
    sampler = g.sampler(decoder, cond[0], cond[1], g.empty_latent()[0], seed, steps=steps, guidance_scale=guidance)
    save = g.decode_and_save(decoder[1], sampler[0], f"core{version}")
    entry, _ = run(comfy, ws, g)
    (served,) = check_images(saved(comfy, entry, save), 1)

    models = comfy.base_dir / "models" / "kandinsky"
    prior_models = loading.load_prior_models(str(models / g.prompt[prior.id]["inputs"]["prior"]))
    positive, negative = P.sample_prior(prior_models, prompt, None, steps=steps, guidance_scale=guidance,
                                        generator=torch.Generator().manual_seed(prior_seed))
    decoder_models = loading.load_decoder_models(str(models / g.prompt[decoder.id]["inputs"]["decoder"]))
    image = D.text_to_image(decoder_models, positive, negative, prompt=prompt if version == "2.1" else None,
                            height=SIZE, width=SIZE, steps=steps, guidance_scale=guidance,
                            generator=torch.Generator().manual_seed(seed), output_type="np")
    expected = np.clip(255 * image[0], 0, 255).astype(np.uint8)  # Save Image's conversion (truncating)
    difference = np.abs(served.astype(int) - expected).max()
    assert difference == 0, f"the served PNG differs from kandinsky_core by up to {difference} levels"


# --- node definitions --------------------------------------------------------------------------------------------


def pack_nodes(comfy):
    """/object_info of the pack's nodes."""
    return {name: info for name, info in comfy.object_info().items() if name.startswith(PREFIXES)}


def own_schema(nodes):
    """A copy of `nodes` with only the pack's schema fields, and loader choices (they follow the model folder's
    content) reading "models/kandinsky"."""
    nodes = {name: {key: info[key] for key in SCHEMA_FIELDS if key in info} for name, info in nodes.items()}
    nodes = json.loads(json.dumps(nodes))
    for node, name in MODEL_LISTS.items():
        nodes[node]["input"]["required"][name][1]["options"] = "models/kandinsky"
    return nodes


def test_object_info_matches_snapshot(comfy):
    nodes = own_schema(pack_nodes(comfy))
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(nodes, indent=1, ensure_ascii=False) + "\n")
    expected = json.loads(SNAPSHOT.read_text())
    assert nodes == expected, (f"the pack's /object_info differs from {SNAPSHOT.name}; if the change is intended, "
                               "rewrite the snapshot with UPDATE_SNAPSHOTS=1 pytest tests/test_comfy_nodes.py and "
                               "review its diff")


def test_loaders_offer_the_checkpoints_and_not_their_parts(comfy):
    nodes = pack_nodes(comfy)
    offered = {node: nodes[node]["input"]["required"][name][1]["options"] for node, name in MODEL_LISTS.items()}
    assert set(PRIORS.values()) <= set(offered["Kandinsky2PriorLoader"])
    assert {*DECODERS.values(), SINGLE_UNET} <= set(offered["Kandinsky2DecoderLoader"])
    assert {*DECODERS.values(), SINGLE_UNET} <= set(offered["Kandinsky2MoVQLoader"])
    assert DEPTH_MODEL in offered["Kandinsky2DepthModelLoader"]
    assert not set(PRIORS.values()) & set(offered["Kandinsky2DecoderLoader"])
    assert not set(DECODERS.values()) & set(offered["Kandinsky2PriorLoader"])
    folders = (*PRIORS.values(), *DECODERS.values(), DEPTH_MODEL)
    for choices in offered.values():  # a checkpoint folder's files are never offered on their own
        assert not [c for c in choices if any(c.startswith(f) and c != f for f in folders)], choices


def test_every_node_input_and_output_is_documented(comfy):
    nodes = pack_nodes(comfy)
    assert set(nodes) == NODES
    for name, info in nodes.items():
        family = "Kandinsky 3" if name.startswith("Kandinsky3") else "Kandinsky 2"
        assert info["display_name"].startswith("Kandinsky ") and info["category"].startswith(family)
        assert info["description"].strip(), name
        inputs = {**info["input"]["required"], **info["input"].get("optional", {})}
        undocumented = [key for key, spec in inputs.items() if not (spec[1:] and spec[1].get("tooltip", "").strip())]
        assert not undocumented, f"{name} inputs without a tooltip: {undocumented}"
        tooltips = info["output_tooltips"]
        assert len(tooltips) == len(info["output"]) and all(t and t.strip() for t in tooltips), name


# --- cancel and progress -----------------------------------------------------------------------------------------


def short_text_to_image(prefix, prior_steps=2, sampler_steps=2):
    """A complete, quick 2.2 text-to-image graph; returns (graph, prior encode node, sampler node)."""
    g = Graph()
    decoder, cond, latent = text_to_image(g, "2.2", prior_steps=prior_steps)
    sampler = g.sampler(decoder, cond[0], cond[1], latent[0], 5, steps=sampler_steps)
    g.decode_and_save(decoder[1], sampler[0], prefix)
    return g, cond, sampler


def progress_of(messages, node):
    """(value, max) of a node's `progress` messages, in order."""
    return [(m["data"]["value"], m["data"]["max"]) for m in messages
            if m["type"] == "progress" and m["data"]["node"] == node.id]


def wait_for_progress(ws, prompt_id, node, timeout=60):
    """Block until the node has reported its first step."""
    deadline = time.monotonic() + timeout
    while not progress_of(ws.for_prompt(prompt_id, ("progress",)), node):
        terminal = ws.for_prompt(prompt_id, ("execution_success", "execution_error", "execution_interrupted"))
        assert not terminal and time.monotonic() < deadline, f"no progress from node {node.id}: {terminal}"
        time.sleep(0.005)


def check_progress(reported, steps):
    """What the progress bar shows: it starts at the first step, only moves forward and ends full. Which steps in
    between are sent is ComfyUI's choice (0.3.75 sends every one; newer versions send at most one per 100 ms)."""
    values = [value for value, _ in reported]
    assert reported and {total for _, total in reported} == {steps}, reported
    assert values[0] == 1 and values[-1] == steps, reported
    assert all(a < b for a, b in itertools.pairwise(values)), f"progress went back: {reported}"


def test_progress_is_monotonic_and_reaches_the_last_step(comfy, ws):
    g, prior_encode, sampler = short_text_to_image("progress", prior_steps=3, sampler_steps=4)
    _, messages = run(comfy, ws, g)
    check_progress(progress_of(messages, prior_encode), 3)
    check_progress(progress_of(messages, sampler), 4)


@pytest.mark.parametrize("node", ["sampler", "prior"])
def test_cancel_stops_a_long_run_within_a_step(comfy, ws, node):
    steps = 999  # 2.2's DDPM ("leading" spacing, steps_offset 1) refuses 1000: its last timestep would be 1000
    g, prior_encode, sampler = short_text_to_image(f"cancel_{node}", **{f"{node}_steps": steps})
    target = sampler if node == "sampler" else prior_encode
    prompt_id = comfy.queue(g.prompt)
    wait_for_progress(ws, prompt_id, target)
    start = time.monotonic()
    comfy.interrupt(prompt_id)
    messages = ws.wait_for(prompt_id, timeout=30)
    latency = time.monotonic() - start
    assert messages[-1]["type"] == "execution_interrupted" and messages[-1]["data"]["node_id"] == target.id
    assert latency < 5, f"Cancel took {latency:.2f} s"
    assert len(progress_of(messages, target)) < steps
    entry = comfy.wait(prompt_id)
    assert entry["status"]["status_str"] == "error" and not entry["outputs"]
    run(comfy, ws, short_text_to_image(f"after_cancel_{node}")[0])


# --- bad wiring ----------------------------------------------------------------------------------------------------


def versions(prior_version, decoder_version, sampler="Kandinsky2DecoderSampler"):
    """A prior into a decoder, with the Kandinsky or the stock sampler."""
    g = Graph()
    decoder, cond = g.decoder(decoder_version), g.prior_encode(g.prior(prior_version))
    latent = g.empty_latent()
    if sampler == "KSampler":
        out = g.add("KSampler", model=decoder[0], positive=cond[0], negative=cond[1], latent_image=latent[0], seed=0,
                    steps=2, cfg=4.0, sampler_name="euler", scheduler="normal", denoise=1.0)
    else:
        out = g.sampler(decoder, cond[0], cond[1], latent[0])
    g.decode_and_save(decoder[1], out[0], "versions")
    return g


def inpainting(conditioned):
    """The 2.2 inpainting decoder, with or without Kandinsky Inpaint Conditioning."""
    g = Graph()
    decoder, cond = g.decoder("2.2-inpaint"), g.prior_encode(g.prior())
    if conditioned:
        cond = g.inpaint(cond, decoder[1], g.load_image(INPAINT_IMAGE))
        latent = cond[2]
    else:
        latent = g.empty_latent()[0]
    g.decode_and_save(decoder[1], g.sampler(decoder, cond[0], cond[1], latent)[0], "inpaint_fixed")
    return g


def depth(hinted):
    """The 2.2 depth decoder, with or without Kandinsky Apply Depth Hint."""
    g = Graph()
    decoder, cond = g.decoder("2.2-depth"), g.prior_encode(g.prior())
    if hinted:
        cond = g.depth_hint(cond, g.depth_map(g.load_image()[0])[0])
    g.decode_and_save(decoder[1], g.sampler(decoder, cond[0], cond[1], g.empty_latent()[0])[0], "depth_fixed")
    return g


def single_file_unet(movq_loader):
    """A decoder from a lone UNet file, its (absent) MoVQ or a MoVQ Loader's feeding MoVQ Decode."""
    g = Graph()
    decoder, cond = g.decoder(SINGLE_UNET), g.prior_encode(g.prior())
    movq = g.add("Kandinsky2MoVQLoader", movq="kandinsky-2-2-decoder/")[0] if movq_loader else decoder[1]
    g.decode_and_save(movq, g.sampler(decoder, cond[0], cond[1], g.empty_latent()[0])[0], "single_fixed")
    return g


@pytest.mark.parametrize("bad, fixed, node_type, words", [
    pytest.param(versions("2.1", "2.2"), versions("2.2", "2.2"), "Kandinsky2DecoderSampler",
                 ["2.2", "48-dim", "32-dim", "prior"], id="2.1_prior_into_2.2_decoder"),
    pytest.param(versions("2.2", "2.1"), versions("2.1", "2.1"), "Kandinsky2DecoderSampler",
                 ["2.1", "32-dim", "48-dim", "prior"], id="2.2_prior_into_2.1_decoder"),
    pytest.param(versions("2.1", "2.2", "KSampler"), versions("2.2", "2.2", "KSampler"), "KSampler",
                 ["2.2", "48-dim", "32-dim", "prior"], id="2.1_prior_into_2.2_decoder_with_ksampler"),
    pytest.param(inpainting(False), inpainting(True), "Kandinsky2DecoderSampler",
                 ["inpainting", "Inpaint Conditioning"], id="inpainting_decoder_without_inpaint_conditioning"),
    pytest.param(depth(False), depth(True), "Kandinsky2DecoderSampler", ["depth", "hint"],
                 id="depth_decoder_without_hint"),
    pytest.param(single_file_unet(False), single_file_unet(True), "Kandinsky2MoVQDecode", ["MoVQ Loader", "single"],
                 id="single_file_decoder_movq_into_decode"),
])
def test_bad_wiring_fails_clearly_and_the_server_keeps_serving(comfy, ws, bad, fixed, node_type, words):
    error = fail(comfy, ws, bad)
    assert error["node_type"] == node_type
    assert error["exception_type"].endswith("KandinskyError"), error["exception_type"]
    for word in words:
        assert word in error["exception_message"], error["exception_message"]
    run(comfy, ws, fixed)


@pytest.mark.parametrize("loader, name", MODEL_LISTS.items())
def test_loader_refuses_a_path_outside_the_model_folders(comfy, ws, loader, name):
    g = Graph()
    inputs = {name: "../../etc/passwd"}
    for key, (kind, *options) in comfy.object_info(loader)["input"]["required"].items():
        if key not in inputs:  # the loader's other inputs: a prior (the LoRA loader), widget defaults
            inputs[key] = g.prior()[0] if kind == "KANDINSKY2_PRIOR" else options[0]["default"]
    node = g.add(loader, **inputs)
    g.add("PreviewAny", source=node[0])
    try:
        error = fail(comfy, ws, g)
    except PromptError as refused:  # ComfyUI versions that check V3 combo values against the options
        (error,) = refused.node_errors[node.id]["errors"]
        assert error["type"] == "value_not_in_list" and name in error["details"], error
    else:  # ComfyUI 0.3.75 checks only V1 combos, so the loader's own check must refuse it
        assert error["node_type"] == loader and error["exception_type"].endswith("KandinskyError")
        assert "'../../etc/passwd' points outside" in error["exception_message"], error["exception_message"]
    run(comfy, ws, short_text_to_image("after_refusal")[0])
