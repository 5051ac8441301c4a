"""Speed settings: the fastest dtype a device multiplies natively, channels_last convolutions, torch.compile.

kandinsky_core's defaults stay bit-equal to diffusers, so none of this is on unless asked for: each changes float
rounding (channels_last picks other convolution kernels, compile fuses ops). The ComfyUI nodes ask for channels_last
by default (their loaders' `mode` "fast"). benchmarks/bench.py measures what each buys.
"""
import torch


def fast_dtype(device):
    """bf16 on CUDA and on CPUs with native bf16 matmul (AVX512-BF16 or AMX), else fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def optimize(model, *, channels_last=True, compile=False):
    """Make `model` (UNet or MoVQ) faster in place and return it; the forward's inputs may stay contiguous.

    channels_last: on CPU, oneDNN otherwise reorders every weight and activation to its blocked layout on every
    convolution call (half the UNet step in a profile); convolutions with a channels_last weight take contiguous
    inputs too. compile: wrap the forward in `torch.compile` (first call compiles for minutes on CPU).
    """
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        model.forward = torch.compile(model.forward)
    return model
