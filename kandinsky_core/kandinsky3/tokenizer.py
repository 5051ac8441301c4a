"""Kandinsky 3's prompt tokenizer: the T5/UL2 SentencePiece model read with the `sentencepiece` package.

The published `tokenizer/` folder holds only `spiece.model` (no `tokenizer.json`). transformers 5 would convert it with
`protobuf`, which ComfyUI does not install (and without which it fails with a misleading "tiktoken is required");
`sentencepiece` is in ComfyUI's requirements. The ids equal transformers' `T5Tokenizer` called as the pipelines call it,
`tokenizer(prompt, padding="max_length", max_length=128, truncation=True)`: special tokens written in the prompt
(`</s>`, `<extra_id_0>`, ...) are matched first and the text between them is encoded on its own, the ids are cut to
`max_length - 1`, the end-of-sequence id is appended, and padding fills up to `max_length`. One deliberate difference:
text that only NFKC turns into a control token's text ("＜/s＞") stays text, as in T5's own SentencePiece, where
transformers 5 emits the control token mid-prompt.
"""
import base64
import json
import os
import re

import torch

from ..errors import KandinskyError
from ..prompts import encodable

MAX_LENGTH = 128  # the pipelines' prompt length
EXTRA_IDS = 100  # T5's sentinel tokens <extra_id_0..99>, numbered down from the top of the vocabulary


def _added_tokens(folder, sp):
    """{token text: id} of the tokens transformers adds to the SentencePiece vocabulary (T5's sentinels).

    Their `lstrip`/`rstrip` flags need no handling: T5's normaliser drops the whitespace around them anyway.
    """
    config_file, added_file = os.path.join(folder, "tokenizer_config.json"), os.path.join(folder, "added_tokens.json")
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as f:
            decoder = json.load(f).get("added_tokens_decoder")
        if decoder:
            return {entry["content"]: int(i) for i, entry in decoder.items()}
    if os.path.isfile(added_file):
        with open(added_file, encoding="utf-8") as f:
            return {k: int(v) for k, v in json.load(f).items()}
    size = sp.get_piece_size()
    return {f"<extra_id_{i}>": size + EXTRA_IDS - 1 - i for i in range(EXTRA_IDS)}


class T5Tokenizer:
    """Prompts to (input_ids, attention_mask), both (B, max_length) LongTensors, as transformers' T5Tokenizer."""

    def __init__(self, model_file=None, *, model_proto=None, added=None):
        import sentencepiece  # in ComfyUI's requirements; imported here so 2.x users never need it

        self.sp = sentencepiece.SentencePieceProcessor(model_file=model_file, model_proto=model_proto)
        self.pad_id, self.eos_id = self.sp.pad_id(), self.sp.eos_id()
        self.added = added = added if added is not None else _added_tokens(os.path.dirname(model_file), self.sp)
        self.special = {**{self.sp.id_to_piece(i): i for i in (self.pad_id, self.eos_id, self.sp.unk_id())}, **added}
        # Longest first, so that no special token is cut short by another one that starts it.
        self.pattern = re.compile("|".join(re.escape(t) for t in sorted(self.special, key=len, reverse=True)))

    def metadata(self):
        """The tokenizer as safetensors metadata strings, so that a saved T5 file carries its own (tokenizer_of_file)."""
        return {"tokenizer": base64.b64encode(self.sp.serialized_model_proto()).decode(),
                "tokenizer_added": json.dumps(self.added)}

    def encode(self, text):
        """The ids of `text` without end-of-sequence token, padding or truncation (lone surrogates read as U+FFFD)."""
        text, ids, start = encodable(text), [], 0
        for match in self.pattern.finditer(text):
            ids += self.sp.encode(text[start:match.start()])
            ids.append(self.special[match.group()])
            start = match.end()
        return ids + self.sp.encode(text[start:])

    def __call__(self, prompts, max_length=MAX_LENGTH):
        """(input_ids, attention_mask) for a prompt or a list of prompts, padded and truncated to `max_length`."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = torch.full((len(prompts), max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), max_length), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            tokens = self.encode(prompt)[:max_length - 1] + [self.eos_id]
            ids[row, :len(tokens)] = torch.tensor(tokens)
            mask[row, :len(tokens)] = 1
        return ids, mask


def load_tokenizer(folder):
    """The T5 tokenizer in a kandinsky-3 `tokenizer/` folder (or the repo folder holding it), offline."""
    if os.path.isdir(os.path.join(folder, "tokenizer")):
        folder = os.path.join(folder, "tokenizer")
    model_file = os.path.join(folder, "spiece.model")
    if not os.path.isfile(model_file):
        raise KandinskyError(f"{folder} has no spiece.model; copy the tokenizer/ folder of "
                             "kandinsky-community/kandinsky-3 (spiece.model and its json files).")
    try:
        return T5Tokenizer(model_file)
    except (RuntimeError, OSError) as err:  # sentencepiece reports a damaged model as RuntimeError/OSError
        raise KandinskyError(f"{model_file} is not a readable SentencePiece model ({err}); "
                             "download it again.") from None


def tokenizer_of_file(path, metadata):
    """The tokenizer a saved T5 file's `metadata` carries (T5Tokenizer.metadata); KandinskyError naming `path` if none."""
    if "tokenizer" not in metadata:
        raise KandinskyError(f"{path} holds a T5 without its tokenizer; load the kandinsky-3 folder (text_encoder/ and "
                             "tokenizer/) or a file Kandinsky Save Model wrote.")
    try:
        return T5Tokenizer(model_proto=base64.b64decode(metadata["tokenizer"]),
                           added=json.loads(metadata.get("tokenizer_added", "null")))
    except (RuntimeError, OSError, ValueError) as err:
        raise KandinskyError(f"{path}: its tokenizer cannot be read ({type(err).__name__}: {err}); the file is "
                             "damaged: save it again.") from None
