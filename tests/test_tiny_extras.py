"""Small core helpers used by the node layer."""
import torch

from kandinsky_core.movq import MOVQ_TINY8, MoVQ
from kandinsky_core.preview import latent_rgb_factors


def test_preview_factors_predict_decoded_colours():
    torch.manual_seed(0)
    movq = MoVQ(MOVQ_TINY8).eval()
    factors, bias = latent_rgb_factors(movq)
    assert factors.shape == (4, 3) and bias.shape == (3,)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    truth = torch.nn.functional.avg_pool2d(movq.decode(z), 8).movedim(1, -1)
    fitted = z.movedim(1, -1) @ factors + bias
    baseline = truth.mean(dim=(0, 1, 2))
    assert (fitted - truth).pow(2).mean() < (baseline - truth).pow(2).mean()
