"""Kandinsky 3's T5 tokenizer (sentencepiece, no protobuf) against transformers' T5Tokenizer on the same files.

The SentencePiece model is trained by `tiny_text.write_tokenizer` on a few sentences; transformers (which needs
protobuf to read a folder that has only `spiece.model`) is the oracle.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import T5Tokenizer as HFT5Tokenizer

from kandinsky_core.errors import KandinskyError
from kandinsky_core.kandinsky3.tiny_text import write_tokenizer
from kandinsky_core.kandinsky3.tokenizer import load_tokenizer

WORDS = "a red cat sits on the moon with bright colours and bold lines near the river at sunset".split()
PROMPTS = [
    "A red cat sits on a blue mat in the sun.",
    "",
    "   ",
    "  leading, trailing   and\tinner \n whitespace  ",
    "Café naïve ½ ﬁ ＦＵＬＬ-width ＡＢＣ, Ünïcödé",
    "unknown letters: 日本語 ✨ ∑ ж",
    "UPPER lower MiXeD 12345 !?.,;:'\"()[]",
    "special</s>inside <pad> and <unk> too",
    "<extra_id_0> starts, ends <extra_id_99>",
    "glued<extra_id_5><extra_id_7>tokens </s></s>",
    "<extra_id_100> is not a sentinel, <extra_id_1 neither",
    " ".join(WORDS * 12),  # far past 128 tokens: truncated to 127 + </s>
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tokenizer(str(tmp_path_factory.mktemp("k3") / "tokenizer"))


def oracle(folder, prompts, max_length=128):
    tokens = HFT5Tokenizer.from_pretrained(folder)(prompts, padding="max_length", max_length=max_length,
                                                   truncation=True, return_tensors="pt")
    return tokens.input_ids, tokens.attention_mask


def check(folder, prompts, max_length=128):
    ids, mask = load_tokenizer(folder)(prompts, max_length=max_length)
    expected_ids, expected_mask = oracle(folder, prompts, max_length)
    assert ids.dtype == mask.dtype == torch.long and ids.shape == (len(prompts), max_length)
    assert torch.equal(ids, expected_ids)
    assert torch.equal(mask, expected_mask)
    return ids, mask


def test_ids_equal_transformers(folder):
    ids, mask = check(folder, PROMPTS)
    assert (ids == 2).any()  # some text really hit <unk>
    assert mask[1].sum() == 1 and ids[1, 0] == 1  # "" is just </s>


def length_of(folder, prompt):
    return len(HFT5Tokenizer.from_pretrained(folder)(prompt).input_ids)


@pytest.mark.parametrize("target", [127, 128, 129])
def test_truncation_keeps_127_tokens_and_eos(folder, target):
    prompt = ""
    for word in WORDS * 20:  # grow one word at a time until the untruncated length (with </s>) reaches the target
        if length_of(folder, prompt) >= target:
            break
        prompt += word + " "
    assert length_of(folder, prompt) >= target
    ids, mask = check(folder, [prompt, "a cat"])
    assert ids[0, int(mask[0].sum()) - 1] == 1
    assert mask[0].sum() == min(length_of(folder, prompt), 128)


def test_other_max_length(folder):
    check(folder, PROMPTS, max_length=77)


def test_folder_with_only_spiece_model(folder, tmp_path):
    bare = tmp_path / "tokenizer"
    bare.mkdir()
    shutil.copy(os.path.join(folder, "spiece.model"), bare / "spiece.model")
    ids, _ = check(str(bare), PROMPTS)
    assert torch.equal(ids, load_tokenizer(folder)(PROMPTS)[0])  # the same sentinel ids as the full folder


def test_repo_folder_and_single_prompt(folder):
    tokenizer = load_tokenizer(os.path.dirname(folder))
    ids, mask = tokenizer("a red cat")
    assert ids.shape == mask.shape == (1, 128)
    assert torch.equal(ids, oracle(folder, ["a red cat"])[0])


def test_stripping_flags_of_special_tokens_change_nothing(folder, tmp_path):
    """T5's normaliser drops the whitespace around special tokens anyway, so `lstrip`/`rstrip` need no handling."""
    changed = tmp_path / "tokenizer"
    shutil.copytree(folder, changed)
    config = json.loads((changed / "tokenizer_config.json").read_text())
    for entry in config["added_tokens_decoder"].values():
        entry.update(lstrip=True, rstrip=True)
    (changed / "tokenizer_config.json").write_text(json.dumps(config))
    check(str(changed), PROMPTS)


def test_compatibility_forms_of_control_tokens_stay_text(folder):
    """NFKC turns "＜/s＞" into the text "</s>" after special tokens were matched. T5's SentencePiece keeps it text;
    transformers 5 (the `tokenizers` Unigram, whose vocabulary holds "</s>") emits an end of sequence mid-prompt.
    We follow SentencePiece: the one place our ids deliberately differ from transformers'."""
    ids, mask = load_tokenizer(folder)(["a ＜/s＞ b ＜pad＞ c"])
    length = int(mask.sum())
    assert (ids[0, :length - 1] > 1).all() and ids[0, length - 1] == 1


def test_works_without_protobuf(folder):
    """ComfyUI does not install protobuf: the tokenizer must not need it (transformers 5 does, for spiece.model)."""
    code = ("import sys, json; sys.modules['google.protobuf'] = None; "
            "from kandinsky_core.kandinsky3.tokenizer import load_tokenizer; "
            f"ids, mask = load_tokenizer({folder!r})({PROMPTS!r}); print(json.dumps(ids.tolist()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert json.loads(out.stdout.splitlines()[-1]) == oracle(folder, PROMPTS)[0].tolist()


def test_missing_or_damaged_model_is_named(folder, tmp_path):
    with pytest.raises(KandinskyError, match="has no spiece.model"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "spiece.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(KandinskyError, match="not a readable SentencePiece model"):
        load_tokenizer(str(tmp_path))
