"""Bad inputs for every node of the pack, through a real ComfyUI server's API.

Every case is a small workflow that feeds one node something wrong: a wrong type, a NaN or empty tensor, an odd size,
a mismatched mask or hint, foreign conditioning, a conditioning modifier or noise mask a pack sampler cannot honour,
a prompt that is not valid Unicode, a LoRA file that is none, holds NaN or is for another model (written to
models/loras), or a broken checkpoint file (written under models/kandinsky/hostile/ here). Each must end in a clear error: ComfyUI's validation (HTTP 400 naming the node and input) or the pack's
KandinskyError raised by the node the case targets, with a message saying what to do. Anything else is a crash. The
server must keep serving, and the reference workflow must give the same image after all of them as before.
NaN reaches nodes through float widgets (ComfyUI's range check lets NaN through) and core nodes given NaN (SolidMask,
Latent Multiply). Infinite tensors, empty images and empty batches cannot be made with core nodes (a 0-row latent can,
with Trim Video Latent); test_properties.py covers them on the core functions the nodes call.
A bad combo value (a path outside the model folders, an unknown sampler) is refused either way, naming the node and
the input: ComfyUI 0.30.0 checks V3 combo values against their options itself (HTTP 400 value_not_in_list), 0.3.75
does not, so there the pack's own check answers. No version checks NaN against number ranges: the pack answers those.
"""
import io
import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_server import PromptError
from graphs import DECODERS, INPAINT_IMAGE, ORIGINAL_WEIGHTS, PRIORS, SINGLE_UNET, SIZE, Graph, interpolate_slots
from hostile_summary import record
from k3_files import FP16, K3
from lora_files import DECODER_LORA, model_shapes, random_lora, write_lora

pytest_plugins = ["hostile_summary"]

NAN = float("nan")
HOSTILE = "hostile"
MARKER = "pickle-payload-ran"  # created in the input folder if a checkpoint's pickle code is ever executed


class Payload:
    """Unpickling this runs `open(path, 'w')`: a harmless stand-in for arbitrary code in a .ckpt."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def _copy(root, repo, name, drop=()):
    target = root / HOSTILE / name
    shutil.copytree(root / repo, target)
    for part in drop:
        shutil.rmtree(target / part)
    return target


def _edit_json(path, **changes):
    d = json.loads(path.read_text())
    path.write_text(json.dumps({**d, **changes}))


def _damage(path, how):
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                      "corrupt": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))}[how])


def write_hostile_files(root, marker):
    """Broken checkpoints next to the good ones: models/kandinsky/hostile/..."""
    weights = "diffusion_pytorch_model.safetensors"
    prior, decoder = PRIORS["2.2"].rstrip("/"), DECODERS["2.2"].rstrip("/")
    for how in ("corrupt", "truncated", "empty"):
        _damage(_copy(root, prior, f"prior-{how}") / "prior" / weights, how)
        _damage(_copy(root, decoder, f"decoder-{how}") / "unet" / weights, how)
    _copy(root, prior, "prior-no-tokenizer", drop=["tokenizer"])
    _copy(root, DECODERS["2.1"].rstrip("/"), "decoder-21-no-tokenizer", drop=["tokenizer"])
    _edit_json(_copy(root, prior, "prior-wrong-config") / "prior" / "config.json", embedding_dim=64)
    _edit_json(_copy(root, decoder, "decoder-wrong-config") / "unet" / "config.json", block_out_channels=[16, 16])
    _damage(_copy(root, decoder, "decoder-truncated-movq") / "movq" / weights, "truncated")
    pickled = _copy(root, prior, "prior-pickle") / "prior"
    (pickled / weights).unlink()
    (pickled / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"prd_embedding": Payload(str(marker))}))
    (root / HOSTILE / "pickle-bomb.ckpt").write_bytes(pickle.dumps({"state_dict": Payload(str(marker))}))
    (root / HOSTILE / "empty.safetensors").write_bytes(b"")
    (root / HOSTILE / "notes.bin").write_text("not a checkpoint\n")
    write_sd_checkpoint(root / HOSTILE / "sd15-renamed.safetensors")
    depth = root / "depth" / "dpt-tiny"
    shutil.copytree(depth, root / HOSTILE / "depth-corrupt")
    _damage(root / HOSTILE / "depth-corrupt" / "model.safetensors", "corrupt")
    shutil.copytree(depth, root / HOSTILE / "depth-no-processor")
    (root / HOSTILE / "depth-no-processor" / "preprocessor_config.json").unlink()
    k3 = K3.rstrip("/")
    _damage(_copy(root, k3, "k3-unet-corrupt") / "unet" / FP16, "corrupt")
    _damage(_copy(root, k3, "k3-unet-truncated") / "unet" / FP16, "truncated")
    _damage(_copy(root, k3, "k3-t5-corrupt") / "text_encoder" / "model.fp16-00001-of-00002.safetensors", "corrupt")
    (_copy(root, k3, "k3-t5-missing-shard") / "text_encoder" / "model.fp16-00002-of-00002.safetensors").unlink()
    _copy(root, k3, "k3-no-tokenizer", drop=["tokenizer"])
    _damage(_copy(root, k3, "k3-unet-cut-config") / "unet" / "config.json", "truncated")
    _edit_json(_copy(root, k3, "k3-t5-wrong-config") / "text_encoder" / "config.json", d_ff=40)
    _damage(_copy(root, k3, "k3-t5-cut-config") / "text_encoder" / "config.json", "truncated")
    weights31 = root / ORIGINAL_WEIGHTS
    for how in ("truncated", "corrupt"):
        shutil.copy(weights31 / "kandinsky3.pt", root / HOSTILE / f"k31-{how}.pt")
        _damage(root / HOSTILE / f"k31-{how}.pt", how)
    shutil.copy(weights31 / "kandinsky3.pt", root / HOSTILE / "k31-without-projection.pt")  # no name to pair it by


# LoRA files in models/loras that are not what the loader they reach takes
LORAS = {"empty": "hostile-empty.safetensors", "text": "hostile-notes.safetensors", "prior-pt": "hostile-prior.pt",
         "nan-decoder": "hostile-nan-decoder.safetensors", "nan-prior": "hostile-nan-prior.safetensors",
         "k3": "hostile-k3-unet-peft.safetensors", "k3-nan": "hostile-k3-nan.safetensors",
         "k3-t5": "hostile-k3-unet-and-t5.safetensors", "t5": "hostile-k3-t5-only.safetensors"}


def _with_nan(state_dict):
    first = next(iter(state_dict))
    return {**state_dict, first: state_dict[first].clone().index_fill_(0, torch.tensor([0]), float("nan"))}


def write_hostile_loras(folder, models):
    """Not-a-LoRA files, LoRAs holding NaN, a .pt LoRA, and Kandinsky 3 UNet / T5 LoRAs (PEFT naming) in `folder`."""
    decoder = model_shapes(models, DECODERS["2.2"].rstrip("/"), "unet")
    prior = model_shapes(models, PRIORS["2.2"].rstrip("/"), "prior")
    unet3 = random_lora(model_shapes(models, K3.rstrip("/"), "unet"), "kandinsky3", "peft", prefix="unet.", seed=3)
    t5 = {f"text_encoder.encoder.block.0.layer.0.SelfAttention.q.lora_{ab}.weight": torch.zeros(shape)
          for ab, shape in (("A", (2, 32)), ("B", (32, 2)))}
    (folder / LORAS["empty"]).write_bytes(b"")
    (folder / LORAS["text"]).write_text("trigger words: red cat, oil painting\n")
    torch.save(random_lora(prior, "prior"), folder / LORAS["prior-pt"])
    write_lora(folder / LORAS["nan-decoder"], _with_nan(random_lora(decoder, "decoder")))
    write_lora(folder / LORAS["nan-prior"], _with_nan(random_lora(prior, "prior", "peft")))
    write_lora(folder / LORAS["k3"], unet3)
    write_lora(folder / LORAS["k3-nan"], _with_nan(unet3))
    write_lora(folder / LORAS["k3-t5"], {**unet3, **t5})
    write_lora(folder / LORAS["t5"], t5)


def write_sd_checkpoint(path):
    """A (tiny) Stable Diffusion checkpoint in the original single-file layout."""
    import torch
    from safetensors.torch import save_file

    keys = ["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.decoder.conv_in.weight",
            "cond_stage_model.transformer.text_model.embeddings.position_ids"]
    save_file({k: torch.zeros(4, 4) for k in keys}, str(path))


def write_inputs(folder):
    """An RGB image whose size is not a multiple of 8, for Load Image."""
    Image.fromarray(np.zeros((SIZE - 1, SIZE - 1, 3), np.uint8)).save(folder / "odd-63.png")


@pytest.fixture(scope="module")
def hostile(comfy):
    """The server, with the broken checkpoints and odd inputs in its folders."""
    marker = comfy.base_dir / "input" / MARKER
    write_hostile_files(comfy.base_dir / "models" / "kandinsky", marker)
    write_hostile_loras(comfy.base_dir / "models" / "loras", comfy.base_dir / "models" / "kandinsky")
    write_inputs(comfy.base_dir / "input")
    return comfy


def preview(g, link):
    """An output node that takes anything, so a graph ending in a CONDITIONING or LATENT runs."""
    return g.add("PreviewAny", source=link)


def cond22(g, version="2.2", batch_size=1, steps=2):
    return g.prior_encode(g.prior(version), steps=steps, batch_size=batch_size)


def image(g, width=SIZE, height=SIZE, batch_size=1):
    return g.add("EmptyImage", width=width, height=height, batch_size=batch_size, color=0x808080)[0]


def trimmed_latent(g, rows_cut):
    """A LATENT with fewer rows: the video-trimming node cuts dimension 2, the height of an image latent."""
    return g.add("TrimVideoLatent", samples=g.empty_latent()[0], trim_amount=rows_cut)[0]


def video_latent(g):
    return g.add("EmptyHunyuanLatentVideo", width=SIZE, height=SIZE, length=5, batch_size=1)[0]


def nan_image(g):
    return g.add("MaskToImage", mask=g.add("SolidMask", value=NAN, width=SIZE, height=SIZE)[0])[0]


def nan_latent(g):
    return g.add("LatentMultiply", samples=g.empty_latent()[0], multiplier=NAN)[0]


def sample(g, decoder="2.2", cond=None, latent=None, **kw):
    model = g.decoder(decoder)
    cond = cond or cond22(g)
    latent = latent or g.empty_latent()[0]
    return model, g.sampler(model, cond[0], cond[1], latent, **kw)


def inpaint(g, pixels, mask, decoder="2.2-inpaint"):
    model = g.decoder(decoder)
    c = cond22(g)
    ic = g.add("Kandinsky2InpaintConditioning", positive=c[0], negative=c[1], movq=model[1], pixels=pixels, mask=mask)
    return preview(g, ic[0])


def depth_sample(g, hint, latent=None, decoder="2.2-depth"):
    c = cond22(g)
    h = g.add("Kandinsky2ApplyDepthHint", positive=c[0], negative=c[1], hint=hint)
    return preview(g, sample(g, decoder, cond=h, latent=latent)[1][0])


def interpolate(g, prior="2.2", **slots):
    return preview(g, g.add("Kandinsky2Interpolate", prior=g.prior(prior)[0], seed=0, steps=2, guidance_scale=4.0,
                            **interpolate_slots(**slots))[0])


def interpolate_batch(g, a, b, frames=4, mode="slerp"):
    return preview(g, g.add("Kandinsky2InterpolateBatch", embedding_a=a, embedding_b=b, frames=frames, mode=mode)[0])


def movq_of(g, decoder="2.2"):
    return g.decoder(decoder)[1]


def encode(g, pixels):
    return preview(g, g.add("Kandinsky2MoVQEncode", movq=movq_of(g), image=pixels)[0])


def decode(g, latent, tile_size=0, movq=None):
    return g.save(g.decode(movq or movq_of(g), latent, tile_size)[0], "hostile")


def emb2emb(g, pixels, strength=0.3, steps=2, prompt="a cat"):
    return preview(g, g.add("Kandinsky2Emb2Emb", prior=g.prior()[0], image=pixels, prompt=prompt, negative_prompt="",
                            strength=strength, seed=0, steps=steps, guidance_scale=4.0)[0])


def embed(g, pixels):
    return preview(g, g.add("Kandinsky2ImageEmbedding", prior=g.prior()[0], image=pixels)[0])


def load(node, widget, value):
    return lambda g: preview(g, g.add(node, **{widget: value})[0])


def prior_encode(**kw):
    return lambda g: preview(g, g.prior_encode(g.prior(), **kw)[0])


def depth_estimate(pixels):
    def build(g):
        model = g.add("Kandinsky2DepthModelLoader", depth_model="depth/dpt-tiny/")
        return preview(g, g.add("Kandinsky2DepthEstimate", depth_model=model[0], image=pixels(g))[0])
    return build


def concat_cond(g):
    c = cond22(g)
    return g.add("ConditioningConcat", conditioning_to=c[0], conditioning_from=c[0])


def combine_cond(g):
    c = cond22(g)
    return g.add("ConditioningCombine", conditioning_1=c[0], conditioning_2=c[1])


def foreign_cond(make):
    """(positive, negative) where the positive is `make(g)`'s conditioning and the negative a real one."""
    def build(g):
        c = cond22(g)
        return [make(g)[0], c[1]]
    return build


def k3_load(node, widget, value, weight_dtype="default"):
    return lambda g: preview(g, g.add(node, **{widget: value}, weight_dtype=weight_dtype)[0])


def k31_load(unet, projection="auto (the published pairing)", weight_dtype="default"):
    return lambda g: preview(g, g.add(K31U, unet=unet, projection=projection, weight_dtype=weight_dtype)[0])


def k3_sample(g, cond=None, latent=None, lora=None, clip_lora=None, **kw):
    """Kandinsky 3 Sampler on the tiny kandinsky-3 folder; `cond` defaults to CLIP Text Encode of "a cat"; `lora`
    goes on the MODEL through LoraLoaderModelOnly, `clip_lora` on MODEL and CLIP through LoraLoader."""
    model = g.add("Kandinsky3UNetLoader", unet=K3, weight_dtype="default")[0]
    clip = g.add("Kandinsky3T5Loader", text_encoder=K3, weight_dtype="default")[0]
    if lora:
        model = g.add(LLM, model=model, lora_name=lora, strength_model=1.0)[0]
    if clip_lora:
        both = g.add("LoraLoader", model=model, clip=clip, lora_name=clip_lora, strength_model=1.0, strength_clip=1.0)
        model, clip = both[0], both[1]
    cond = cond or g.add("CLIPTextEncode", clip=clip, text=kw.pop("text", "a cat"))[0]
    inputs = {**dict(seed=0, steps=2, cfg=4.0, sampler="checkpoint", denoise=1.0), **kw}
    return preview(g, g.add("Kandinsky3Sampler", model=model, positive=cond, latent_image=latent or g.empty_latent()[0],
                            **inputs)[0])


def k3_text(g, text="a cat"):
    return g.add("CLIPTextEncode", clip=g.add(K3T, text_encoder=K3, weight_dtype="default")[0], text=text)[0]


def set_area(g, cond):
    return g.add("ConditioningSetArea", conditioning=cond, width=64, height=64, x=0, y=0, strength=1.0)[0]


def set_timestep_range(g, cond):
    return g.add("ConditioningSetTimestepRange", conditioning=cond, start=0.0, end=0.01)[0]


def set_mask(g, cond):
    mask = g.add("SolidMask", value=1.0, width=32, height=32)[0]
    return g.add("ConditioningSetMask", conditioning=cond, mask=mask, strength=1.0, set_cond_area="default")[0]


def set_strength(g, cond):
    return g.add("ConditioningSetAreaStrength", conditioning=cond, strength=3.0)[0]


def noise_masked(g):
    mask = g.add("SolidMask", value=1.0, width=SIZE // 2, height=SIZE // 2)[0]
    return g.add("SetLatentNoiseMask", samples=g.empty_latent()[0], mask=mask)[0]


def inpaint_remasked(g):
    """Inpainting whose latent got another noise mask after Kandinsky Inpaint Conditioning set the hole."""
    model = g.decoder("2.2-inpaint")
    ic = g.inpaint(cond22(g), model[1], g.load_image(INPAINT_IMAGE))
    latent = g.add("SetLatentNoiseMask", samples=ic[2], mask=g.add("SolidMask", value=1.0, width=SIZE, height=SIZE)[0])
    return preview(g, g.sampler(model, ic[0], ic[1], latent[0])[0])


def k3_modified(modify, on_negative=False):
    """Kandinsky 3 Sampler whose positive (or negative) conditioning went through `modify(g, cond)`."""
    def build(g):
        if on_negative:
            return k3_sample(g, negative=modify(g, k3_text(g, "")))
        return k3_sample(g, cond=modify(g, k3_text(g)))
    return build


def decoder_modified(modify, on_negative=False):
    """Kandinsky Decoder Sampler (2.2) whose positive (or negative) conditioning went through `modify(g, cond)`."""
    def build(g):
        c = cond22(g)
        cond = [c[0], modify(g, c[1])] if on_negative else [modify(g, c[0]), c[1]]
        return preview(g, sample(g, cond=cond)[1][0])
    return build


def prior_lora(name):
    return lambda g: preview(g, g.prior_encode(g.add(PL, prior=g.prior()[0], lora_name=name, strength=1.0))[0])


def decoder_lora(name):
    def build(g):
        c = cond22(g)
        model = g.add(LLM, model=g.decoder("2.2")[0], lora_name=name, strength_model=1.0)
        return preview(g, g.sampler(model, c[0], c[1], g.empty_latent()[0])[0])
    return build


def k3_combined(g):
    clip = g.add("Kandinsky3T5Loader", text_encoder=K3, weight_dtype="default")[0]
    a, b = (g.add("CLIPTextEncode", clip=clip, text=t)[0] for t in ("a cat", "a dog"))
    return g.add("ConditioningCombine", conditioning_1=a, conditioning_2=b)[0]


P, D, M, DL = "Kandinsky2PriorLoader", "Kandinsky2DecoderLoader", "Kandinsky2MoVQLoader", "Kandinsky2DepthModelLoader"
PE, IE, E2E, INT, IB = ("Kandinsky2PriorEncode", "Kandinsky2ImageEmbedding", "Kandinsky2Emb2Emb", "Kandinsky2Interpolate",
                        "Kandinsky2InterpolateBatch")
ENC, DEC, IC, DE, S = ("Kandinsky2MoVQEncode", "Kandinsky2MoVQDecode", "Kandinsky2InpaintConditioning",
                       "Kandinsky2DepthEstimate", "Kandinsky2DecoderSampler")
VALIDATION, WORKS = "validation", "works"
K3U, K3T, K3S = "Kandinsky3UNetLoader", "Kandinsky3T5Loader", "Kandinsky3Sampler"
K31U, W31 = "Kandinsky3OriginalUNetLoader", ORIGINAL_WEIGHTS
PL, LLM, LL = "Kandinsky2PriorLoRA", "LoraLoaderModelOnly", "LoraLoader"
LONE = "a red \ud800 cat \udfff"  # lone UTF-16 surrogates: what a JSON "\ud800" or a cut emoji gives a str


class Refused:
    """A bad value of `node`'s input `name`, refused by ComfyUI's validation or by the node (whichever checks first)."""

    def __init__(self, node, name):
        self.node, self.name = node, name

    def check(self, prompt, result):
        """The refusal names the node and the input (or quotes its value, which is how the pack's messages say it)."""
        if result[0] == "validation":
            assert {prompt[i]["class_type"] for i in result[1]} == {self.node}, result
            assert f'"{self.name}' in result[2] and '"class_type": "' + self.node in result[2], result
            return
        assert result[0] == "error" and result[1] == self.node, result
        value = next(n["inputs"][self.name] for n in prompt.values() if n["class_type"] == self.node)
        assert self.name in result[3] or str(value) in result[3], result
        assert any(w in result[3].lower() for w in FIX_WORDS), result[3]


class Says(Refused):
    """A KandinskyError raised by `node` while running, whose message holds each of `words` and a fix."""

    def __init__(self, node, *words):
        super().__init__(node, None)
        self.words = words

    def check(self, prompt, result):
        assert result[0] == "error" and result[1] == self.node, result
        assert all(w in result[3] for w in self.words), (self.words, result[3])
        assert any(w in result[3].lower() for w in FIX_WORDS), result[3]

# A clear message says what to do: one of these words must appear in it.
FIX_WORDS = ("use ", "connect", "add ", "pick", "download", "copy", "put ", "give", "load", "crop", "resize", "needs",
             "check", "remove", "convert", "leave", "raise", "choose", "pass ", "instead", "must be")

# (case id, what must happen: VALIDATION, WORKS, Refused(node, input) or the node that raises KandinskyError, workflow
# builder)
CASES = [
    # loaders: paths, wrong types, broken checkpoints
    ("prior-path-escape", Refused(P, "prior"), load(P, "prior", "../../etc/passwd")),
    ("prior-int-widget", Refused(P, "prior"), load(P, "prior", 7)),
    ("prior-corrupt", P, load(P, "prior", "hostile/prior-corrupt/")),
    ("prior-truncated", P, load(P, "prior", "hostile/prior-truncated/")),
    ("prior-empty", P, load(P, "prior", "hostile/prior-empty/")),
    ("prior-no-tokenizer", P, load(P, "prior", "hostile/prior-no-tokenizer/")),
    ("prior-wrong-config", P, load(P, "prior", "hostile/prior-wrong-config/")),
    ("prior-pickle", P, load(P, "prior", "hostile/prior-pickle/")),
    ("decoder-path-escape", Refused(D, "decoder"), load(D, "decoder", "../../../etc/passwd")),
    ("decoder-absolute-path", Refused(D, "decoder"), load(D, "decoder", "/etc/passwd")),
    ("decoder-corrupt", D, load(D, "decoder", "hostile/decoder-corrupt/")),
    ("decoder-truncated", D, load(D, "decoder", "hostile/decoder-truncated/")),
    ("decoder-empty", D, load(D, "decoder", "hostile/decoder-empty/")),
    ("decoder-wrong-config", D, load(D, "decoder", "hostile/decoder-wrong-config/")),
    ("decoder-21-no-tokenizer", D, load(D, "decoder", "hostile/decoder-21-no-tokenizer/")),
    ("decoder-truncated-movq", D, load(D, "decoder", "hostile/decoder-truncated-movq/")),
    ("decoder-sd-checkpoint", D, load(D, "decoder", "hostile/sd15-renamed.safetensors")),
    ("decoder-pickle-bomb", D, load(D, "decoder", "hostile/pickle-bomb.ckpt")),
    ("decoder-empty-file", D, load(D, "decoder", "hostile/empty.safetensors")),
    ("decoder-text-file", D, load(D, "decoder", "hostile/notes.bin")),
    ("movq-sd-checkpoint", M, load(M, "movq", "hostile/sd15-renamed.safetensors")),
    ("movq-given-unet", M, load(M, "movq", SINGLE_UNET)),
    ("movq-truncated", M, load(M, "movq", "hostile/decoder-truncated-movq/")),
    ("movq-pickle-bomb", M, load(M, "movq", "hostile/pickle-bomb.ckpt")),
    ("depth-path-escape", Refused(DL, "depth_model"), load(DL, "depth_model", "../depth/dpt-tiny/")),
    ("depth-corrupt", DL, load(DL, "depth_model", "hostile/depth-corrupt/")),
    ("depth-no-processor", DL, load(DL, "depth_model", "hostile/depth-no-processor/")),
    # prior nodes
    ("prior-encode-steps-1", VALIDATION, prior_encode(steps=1)),
    ("prior-encode-batch-0", VALIDATION, prior_encode(batch_size=0)),
    ("prior-encode-batch-100000", VALIDATION, prior_encode(batch_size=100000)),
    ("prior-encode-seed-negative", VALIDATION, prior_encode(seed=-1)),
    ("prior-encode-guidance-nan", PE, prior_encode(guidance_scale=NAN)),
    ("prior-encode-guidance-string", VALIDATION, prior_encode(guidance_scale="strong")),
    ("prior-encode-long-prompt", WORKS, prior_encode(prompt="a red cat " * 2000)),
    ("prior-encode-lone-surrogates", WORKS, prior_encode(prompt=LONE)),
    ("prior-encode-lone-surrogate-negative", WORKS, prior_encode(negative_prompt="\udfff")),
    ("prior-encode-21-lone-surrogates", WORKS, lambda g: preview(g, g.prior_encode(g.prior("2.1"), prompt=LONE)[0])),
    ("prior-encode-image-as-prior", VALIDATION,
     lambda g: preview(g, g.add(PE, prior=image(g), prompt="x", negative_prompt="", seed=0, steps=2,
                                guidance_scale=4.0, batch_size=1)[0])),
    ("image-embedding-1px", WORKS, lambda g: embed(g, image(g, 1, 1))),
    ("image-embedding-63px", WORKS, lambda g: embed(g, image(g, 63, 63))),
    ("image-embedding-nan", IE, lambda g: embed(g, nan_image(g))),
    ("image-embedding-latent-as-image", VALIDATION, lambda g: embed(g, g.empty_latent()[0])),
    ("emb2emb-strength-nan", E2E, lambda g: emb2emb(g, image(g), strength=NAN)),
    ("emb2emb-no-step-left", E2E, lambda g: emb2emb(g, image(g), strength=0.01)),
    ("emb2emb-lone-surrogates", WORKS, lambda g: emb2emb(g, image(g), steps=4, strength=0.5, prompt=LONE)),
    ("interpolate-lone-surrogates", WORKS, lambda g: interpolate(g, text_1=LONE, weight_1=1.0)),
    ("interpolate-all-weights-0", INT, lambda g: interpolate(g, weight_1=0.0, weight_2=0.0, text_1="a", text_2="b")),
    ("interpolate-weight-nan", INT, lambda g: interpolate(g, text_1="a", weight_1=NAN)),
    ("interpolate-concat-embedding", INT, lambda g: interpolate(g, weight_1=1.0, embedding_1=concat_cond(g)[0])),
    ("interpolate-batch-mismatch", INT,
     lambda g: interpolate(g, weight_1=0.5, image_1=image(g, batch_size=2), weight_2=0.5,
                           image_2=image(g, batch_size=3))),
    ("interpolate-21-embedding-in-22", INT,
     lambda g: interpolate(g, weight_1=1.0, embedding_1=cond22(g, "2.1")[0])),
    ("interpolate-batch-frames-1", VALIDATION, lambda g: interpolate_batch(g, cond22(g)[0], cond22(g)[0], frames=1)),
    ("interpolate-batch-mode", Refused(IB, "mode"),
     lambda g: interpolate_batch(g, cond22(g)[0], cond22(g)[0], mode="cubic")),
    ("interpolate-batch-batch-2", IB, lambda g: interpolate_batch(g, cond22(g, batch_size=2)[0], cond22(g)[0])),
    ("interpolate-batch-versions", IB, lambda g: interpolate_batch(g, cond22(g)[0], cond22(g, "2.1")[0])),
    ("interpolate-batch-combined", IB, lambda g: interpolate_batch(g, combine_cond(g)[0], cond22(g)[0])),
    # image nodes
    ("encode-1px", ENC, lambda g: encode(g, image(g, 1, 1))),
    ("encode-63px", WORKS, lambda g: encode(g, g.load_image("odd-63.png")[0])),
    ("encode-nan", ENC, lambda g: encode(g, nan_image(g))),
    ("encode-100000px", VALIDATION, lambda g: encode(g, image(g, 100000, 64))),
    ("encode-rgba", WORKS, lambda g: encode(g, g.add("JoinImageWithAlpha", image=image(g),
                                                     alpha=g.load_image(INPAINT_IMAGE)[1])[0])),
    ("decode-tile-63", DEC, lambda g: decode(g, g.empty_latent()[0], tile_size=63)),
    ("decode-tile-100000", VALIDATION, lambda g: decode(g, g.empty_latent()[0], tile_size=100000)),
    ("decode-16-channel-latent", DEC,
     lambda g: decode(g, g.add("EmptySD3LatentImage", width=SIZE, height=SIZE, batch_size=1)[0])),
    ("decode-nan-latent", DEC, lambda g: decode(g, nan_latent(g))),
    ("decode-empty-latent", DEC, lambda g: decode(g, trimmed_latent(g, SIZE))),
    ("decode-video-latent", DEC, lambda g: decode(g, video_latent(g))),
    ("decode-1-row-latent", WORKS, lambda g: decode(g, trimmed_latent(g, SIZE // 8 - 1))),
    ("decode-without-movq", DEC, lambda g: decode(g, g.empty_latent()[0], movq=g.decoder(SINGLE_UNET)[1])),
    ("decode-image-as-latent", VALIDATION, lambda g: decode(g, image(g))),
    ("inpaint-mask-size", WORKS,
     lambda g: inpaint(g, image(g), g.add("SolidMask", value=1.0, width=32, height=32)[0])),
    ("inpaint-image-as-mask", VALIDATION, lambda g: inpaint(g, image(g), image(g))),
    ("inpaint-mask-count", IC,
     lambda g: inpaint(g, image(g, batch_size=2),
                       g.add("ImageToMask", image=image(g, batch_size=3), channel="red")[0])),
    ("inpaint-63px", WORKS, lambda g: inpaint(g, g.load_image("odd-63.png")[0],
                                              g.add("SolidMask", value=1.0, width=63, height=63)[0])),
    ("inpaint-nan-mask", IC, lambda g: inpaint(g, image(g), g.add("SolidMask", value=NAN, width=SIZE, height=SIZE)[0])),
    ("inpaint-without-movq", IC, lambda g: inpaint(g, image(g), g.load_image(INPAINT_IMAGE)[1], decoder=SINGLE_UNET)),
    ("depth-estimate-1px", WORKS, depth_estimate(lambda g: image(g, 1, 1))),
    ("depth-estimate-nan", DE, depth_estimate(nan_image)),
    # the decoder sampler: conditioning, latents, hints, widgets
    ("sampler-21-cond-in-22", S, lambda g: preview(g, sample(g, cond=cond22(g, "2.1"))[1][0])),
    ("sampler-concat-cond", S, lambda g: preview(g, sample(g, cond=foreign_cond(concat_cond)(g))[1][0])),
    ("sampler-combined-cond", Says(S, "KSampler"),
     lambda g: preview(g, sample(g, cond=foreign_cond(combine_cond)(g))[1][0])),
    ("sampler-21-lone-surrogates", WORKS,
     lambda g: preview(g, sample(g, "2.1", cond=g.prior_encode(g.prior("2.1"), prompt=LONE))[1][0])),
    ("sampler-noise-mask", Says(S, "noise mask", "KSampler"),
     lambda g: preview(g, sample(g, latent=noise_masked(g))[1][0])),
    ("sampler-inpaint-other-noise-mask", Says(S, "noise mask", "KSampler"), inpaint_remasked),
    ("sampler-area", Says(S, "positive", "Conditioning (Set Area)", "KSampler"), decoder_modified(set_area)),
    ("sampler-mask", Says(S, "Conditioning (Set Mask)", "KSampler"), decoder_modified(set_mask)),
    ("sampler-timestep-range", Says(S, "Conditioning (Set Timestep Range)", "KSampler"),
     decoder_modified(set_timestep_range)),
    ("sampler-negative-timestep-range", Says(S, "negative", "Set Timestep Range", "KSampler"),
     decoder_modified(set_timestep_range, on_negative=True)),
    ("sampler-strength", WORKS, decoder_modified(set_strength)),  # KSampler's strength cancels for one entry
    ("sampler-denoise-0", WORKS, lambda g: preview(g, sample(g, denoise=0.0)[1][0])),
    ("sampler-denoise-no-step", Says(S, "denoise 0.1 with 2 steps", "raise denoise or steps"),
     lambda g: preview(g, sample(g, denoise=0.1)[1][0])),
    # LoRAs: files that are none, NaN, the wrong kind
    ("prior-lora-empty-file", Says(PL, LORAS["empty"], "empty"), prior_lora(LORAS["empty"])),
    ("prior-lora-text-file", Says(PL, LORAS["text"], "not a safetensors file"), prior_lora(LORAS["text"])),
    ("prior-lora-nan", Says(PL, LORAS["nan-prior"], "NaN"), prior_lora(LORAS["nan-prior"])),
    ("decoder-lora-nan", Says(LLM, LORAS["nan-decoder"], "NaN"), decoder_lora(LORAS["nan-decoder"])),
    ("decoder-lora-pt-named", Says(LLM, LORAS["prior-pt"], "prior LoRA"), decoder_lora(LORAS["prior-pt"])),
    ("decoder-lora-k3-lora", Says(LLM, LORAS["k3"], "Kandinsky 3 UNet LoRA", "Kandinsky 3 UNet Loader"),
     decoder_lora(LORAS["k3"])),
    ("k3-lora-peft", WORKS, lambda g: k3_sample(g, lora=LORAS["k3"])),
    ("k3-lora-with-t5-clip", WORKS, lambda g: k3_sample(g, clip_lora=LORAS["k3"])),
    ("k3-lora-22-decoder-lora", Says(LLM, DECODER_LORA, "Kandinsky 2.2 decoder LoRA", "not a Kandinsky 3 UNet LoRA"),
     lambda g: k3_sample(g, lora=DECODER_LORA)),
    ("k3-lora-nan", Says(LLM, LORAS["k3-nan"], "NaN"), lambda g: k3_sample(g, lora=LORAS["k3-nan"])),
    ("k3-lora-unet-and-t5", Says(LL, LORAS["k3-t5"], "text-encoder"), lambda g: k3_sample(g, clip_lora=LORAS["k3-t5"])),
    ("k3-lora-t5-only", Says(LL, LORAS["t5"], "T5"), lambda g: k3_sample(g, clip_lora=LORAS["t5"])),
    ("sampler-zeroed-cond", WORKS,
     lambda g: preview(g, sample(g, cond=foreign_cond(
         lambda g: g.add("ConditioningZeroOut", conditioning=cond22(g)[0]))(g))[1][0])),
    ("sampler-latent-63px", WORKS, lambda g: preview(g, sample(g, latent=g.empty_latent(63, 63)[0])[1][0])),
    ("sampler-latent-16-channel", S, lambda g: preview(g, sample(g, latent=g.add(
        "EmptySD3LatentImage", width=SIZE, height=SIZE, batch_size=1)[0])[1][0])),
    ("sampler-latent-empty", S, lambda g: preview(g, sample(g, latent=trimmed_latent(g, SIZE))[1][0])),
    ("sampler-latent-1-row", WORKS, lambda g: preview(g, sample(g, latent=trimmed_latent(g, SIZE // 8 - 1))[1][0])),
    ("sampler-latent-video", S, lambda g: preview(g, sample(g, latent=video_latent(g))[1][0])),
    ("sampler-latent-batch-3-for-2", S,
     lambda g: preview(g, sample(g, cond=cond22(g, batch_size=2), latent=g.empty_latent(batch_size=3)[0])[1][0])),
    ("sampler-latent-batch-100000", VALIDATION,
     lambda g: preview(g, sample(g, latent=g.empty_latent(batch_size=100000)[0])[1][0])),
    ("sampler-latent-batch-64", WORKS, lambda g: preview(g, sample(g, latent=g.empty_latent(batch_size=64)[0])[1][0])),
    ("sampler-guidance-nan", S, lambda g: preview(g, sample(g, guidance_scale=NAN)[1][0])),
    ("sampler-denoise-nan", S, lambda g: preview(g, sample(g, denoise=NAN)[1][0])),
    ("sampler-nan-latent-img2img", S, lambda g: preview(g, sample(g, latent=nan_latent(g), denoise=0.5)[1][0])),
    ("sampler-steps-0", VALIDATION, lambda g: preview(g, sample(g, steps=0)[1][0])),
    ("sampler-unknown-sampler", Refused(S, "sampler"), lambda g: preview(g, sample(g, sampler="euler")[1][0])),
    ("sampler-prior-as-model", VALIDATION,
     lambda g: preview(g, g.add(S, model=g.prior()[0], positive=cond22(g)[0], negative=cond22(g)[1],
                                latent_image=g.empty_latent()[0], seed=0, steps=2, guidance_scale=4.0,
                                sampler="checkpoint", denoise=1.0)[0])),
    ("sampler-inpaint-without-conditioning", S, lambda g: preview(g, sample(g, "2.2-inpaint")[1][0])),
    ("sampler-depth-without-hint", S, lambda g: preview(g, sample(g, "2.2-depth")[1][0])),
    ("sampler-hint-on-plain-decoder", S, lambda g: depth_sample(g, image(g), decoder="2.2")),
    ("sampler-hint-32px", WORKS, lambda g: depth_sample(g, image(g, 32, 32))),
    ("sampler-hint-rgba", WORKS,
     lambda g: depth_sample(g, g.add("JoinImageWithAlpha", image=image(g), alpha=g.load_image(INPAINT_IMAGE)[1])[0])),
    ("sampler-hint-batch-3-for-2", S,
     lambda g: depth_sample(g, image(g, batch_size=3), latent=g.empty_latent(batch_size=2)[0])),
    ("sampler-hint-nan", S, lambda g: depth_sample(g, nan_image(g))),
    # Kandinsky 3: loaders, the sampler, the T5 through CLIP Text Encode
    ("k3-unet-path-escape", Refused(K3U, "unet"), k3_load(K3U, "unet", "../../etc/passwd")),
    ("k3-unet-weight-dtype", Refused(K3U, "weight_dtype"), k3_load(K3U, "unet", K3, weight_dtype="int4")),
    ("k3-unet-corrupt", K3U, k3_load(K3U, "unet", "hostile/k3-unet-corrupt/")),
    ("k3-unet-truncated", K3U, k3_load(K3U, "unet", "hostile/k3-unet-truncated/")),
    ("k3-unet-given-22-decoder", Refused(K3U, "unet"), k3_load(K3U, "unet", DECODERS["2.2"])),
    ("k3-t5-path-escape", Refused(K3T, "text_encoder"), k3_load(K3T, "text_encoder", "/etc/passwd")),
    ("k3-t5-corrupt-shard", K3T, k3_load(K3T, "text_encoder", "hostile/k3-t5-corrupt/")),
    ("k3-t5-missing-shard", K3T, k3_load(K3T, "text_encoder", "hostile/k3-t5-missing-shard/")),
    ("k3-t5-no-tokenizer", K3T, k3_load(K3T, "text_encoder", "hostile/k3-no-tokenizer/")),
    ("k3-t5-given-22-decoder", Refused(K3T, "text_encoder"), k3_load(K3T, "text_encoder", DECODERS["2.2"])),
    ("k3-unet-cut-config", Says(K3U, "unet/config.json", "cut off"),
     k3_load(K3U, "unet", "hostile/k3-unet-cut-config/")),
    ("k3-t5-wrong-config", Says(K3T, "config.json", "copy"),
     k3_load(K3T, "text_encoder", "hostile/k3-t5-wrong-config/")),
    ("k3-t5-cut-config", Says(K3T, "text_encoder/config.json", "cut off"),
     k3_load(K3T, "text_encoder", "hostile/k3-t5-cut-config/")),
    ("k3-lone-surrogates", WORKS, lambda g: k3_sample(g, text=LONE)),
    ("k3-long-prompt", WORKS, lambda g: k3_sample(g, text="a red cat " * 2000)),
    ("k3-empty-prompt", WORKS, lambda g: k3_sample(g, text="")),
    ("k3-sampler-22-cond", K3S, lambda g: k3_sample(g, cond=cond22(g)[0])),
    ("k3-sampler-combined-cond", Says(K3S, "KSampler"), lambda g: k3_sample(g, cond=k3_combined(g))),
    ("k3-sampler-noise-mask", Says(K3S, "noise mask", "KSampler"), lambda g: k3_sample(g, latent=noise_masked(g))),
    ("k3-sampler-area", Says(K3S, "positive", "Conditioning (Set Area)", "KSampler"), k3_modified(set_area)),
    ("k3-sampler-mask", Says(K3S, "Conditioning (Set Mask)", "KSampler"), k3_modified(set_mask)),
    ("k3-sampler-timestep-range", Says(K3S, "Conditioning (Set Timestep Range)", "KSampler"),
     k3_modified(set_timestep_range)),
    ("k3-sampler-negative-area", Says(K3S, "negative", "Set Area", "KSampler"),
     k3_modified(set_area, on_negative=True)),
    ("k3-sampler-strength", WORKS, k3_modified(set_strength)),  # KSampler's strength cancels for one entry
    ("k3-sampler-denoise-0", WORKS, lambda g: k3_sample(g, denoise=0.0)),
    ("k3-sampler-denoise-no-step", Says(K3S, "denoise 0.1 with 2 steps", "raise denoise or steps"),
     lambda g: k3_sample(g, denoise=0.1)),
    ("k3-sampler-latent-63px", K3S, lambda g: k3_sample(g, latent=g.empty_latent(63, 63)[0])),
    ("k3-sampler-latent-16-channel", K3S, lambda g: k3_sample(g, latent=g.add(
        "EmptySD3LatentImage", width=SIZE, height=SIZE, batch_size=1)[0])),
    ("k3-sampler-nan-latent-img2img", K3S, lambda g: k3_sample(g, latent=nan_latent(g), denoise=0.5)),
    ("k3-sampler-cfg-nan", K3S, lambda g: k3_sample(g, cfg=NAN)),
    ("k3-sampler-denoise-nan", K3S, lambda g: k3_sample(g, denoise=NAN)),
    ("k3-sampler-unknown-sampler", Refused(K3S, "sampler"), lambda g: k3_sample(g, sampler="euler")),
    ("k3-sampler-flash-on-diffusers-unet", Says(K3S, "'flash' sampler is not for this UNet"),
     lambda g: k3_sample(g, sampler="flash")),
    # the original Kandinsky 3.1 files
    ("k31-unet-path-escape", Refused(K31U, "unet"), k31_load("../../etc/passwd")),
    ("k31-unet-weight-dtype", Refused(K31U, "weight_dtype"), k31_load(f"{W31}/kandinsky3.pt", weight_dtype="int4")),
    ("k31-unet-given-movq", Says(K31U, "original Kandinsky 3 movq file, not a unet"), k31_load(f"{W31}/movq.pt")),
    ("k31-unet-given-projection", Says(K31U, "projection file, not a unet"),
     k31_load(f"{W31}/flan_ul2_encoder/projection.pt")),
    ("k31-unet-truncated", K31U, k31_load("hostile/k31-truncated.pt")),
    ("k31-unet-corrupt", K31U, k31_load("hostile/k31-corrupt.pt")),
    ("k31-unet-pickle-bomb", K31U, k31_load("hostile/pickle-bomb.ckpt")),
    ("k31-unet-without-projection", Says(K31U, "holds no text projection"), k31_load("hostile/k31-without-projection.pt")),
    ("k31-projection-given-unet", Says(K31U, "unet file, not a projection"),
     k31_load(f"{W31}/kandinsky3.pt", projection=f"{W31}/kandinsky3_flash.pt")),
    ("k31-projection-path-escape", Refused(K31U, "projection"), k31_load(f"{W31}/kandinsky3.pt", projection="../x.pt")),
]


def reference_workflow(prefix):
    """Text-to-image with the tiny 2.2 models, saved as PNG."""
    g = Graph()
    c = cond22(g)
    model, latents = sample(g, cond=c)
    g.decode_and_save(model[1], latents[0], prefix)
    return g.prompt


def run_reference(comfy, prefix):
    """(pixels of the reference image, ids of the nodes ComfyUI took from its cache)."""
    entry = comfy.wait(comfy.queue(reference_workflow(prefix)), timeout=120)
    assert entry["status"]["status_str"] == "success", entry["status"]
    cached = [n for kind, data in entry["status"]["messages"] if kind == "execution_cached" for n in data["nodes"]]
    (saved,) = next(iter(o["images"] for o in entry["outputs"].values() if "images" in o))
    png = comfy.get_image(saved["filename"], saved["subfolder"], saved["type"])
    return np.asarray(Image.open(io.BytesIO(png))), cached


@pytest.fixture(scope="module")
def reference(hostile):
    """The reference image, made before any bad input reaches the server."""
    return run_reference(hostile, "reference_before")[0]


def outcome(comfy, prompt, timeout=120):
    """('validation', node ids, message) for HTTP 400, ('error', node_type, exception_type, message), or ('success',)."""
    try:
        prompt_id = comfy.queue(prompt)
    except PromptError as err:
        return ("validation", sorted(err.node_errors), str(err))
    entry = comfy.wait(prompt_id, timeout=timeout)
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_error":
            return ("error", data["node_type"], data["exception_type"], data["exception_message"])
    return ("success",)


def server_alive(comfy):
    return comfy.process.poll() is None and "system" in comfy._json("GET", "/system_stats")


@pytest.mark.parametrize("case,expected,build", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_clear_error(hostile, reference, case, expected, build):
    g = Graph()
    build(g)
    result = outcome(hostile, g.prompt)
    if not server_alive(hostile):
        record(case, "crash", "server died")
        pytest.fail(f"{case}: the server died\n{hostile.log_tail()}")
    if result[0] == "error" and not result[2].endswith("KandinskyError"):
        record(case, "crash", f"{result[1]}: {result[2]}: {result[3]}")
        pytest.fail(f"{case}: {result[1]} crashed with {result[2]}: {result[3]}")
    record(case, "worked" if result[0] == "success" else "clear error")
    if isinstance(expected, Refused):
        expected.check(g.prompt, result)
    elif expected == VALIDATION:
        assert result[0] == "validation" and result[1], result
        assert "prior-pickle" not in case or not (hostile.base_dir / "input" / MARKER).exists()
    elif expected == WORKS:
        assert result == ("success",), result
    else:
        assert result[0] == "error" and result[1] == expected, result
        assert len(result[3]) > 40 and any(w in result[3].lower() for w in FIX_WORDS), result[3]
    assert not (hostile.base_dir / "input" / MARKER).exists(), "a checkpoint's pickle code ran"


def test_same_image_after_bad_inputs(hostile, reference):
    after, cached = run_reference(hostile, "reference_after")
    graph = reference_workflow("x")
    sampler = next(k for k, n in graph.items() if n["class_type"] == S)
    assert sampler not in cached, "the sampler must run again, not come from ComfyUI's cache"
    np.testing.assert_array_equal(after, reference)
    record("reference image after the bad inputs", "worked")
