"""A tiny random Flan-UL2-style text encoder and T5 tokenizer in exactly kandinsky-3's published layout.

`text_encoder/`: `config.json` with the published fields, fp16-variant shards `model.fp16-0000N-of-0000M.safetensors`
listed by `model.safetensors.index.fp16.json`, every `wo` in fp32 and everything else in fp16 (as on the hub).
`tokenizer/`: a SentencePiece `spiece.model` trained here on a few sentences (pad 0, </s> 1, <unk> 2, no BOS, NFKC
normalisation like T5's), with T5's 100 sentinel tokens in `special_tokens_map.json`, `tokenizer_config.json` and
`added_tokens.json`. Nothing is downloaded.
"""
import io
import json
import os

import torch
from safetensors.torch import save_file

from .t5 import T5Config, T5Encoder

# The tiny T5 of diffusers' Kandinsky 3 fast tests (hf-internal-testing/tiny-random-t5, loaded by
# diffusers/tests/pipelines/kandinsky3/test_kandinsky3.py), with Flan-UL2's gated-SiLU feed-forward.
T5_TINY = T5Config(vocab_size=1103, d_model=32, d_kv=8, d_ff=37, num_layers=5, num_heads=4,
                   relative_attention_num_buckets=8)
SHARDS = 2
EXTRA_IDS = 100

CORPUS = (
    "A red cat sits on a blue mat in the sun.",
    "Kandinsky painted abstract shapes in bright colours and bold lines.",
    "The quick brown fox jumps over the lazy dog near the river.",
    "A photograph of an astronaut riding a horse on the moon at night.",
    "Oil painting of a lighthouse by the sea, highly detailed, dramatic light.",
    "Portrait of an old man with a beard, watercolor, soft pastel tones.",
    "A futuristic city with flying cars and tall glass towers at sunset.",
    "Café au lait, naïve art, résumé: Ünïcödé and ½ fractions, 12345 numbers.",
)


def random_state_dict(config, seed=0):
    """Random fp32 weights for every encoder tensor, scaled so that activations stay O(1) through the blocks."""
    shapes = T5Encoder(config, device="meta").state_dict()
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, meta in shapes.items():
        t = torch.randn(meta.shape, generator=g)
        if key.endswith("layer_norm.weight"):
            t = 1 + 0.2 * t  # near 1, but far enough that a norm applied wrongly shows
        elif key.endswith((".wo.weight", ".o.weight")):
            t = t * meta.shape[1] ** -0.5
        elif key.endswith((".q.weight", ".k.weight", ".v.weight", "wi_0.weight", "wi_1.weight")):
            t = t * config.d_model ** -0.5
        sd[key] = t
    return sd


def _published_dtype(key):
    return torch.float32 if key.endswith("DenseReluDense.wo.weight") else torch.float16


def write_text_encoder(folder, seed=0, config=T5_TINY):
    """Write a tiny `text_encoder/` folder (config.json, fp16 shards with fp32 wo, fp16 index) into `folder`."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({**config.to_dict(), "_name_or_path": "tiny-kandinsky-3/text_encoder"}, f, indent=2, sort_keys=True)
    sd = {k: v.to(_published_dtype(k)).contiguous() for k, v in random_state_dict(config, seed).items()}
    keys = list(sd)
    per_shard = -(-len(keys) // SHARDS)
    weight_map, total = {}, 0
    for i in range(SHARDS):
        name = f"model.fp16-{i + 1:05d}-of-{SHARDS:05d}.safetensors"
        part = {k: sd[k] for k in keys[i * per_shard:(i + 1) * per_shard]}
        save_file(part, os.path.join(folder, name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
        total += sum(t.numel() * t.element_size() for t in part.values())
    with open(os.path.join(folder, "model.safetensors.index.fp16.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return folder


def write_text_encoder_file(path, seed=0, config=T5_TINY, with_config=True):
    """Write the same tiny encoder as one safetensors file (config in its metadata unless `with_config` is False)."""
    sd = {k: v.to(_published_dtype(k)).contiguous() for k, v in random_state_dict(config, seed).items()}
    metadata = {"format": "pt", **({"config": json.dumps(config.to_dict())} if with_config else {})}
    save_file(sd, path, metadata=metadata)
    return path


def _train_spiece(vocab_size):
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        normalization_rule_name="nmt_nfkc", character_coverage=1.0, hard_vocab_limit=False, num_threads=1,
        minloglevel=2)
    return model.getvalue()


def _special(content):
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def write_tokenizer(folder, vocab_size=200):
    """Write a tiny T5 `tokenizer/` folder (spiece.model and the json files transformers saves) into `folder`."""
    import sentencepiece

    os.makedirs(folder, exist_ok=True)
    proto = _train_spiece(vocab_size)
    with open(os.path.join(folder, "spiece.model"), "wb") as f:
        f.write(proto)
    size = sentencepiece.SentencePieceProcessor(model_proto=proto).get_piece_size()
    extra = {f"<extra_id_{i}>": size + EXTRA_IDS - 1 - i for i in range(EXTRA_IDS)}
    sentinels, added = list(extra), {"<pad>": 0, "</s>": 1, "<unk>": 2, **extra}
    files = {
        "special_tokens_map.json": {"additional_special_tokens": sentinels, "eos_token": "</s>", "pad_token": "<pad>",
                                    "unk_token": "<unk>"},
        "tokenizer_config.json": {
            "added_tokens_decoder": {str(i): _special(t) for t, i in added.items()},
            "additional_special_tokens": sentinels, "clean_up_tokenization_spaces": True, "eos_token": "</s>",
            "extra_ids": EXTRA_IDS, "legacy": True, "model_max_length": 512, "pad_token": "<pad>",
            "sp_model_kwargs": {}, "tokenizer_class": "T5Tokenizer", "unk_token": "<unk>"},
        "added_tokens.json": extra,
    }
    for name, content in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2, ensure_ascii=False)
    return folder
