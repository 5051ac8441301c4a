"""Write the Kandinsky 3.0 / 3.1 parity fixtures: what the original ai-forever code computes from tiny random weights.

    python tools/k3_original_fixtures.py /path/to/Kandinsky-3     # a checkout of github.com/ai-forever/Kandinsky-3

The original code (Apache-2.0) is not on PyPI and is not part of this repository. This script imports its
`kandinsky3/` package from the folder given (without the package `__init__`, which downloads weights from the hub),
fills its UNet, MoVQ and text projection with the numpy-seeded weights of `kandinsky_core.kandinsky3.tiny_original`
(strictly: a wrong key map fails here), runs its models, samplers and pipelines, and writes the inputs and outputs to
`tests/fixtures/k3_original/`. The tests rebuild the same weights, write them in the published file layouts, load them
through our loaders and compare. Needs einops, tqdm, omegaconf, scipy and scikit-image (the original's imports);
torchvision is replaced by the two conversions the pipelines use (ToTensor, and ToPILImage, whose input is recorded).
Written against HEAD a4c9e92.
"""
import argparse
import gzip
import importlib
import json
import os
import shutil
import sys
import tempfile
import types

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from kandinsky_core.kandinsky3 import tiny_original as TO  # noqa: E402

OUT = os.path.join(ROOT, "tests", "fixtures", "k3_original")
PROMPT, SHORT_NEGATIVE, SAME_LENGTH_NEGATIVE = "a red cat on a blue chair", "blurry", "green dog in the hot sun"
RECORDED = []


def stub_torchvision():
    """torchvision.transforms as the pipelines use it: ToTensor (PIL RGB -> float CHW in [0, 1]; float arrays kept) and
    a ToPILImage that records its input tensor and returns it. transformers is imported first: it must see no
    torchvision."""
    import transformers  # noqa: F401
    from transformers import T5EncoderModel, T5Tokenizer  # noqa: F401
    class ToTensor:
        def __call__(self, pic):
            if isinstance(pic, Image.Image):
                return torch.from_numpy(np.asarray(pic, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
            pic = pic[:, :, None] if pic.ndim == 2 else pic
            return torch.from_numpy(np.ascontiguousarray(pic.transpose(2, 0, 1)))

    class ToPILImage:
        def __call__(self, t):
            RECORDED.append(t.detach().clone())
            return t

    transforms = types.ModuleType("torchvision.transforms")
    transforms.ToTensor, transforms.ToPILImage = ToTensor, ToPILImage
    package = types.ModuleType("torchvision")
    package.transforms = transforms
    sys.modules.update({"torchvision": package, "torchvision.transforms": transforms})


def import_original(source):
    """The original modules, imported from `source`/kandinsky3 without running its package __init__."""
    stub_torchvision()
    for name, path in [("kandinsky3", "kandinsky3"), ("kandinsky3.model", "kandinsky3/model")]:
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(source, path)]
        sys.modules[name] = module
    names = ["model.nn", "model.unet", "model.diffusion", "movq", "condition_encoders", "condition_processors", "t2i_pipeline",
             "inpainting_pipeline"]
    return types.SimpleNamespace(**{n.split(".")[-1]: importlib.import_module(f"kandinsky3.{n}") for n in names})


def original_unet(o, config, channels, device=None):
    """The original UNet class at our config's widths (the published one when config is UNET3)."""
    with torch.device(device or "cpu"):
        return o.unet.UNet(model_channels=config.block_out_channels[0], init_channels=config.init_channels,
                           num_channels=channels, out_channels=4, time_embed_dim=config.time_embedding_dim,
                           context_dim=config.cross_attention_dim, groups=config.groups,
                           head_dim=config.attention_head_dim, expansion_ratio=4, compression_ratio=2,
                           dim_mult=tuple(w // config.block_out_channels[0] for w in config.block_out_channels),
                           num_blocks=(config.layers_per_block,) * len(config.block_out_channels),
                           add_cross_attention=(False, True, True, True), add_self_attention=(False, True, True, True))


def original_movq(o, channels, device=None):
    """The original MoVQ at channel multiples `channels` of 32 (published: 256 x [1, 2, 2, 4])."""
    base, mult = channels
    config = {"double_z": False, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": base,
              "ch_mult": mult, "num_res_blocks": 2 if base == 256 else 1, "attn_resolutions": [32], "dropout": 0.0}
    with torch.device(device or "cpu"):
        return o.movq.MoVQ(config)


def full_size_keys(o):
    """{model: [[key, shape], ...]} of the published original UNets and MoVQ, built on the meta device."""
    from kandinsky_core.kandinsky3.unet import UNET3
    out = {}
    for name, model in [("unet4", original_unet(o, UNET3, 4, "meta")), ("unet9", original_unet(o, UNET3, 9, "meta")),
                        ("movq", original_movq(o, (256, [1, 2, 2, 4]), "meta"))]:
        out[name] = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    return out


def text_encoder(o, folder):
    """The original T5TextConditionEncoder on the tiny folder (context width 8)."""
    cls = o.condition_encoders.T5TextConditionEncoder
    try:
        return cls(folder, 8, device=None, dtype=torch.float32)
    except TypeError:  # transformers 5 no longer takes load_in_8bit / load_in_4bit: the same object, built by hand
        from transformers import T5EncoderModel
        encoder = cls.__new__(cls)
        torch.nn.Module.__init__(encoder)
        encoder.encoder = T5EncoderModel.from_pretrained(folder, dtype=torch.float32).encoder
        encoder.projection = torch.nn.Sequential(torch.nn.Linear(encoder.encoder.config.d_model, 8, bias=False),
                                                 torch.nn.LayerNorm(8))
        return encoder


def rand(shape, seed):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a checkout of ai-forever/Kandinsky-3 (the folder holding kandinsky3/)")
    args = parser.parse_args()
    o = import_original(os.path.abspath(args.source))
    torch.set_grad_enabled(False)
    os.makedirs(OUT, exist_ok=True)
    tensors, cases = {}, {"source": "ai-forever/Kandinsky-3 a4c9e92"}

    unet_sd, projection, null = TO.original_unet_state()
    unet4 = original_unet(o, TO.ORIGINAL_UNET_TINY, 4)
    unet4.load_state_dict(unet_sd, strict=True)
    unet9 = original_unet(o, TO.ORIGINAL_UNET_TINY, 9)
    unet9.load_state_dict({**unet_sd, **TO.inpainting_in_layer()}, strict=True)
    movq = original_movq(o, (32, [1, 1, 2, 2]))
    movq.load_state_dict(TO.original_movq_state(), strict=True)
    for m in (unet4, unet9, movq):
        m.eval()

    # UNet forward: projected context (B, L, 8) with a boolean mask, as the original's UNet takes it.
    ctx, mask = rand((2, 5, 8), 1), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    t = torch.tensor([979.0, 450.0])
    for name, model, x in [("unet4", unet4, rand((2, 4, 8, 16), 2)), ("unet9", unet9, rand((2, 9, 8, 16), 3))]:
        tensors.update({f"{name}.x": x, f"{name}.out": model(x, t, ctx, mask)})
    tensors.update({"unet.context": ctx, "unet.mask": mask.to(torch.uint8), "unet.t": t})

    # The sinusoidal timestep features at the published width (192).
    times = torch.tensor([999.0, 979.0, 729.0, 500.0, 19.0, 0.0])
    tensors.update({"time.t": times, "time.features": o.nn.SinusoidalPosEmb(192)(times)})

    # MoVQ encode / decode.
    image = rand((1, 3, 64, 48), 4).clamp(-1, 1)
    latent = movq.encode(image)
    tensors.update({"movq.image": image, "movq.latent": latent, "movq.decoded": movq.decode(latent)})

    with tempfile.TemporaryDirectory() as tmp:
        folder = TO.write_flan_ul2_encoder(os.path.join(tmp, "flan_ul2_encoder"), projections={"projection.pt": projection})
        for name in os.listdir(folder):  # the tokenizer as trained here, so the fixtures' token ids hold
            if name.endswith((".model", ".json")) and not name.startswith(("pytorch_model", "config")):
                shutil.copy(os.path.join(folder, name), os.path.join(OUT, name))
        encoder = text_encoder(o, folder)
        encoder.projection.load_state_dict(projection)
        encoder.eval()
        processor = o.condition_processors.T5TextConditionProcessor(128, folder)
        conditioning(o, processor, encoder, tensors, cases)
        samplers(o, unet4, unet9, null, tensors, cases)
        pipelines(o, unet4, unet9, null, processor, encoder, movq, tensors, cases)

    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "cases.safetensors"))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
    with gzip.open(os.path.join(OUT, "full_size_keys.json.gz"), "wt") as f:
        json.dump(full_size_keys(o), f)
    print("wrote", OUT, sorted(os.listdir(OUT)))


def conditioning(o, processor, encoder, tensors, cases):
    """Token ids and projected contexts for a prompt alone and with a shorter, an equally long and a longer negative."""
    for name, negative in [("none", None), ("short", SHORT_NEGATIVE), ("same", SAME_LENGTH_NEGATIVE),
                           ("long", SAME_LENGTH_NEGATIVE + " and a very long tail of extra words")]:
        pos, neg = processor.encode(PROMPT, negative)
        context, mask = encoder({k: v[None] for k, v in pos.items()})
        tensors.update({f"cond.{name}.ids": pos["input_ids"], f"cond.{name}.context": context,
                        f"cond.{name}.mask": mask})
        cases.setdefault("negatives", {})[name] = negative
        if neg is not None:
            n_context, n_mask = encoder({k: v[None] for k, v in neg.items()})
            tensors.update({f"cond.{name}.neg_ids": neg["input_ids"], f"cond.{name}.neg_context": n_context,
                            f"cond.{name}.neg_mask": n_mask})
    cases["prompt"] = PROMPT


def samplers(o, unet4, unet9, null, tensors, cases):
    """The 3.1 sampler (η = 1, threshold 0.99; 0.95 with the inpainting UNet) and Flash, from the global RNG's noise."""
    betas = o.diffusion.get_named_beta_schedule("cosine", 1000)
    ctx, mask = tensors["unet.context"][:1].repeat(2, 1, 1), tensors["unet.mask"][:1].repeat(2, 1).bool()
    runs = [("base4", unet4, 0.99, 4, False), ("base3", unet4, 0.99, 3, False), ("base5", unet4, 0.99, 5, False),
            ("flash", unet4, None, 4, True), ("inpaint4", unet9, 0.95, 4, False)]
    lat_mask = (rand((2, 1, 8, 16), 5) > 0).float()
    masked = rand((2, 4, 8, 16), 6)
    for name, model, percentile, steps, gan in runs:
        diffusion = o.diffusion.BaseDiffusion(betas, percentile)
        times = list(range(979, 0, -250)) if gan else list(range(999, 0, -1000 // steps))
        inpaint = name.startswith("inpaint")
        torch.manual_seed(7)
        out = diffusion.p_sample_loop(model, (2, 4, 8, 16), times, "cpu", ctx, mask, null, 3.0, 1.0, gan=gan,
                                      mask=lat_mask if inpaint else None, masked_latent=masked if inpaint else None)
        tensors[f"sampler.{name}"] = out
        cases.setdefault("samplers", {})[name] = {"times": times, "percentile": percentile, "seed": 7, "guidance": 3.0}
    tensors.update({"sampler.mask": lat_mask, "sampler.masked_latent": masked, "sampler.null_embedding": null})


def pipelines(o, unet4, unet9, null, processor, encoder, movq, tensors, cases):
    """Each original pipeline end to end at 64² (images as ToPILImage receives them, in [0, 1])."""
    dtypes = {"unet": torch.float32, "text_encoder": torch.float32, "movq": torch.float32}
    devices = {k: "cpu" for k in dtypes}
    t2i = o.t2i_pipeline.Kandinsky3T2IPipeline
    image = Image.fromarray((np.random.default_rng(8).random((64, 64, 3)) * 255).astype(np.uint8))
    paint = np.zeros((64, 64), np.float64)
    paint[8:40, 16:56] = 1  # 1 = repaint, as the original README says
    runs = [("t2i", lambda: t2i(devices, dtypes, unet4, null, processor, encoder, movq, False)(
                PROMPT, width=64, height=64, steps=4)),
            ("t2i_negative", lambda: t2i(devices, dtypes, unet4, null, processor, encoder, movq, False)(
                PROMPT, negative_text=SAME_LENGTH_NEGATIVE, width=64, height=64, steps=4)),
            ("flash", lambda: t2i(devices, dtypes, unet4, null, processor, encoder, movq, True)(
                PROMPT, width=64, height=128)),
            ("inpaint", lambda: o.inpainting_pipeline.Kandinsky3InpaintingPipeline(
                devices, dtypes, unet9, null, processor, encoder, movq)(PROMPT, image, paint, steps=4))]
    for name, run in runs:
        RECORDED.clear()
        torch.manual_seed(9)
        run()
        tensors[f"pipeline.{name}"] = torch.stack(RECORDED)
    tensors.update({"pipeline.inpaint_image": torch.from_numpy(np.asarray(image).copy()),
                    "pipeline.inpaint_mask": torch.from_numpy(paint.astype(np.float32))})
    cases["pipelines"] = {"seed": 9, "steps": 4, "negative": SAME_LENGTH_NEGATIVE}


if __name__ == "__main__":
    main()
