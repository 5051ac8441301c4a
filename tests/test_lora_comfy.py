"""LoRAs on a real ComfyUI server: decoder LoRAs through ComfyUI's own LoraLoaderModelOnly, prior LoRAs through
Kandinsky Prior LoRA; strength, stacking, alpha, unpatching, no reload of the base models, and clear errors for
files that do not fit (the server keeps serving, nothing stays applied).

The LoRA files are written by conftest (the example workflow's two) and by this module into the server's models/loras.
"""
import io

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from graphs import SIZE, Graph
from kandinsky_core.kandinsky2 import decoder_pipeline as D
from kandinsky_core.kandinsky2 import loading
from kandinsky_core.kandinsky2 import prior_pipeline as P
from kandinsky_core.lora import apply_lora
from lora_files import DECODER_LORA, PRIOR_LORA, model_shapes, random_lora, write_lora

PEFT = "k22-decoder-peft.safetensors"  # the example decoder LoRA's tensors in the PEFT naming, `unet.` prefixed
HALF_ALPHA = "k22-decoder-alpha.safetensors"  # the same in PEFT naming with alpha = rank / 2: half the effect
BAD = {"sd": "sd15-style.safetensors", "k3": "kandinsky3.safetensors", "ranks": "broken-ranks.safetensors"}


@pytest.fixture(scope="module")
def ws(comfy):
    with comfy.listen() as listener:
        yield listener


@pytest.fixture(scope="module")
def loras(comfy):
    """Write this module's LoRA files next to conftest's; returns the decoder's weight shapes."""
    models, folder = comfy.base_dir / "models" / "kandinsky", comfy.base_dir / "models" / "loras"
    decoder = model_shapes(models, "kandinsky-2-2-decoder", "unet")
    example = random_lora(decoder, "decoder", seed=10)  # as conftest writes it
    peft = random_lora(decoder, "decoder", "peft", seed=10, prefix="unet.")
    assert example and all(torch.equal(a, b) for a, b in zip(example.values(), peft.values()))  # same tensors
    write_lora(folder / PEFT, peft)
    write_lora(folder / HALF_ALPHA, random_lora(decoder, "decoder", "peft", seed=10, alpha=1.0))  # rank 2
    write_lora(folder / BAD["sd"], {"lora_unet_input_blocks_1_1_proj_in.lora_up.weight": torch.zeros(4, 1),
                                    "lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.zeros(1, 4)})
    write_lora(folder / BAD["k3"], {"down_blocks.1.attentions.0.attention.to_q.lora_A.weight": torch.zeros(1, 4)})
    ranks = dict(example)
    ranks["mid_block.attentions.0.processor.to_k_lora.down.weight"] = torch.zeros(3, 64)
    write_lora(folder / BAD["ranks"], ranks)
    return decoder


def branch(g, name, decoder_loras=(), prior_loras=()):
    """Prior (with LoRAs) → Prior Encode → decoder MODEL (with LoRAs via LoraLoaderModelOnly) → 2 steps → Save
    Latent `name`; returns the save node."""
    prior = g.prior("2.2")
    for lora, strength in prior_loras:
        prior = g.add("Kandinsky2PriorLoRA", prior=prior[0], lora_name=lora, strength=strength)
    cond = g.prior_encode(prior)
    model = g.decoder("2.2")
    for lora, strength in decoder_loras:
        model = g.add("LoraLoaderModelOnly", model=model[0], lora_name=lora, strength_model=strength)
    return g.save_latent(g.sampler(model, cond[0], cond[1], g.empty_latent()[0])[0], name)


def run(comfy, ws, branches):
    """One prompt with a branch per {name: (decoder loras, prior loras)}; returns ({name: latents}, ran node types)."""
    g = Graph()
    saves = {name: branch(g, name, *spec) for name, spec in branches.items()}
    prompt_id = comfy.queue(g.prompt)
    entry = comfy.wait(prompt_id, timeout=300)
    messages = ws.wait_for(prompt_id, timeout=10)
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"][-1]
    ran = {g.prompt[m["data"]["node"]]["class_type"] for m in messages if m["type"] == "executing" and m["data"]["node"]}
    latents = {}
    for name, save in saves.items():
        (file,) = entry["outputs"][save.id]["latents"]
        data = comfy.get_image(file["filename"], file["subfolder"], file["type"])
        latents[name] = safetensors.torch.load(data)["latent_tensor"]
    return latents, ran


@pytest.fixture(scope="module")
def plain(comfy, ws, loras):
    """Latents of the workflow without any LoRA."""
    return run(comfy, ws, {"plain": ((), ())})[0]["plain"]


def test_decoder_lora_through_comfyuis_loader(comfy, ws, loras, plain):
    out, _ = run(comfy, ws, {
        "full": ([(DECODER_LORA, 1.0)], ()), "peft": ([(PEFT, 1.0)], ()), "zero": ([(DECODER_LORA, 0.0)], ()),
        "half": ([(DECODER_LORA, 0.5)], ()), "alpha": ([(HALF_ALPHA, 1.0)], ()),
        "stacked": ([(DECODER_LORA, 0.5), (PEFT, 0.5)], ())})
    assert (out["full"] - plain).abs().max() > 1e-3  # the LoRA changes the image
    assert (out["half"] - out["full"]).abs().max() > 1e-4  # and the strength matters
    assert torch.equal(out["zero"], plain)  # strength 0: bit for bit without the LoRA
    assert torch.equal(out["peft"], out["full"])  # both namings are the same LoRA
    assert torch.equal(out["alpha"], out["half"])  # alpha / rank = 1/2 scales like strength 0.5
    assert torch.allclose(out["stacked"], out["full"], rtol=0, atol=1e-4)  # two LoRAs add up (to rounding)
    assert "lora key not loaded" not in comfy.log_path.read_text(errors="replace")  # every key found its layer

    again, ran = run(comfy, ws, {"other": ([(DECODER_LORA, -1.0)], ()), "plain": ((), ())})
    assert "Kandinsky2DecoderLoader" not in ran and "LoraLoaderModelOnly" in ran  # a new strength: no reload
    assert (again["other"] - out["full"]).abs().max() > 1e-3
    assert torch.equal(again["plain"], plain)  # unpatched bit for bit once the LoRA is gone


def test_prior_lora_node(comfy, ws, loras, plain):
    out, _ = run(comfy, ws, {"full": ((), [(PRIOR_LORA, 1.0)]), "zero": ((), [(PRIOR_LORA, 0.0)]),
                             "both": ([(DECODER_LORA, 1.0)], [(PRIOR_LORA, 1.0)])})
    assert (out["full"] - plain).abs().max() > 1e-3
    assert (out["both"] - out["full"]).abs().max() > 1e-3
    assert torch.equal(out["zero"], plain)
    again, ran = run(comfy, ws, {"weaker": ((), [(PRIOR_LORA, 0.3)]), "plain": ((), ())})
    assert "Kandinsky2PriorLoader" not in ran and "Kandinsky2PriorLoRA" in ran
    assert (again["weaker"] - out["full"]).abs().max() > 1e-4
    assert torch.equal(again["plain"], plain)


def test_served_image_equals_kandinsky_core_with_the_loras_merged(comfy, ws, loras):
    prompt, seed, steps, guidance, prior_strength, decoder_strength = "a red cat", 5, 3, 4.0, 0.6, 0.8
    g = Graph()
    prior = g.add("Kandinsky2PriorLoRA", prior=g.prior("2.2")[0], lora_name=PRIOR_LORA, strength=prior_strength)
    cond = g.prior_encode(prior, prompt, seed=seed, steps=steps, guidance_scale=guidance)
    decoder = g.decoder("2.2")
    model = g.add("LoraLoaderModelOnly", model=decoder[0], lora_name=DECODER_LORA, strength_model=decoder_strength)
    sampler = g.sampler(model, cond[0], cond[1], g.empty_latent()[0], seed, steps=steps, guidance_scale=guidance)
    save = g.decode_and_save(decoder[1], sampler[0], "lora_core")
    prompt_id = comfy.queue(g.prompt)
    entry = comfy.wait(prompt_id, timeout=300)
    ws.wait_for(prompt_id, timeout=10)
    (image,) = entry["outputs"][save.id]["images"]
    served = np.asarray(Image.open(io.BytesIO(comfy.get_image(image["filename"], image["subfolder"], image["type"]))))

    models, folder = comfy.base_dir / "models" / "kandinsky", comfy.base_dir / "models" / "loras"
    prior_models = loading.load_prior_models(str(models / "kandinsky-2-2-prior"))
    apply_lora(prior_models.prior, folder / PRIOR_LORA, prior_strength)
    positive, negative = P.sample_prior(prior_models, prompt, None, steps=steps, guidance_scale=guidance,
                                        generator=torch.Generator().manual_seed(seed))
    decoder_models = loading.load_decoder_models(str(models / "kandinsky-2-2-decoder"))
    apply_lora(decoder_models.unet, folder / DECODER_LORA, decoder_strength)
    expected = D.text_to_image(decoder_models, positive, negative, height=SIZE, width=SIZE, steps=steps,
                               guidance_scale=guidance, generator=torch.Generator().manual_seed(seed), output_type="np")
    expected = np.clip(255 * expected[0], 0, 255).astype(np.uint8)  # Save Image's conversion (truncating)
    assert np.abs(served[..., :3].astype(int) - expected).max() == 0


CASES = [  # (decoder loras, prior loras, failing node, words the message must hold)
    ([(BAD["sd"], 1.0)], (), "LoraLoaderModelOnly", [BAD["sd"], "Stable Diffusion"]),
    ([(PRIOR_LORA, 1.0)], (), "LoraLoaderModelOnly", [PRIOR_LORA, "prior LoRA", "Kandinsky Prior LoRA"]),
    ([(BAD["ranks"], 0.5)], (), "LoraLoaderModelOnly", [BAD["ranks"], "ranks", "mid_block.attentions.0.to_k"]),
    ((), [(DECODER_LORA, 1.0)], "Kandinsky2PriorLoRA", [DECODER_LORA, "decoder LoRA", "LoraLoaderModelOnly"]),
    ((), [(BAD["k3"], 1.0)], "Kandinsky2PriorLoRA", [BAD["k3"], "Kandinsky 3"]),
]


@pytest.mark.parametrize("decoder_loras,prior_loras,node,words", CASES, ids=["sd", "prior-on-decoder", "ranks",
                                                                             "decoder-on-prior", "k3"])
def test_wrong_lora_is_refused_naming_the_file(comfy, ws, loras, plain, decoder_loras, prior_loras, node, words):
    g = Graph()
    branch(g, "bad", decoder_loras, prior_loras)
    prompt_id = comfy.queue(g.prompt)
    entry = comfy.wait(prompt_id, timeout=120)
    errors = [m["data"] for m in ws.wait_for(prompt_id, timeout=10) if m["type"] == "execution_error"]
    assert entry["status"]["status_str"] == "error" and len(errors) == 1
    assert errors[0]["node_type"] == node and errors[0]["exception_type"].endswith("KandinskyError")
    assert all(w in errors[0]["exception_message"] for w in words), errors[0]["exception_message"]
    assert torch.equal(run(comfy, ws, {"plain": ((), ())})[0]["plain"], plain)  # still serving, nothing applied
