"""Prior transformer, MultilingualCLIP and prompt encoding against diffusers / transformers; tiny offline tokenizers."""
import shutil

import pytest
import torch
from diffusers import PriorTransformer as DiffusersPrior
from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig
from diffusers.pipelines.kandinsky.text_encoder import MultilingualCLIP as DiffusersMCLIP
from transformers import (AutoTokenizer, CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer,
                          XLMRobertaTokenizerFast)

from kandinsky_core import attention
from kandinsky_core.errors import KandinskyError
from kandinsky_core.kandinsky2.prior import PRIOR_21, PRIOR_22, PRIOR_TINY, PriorConfig, PriorTransformer
from kandinsky_core.kandinsky2.text_encoder import MultilingualCLIP, encode_clip_prompt, encode_text
from kandinsky_core.kandinsky2.tiny_tokenizers import (WORDS, tiny_clip_text_config, tiny_mclip_config, write_clip_tokenizer,
                                            write_xlmr_tokenizer)

TOL = 1e-5
PROMPTS = ["a photo of a horse", "A beautiful oil painting of a red house at sunset, high quality!", ""]

# kandinsky-community/kandinsky-2-1/text_encoder/config.json
MCLIP_21 = {
    "architectures": ["MultilingualCLIP"], "attention_probs_dropout_prob": 0.1, "bos_token_id": 0, "eos_token_id": 2,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 1024, "initializer_range": 0.02,
    "intermediate_size": 4096, "layer_norm_eps": 1e-05, "max_position_embeddings": 514, "model_type": "xlm-roberta",
    "num_attention_heads": 16, "num_hidden_layers": 24, "output_past": True, "pad_token_id": 1,
    "position_embedding_type": "absolute", "type_vocab_size": 1, "use_cache": True, "vocab_size": 250002,
    "numDims": 768, "transformerDimensions": 1024,
}


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def clip_tokenizer_dir(tmp_path_factory):
    return write_clip_tokenizer(str(tmp_path_factory.mktemp("clip_tokenizer")))


@pytest.fixture(scope="module")
def xlmr_tokenizer_dir(tmp_path_factory):
    return write_xlmr_tokenizer(str(tmp_path_factory.mktemp("xlmr_tokenizer")))


# --- PriorTransformer -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_priors():
    torch.manual_seed(0)
    theirs = DiffusersPrior(num_attention_heads=2, attention_head_dim=12, embedding_dim=32, num_layers=1).eval()
    with torch.no_grad():  # diffusers zero-initialises these; random values make them count in the comparison
        for p in (theirs.positional_embedding, theirs.prd_embedding, theirs.clip_mean, theirs.clip_std):
            p.normal_()
    ours = PriorTransformer(PRIOR_TINY)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def prior_inputs(batch=3, dim=32):
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(batch, 77, dtype=torch.bool)
    for i, length in enumerate((5, 77, 1)[:batch]):
        mask[i, :length] = True
    return (torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g),
            torch.randn(batch, 77, dim, generator=g), mask)


@pytest.mark.parametrize("timestep", [torch.tensor([999, 500, 0]), torch.tensor(42), 7, torch.tensor([3.5])])
def test_prior_matches_diffusers(tiny_priors, timestep):
    theirs, ours = tiny_priors
    x, text_embeds, hidden, mask = prior_inputs()
    with torch.no_grad():
        expected = theirs(x, timestep=timestep, proj_embedding=text_embeds, encoder_hidden_states=hidden,
                          attention_mask=mask).predicted_image_embedding
        got = ours(x, timestep, text_embeds, hidden, mask)
    assert got.shape == (3, 32)
    assert (got - expected).abs().max().item() < TOL


def test_prior_text_mask_matters(tiny_priors):
    _, ours = tiny_priors
    x, text_embeds, hidden, mask = prior_inputs()
    with torch.no_grad():
        masked = ours(x, 500, text_embeds, hidden, mask)
        unmasked = ours(x, 500, text_embeds, hidden, torch.ones_like(mask))
    assert (masked[0] - unmasked[0]).abs().max() > 1e-3
    assert torch.allclose(masked[1], unmasked[1])  # row 1 has no padding


def test_prior_float64_weights_match(tiny_priors):
    theirs, _ = tiny_priors
    ours = PriorTransformer(PRIOR_TINY, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x, text_embeds, hidden, mask = prior_inputs()
    with torch.no_grad():
        expected = theirs(x, timestep=10, proj_embedding=text_embeds, encoder_hidden_states=hidden,
                          attention_mask=mask).predicted_image_embedding
        got = ours(x.double(), 10, text_embeds.double(), hidden.double(), mask)
    assert got.dtype == torch.float64
    assert (got - expected.double()).abs().max().item() < TOL


def test_prior_post_process_latents(tiny_priors):
    theirs, ours = tiny_priors
    x = torch.randn(2, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(ours.post_process_latents(x), theirs.post_process_latents(x))


def test_prior_uses_shared_attention(tiny_priors):
    _, ours = tiny_priors
    calls = []

    def counting(q, k, v, heads, mask=None):
        calls.append(mask.shape)
        return attention.sdpa(q, k, v, heads, mask)

    previous = attention.set_attention(counting)
    try:
        with torch.no_grad():
            ours(*prior_inputs()[:1], 5, *prior_inputs()[1:])
    finally:
        attention.set_attention(previous)
    assert calls == [torch.Size([3, 1, 81, 81])]


@pytest.mark.parametrize("config, embedding_dim, params", [(PRIOR_21, 768, 1_022_030_080), (PRIOR_22, 1280, 1_026_225_920)])
def test_prior_full_size_on_meta(config, embedding_dim, params):
    ours = PriorTransformer(config, device="meta")
    with torch.device("meta"):
        theirs = DiffusersPrior(embedding_dim=embedding_dim)
    assert count(ours) == params == count(theirs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_prior_config_from_published_dicts():
    short_21 = {"_class_name": "PriorTransformer", "_diffusers_version": "0.17.0.dev0", "additional_embeddings": 4,
                "attention_head_dim": 64, "dropout": 0.0, "embedding_dim": 768, "num_attention_heads": 32,
                "num_embeddings": 77, "num_layers": 20}
    expanded_22 = {"added_emb_type": "prd", "additional_embeddings": 4, "attention_head_dim": 64,
                   "clip_embed_dim": None, "dropout": 0.0, "embedding_dim": 1280, "embedding_proj_dim": None,
                   "embedding_proj_norm_type": None, "encoder_hid_proj_type": "linear", "norm_in_type": None,
                   "num_attention_heads": 32, "num_embeddings": 77, "num_layers": 20, "time_embed_act_fn": "silu",
                   "time_embed_dim": None}
    assert PriorConfig.from_dict(short_21) == PRIOR_21
    assert PriorConfig.from_dict(expanded_22) == PRIOR_22


@pytest.mark.parametrize("key, value", [
    ("added_emb_type", None), ("embedding_proj_norm_type", "layer"), ("norm_in_type", "layer"),
    ("encoder_hid_proj_type", None), ("time_embed_act_fn", "gelu"), ("additional_embeddings", 3),
    ("clip_embed_dim", 512), ("embedding_proj_dim", 64), ("time_embed_dim", 100), ("attention_head_dim", 3),
])
def test_prior_config_rejects_unused_options(key, value):
    with pytest.raises(KandinskyError, match="fix|config"):
        PriorConfig.from_dict({"num_attention_heads": 1, "embedding_dim": 32, key: value})


def test_prior_rejects_bad_input_shapes(tiny_priors):
    _, ours = tiny_priors
    x, text_embeds, hidden, mask = prior_inputs()
    with pytest.raises(KandinskyError, match="encoder_hidden_states"):
        ours(x, 1, text_embeds, hidden[:, :76], mask)
    with pytest.raises(KandinskyError, match="attention_mask"):
        ours(x, 1, text_embeds, hidden, mask[:, :10])
    with pytest.raises(KandinskyError, match="hidden_states has shape"):
        ours(torch.zeros(3, 16), 1, text_embeds, hidden, mask)


# --- MultilingualCLIP -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_mclips():
    torch.manual_seed(0)
    theirs = DiffusersMCLIP(MCLIPConfig(numDims=32, transformerDimensions=32, hidden_size=32, intermediate_size=37,
                                        num_attention_heads=4, num_hidden_layers=5, vocab_size=1005)).eval()
    ours = MultilingualCLIP(tiny_mclip_config())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def test_mclip_matches_diffusers(tiny_mclips, xlmr_tokenizer_dir):
    theirs, ours = tiny_mclips
    tokens = XLMRobertaTokenizerFast.from_pretrained(xlmr_tokenizer_dir)(
        PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert 1 < tokens.attention_mask.sum(1).min() < tokens.attention_mask.sum(1).max() < 77
    with torch.no_grad():
        expected_pooled, expected_hidden = theirs(tokens.input_ids, tokens.attention_mask)
        pooled, hidden = ours(tokens.input_ids, tokens.attention_mask)
    assert pooled.shape == (3, 32) and hidden.shape == (3, 77, 32)
    assert (pooled - expected_pooled).abs().max().item() < TOL
    assert (hidden - expected_hidden).abs().max().item() < TOL


def test_encode_text_matches_pipeline_call(tiny_mclips, xlmr_tokenizer_dir):
    theirs, ours = tiny_mclips
    tokenizer = AutoTokenizer.from_pretrained(xlmr_tokenizer_dir)
    tokens = tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=77, return_attention_mask=True,
                       add_special_tokens=True, return_tensors="pt")
    with torch.no_grad():
        expected_embeds, expected_hidden = theirs(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        embeds, hidden, mask = encode_text(tokenizer, ours, PROMPTS, "cpu")
    assert torch.equal(mask, tokens.attention_mask)
    assert (embeds - expected_embeds).abs().max().item() < TOL
    assert (hidden - expected_hidden).abs().max().item() < TOL


def test_mclip_full_size_on_meta():
    ours = MultilingualCLIP(MCLIP_21, dtype=torch.float16, device="meta")
    with torch.device("meta"):
        theirs = DiffusersMCLIP(MCLIPConfig(**{k: v for k, v in MCLIP_21.items() if k != "model_type"}))
    assert count(ours) == 560_677_632 == count(theirs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert {p.dtype for p in ours.parameters()} == {torch.float16}
    assert {p.device.type for p in ours.parameters()} == {"meta"}


@pytest.mark.parametrize("change, message", [
    ({"numDims": None}, "lacks"), ({"transformerDimensions": 64}, "must be equal")])
def test_mclip_rejects_bad_config(change, message):
    config = {**tiny_mclip_config(), **change}
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(KandinskyError, match=message):
        MultilingualCLIP(config, device="meta")


# --- prior prompt encoding ----------------------------------------------------------------------------------------

def test_encode_clip_prompt_matches_pipeline_call(clip_tokenizer_dir):
    torch.manual_seed(0)
    text_model = CLIPTextModelWithProjection(CLIPTextConfig(**tiny_clip_text_config())).eval()
    tokenizer = CLIPTokenizer.from_pretrained(clip_tokenizer_dir)
    tokens = tokenizer(PROMPTS, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    with torch.no_grad():
        expected = text_model(tokens.input_ids)
        embeds, hidden, mask = encode_clip_prompt(tokenizer, text_model, PROMPTS, "cpu")
    assert mask.dtype == torch.bool and torch.equal(mask, tokens.attention_mask.bool())
    assert torch.equal(embeds, expected.text_embeds) and torch.equal(hidden, expected.last_hidden_state)
    # HF CLIP pools the highest id (eos_token_id == 2): that must be the first end-of-text token.
    first_eos = (tokens.input_ids == tokenizer.eos_token_id).int().argmax(-1)
    assert torch.equal(tokens.input_ids.argmax(-1), first_eos)
    assert torch.equal(first_eos, mask.sum(-1) - 1)


# --- tiny tokenizers ----------------------------------------------------------------------------------------------

def test_clip_tokenizer_offline_round_trip(clip_tokenizer_dir, tmp_path):
    tokenizer = CLIPTokenizer.from_pretrained(clip_tokenizer_dir)
    assert type(AutoTokenizer.from_pretrained(clip_tokenizer_dir)) is type(tokenizer)
    assert len(tokenizer) <= tiny_clip_text_config()["vocab_size"]
    assert tokenizer.eos_token_id == len(tokenizer) - 1 == tokenizer.pad_token_id
    ids = tokenizer(PROMPTS + ["Ünïcödé ✨ 7"], padding="max_length", max_length=77, truncation=True).input_ids
    assert all(len(row) == 77 and row[0] == tokenizer.bos_token_id for row in ids)
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == PROMPTS[0]
    assert tokenizer.decode(ids[3], skip_special_tokens=True) == "ünïcödé ✨ 7"  # byte-level: nothing is unknown
    assert all(len(tokenizer.tokenize(word)) == 1 for word in WORDS)
    # The slow-tokenizer files alone (as in some published folders) give the same ids.
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(f"{clip_tokenizer_dir}/{name}", tmp_path / name)
    assert AutoTokenizer.from_pretrained(str(tmp_path))(PROMPTS).input_ids == tokenizer(PROMPTS).input_ids


def test_xlmr_tokenizer_offline_round_trip(xlmr_tokenizer_dir):
    tokenizer = XLMRobertaTokenizerFast.from_pretrained(xlmr_tokenizer_dir)
    assert type(AutoTokenizer.from_pretrained(xlmr_tokenizer_dir)) is type(tokenizer)
    assert len(tokenizer) <= tiny_mclip_config()["vocab_size"]
    special = ("<s>", "<pad>", "</s>", "<unk>")
    assert [tokenizer.convert_tokens_to_ids(t) for t in special] == [0, 1, 2, 3]
    ids = tokenizer(PROMPTS + ["café ✨"], padding="max_length", max_length=77, truncation=True).input_ids
    assert all(len(row) == 77 and row[0] == 0 for row in ids)
    assert [tokenizer.decode(row, skip_special_tokens=True) for row in ids[:3]] == PROMPTS
    assert tokenizer.unk_token_id in ids[3]
    assert tokenizer.convert_ids_to_tokens(ids[0][:7]) == ["<s>", "▁a", "▁photo", "▁of", "▁a", "▁horse", "</s>"]
