"""ComfyUI's choices handed to the pack (nodes/common/comfy_compat.py), in this process on the ComfyUI the server runs:
its attention kernels behind the core's attention interface, out-of-memory detection, the patcher class, and the
pack's declared ComfyUI range as the Manager reads it."""
import re

import pytest
import torch

from comfy_server import REPO
from kandinsky_core import attention


@pytest.fixture(scope="module")
def compat(kandinsky_pack):
    from kandinsky_pack.nodes.common import comfy_compat

    return comfy_compat


KERNELS = ["attention_basic", "attention_split", "attention_sub_quad", "attention_pytorch"]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", ["plain", "t5_scale_and_bias", "per_head_mask"])
def test_comfy_kernels_compute_the_core_attention(compat, kernel, case):
    """Every CPU-runnable ComfyUI kernel, wrapped, gives the core's SDPA result: the T5's unscaled attention with its
    additive position bias included (ComfyUI's kernels only scale by 1/sqrt(d), the wrapper folds scale=1 into q)."""
    import comfy.ldm.modules.attention as comfy_attention

    g = torch.Generator().manual_seed(0)
    b, tq, tk, heads, dim = 2, 7, 5, 4, 8
    q, k, v = (torch.randn(b, t, heads * dim, generator=g) for t in (tq, tk, tk))
    mask, scale = None, None
    if case == "t5_scale_and_bias":
        mask, scale = torch.randn(b, heads, tq, tk, generator=g), 1.0
        mask[:, :, :, -1] = torch.finfo(torch.float32).min  # a padded key, as the T5 masks it
    elif case == "per_head_mask":
        mask = torch.randn(b, 1, tq, tk, generator=g)
    want = attention.sdpa(q, k, v, heads, mask, scale=scale)
    got = compat.as_core_attention(getattr(comfy_attention, kernel))(q, k, v, heads, mask, scale=scale)
    # fp32 kernels that sum in other orders (split/sub-quadratic chunk the keys): agreement to fp32 rounding of O(1)
    # outputs; a wrong scale or a dropped mask moves them by O(0.1).
    assert torch.allclose(got, want, atol=2e-6, rtol=1e-5), (got - want).abs().max()


def test_the_core_keeps_sdpa_when_comfy_only_fell_back(compat, monkeypatch):
    """On a CPU without attention flags ComfyUI falls back to split attention; the pack keeps the core's exact SDPA.
    A flag (here --use-split-cross-attention) routes the core through ComfyUI's kernel."""
    import comfy.cli_args
    import comfy.ldm.modules.attention as comfy_attention

    from kandinsky_pack.kandinsky_core import attention as pack_attention  # the core as the pack imports it

    assert compat.chosen_attention() is None
    monkeypatch.setattr(comfy.cli_args.args, "use_split_cross_attention", True)
    assert compat.chosen_attention() is comfy_attention.optimized_attention
    previous = pack_attention.set_attention(None)
    try:
        compat.use_comfy_attention()
        assert pack_attention._attention is not pack_attention.sdpa
        monkeypatch.setattr(comfy.cli_args.args, "use_split_cross_attention", False)
        compat.use_comfy_attention()
        assert pack_attention._attention is pack_attention.sdpa
    finally:
        pack_attention.set_attention(previous)


def test_out_of_memory_is_told_from_other_errors(compat):
    import comfy.model_management as mm

    assert compat.is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert compat.is_oom(mm.OOM_EXCEPTION("out of memory"))
    assert not compat.is_oom(ValueError("a bug, not memory"))


def test_models_get_the_patcher_class_core_loaders_use(compat):
    import comfy.model_patcher

    expected = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    patcher = compat.model_patcher(torch.nn.Linear(2, 2), torch.device("cpu"), torch.device("cpu"))
    assert isinstance(patcher, expected)


def satisfies(version, comparators):
    """npm semver for plain `>=`, `<=`, `>`, `<`, `=` comparator sets (space = and, `||` = or), as the frontend's
    conflict check reads `requires-comfyui`; a comma is no semver syntax and satisfies nothing."""
    key = tuple(map(int, version.split(".")))
    for alternative in comparators.split("||"):
        parts = alternative.split()
        if parts and all(re.fullmatch(r"(>=|<=|>|<|=)?\d+\.\d+\.\d+", p) for p in parts):
            ok = {">=": key.__ge__, "<=": key.__le__, ">": key.__gt__, "<": key.__lt__, "=": key.__eq__, "": key.__eq__}
            if all(ok[m.group(1) or ""](tuple(map(int, m.group(2).split("."))))
                   for m in (re.fullmatch(r"(>=|<=|>|<|=)?(\S+)", p) for p in parts)):
                return True
    return False


def test_requires_comfyui_admits_every_tested_version():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["comfy"]["requires-comfyui"]
    assert not satisfies("0.3.75", ">=0.3.75,<=0.30.0")  # the range this replaced: no version satisfied it
    for version in ("0.3.75", "0.30.0", "0.38.1"):
        assert satisfies(version, declared), (version, declared)
    assert not satisfies("0.3.74", declared)


def test_movq_encode_node_gives_contiguous_latents(kandinsky_pack):
    """MoVQ Encode's LATENT is a plain contiguous tensor, the core's own encode: a sampler fed it runs the kernels it
    runs for any other latent."""
    from kandinsky_pack.kandinsky_core.movq import MOVQ_TINY8, MoVQ
    from kandinsky_pack.nodes.common import movq as node_movq
    from kandinsky_pack.nodes.common import movq_nodes

    torch.manual_seed(0)
    model = MoVQ(MOVQ_TINY8).eval().requires_grad_(False)
    image = torch.rand(1, 64, 48, 3)
    latent = movq_nodes.encode(node_movq.MoVQ(model, torch.device("cpu"), torch.device("cpu")), image)
    assert latent.is_contiguous() and latent.shape == (1, 4, 8, 6)
    with torch.no_grad():  # the same computation on the same data: bit for bit
        assert torch.equal(latent, model.encode(movq_nodes.encodable(image, 8)))
