"""decoder_pipeline's latent-level sampling at any latent size (padding the UNet's input) and with shared noise."""
from types import SimpleNamespace

import pytest
import torch

from kandinsky_core.kandinsky2 import decoder_pipeline as D
from kandinsky_core import schedulers as S
from kandinsky_core.kandinsky2 import unet as U
from kandinsky_core.movq import MOVQ_TINY, MoVQ
from test_unet import unet_inputs

TINY = {"2.1": U.UNET_21_TINY, "2.1-inpaint": U.UNET_21_INPAINT_TINY, "2.2": U.UNET_22_TINY,
        "2.2-inpaint": U.UNET_22_INPAINT_TINY, "2.2-depth": U.UNET_22_DEPTH_TINY}
SAMPLERS = {"ddpm": lambda: S.scheduler_from_config(S.KANDINSKY_2_2_DDPM),  # draws noise every step
            "ddim": lambda: S.scheduler_from_config(S.KANDINSKY_2_1_DDIM),
            "dpm++": lambda: S.dpm_solver_from(S.KANDINSKY_2_2_DDPM, karras=True)}  # keeps a history between steps


class Recorder(torch.nn.Module):
    """A stand-in UNet needing latents in multiples of 8: records what it gets, returns its input and the hint's
    8x8 block averages, so cropping can be checked exactly."""

    config = SimpleNamespace(latent_multiple=8)

    def forward(self, x, t, image_embeds=None, hint=None):
        self.seen = x, hint
        assert x.shape[-2] % 8 == 0 and x.shape[-1] % 8 == 0
        return x if hint is None else torch.cat([x, torch.nn.functional.avg_pool2d(hint, 8)], dim=1)


def test_sizes_the_unet_takes_run_unchanged():
    unet = U.UNet(U.UNET_22_TINY).eval()
    x, image, _ = unet_inputs(U.UNET_22_TINY, size=6)
    with torch.no_grad():
        assert torch.equal(D.unet_any_size(unet, x, 10, image_embeds=image), unet(x, 10, image))


def test_padding_reflects_around_the_latent_and_the_crop_undoes_it():
    recorder = Recorder()
    x, hint = torch.randn(2, 4, 5, 9), torch.rand(2, 3, 40, 72)
    out = D.unet_any_size(recorder, x, 10, hint=hint)
    torch.testing.assert_close(out, torch.cat([x, torch.nn.functional.avg_pool2d(hint, 8)], dim=1), rtol=0, atol=0)
    padded, padded_hint = recorder.seen
    assert padded.shape[-2:] == (8, 16) and padded_hint.shape[-2:] == (64, 128)
    torch.testing.assert_close(padded[..., 1:6, 3:12], x, rtol=0, atol=0)  # centred: 1 row / 3 columns before
    torch.testing.assert_close(padded[..., 0, 3:12], x[..., 1, :], rtol=0, atol=0)  # reflected, edge not repeated
    torch.testing.assert_close(padded_hint[..., 8:48, 24:96], hint, rtol=0, atol=0)


def test_latents_too_small_to_reflect_repeat_their_edge():
    recorder = Recorder()
    x = torch.randn(1, 4, 1, 3)
    torch.testing.assert_close(D.unet_any_size(recorder, x, 10), x, rtol=0, atol=0)
    padded = recorder.seen[0]
    # 7 rows (3 above, 4 below) and 5 columns (2 left, 3 right) of copies of the nearest edge
    torch.testing.assert_close(padded, x[..., [0] * 8, :][..., [0, 0, 0, 1, 2, 2, 2, 2]], rtol=0, atol=0)


@pytest.mark.parametrize("variant", sorted(TINY))
def test_every_variant_samples_latent_sizes_that_are_not_its_multiple(variant):
    config = TINY[variant]
    x, image, kw = unet_inputs(config, size=5)
    x = torch.cat([x, x[..., :4]], dim=-1)  # 5 x 9 latents: 40 x 72 pixels
    if "hint" in kw:
        kw["hint"] = torch.rand(2, 3, 40, 72)
    with torch.no_grad():
        out = D.unet_any_size(U.UNet(config).eval(), x, 10, image_embeds=image, **kw)
    assert out.shape == (2, 8, 5, 9) and torch.isfinite(out).all()


def test_full_size_unet_on_72x40_pixels():
    unet = U.UNet(U.UNET_22_DEPTH, device="meta")
    meta = dict(device="meta")
    out = D.unet_any_size(unet, torch.zeros(1, 4, 5, 9, **meta), 10, image_embeds=torch.zeros(1, 1280, **meta),
                          hint=torch.zeros(1, 3, 40, 72, **meta))
    assert out.shape == (1, 8, 5, 9)


def tiny_models(config=U.UNET_22_TINY, sampler="ddpm"):
    torch.manual_seed(0)
    return D.DecoderModels(U.UNet(config).eval(), MoVQ(MOVQ_TINY).eval(), SAMPLERS[sampler]())


def embeddings(models, rows, same=True):
    dim = models.unet.config.image_embed_dim
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(1, dim, generator=g).expand(rows, -1) if same else torch.randn(rows, dim, generator=g)
    return D.conditioning(models, emb, torch.zeros(1, dim), None, None, 1, 4.0)


def text_to_image(models, cond, rows, shared_noise, seed=1):
    return D.sample_text_to_image(models, cond, (rows, 4, 5, 9), steps=2, generator=torch.Generator().manual_seed(seed),
                                  shared_noise=shared_noise)


def rows_apart(latents):
    """How far the rows of a batch lie from its first row: the largest absolute difference."""
    return max(float((latents[0] - row).abs().max()) for row in latents[1:])


def assert_rows_differ_only_by_embedding(sample):
    """`sample(same_embedding, shared_noise)` gives a batch of latents. With one embedding and shared noise the rows
    are the same computation in different batch positions, and the CPU's batched kernels (oneDNN convolutions, GEMM
    blocking) may round each position differently: so they must agree to rounding, which is judged against what a
    different embedding or each row's own noise does to the rows, not bit for bit."""
    same = rows_apart(sample(True, True))
    by_embedding, by_noise = rows_apart(sample(False, True)), rows_apart(sample(True, False))
    assert same < 1e-3 * min(by_embedding, by_noise), (
        f"rows with one embedding and shared noise differ by {same:.3g}; a different embedding moves them by "
        f"{by_embedding:.3g}, each row's own noise by {by_noise:.3g}")


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_shared_noise_gives_identical_embeddings_identical_latents(sampler):
    models = tiny_models(sampler=sampler)
    assert_rows_differ_only_by_embedding(
        lambda same, shared_noise: text_to_image(models, embeddings(models, 3, same), 3, shared_noise))
    shared = text_to_image(models, embeddings(models, 3), 3, True)
    # row 0 is what a batch of one gives for the same seed, stochastic steps (DDPM) included (up to batched rounding)
    torch.testing.assert_close(shared[:1], text_to_image(models, embeddings(models, 1), 1, False), rtol=1e-4, atol=1e-4)


def test_without_shared_noise_rows_differ_and_with_it_embeddings_still_count():
    models = tiny_models()
    own = text_to_image(models, embeddings(models, 2), 2, False)
    assert not torch.allclose(own[0], own[1])
    differing = text_to_image(models, embeddings(models, 2, same=False), 2, True)
    assert not torch.allclose(differing[0], differing[1])


def test_shared_noise_for_image_to_image_and_inpainting():
    models = tiny_models()
    init = torch.randn(1, 4, 5, 9).expand(3, -1, -1, -1)
    run = lambda shared_noise: dict(steps=2, generator=torch.Generator().manual_seed(2), shared_noise=shared_noise)
    assert_rows_differ_only_by_embedding(lambda same, shared_noise: D.sample_image_to_image(
        models, embeddings(models, 3, same), init, strength=1.0, **run(shared_noise)))
    inpaint = tiny_models(U.UNET_22_INPAINT_TINY)
    keep = torch.ones(1, 1, 5, 9)
    keep[..., 1:4, 2:6] = 0
    assert_rows_differ_only_by_embedding(lambda same, shared_noise: D.sample_inpaint(
        inpaint, embeddings(inpaint, 3, same), init[:1], keep, (3, 4, 5, 9), **run(shared_noise)))
