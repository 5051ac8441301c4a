"""Prompts of any Python string: lone UTF-16 surrogates (a JSON "\\ud800", half an emoji from a paste) reach every
tokenizer of the pack as U+FFFD, the rest of the prompt as written. Without kandinsky_core.prompts the native
tokenizers refuse such strings with raw errors (asserted here too, so the tests show what they guard against)."""
import pytest
import torch

from kandinsky_core.kandinsky2 import loading
from kandinsky_core.kandinsky3.tiny_text import write_tokenizer
from kandinsky_core.kandinsky3.tokenizer import load_tokenizer as load_t5_tokenizer
from kandinsky_core.prompts import encodable
from kandinsky_core.kandinsky2.text_encoder import tokenize
from kandinsky_core.kandinsky2.tiny_tokenizers import write_clip_tokenizer, write_xlmr_tokenizer

LONE, REPLACED = "a red \ud800 cat \udfff", "a red \ufffd cat \ufffd"


def test_encodable():
    assert encodable(LONE) == REPLACED
    assert encodable("\ud83d\ude00 cat") == "\U0001F600 cat"  # a pair written as two characters is one character
    assert encodable("\ude00\ud83d") == "\ufffd\ufffd"  # the wrong order pairs nothing
    text = "Café 日本語 \U0001F600 </s>"
    assert encodable(text) is text  # valid text: the very same string
    for s in (LONE, "\ud800" * 3, "x\udc80"):
        encodable(s).encode("utf-8")  # always encodable


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    write_clip_tokenizer(str(root / "clip"))
    write_xlmr_tokenizer(str(root / "xlmr"))
    return {"clip": loading.load_tokenizer(str(root / "clip"), "clip"),
            "xlmr": loading.load_tokenizer(str(root / "xlmr"), "xlmr"),
            "t5": load_t5_tokenizer(write_tokenizer(str(root / "t5")))}


@pytest.mark.parametrize("kind", ["clip", "xlmr"])
def test_2x_tokenizers_read_lone_surrogates_as_replacement(tokenizers, kind):
    tok = tokenizers[kind]
    with pytest.raises(TypeError):  # what Kandinsky Prior Encode used to show
        tok([LONE], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    for prompts in ([LONE], LONE, (LONE, "ok")):
        got = tokenize(tok, prompts).input_ids
        want = tokenize(tok, [REPLACED] if isinstance(prompts, str) else [REPLACED, *prompts[1:]]).input_ids
        assert torch.equal(got, want)


def test_t5_tokenizer_reads_lone_surrogates_as_replacement(tokenizers):
    tok = tokenizers["t5"]
    with pytest.raises(RuntimeError):  # what CLIP Text Encode on the Kandinsky 3 T5 used to show
        tok.sp.encode(LONE)
    assert tok.encode(LONE) == tok.encode(REPLACED)
    ids, mask = tok([LONE, "a red cat"])
    assert torch.equal(ids[0], tok([REPLACED])[0][0]) and mask.sum() > 0
