"""Saving a loaded model as one safetensors file and loading it back: the same tensors in the same dtypes, mapped
rather than copied when the requested dtype is the stored one, and the same outputs (the K3 UNet, an original UNet with
its null_embedding, the T5 with its tokenizer, the MoVQ, the 2.2 decoder UNet)."""
import json
import os

import pytest
import torch
from safetensors import safe_open

from kandinsky_core import movq as M
from kandinsky_core import weights as W
from kandinsky_core.errors import KandinskyError
from kandinsky_core.kandinsky2 import loading as L2
from kandinsky_core.kandinsky2 import tiny as tiny2
from kandinsky_core.kandinsky3 import loading as L3
from kandinsky_core.kandinsky3 import original as K3O
from kandinsky_core.kandinsky3 import t5 as T5
from kandinsky_core.kandinsky3 import tiny, tiny_original
from kandinsky_core.kandinsky3.tokenizer import load_tokenizer, tokenizer_of_file

PROMPT = "a red cat <extra_id_3> on a mat</s>"


@pytest.fixture(scope="module")
def k3(tmp_path_factory):
    return tiny.write_kandinsky3(str(tmp_path_factory.mktemp("hub") / "kandinsky-3"))


def same_state(a, b):
    """Equal key sets, dtypes and values bit for bit."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k].reshape(-1).view(torch.uint8), sb[k].reshape(-1).view(torch.uint8)), k


def mapped(model):
    """Whether every tensor is a view of the file (frombuffer storages cannot be resized; allocated ones can)."""
    return all(not t.untyped_storage().resizable() for t in model.state_dict().values() if t.numel())


def test_writer_aligns_widest_first_and_safetensors_reads_it(tmp_path):
    tensors = {"a8": torch.arange(3, dtype=torch.uint8), "b32": torch.randn(2, 3), "c16": torch.randn(5).half(),
               "f8": torch.randn(7).to(torch.float8_e4m3fn), "cl": torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
               "empty": torch.zeros(0, 4)}
    path = W.save_file(str(tmp_path / "t.safetensors"), tensors, {"k": "v"})
    assert os.listdir(tmp_path) == ["t.safetensors"]  # no .part left behind
    header, _ = W._read_header(path)
    for key, (dtype, _, begin, _) in header.items():
        assert begin % dtype.itemsize == 0, key
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"k": "v"}
        for key, t in tensors.items():
            assert torch.equal(f.get_tensor(key).reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), key


def test_writer_refuses_a_dtype_safetensors_lacks_and_leaves_no_file(tmp_path):
    with pytest.raises(KandinskyError, match="complex64"):
        W.save_file(str(tmp_path / "t.safetensors"), {"z": torch.zeros(2, dtype=torch.complex64)})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn])
def test_k3_unet_round_trip_maps_in_its_stored_dtype(k3, tmp_path, dtype):
    unet = L3.load_unet(k3, dtype=dtype)
    scheduler = W.read_scheduler_config(k3)
    path = L3.save_unet(str(tmp_path / "unet.safetensors"), unet.to(memory_format=torch.channels_last),
                        scheduler=scheduler)
    assert W.read_metadata(path)[W.MARKER] == L3.UNET_KIND
    back, null, sched = L3.load_unet_file(path, dtype=dtype)
    same_state(unet, back)
    assert null is None and sched == scheduler and back.config == unet.config
    assert mapped(back) and not mapped(L3.load_unet_file(path, dtype=torch.float16)[0])


def test_original_unet_keeps_its_null_embedding_in_fp32(tmp_path):
    folder = tiny_original.write_kandinsky31(str(tmp_path / "weights"))
    unet, null = K3O.load_unet(os.path.join(folder, "kandinsky3.pt"), dtype=torch.float8_e4m3fn)
    full = torch.randn(unet.config.cross_attention_dim)  # fp32, as the original files store it
    path = L3.save_unet(str(tmp_path / "k31.safetensors"), unet, null_embedding=full)
    back, null_back, sched = L3.load_unet_file(path, dtype=torch.float8_e4m3fn)
    same_state(unet, back)
    assert null_back.dtype == torch.float32 and torch.equal(null_back, full) and sched is None
    assert back.config.time_features == "original" and back.config == unet.config
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
    ctx, mask = torch.randn(1, 5, unet.config.cross_attention_dim), torch.ones(1, 5)
    with torch.no_grad():
        expected = unet.float()(x, t, ctx, mask, projected=True)
        got = back.float()(x, t, ctx, mask, projected=True)
    assert torch.equal(expected, got)


def test_t5_round_trip_carries_its_tokenizer_and_fp32_wo(k3, tmp_path):
    t5 = T5.load_t5(os.path.join(k3, "text_encoder"), dtype=torch.float16)
    tokenizer = load_tokenizer(k3)
    path = T5.save_t5(str(tmp_path / "t5.safetensors"), t5, tokenizer)
    meta = W.read_metadata(path)
    assert meta[W.MARKER] == T5.T5_KIND and json.loads(meta["config"])["d_model"] == t5.config.d_model
    back = T5.load_t5(path, dtype=torch.float16)
    same_state(t5, back)
    assert back.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    assert mapped(back)
    tok = tokenizer_of_file(path, meta)
    assert tok.encode(PROMPT) == tokenizer.encode(PROMPT) and tok.special == tokenizer.special
    ids, mask = tok([PROMPT])
    with torch.no_grad():
        assert torch.equal(t5(ids, mask), back(ids, mask))


def test_a_t5_file_without_tokenizer_is_refused_by_name(tmp_path):
    from kandinsky_core.kandinsky3.tiny_text import write_text_encoder_file
    path = str(tmp_path / "bare.safetensors")
    write_text_encoder_file(path)
    with pytest.raises(KandinskyError, match="bare.safetensors holds a T5 without its tokenizer"):
        tokenizer_of_file(path, W.read_metadata(path))


def test_movq_round_trip(k3, tmp_path):
    movq = M.load_movq(k3, dtype=torch.bfloat16)
    path = M.save_movq(str(tmp_path / "movq.safetensors"), movq.to(memory_format=torch.channels_last))
    assert W.read_metadata(path)[W.MARKER] == M.MOVQ_KIND
    back = M.load_movq(path, dtype=torch.bfloat16)
    same_state(movq, back)
    assert mapped(back) and back.config == movq.config


def test_original_movq_round_trip(tmp_path):
    folder = tiny_original.write_kandinsky31(str(tmp_path / "weights"))
    movq = M.load_movq(os.path.join(folder, "movq.pt"))
    back = M.load_movq(M.save_movq(str(tmp_path / "movq.safetensors"), movq))
    same_state(movq, back)


def test_decoder_unet_round_trip_with_scheduler(tmp_path):
    folders = tiny2.write_all(str(tmp_path / "hub"))
    repo = folders["kandinsky-2-2-decoder"]
    unet = L2.load_component(repo, "unet", dtype=torch.bfloat16)
    scheduler = W.read_scheduler_config(repo)
    path = L2.save_unet(str(tmp_path / "unet.safetensors"), unet, scheduler)
    back = L2.load_component(path, "unet", dtype=torch.bfloat16)
    same_state(unet, back)
    assert mapped(back) and back.config == unet.config and back.config.variant == unet.config.variant
    assert W.read_metadata_config(path, "scheduler") == scheduler
