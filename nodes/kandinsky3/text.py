"""Kandinsky 3's Flan-UL2 T5 as a ComfyUI CLIP, so core CLIP Text Encode and the conditioning nodes work with it.

`comfy.sd.CLIP` builds the text model and the tokenizer from a target's `clip` and `tokenizer` classes and puts the
model behind a ModelPatcher (low-VRAM partial loading; the T5 leaves the compute device when the UNet needs the room).
On a CPU-only setup there is no other device to leave for: there the T5 is not a submodule ComfyUI manages but is held
in RAM (common/held.py) until sampling or a MoVQ pass needs the memory, and loaded again by the next encode of a new
prompt after that; while it fits beside them, a new prompt is encoded without reading the T5 again.
The T5 is the core's, built with `comfy.ops` so its weights can be stored in fp8 and cast layer by layer; it computes
in fp32, as ComfyUI's own T5 does (Flan-UL2 overflows fp16). The prompt is read as written: diffusers gives
"(word:1.2)" no special meaning, so neither does this tokenizer.

Encoding is the core's, as diffusers' Kandinsky3Pipeline.encode_prompt does it (diffusers/src/diffusers/pipelines/
kandinsky3/pipeline_kandinsky3.py): 128 tokens, padded rows zeroed, cut to the prompt's tokens + 1.
The conditioning holds those states, and its dict the attention mask and the T5's width (the Kandinsky 3 marker).
"""
import os

import comfy.model_management as mm
import comfy.ops
import comfy.sd
import torch

from ...kandinsky_core import images, weights
from ...kandinsky_core.errors import KandinskyError
from ...kandinsky_core.kandinsky3 import t5 as T5
from ...kandinsky_core.kandinsky3.pipeline import MAX_TOKENS
from ...kandinsky_core.kandinsky3.tokenizer import load_tokenizer, tokenizer_of_file
from ..common import held
from .model import MARKER, MASK, WEIGHT_DTYPES, check_weight_dtype

KEY = "kandinsky3"  # the token dict's key, as ComfyUI's tokenizers name theirs (e.g. "t5xxl")


class Kandinsky3Tokenizer:
    """ComfyUI's tokenizer interface over the core T5 tokenizer: one row of (id, weight) pairs, end token included."""

    def __init__(self, tokenizer, embedding_directory=None, tokenizer_data={}):
        self.tokenizer = tokenizer

    def tokenize_with_weights(self, text, return_word_ids=False, **kwargs):
        """{"kandinsky3": [[(id, 1.0), ...]]}: the prompt's tokens cut to 127, then the end token (no padding)."""
        ids = self.tokenizer.encode(text)[:MAX_TOKENS - 1] + [self.tokenizer.eos_id]
        return {KEY: [[(i, 1.0, 0) if return_word_ids else (i, 1.0) for i in ids]]}

    def untokenize(self, token_weight_pair):
        """Pairs of ((id, weight), piece), as ComfyUI's tokenizers give."""
        return [(pair, self.tokenizer.sp.id_to_piece(pair[0])) for pair in token_weight_pair]

    def state_dict(self):
        """Nothing to save: the tokenizer is the folder's spiece.model (Kandinsky Save Model stores it in its files)."""
        return {}


class Kandinsky3TextModel(torch.nn.Module):
    """The `cond_stage_model` of the CLIP: the core T5 and ComfyUI's encode interface."""

    def __init__(self, path=None, device="cpu", dtype=None, model_options={}, **kwargs):
        super().__init__()
        ops = model_options.get("custom_operations") or comfy.ops.manual_cast
        self.load_t5 = lambda: T5.load_t5(path, dtype=dtype, device=device, operations=ops)
        self.held = []  # the T5 on a CPU-only setup: a list, so that it is no submodule for ComfyUI to move or count
        if model_options.get("kandinsky3_hold", mm.text_encoder_device().type == "cpu"):
            self.hold()
        else:
            self.transformer = self.load_t5()
        self.dtypes = {dtype or self.t5().shared.weight.dtype, torch.float32}
        self.execution_device = None  # set by the loader to the patcher's load device

    def t5(self):
        """The T5: the managed submodule, or the held one (loaded again if sampling freed it)."""
        return self.transformer if "transformer" in self._modules else self.hold()

    def hold(self):
        """Load the T5 into RAM unless it is there, until sampling or decoding wants the memory."""
        if not self.held:
            self.held.append(self.load_t5())
            held.hold(self)
        return self.held[0]

    def release(self):
        """Free the held T5 (sampling or decoding needs the RAM)."""
        self.held.clear()
        held.forget(self)

    def reset_clip_options(self):
        """No CLIP options (layer choice, projection) apply to a T5."""

    def set_clip_options(self, options):
        """No CLIP options (layer choice, projection) apply to a T5."""

    def encode_token_weights(self, token_weight_pairs):
        """(states (1, L, d) in fp32 on the intermediate device, no pooled output, {mask, marker})."""
        rows = token_weight_pairs[KEY] if isinstance(token_weight_pairs, dict) else token_weight_pairs
        if len(rows) != 1 or not 0 < len(rows[0]) <= MAX_TOKENS:
            raise KandinskyError(f"Kandinsky 3 encodes one row of 1 to {MAX_TOKENS} tokens; got {len(rows)} rows. "
                                 "Use CLIP Text Encode with the Kandinsky 3 CLIP.")
        device = self.execution_device or mm.text_encoder_device()
        tokens = [pair[0] for pair in rows[0]]
        ids = torch.zeros((1, MAX_TOKENS), dtype=torch.long)
        mask = torch.zeros((1, MAX_TOKENS), dtype=torch.long)
        ids[0, :len(tokens)], mask[0, :len(tokens)] = torch.tensor(tokens), 1
        with torch.no_grad():
            hidden = self.t5()(ids.to(device), mask.to(device), dtype=torch.float32)
        hidden = hidden.masked_fill(mask.to(device)[..., None] == 0, 0)[:, :len(tokens) + 1]
        hidden = images.check_finite(hidden, "The Kandinsky 3 text encoder's output")
        out = mm.intermediate_device()
        return (hidden.to(out, torch.float32), None,
                {MASK: mask[:, :len(tokens) + 1].to(out, torch.float32), MARKER: hidden.shape[-1]})


def text_encoder_folder(folder):
    """(text_encoder/ path, tokenizer/ path) of a kandinsky-3 folder, or (folder, folder) for Kandinsky 3.1's
    flan_ul2_encoder/ (the T5 and its tokenizer in one folder) and for a file Kandinsky Save Model wrote (the T5 and
    its tokenizer in one file); a KandinskyError names what is missing."""
    if os.path.isfile(folder):
        return [folder, folder]
    if os.path.isfile(os.path.join(folder, "spiece.model")) and os.path.isfile(os.path.join(folder, "config.json")):
        return [folder, folder]
    parts = [os.path.join(folder, "text_encoder"), os.path.join(folder, "tokenizer")]
    for part in parts:
        if not os.path.isdir(part):
            raise KandinskyError(f"{folder} has no {os.path.basename(part)}/ folder; copy it from "
                                 "kandinsky-community/kandinsky-3 (the T5 Loader needs text_encoder/ and tokenizer/).")
    return parts


def load_clip(folder, weight_dtype="default", hold=None):
    """The T5 and tokenizer of a kandinsky-3 folder as a ComfyUI CLIP, weights stored in `weight_dtype`; `hold`: keep
    the T5 in RAM only until sampling (default: when ComfyUI runs the text encoder on the CPU)."""
    check_weight_dtype(weight_dtype)
    encoder, tokenizer_folder = text_encoder_folder(folder)
    config = T5.read_t5_config(encoder)
    if os.path.isfile(tokenizer_folder):
        tokenizer = tokenizer_of_file(tokenizer_folder, weights.read_metadata(tokenizer_folder))
    else:
        tokenizer = load_tokenizer(tokenizer_folder)

    class Target:
        params = {"path": encoder}
        clip = Kandinsky3TextModel

        @staticmethod
        def tokenizer(**kwargs):
            return Kandinsky3Tokenizer(tokenizer, **kwargs)

    dtype = WEIGHT_DTYPES[weight_dtype]
    options = ({} if dtype is None else {"dtype": dtype}) | ({} if hold is None else {"kandinsky3_hold": hold})
    params = sum(p.numel() for p in T5.T5Encoder(config, device="meta").parameters())
    clip = comfy.sd.CLIP(Target, parameters=params, model_options=options)
    clip.cond_stage_model.execution_device = clip.patcher.load_device
    return clip
