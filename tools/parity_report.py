"""Print the largest difference to diffusers per model and per pipeline (tiny random weights, fp32, CPU).

Run: `python tools/parity_report.py` from the repository root (needs the test extra: diffusers).
The tests assert the same comparisons against tolerances; this prints the measured figures.
"""
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # diffusers pipelines draw progress bars

import numpy as np
import torch

sys.path[:0] = [os.path.join(os.path.dirname(__file__), "..", "tests"), os.path.join(os.path.dirname(__file__), "..")]

import diffusers  # noqa: E402
from kandinsky_core.kandinsky2 import decoder_pipeline as D  # noqa: E402
from kandinsky_core.kandinsky2 import prior_pipeline as P  # noqa: E402
from kandinsky_core import schedulers as S  # noqa: E402
from kandinsky_core.kandinsky2 import unet as U  # noqa: E402
from kandinsky_core.movq import MOVQ_TINY8  # noqa: E402
from oracle import decoder_pair, floats, prior_pair, random_image  # noqa: E402

DDPM_22 = {**S.KANDINSKY_2_2_DDPM, "clip_sample": False}


def diff(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def gen():
    return torch.Generator().manual_seed(0)


def model_rows(tmp):
    for config in (U.UNET_21_TINY, U.UNET_21_INPAINT_TINY, U.UNET_22_TINY, U.UNET_22_INPAINT_TINY, U.UNET_22_DEPTH_TINY):
        theirs, ours = decoder_pair(config, DDPM_22, tmp, MOVQ_TINY8)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 4 if config.variant == "2.2-depth" else config.in_channels, 8, 8, generator=g)
        emb = torch.randn(2, config.image_embed_dim, generator=g)
        kw, added = {}, {"image_embeds": emb}
        if config.variant.startswith("2.1"):
            kw = {"text_embeds": torch.randn(2, 32, generator=g), "text_hidden_states": torch.randn(2, 7, 32, generator=g)}
            added["text_embeds"] = kw["text_embeds"]
        if config.variant == "2.2-depth":
            kw["hint"] = added["hint"] = torch.rand(2, 3, 64, 64, generator=g)
        with torch.no_grad():
            expected = theirs["unet"](x, 500, encoder_hidden_states=kw.get("text_hidden_states"), added_cond_kwargs=added).sample
            yield f"UNet {config.variant}", diff(ours.unet(x, 500, emb, **kw), expected)
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        yield "MoVQ encode", diff(ours.movq.encode(image), theirs["movq"].encode(image).latents)
        z = ours.movq.encode(image)
        yield "MoVQ decode", diff(ours.movq.decode(z), theirs["movq"].decode(z, force_not_quantize=True).sample)
        yield "MoVQ decode (quantized)", diff(ours.movq.decode(z, False), theirs["movq"].decode(z).sample)


def pipeline_rows(tmp):
    pos, neg = floats((1, 32), 0), floats((1, 32), 1)
    image, mask = random_image(64), np.zeros((64, 64), np.float32)
    mask[:32, 8:40] = 1
    kw = dict(height=64, width=64, output_type="np")
    for version, config, sched in (("2.1", U.UNET_21_TINY, S.KANDINSKY_2_1_DDIM), ("2.2", U.UNET_22_TINY, DDPM_22)):
        theirs, ours = decoder_pair(config, sched, tmp)
        text = {"prompt": "a red cat"} if version == "2.1" else {}
        t2i = diffusers.KandinskyPipeline(**theirs)("a red cat", pos, neg, num_inference_steps=4, generator=gen(), **kw) if version == "2.1" \
            else diffusers.KandinskyV22Pipeline(**theirs)(pos, neg, num_inference_steps=4, generator=gen(), **kw)
        yield f"{version} text-to-image", diff(D.text_to_image(ours, pos, neg, steps=4, generator=gen(), **text, **kw), t2i.images)
        i2i = diffusers.KandinskyImg2ImgPipeline(**theirs)("a red cat", image, pos, neg, num_inference_steps=6, strength=0.5, generator=gen(), **kw) \
            if version == "2.1" else diffusers.KandinskyV22Img2ImgPipeline(**theirs)(pos, image, neg, num_inference_steps=6, strength=0.5, generator=gen(), **kw)
        yield f"{version} image-to-image", diff(D.image_to_image(ours, pos, neg, image, steps=6, strength=0.5, generator=gen(), **text, **kw), i2i.images)
        inpaint_config = U.UNET_21_INPAINT_TINY if version == "2.1" else U.UNET_22_INPAINT_TINY
        theirs, ours = decoder_pair(inpaint_config, sched, tmp)
        inp = diffusers.KandinskyInpaintPipeline(**theirs)("a red cat", image, mask, pos, neg, num_inference_steps=4, generator=gen(), **kw) \
            if version == "2.1" else diffusers.KandinskyV22InpaintPipeline(**theirs)(pos, image, mask, neg, num_inference_steps=4, generator=gen(), **kw)
        yield f"{version} inpainting", diff(D.inpaint(ours, pos, neg, image, mask, steps=4, generator=gen(), **text, **kw), inp.images)
    theirs, ours = decoder_pair(U.UNET_22_DEPTH_TINY, DDPM_22, tmp, MOVQ_TINY8)
    hint = floats((1, 3, 64, 64), 0)
    out = diffusers.KandinskyV22ControlnetPipeline(**theirs)(pos, neg, hint, num_inference_steps=4, generator=gen(), **kw).images
    yield "2.2 depth text-to-image", diff(D.text_to_image(ours, pos, neg, hint=hint, steps=4, generator=gen(), **kw), out)
    out = diffusers.KandinskyV22ControlnetImg2ImgPipeline(**theirs)(pos, image, neg, hint, num_inference_steps=6, strength=0.5, generator=gen(), **kw).images
    yield "2.2 depth image-to-image", diff(D.image_to_image(ours, pos, neg, image, hint=hint, steps=6, strength=0.5, generator=gen(), **kw), out)
    theirs, ours = prior_pair(tmp)
    out = diffusers.KandinskyV22PriorPipeline(**theirs)("a horse", negative_prompt="blurry", num_inference_steps=5, generator=gen())
    emb, negative = P.sample_prior(ours, "a horse", "blurry", steps=5, generator=gen())
    yield "prior (with negative prompt)", max(diff(emb, out.image_embeds), diff(negative, out.negative_image_embeds))
    out = diffusers.KandinskyV22PriorPipeline(**theirs).interpolate(["a horse", image], [0.3, 0.7], num_inference_steps=3, generator=gen())
    yield "interpolate", diff(P.interpolate(ours, ["a horse", image], [0.3, 0.7], steps=3, generator=gen())[0], out.image_embeds)
    out = diffusers.KandinskyV22PriorEmb2EmbPipeline(**theirs)("a horse", image, strength=0.5, num_inference_steps=6, generator=gen())
    yield "emb2emb", diff(P.emb2emb(ours, "a horse", image, strength=0.5, steps=6, generator=gen())[0], out.image_embeds)


def main():
    diffusers.utils.logging.disable_progress_bar()
    tmp = Path(tempfile.mkdtemp())
    for title, rows in (("models (forward, fp32)", model_rows(tmp)), ("pipelines (end to end, same seed)", pipeline_rows(tmp))):
        print(f"\n{title}")
        for name, value in rows:
            print(f"  {name:<32} max |ours - diffusers| = {value:.3g}")


if __name__ == "__main__":
    main()
