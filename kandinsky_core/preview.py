"""Cheap previews: a linear map from MoVQ latents to RGB, fitted to the MoVQ itself."""
import torch
import torch.nn.functional as F


@torch.no_grad()
def latent_rgb_factors(movq, samples=4, size=8, seed=0):
    """(factors (4, 3), bias (3,)) mapping a latent pixel to the mean colour the MoVQ decodes it to, in [-1, 1].

    Least squares over random latents decoded once; a preview then costs one matrix product per step.
    """
    p = next(movq.parameters())
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, movq.config.latent_channels, size, size, generator=g).to(p.device, p.dtype)
    rgb = F.avg_pool2d(movq.decode(z).float(), movq.config.scale_factor)  # colour per latent pixel
    x = torch.cat([z.float().movedim(1, -1).reshape(-1, z.shape[1]), torch.ones(z[:, :1].numel(), 1, device=z.device)], 1)
    solution = torch.linalg.lstsq(x.cpu(), rgb.movedim(1, -1).reshape(-1, 3).cpu()).solution
    return solution[:-1], solution[-1]
