"""The single attention function every model in the core calls; swap it with `set_attention`."""
import torch.nn.functional as F


def sdpa(q, k, v, heads, mask=None, scale=None):
    """Multi-head attention over (B, T, heads*dim) tensors with torch's fused kernel; mask is additive, (B, 1|heads, Tq, Tk).

    `scale` multiplies q·k (None: 1/sqrt(dim)); T5 passes 1.0, its weights absorb the scaling."""
    b, _, inner = q.shape
    dim = inner // heads
    q, k, v = (t.reshape(b, -1, heads, dim).transpose(1, 2) for t in (q, k, v))  # (B, heads, T, dim)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(b, -1, inner)


_attention = sdpa


def attention(q, k, v, heads, mask=None, scale=None):
    """Attend with the currently selected implementation (default: `sdpa`)."""
    if scale is None:  # replacements written for the 2.x models take no `scale`
        return _attention(q, k, v, heads, mask)
    return _attention(q, k, v, heads, mask, scale=scale)


def set_attention(fn=None):
    """Route all model attention through `fn(q, k, v, heads, mask, scale=None)` (None restores SDPA); returns the previous one.

    `scale` is only ever passed by the Kandinsky 3 T5 encoder; a replacement used with it must accept it."""
    global _attention
    previous, _attention = _attention, fn or sdpa
    return previous
