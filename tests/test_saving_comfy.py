"""Kandinsky Save Model through the ComfyUI server: a loaded UNet, T5 and MoVQ saved once, listed by the loaders from
diffusion_models / text_encoders / vae, and loaded back to the very same images (same weights, same dtype, same
computation); the hostile rows name the node and the input."""
import numpy as np
import pytest

from graphs import ORIGINAL_WEIGHTS, Graph
from k3_files import K3
from test_comfy_nodes import fail, pixels, run, saved
from test_k3_comfy import K3Graph

NODE = "Kandinsky3SaveModel"


@pytest.fixture(scope="module")
def ws(comfy):
    """One websocket for the module (see test_comfy_nodes.ws)."""
    with comfy.listen() as listener:
        yield listener


def options(comfy, node, name):
    inputs = comfy.object_info(node)["input"]
    return (inputs["required"].get(name) or inputs["optional"][name])[1]["options"]


def k3_image(g, model, clip, movq, sampler="checkpoint", steps=3):
    positive = g.encode(clip)
    latent = g.empty_latent()[0]
    samples = g.k3_sampler(model, positive, latent, seed=7, steps=steps, sampler=sampler)[0]
    return g.decode_and_save(movq, samples, "save_roundtrip")


def same_pixels(comfy, first, second):
    """Two runs' Save Image outputs, pixel for pixel (the PNGs differ in the prompt they embed)."""
    (a,), (b,) = (saved(comfy, entry, node) for entry, node in (first, second))
    assert np.array_equal(pixels(a), pixels(b))


def saved_names(entry, node):
    return entry["outputs"][node.id]["text"]


def test_k3_unet_t5_and_movq_saved_in_fp8_load_back_to_the_same_image(comfy, ws):
    g = K3Graph()
    model, clip, movq = g.k3(weight_dtype="fp8_e4m3fn", mode="fast")
    save = g.add(NODE, filename_prefix="k3_fp8", model=model, clip=clip, movq=movq)
    image = k3_image(g, model, clip, movq)
    entry, _ = run(comfy, ws, g)
    names = saved_names(entry, save)
    assert names == ["k3_fp8_unet_00001_.safetensors", "k3_fp8_t5_00001_.safetensors", "k3_fp8_movq_00001_.safetensors"]
    unet_file, t5_file, movq_file = names
    assert unet_file in options(comfy, "Kandinsky3UNetLoader", "unet")
    assert t5_file in options(comfy, "Kandinsky3T5Loader", "text_encoder")
    assert movq_file in options(comfy, "Kandinsky2MoVQLoader", "movq")
    assert unet_file not in options(comfy, "Kandinsky3T5Loader", "text_encoder")
    for folder, name in (("diffusion_models", unet_file), ("text_encoders", t5_file), ("vae", movq_file)):
        assert (comfy.base_dir / "models" / folder / name).is_file()

    again = K3Graph()
    model = again.add("Kandinsky3UNetLoader", unet=unet_file, weight_dtype="fp8_e4m3fn", mode="fast")[0]
    clip = again.add("Kandinsky3T5Loader", text_encoder=t5_file, weight_dtype="fp8_e4m3fn")[0]
    movq = again.add("Kandinsky2MoVQLoader", movq=movq_file, mode="fast")[0]
    reloaded = k3_image(again, model, clip, movq)
    same_pixels(comfy, (entry, image), (run(comfy, ws, again)[0], reloaded))


def test_saving_twice_never_overwrites(comfy, ws):
    names = []
    for mode in ("exact", "fast"):  # two different graphs: the same one again is cached, as core's save nodes are
        g = Graph()
        save = g.add(NODE, filename_prefix="twice", movq=g.add("Kandinsky2MoVQLoader", movq=f"{K3}", mode=mode)[0])
        names += saved_names(run(comfy, ws, g)[0], save)
    assert names == ["twice_movq_00001_.safetensors", "twice_movq_00002_.safetensors"]


def test_original_flash_unet_keeps_its_conditioning_when_saved(comfy, ws):
    g = K3Graph()
    model = g.add("Kandinsky3OriginalUNetLoader", unet=f"{ORIGINAL_WEIGHTS}/kandinsky3_flash.pt",
                  projection="auto (the published pairing)", weight_dtype="default", mode="fast")[0]
    clip = g.add("Kandinsky3T5Loader", text_encoder=f"{ORIGINAL_WEIGHTS}/flan_ul2_encoder/", weight_dtype="default")[0]
    movq = g.add("Kandinsky2MoVQLoader", movq=f"{ORIGINAL_WEIGHTS}/movq.pt", mode="fast")[0]
    save = g.add(NODE, filename_prefix="flash", model=model)
    image = k3_image(g, model, clip, movq, sampler="flash", steps=4)
    entry, _ = run(comfy, ws, g)
    (unet_file,) = saved_names(entry, save)
    again = K3Graph()
    reloaded_model = again.add("Kandinsky3UNetLoader", unet=unet_file, weight_dtype="default", mode="fast")[0]
    clip = again.add("Kandinsky3T5Loader", text_encoder=f"{ORIGINAL_WEIGHTS}/flan_ul2_encoder/", weight_dtype="default")[0]
    movq = again.add("Kandinsky2MoVQLoader", movq=f"{ORIGINAL_WEIGHTS}/movq.pt", mode="fast")[0]
    reloaded = k3_image(again, reloaded_model, clip, movq, sampler="flash", steps=4)
    same_pixels(comfy, (entry, image), (run(comfy, ws, again)[0], reloaded))


def test_decoder_unet_saved_loads_back_to_the_same_image(comfy, ws):
    def image(g, model, movq):
        cond = g.prior_encode(g.prior())
        samples = g.sampler(model, cond[0], cond[1], g.empty_latent()[0], seed=3)[0]
        return g.decode_and_save(movq, samples, "save_decoder")

    g = Graph()
    decoder = g.decoder("2.2", mode="fast")
    save = g.add(NODE, filename_prefix="decoder22", model=decoder[0])
    first = image(g, decoder, decoder[1])
    entry, _ = run(comfy, ws, g)
    (unet_file,) = saved_names(entry, save)
    assert unet_file in options(comfy, "Kandinsky2DecoderLoader", "decoder")
    again = Graph()
    reloaded = again.add("Kandinsky2DecoderLoader", decoder=unet_file, mode="fast")
    second = image(again, reloaded, g_movq(again))
    same_pixels(comfy, (entry, first), (run(comfy, ws, again)[0], second))


def g_movq(g):
    """The tiny 2.2 decoder folder's MoVQ (a lone UNet file brings none)."""
    return g.add("Kandinsky2MoVQLoader", movq="kandinsky-2-2-decoder/", mode="fast")[0]


@pytest.mark.parametrize("inputs, message", [
    ({}, "Kandinsky Save Model: nothing to save; connect a model, a clip or a movq"),
    ({"filename_prefix": "../../escape"}, "Kandinsky Save Model: filename_prefix '../../escape_movq' cannot be used"),
])
def test_hostile_rows_name_the_node_and_input(comfy, ws, inputs, message):
    g = Graph()
    extra = {} if not inputs else {"movq": g.add("Kandinsky2MoVQLoader", movq=f"{K3}", mode="exact")[0]}
    g.add(NODE, **{"filename_prefix": "hostile", **inputs, **extra})
    assert message in fail(comfy, ws, g)["exception_message"]


def test_a_2_1_decoder_is_refused_with_the_folder_to_keep(comfy, ws):
    g = Graph()
    g.add(NODE, filename_prefix="d21", model=g.decoder("2.1")[0])
    assert "a Kandinsky 2.1 decoder needs its text encoder" in fail(comfy, ws, g)["exception_message"]
