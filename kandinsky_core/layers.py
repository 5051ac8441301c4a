"""Layers every Kandinsky denoiser shares: the sinusoidal timestep features and the MLP that embeds them.

The 2.x decoder UNet, the 2.x prior and the Kandinsky 3 UNet all turn the timestep into features the way diffusers'
`get_timestep_embedding` does (diffusers/src/diffusers/models/embeddings.py) and feed them to its `TimestepEmbedding`
(`linear_1`, SiLU, `linear_2`); only the flip and the frequency shift differ between them.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t, dim, flip_sin_to_cos=True, shift=0):
    """Sinusoidal (B, dim) features of (B,) timesteps, cosines first when flipped (diffusers' get_timestep_embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - shift))
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)] if flip_sin_to_cos else [torch.sin(args), torch.cos(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimestepEmbedding(nn.Module):
    """Linear → SiLU → Linear over the sinusoidal timestep features."""

    def __init__(self, cin, cout, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.linear_1 = operations.Linear(cin, cout, dtype=dtype, device=device)
        self.linear_2 = operations.Linear(cout, cout, dtype=dtype, device=device)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))
