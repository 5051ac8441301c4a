"""Tiny offline tokenizers and tiny encoder configs, for tests and tiny test checkpoints (nothing is downloaded).

The vocabularies fit the tiny text encoders of diffusers' Kandinsky fast tests
(diffusers/tests/pipelines/kandinsky/test_kandinsky.py and test_kandinsky_prior.py): CLIP ids < 1000 with the
end-of-text token last, as in real CLIP (HF CLIP pools the highest id when `eos_token_id == 2`); XLM-R ids < 1005 with
<s>=0, <pad>=1, </s>=2, <unk>=3 as in real XLM-R.
"""
import json
import math
import os

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer, XLMRobertaTokenizer

# Whole-word tokens; any other text still tokenizes (CLIP: per byte, XLM-R: per character or <unk>).
WORDS = (
    "a an the of in on with and at by to for is photo picture painting portrait drawing image art style "
    "cat dog horse bird fish tree flower house city car boat mountain river sea sky sun moon forest "
    "red blue green yellow black white orange purple beautiful cute old young big small high quality "
    "detailed realistic oil watercolor sunset night man woman girl boy astronaut space"
).split()

END_OF_WORD = "</w>"


def _apply_merges(symbols, ranks):
    """Byte-pair encoding of one word: repeatedly join the adjacent pair with the lowest merge rank."""
    while len(symbols) > 1:
        rank, i = min((ranks.get(pair, math.inf), i) for i, pair in enumerate(zip(symbols, symbols[1:])))
        if rank == math.inf:
            break
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def _clip_vocab_and_merges():
    """Byte-level BPE vocab (every byte, alone and word-final) plus merges that make each of `WORDS` one token."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [c + END_OF_WORD for c in alphabet]
    ranks = {}
    for word in WORDS:
        # New merges rank after all earlier ones, so they finish this word without touching words already whole.
        pieces = _apply_merges(list(word[:-1]) + [word[-1] + END_OF_WORD], ranks)
        merged = pieces[0]
        for piece in pieces[1:]:
            ranks[(merged, piece)] = len(ranks)
            merged += piece
            if merged not in tokens:
                tokens.append(merged)
    tokens += ["<|startoftext|>", "<|endoftext|>"]  # end-of-text must have the highest id
    return {token: i for i, token in enumerate(tokens)}, list(ranks)


def write_clip_tokenizer(folder):
    """Write a tiny CLIP tokenizer (vocab.json, merges.txt, tokenizer.json, tokenizer_config.json) into `folder`."""
    vocab, merges = _clip_vocab_and_merges()
    CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77).save_pretrained(folder)
    # The slow-tokenizer files real CLIP checkpoints also ship.
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return folder


def write_xlmr_tokenizer(folder):
    """Write a tiny XLM-RoBERTa (Unigram) tokenizer (tokenizer.json, tokenizer_config.json) into `folder`."""
    specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    chars = [(c, -10.0) for c in map(chr, range(ord("!"), ord("~") + 1))]
    words = [("\u2581" + w, -3.0) for w in WORDS]  # "▁" marks a word start, as in SentencePiece
    vocab = specials + [("\u2581", -2.0)] + chars + words + [("<mask>", 0.0)]
    XLMRobertaTokenizer(vocab=vocab, model_max_length=512).save_pretrained(folder)
    return folder


def tiny_clip_text_config():
    """`CLIPTextConfig` kwargs of diffusers' tiny prior text encoder (`CLIPTextModelWithProjection`)."""
    return dict(bos_token_id=0, eos_token_id=2, hidden_size=32, projection_dim=32, intermediate_size=37,
                layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=5, pad_token_id=1, vocab_size=1000)


def tiny_clip_vision_config():
    """`CLIPVisionConfig` kwargs of diffusers' tiny prior image encoder (`CLIPVisionModelWithProjection`)."""
    return dict(hidden_size=32, image_size=224, projection_dim=32, intermediate_size=37, num_attention_heads=4,
                num_channels=3, num_hidden_layers=5, patch_size=14)


def tiny_mclip_config():
    """Tiny MultilingualCLIP `text_encoder/config.json`: diffusers' test MCLIPConfig, XLM-R defaults spelled out."""
    return {
        "architectures": ["MultilingualCLIP"], "model_type": "xlm-roberta",
        "numDims": 32, "transformerDimensions": 32,
        "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 5,
        "vocab_size": 1005, "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "hidden_act": "gelu", "position_embedding_type": "absolute",
        "bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2,
    }
