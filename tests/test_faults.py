"""Faults: Cancel in the middle of the prior and the decoder, memory over many prompts, out-of-memory in MoVQ decode.

Cancel and memory run through a real ComfyUI server. On a CPU-only server "no model stuck on the compute device" holds
trivially (the compute device is the CPU); what is checked is that every cancelled run ends as interrupted, the next
prompt gives the reference image, and neither the process RSS nor (on a GPU) the torch allocation grows. The
out-of-memory fallback runs in-process on the node's own decode function, with ComfyUI imported on the CPU.
"""
import random
import time

import numpy as np
import pytest
import torch

from graphs import INPAINT_IMAGE, SIZE, Graph
from hostile_summary import record
from test_hostile import cond22, run_reference, sample
from test_k3_comfy import K3Graph
from test_k3_original_comfy import OriginalGraph

pytest_plugins = ["hostile_summary"]

MIB = 2**20
RSS_SLACK = 48 * MIB  # allocator noise of a Python process; a leaked tiny model or image batch per prompt exceeds it
VRAM_SLACK = 16 * MIB


def torch_vram_used(comfy):
    """Bytes torch holds on the compute device, or None on a CPU-only server."""
    (device,) = comfy._json("GET", "/system_stats")["devices"][:1]
    if device["type"] == "cpu":
        return None
    return device["torch_vram_total"] - device["torch_vram_free"]


def long_prior(g, seed):
    """A 2.2 prior encode with many more steps than Cancel waits for; returns its node."""
    return g.prior_encode(g.prior(), seed=seed, steps=400)


def cancel_at(comfy, ws, prompt, node, step, timeout=60):
    """Queue `prompt`, press Cancel once `node` reports `step`; return the prompt's terminal message type."""
    prompt_id = comfy.queue(prompt)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = [m["data"]["value"] for m in ws.for_prompt(prompt_id, ("progress",)) if m["data"]["node"] == node]
        done = ws.for_prompt(prompt_id, ("execution_success", "execution_error", "execution_interrupted"))
        if done or (progress and progress[-1] >= step):
            break
        time.sleep(0.002)
    comfy.interrupt(prompt_id)
    return ws.wait_for(prompt_id, timeout=timeout)[-1]["type"]


@pytest.fixture(scope="module")
def baseline(comfy):
    """Reference image and memory after a warm-up, before any fault."""
    run_reference(comfy, "faults_warmup")
    image, _ = run_reference(comfy, "faults_before")
    return image, comfy.rss(), torch_vram_used(comfy)


def check_memory(comfy, case, rss_before, vram_before):
    grown = comfy.rss() - rss_before
    vram = torch_vram_used(comfy)
    vram_grown = 0 if vram is None else vram - vram_before
    leaked = grown > RSS_SLACK or vram_grown > VRAM_SLACK
    record(case, "leak" if leaked else "worked", f"RSS +{grown / MIB:.1f} MiB, torch VRAM +{vram_grown / MIB:.1f} MiB")
    assert not leaked, f"{case}: RSS grew by {grown / MIB:.1f} MiB, torch VRAM by {vram_grown / MIB:.1f} MiB"


def test_cancel_at_random_steps(comfy, baseline):
    reference, rss_before, vram_before = baseline
    rng = random.Random(0)
    interrupted = 0
    with comfy.listen() as ws:
        for run in range(20):
            g = Graph()
            if run % 2 == 0:
                node, step = long_prior(g, seed=run), rng.randint(1, 40)
                g.add("PreviewAny", source=node[0])
            else:
                cond = cond22(g)
                node, step = sample(g, cond=cond, steps=150, seed=run)[1], rng.randint(1, 15)
                g.add("PreviewAny", source=node[0])
            end = cancel_at(comfy, ws, g.prompt, node.id, step)
            assert end in ("execution_interrupted", "execution_success"), end
            interrupted += end == "execution_interrupted"
            record(f"cancel run {run} at step {step}", "worked" if end != "execution_error" else "crash")
            assert comfy.process.poll() is None
    assert interrupted >= 15, f"only {interrupted} of 20 runs were still going when Cancel was pressed"
    image, _ = run_reference(comfy, "faults_after_cancel")
    np.testing.assert_array_equal(image, reference)
    check_memory(comfy, "memory after 20 cancels", rss_before, vram_before)


def k3_text_to_image(g, seed, steps=2, sampler="Kandinsky3Sampler"):
    """Kandinsky 3 text-to-image (its own sampler or KSampler) into Preview Image; returns the sampler node."""
    model, clip, movq = g.k3()
    positive, latent = g.encode(clip, f"a cat number {seed}"), g.empty_latent()[0]
    if sampler == "KSampler":
        node = g.ksampler(model, positive, g.encode(clip, ""), latent, seed, steps)
    else:
        node = g.k3_sampler(model, positive, latent, seed, steps)
    g.add("PreviewImage", images=g.decode(movq, node[0])[0])
    return node


def test_cancel_kandinsky3_at_random_steps(comfy, baseline):
    reference, rss_before, vram_before = baseline
    rng = random.Random(1)
    with comfy.listen() as ws:
        for run in range(6):
            g = K3Graph()
            node = k3_text_to_image(g, run, steps=150, sampler="KSampler" if run % 2 else "Kandinsky3Sampler")
            step = rng.randint(1, 15)
            end = cancel_at(comfy, ws, g.prompt, node.id, step)
            assert end == "execution_interrupted", end
            record(f"Kandinsky 3 cancel run {run} at step {step}", "worked")
            assert comfy.process.poll() is None
    image, _ = run_reference(comfy, "faults_after_k3_cancel")
    np.testing.assert_array_equal(image, reference)
    check_memory(comfy, "memory after 6 Kandinsky 3 cancels", rss_before, vram_before)


def original_run(g, run, steps):
    """The original-file samplers in turn: the 3.1 sampler, Flash's four steps, inpainting; returns the sampler node."""
    kind = ("checkpoint", "flash", "inpaint")[run % 3]
    model, clip, movq = g.original("kandinsky3_inpainting.pt" if kind == "inpaint" else "kandinsky3.pt")
    positive, latent = g.encode(clip, f"a cat number {run}"), g.empty_latent()[0]
    if kind == "inpaint":
        loaded = g.load_image(INPAINT_IMAGE)
        cond = g.add("Kandinsky3InpaintConditioning", positive=positive, negative=positive, movq=movq,
                     pixels=loaded[0], mask=loaded[1], grow_mask_by=0, paste_back=True)
        positive, latent = cond[0], cond[2]
    node = g.k3_sampler(model, positive, latent, run, steps, sampler="flash" if kind == "flash" else "checkpoint")
    g.add("PreviewImage", images=g.decode(movq, node[0])[0])
    return node, kind


def test_cancel_original_samplers_at_random_steps(comfy, baseline):
    """The 3.1 sampler and inpainting run 150 steps and are cancelled mid-way; Flash has 4 steps, so its run may end
    before Cancel arrives, and must then end cleanly."""
    reference, rss_before, vram_before = baseline
    rng = random.Random(2)
    with comfy.listen() as ws:
        for run in range(6):
            g = OriginalGraph()
            node, kind = original_run(g, run, steps=150)
            step = rng.randint(1, 3 if kind == "flash" else 15)
            end = cancel_at(comfy, ws, g.prompt, node.id, step)
            assert end == "execution_interrupted" or (kind == "flash" and end == "execution_success"), (kind, end)
            record(f"Kandinsky 3.1 {kind} cancel run {run} at step {step}", "worked")
            assert comfy.process.poll() is None
    image, _ = run_reference(comfy, "faults_after_k31_cancel")
    np.testing.assert_array_equal(image, reference)
    check_memory(comfy, "memory after 6 Kandinsky 3.1 cancels", rss_before, vram_before)


def test_50_prompts_flat_memory(comfy, baseline):
    _, _, vram_before = baseline
    samples = []
    for i in range(50):
        g = K3Graph()
        cond = g.prior_encode(g.prior(), seed=i)
        model, latents = sample(g, cond=cond, seed=i)
        g.add("PreviewImage", images=g.decode(model[1], latents[0])[0])
        k3_text_to_image(g, seed=i)  # and Kandinsky 3, in the same prompt
        entry = comfy.wait(comfy.queue(g.prompt), timeout=120)
        assert entry["status"]["status_str"] == "success", entry["status"]
        samples.append(comfy.rss())
    record("50 consecutive prompts", "worked")
    # Flat: the last ten prompts hold no more memory than prompts 11-20 (after caches and allocators warmed up).
    growth = np.median(samples[-10:]) - np.median(samples[10:20])
    vram = torch_vram_used(comfy)
    vram_grown = 0 if vram is None else vram - vram_before
    leaked = growth > RSS_SLACK or vram_grown > VRAM_SLACK
    record("memory over 50 prompts", "leak" if leaked else "worked",
           f"RSS +{growth / MIB:.1f} MiB, torch VRAM +{vram_grown / MIB:.1f} MiB")
    assert not leaked, (f"RSS grew by {growth / MIB:.1f} MiB over prompts 11-50 ({[s // MIB for s in samples]} MiB), "
                        f"torch VRAM by {vram_grown / MIB:.1f} MiB")


@pytest.fixture(scope="module")
def pack(kandinsky_pack):
    """The pack's MoVQ modules, imported with ComfyUI (CPU) from the tree the server runs."""
    from kandinsky_pack.nodes.common import movq as pack_movq, movq_nodes

    return pack_movq, movq_nodes


def tiny_movq(pack_movq):
    from kandinsky_pack.kandinsky_core.movq import MOVQ_TINY8, MoVQ

    torch.manual_seed(0)
    return pack_movq.MoVQ(MoVQ(MOVQ_TINY8).eval(), torch.device("cpu"), torch.device("cpu"))


class OOMOnce:
    """Wraps a MoVQ method: the first call over the whole input raises ComfyUI's out-of-memory exception."""

    def __init__(self, method, exception, whole_shape):
        self.method, self.exception, self.whole_shape, self.calls = method, exception, whole_shape, []

    def __call__(self, x, *args, **kwargs):
        self.calls.append(tuple(x.shape))
        if len(self.calls) == 1 and tuple(x.shape) == self.whole_shape:
            raise self.exception("CUDA out of memory (simulated)")
        return self.method(x, *args, **kwargs)


@pytest.mark.parametrize("size,fallback_tile", [(SIZE, None), (2 * SIZE, SIZE)])
def test_decode_out_of_memory_falls_back_to_tiles(pack, monkeypatch, size, fallback_tile):
    pack_movq, movq_nodes = pack
    import comfy.model_management as mm
    from kandinsky_pack.kandinsky_core import tiling

    if fallback_tile:  # several tiles per side without decoding a >512-pixel image on the CPU
        monkeypatch.setattr(movq_nodes, "FALLBACK_TILE", fallback_tile)
    movq = tiny_movq(pack_movq)
    z = torch.randn(2, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    whole = movq_nodes.decode(movq, z)
    oom = OOMOnce(movq.model.decode, mm.OOM_EXCEPTION, tuple(z.shape))
    monkeypatch.setattr(movq.model, "decode", oom)
    tiled = movq_nodes.decode(movq, z)
    tile = movq_nodes.FALLBACK_TILE // 8
    assert oom.calls[0] == tuple(z.shape) and all(s[0] == 1 and s[-1] <= tile for s in oom.calls[1:])
    assert tiled.shape == whole.shape == (2, size, size, 3)
    if size <= movq_nodes.FALLBACK_TILE:  # one tile covers the image: exactly the whole decode
        torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)
    else:  # tiles see only part of the image (see tiling.py): close, not equal
        tiles = tiling.tile_count(size // 8, size // 8, tile, tile // 4)
        assert tiles > 1 and len(oom.calls) == 1 + 2 * tiles and (tiled - whole).abs().mean() < 0.05
    record(f"MoVQ decode out of memory at {size}px", "worked")


def test_encode_out_of_memory_falls_back_to_tiles(pack, monkeypatch):
    pack_movq, movq_nodes = pack
    import comfy.model_management as mm

    movq = tiny_movq(pack_movq)
    image = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))
    whole = movq_nodes.encode(movq, image)
    oom = OOMOnce(movq.model.encode, mm.OOM_EXCEPTION, (1, 3, SIZE, SIZE))
    monkeypatch.setattr(movq.model, "encode", oom)
    torch.testing.assert_close(movq_nodes.encode(movq, image), whole, rtol=0, atol=1e-5)
    assert len(oom.calls) == 2
    record("MoVQ encode out of memory", "worked")
