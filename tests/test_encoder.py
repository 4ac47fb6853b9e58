"""course_lib.models.encoder piece by piece against the same ``transformers`` modules.

Each of our modules gets the weights of a randomly initialised ``transformers`` module by
``load_state_dict(hf_module.state_dict())``: strict, so it also proves that our parameter
names are the Hugging Face names. Small configs (hidden 32, 4 heads) keep it fast; the
checkpoint-scale parity is in test_encoder_parity.py.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from course_lib.layers import padding_mask
from course_lib.models import config_from_dict, model_class
from course_lib.models import encoder as E
from helpers import randomize_

SMALL = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=40, type_vocab_size=2, layer_norm_eps=1e-12)


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("transformers")


def hf_config(tf, model_type="bert", **changes):
    cls = {"bert": tf.BertConfig, "roberta": tf.RobertaConfig}[model_type]
    return cls(**{**SMALL, **changes}, attn_implementation="eager")  # eager: it returns attention weights


def our_config(hf_cfg) -> E.EncoderConfig:
    return E.EncoderConfig.from_dict(hf_cfg.to_dict())  # transformers' own config.json content


def twins(ours_cls, hf_cls, hf_cfg, seed=0):
    """(ours, theirs): the same weights, both in eval mode."""
    theirs = randomize_(hf_cls(hf_cfg), seed, scale=0.2)
    ours = ours_cls(our_config(hf_cfg))
    ours.load_state_dict(theirs.state_dict())  # strict: the names must be identical
    return ours.eval(), theirs


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def masks(lengths=(7, 4, 1), T=7):
    """attention_mask (B, T) right-padded, and transformers' additive form (B, 1, 1, T)."""
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()
    additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    return mask, additive


# --------------------------------------------------------------------------------------
# Position ids and embeddings

@pytest.mark.parametrize("side", ["right", "left"])
def test_roberta_position_ids_match_transformers(tf, side):
    create = tf.models.roberta.modeling_roberta.RobertaEmbeddings.create_position_ids_from_input_ids
    pad = 1
    ids = torch.randint(3, 50, (3, 8), generator=torch.Generator().manual_seed(0))
    for row, n_pad in enumerate((0, 3, 7)):  # unpadded, some padding, a single token
        if n_pad:
            ids[row, (slice(8 - n_pad, 8) if side == "right" else slice(0, n_pad))] = pad
    ours = E.roberta_position_ids(ids, pad)
    assert torch.equal(ours, create(ids, pad))
    assert ours[0].tolist() == list(range(2, 10))  # unpadded: pad + 1, pad + 2, ...
    real = ids[1] != pad
    assert ours[1][real].tolist() == list(range(2, 7)) and set(ours[1][~real].tolist()) == {pad}


def test_bert_position_ids_ignore_padding():
    ids = torch.tensor([[101, 7, 8, 102], [101, 9, 102, 0]])
    assert E.bert_position_ids(ids).tolist() == [[0, 1, 2, 3]]


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_embeddings_match_transformers(tf, model_type):
    hf_cfg = hf_config(tf, model_type)
    ours_cls = E.RobertaEmbeddings if model_type == "roberta" else E.BertEmbeddings
    hf_module = getattr(getattr(tf.models, model_type), f"modeling_{model_type}")
    hf_cls = getattr(hf_module, f"{model_type.capitalize()}Embeddings")
    ours, theirs = twins(ours_cls, hf_cls, hf_cfg)
    pad = hf_cfg.pad_token_id
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [pad, pad, 11, 12, 13, 14], [15, 16, 17, pad, pad, pad]])
    token_types = torch.tensor([[0, 0, 0, 1, 1, 1], [0] * 6, [0, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        close(ours(ids), theirs(ids))
        close(ours(ids, token_types), theirs(ids, token_type_ids=token_types))
        positions = torch.tensor([[3, 4, 5, 6, 7, 8]])
        close(ours(ids, position_ids=positions), theirs(ids, position_ids=positions))


# --------------------------------------------------------------------------------------
# One layer, piece by piece

def test_self_attention_with_padding_mask(tf):
    m = tf.models.bert.modeling_bert
    ours, theirs = twins(E.SelfAttention, m.BertSelfAttention, hf_config(tf))
    x = torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(1))
    mask, additive = masks()
    with torch.no_grad():
        y, weights = ours(x, padding_mask(mask), return_weights=True)
        y_ref, weights_ref = theirs(x, attention_mask=additive)
        close(y, y_ref)
        close(weights, weights_ref)
        assert weights.shape == (3, 4, 7, 7)
        assert weights[1, :, :, 4:].abs().max() == 0  # nobody attends to padding
        unmasked = ours(x)
    assert (unmasked[1] - y[1]).abs().max() > 1e-3  # the mask changes the result (a test that can fail)
    close(unmasked[0], y[0])  # ... and a row without padding does not care


def _hf(tf, name):
    return getattr(tf.models.bert.modeling_bert, name)


# (ours, transformers' class, how to call ours, how to call theirs); x, x2: (B, T, C); w: (B, T, 4C)
BLOCKS = {
    "SelfOutput": (E.SelfOutput, "BertSelfOutput", lambda m, x, x2, w, mask, add: m(x, x2),
                   lambda m, x, x2, w, mask, add: m(x, x2)),
    "Attention": (E.Attention, "BertAttention", lambda m, x, x2, w, mask, add: m(x, padding_mask(mask)),
                  lambda m, x, x2, w, mask, add: m(x, attention_mask=add)[0]),
    "Intermediate": (E.Intermediate, "BertIntermediate", lambda m, x, x2, w, mask, add: m(x),
                     lambda m, x, x2, w, mask, add: m(x)),
    "Output": (E.Output, "BertOutput", lambda m, x, x2, w, mask, add: m(w, x),
               lambda m, x, x2, w, mask, add: m(w, x)),
    "Layer": (E.Layer, "BertLayer", lambda m, x, x2, w, mask, add: m(x, padding_mask(mask)),
              lambda m, x, x2, w, mask, add: m(x, attention_mask=add)),
    "Encoder": (E.Encoder, "BertEncoder", lambda m, x, x2, w, mask, add: m(x, padding_mask(mask)),
                lambda m, x, x2, w, mask, add: m(x, attention_mask=add).last_hidden_state),
    "Pooler": (E.Pooler, "BertPooler", lambda m, x, x2, w, mask, add: m(x),
               lambda m, x, x2, w, mask, add: m(x)),
}


@pytest.mark.parametrize("block", list(BLOCKS))
def test_block_matches_transformers(tf, block):
    ours_cls, hf_name, call_ours, call_theirs = BLOCKS[block]
    ours, theirs = twins(ours_cls, _hf(tf, hf_name), hf_config(tf))
    g = torch.Generator().manual_seed(2)
    x, x2 = torch.randn(3, 7, 32, generator=g), torch.randn(3, 7, 32, generator=g)
    w = torch.randn(3, 7, 64, generator=g)
    mask, additive = masks()
    with torch.no_grad():
        out = call_ours(ours, x, x2, w, mask, additive)
        close(out, call_theirs(theirs, x, x2, w, mask, additive))
    assert out.shape == ((3, 32) if block == "Pooler" else (3, 7, 64) if block == "Intermediate" else (3, 7, 32))


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new", "gelu_pytorch_tanh", "relu"])
def test_intermediate_activation_follows_hidden_act(tf, hidden_act):
    ours, theirs = twins(E.Intermediate, _hf(tf, "BertIntermediate"), hf_config(tf, hidden_act=hidden_act))
    x = 3 * torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        close(ours(x), theirs(x))


def test_layer_dropout_only_in_training(tf):
    ours, _ = twins(E.Layer, _hf(tf, "BertLayer"), hf_config(tf))
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(4))
    close(ours(x), ours(x), atol=0)
    ours.train()
    assert not torch.allclose(ours(x), ours(x))


# --------------------------------------------------------------------------------------
# Masked-LM heads

@pytest.mark.parametrize("hidden_act", ["gelu", "relu"])
def test_bert_lm_head_matches_transformers(tf, hidden_act):
    hf_cfg = hf_config(tf, hidden_act=hidden_act)  # BERT's head transform does follow hidden_act
    theirs = randomize_(_hf(tf, "BertOnlyMLMHead")(hf_cfg), scale=0.2)
    with torch.no_grad():  # in BertForMaskedLM the decoder's bias *is* predictions.bias
        theirs.predictions.decoder.bias.copy_(theirs.predictions.bias)
    ours = E.BertLMHead(our_config(hf_cfg)).eval()
    result = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == ["predictions.decoder.bias"]
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = ours(x)
        close(logits, theirs(x))
    assert logits.shape == (2, 5, 100)


def test_roberta_lm_head_uses_gelu_whatever_hidden_act(tf):
    hf_cfg = hf_config(tf, "roberta", hidden_act="relu")  # transformers' RobertaLMHead ignores hidden_act too
    theirs = randomize_(tf.models.roberta.modeling_roberta.RobertaLMHead(hf_cfg), scale=0.2)
    with torch.no_grad():
        theirs.decoder.bias.copy_(theirs.bias)
    ours = E.RobertaLMHead(our_config(hf_cfg)).eval()
    result = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == ["decoder.bias"]
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        close(ours(x), theirs(x))


# --------------------------------------------------------------------------------------
# Whole models: names, tying, parameter counts, forward

@pytest.mark.parametrize("name", ["BertModel", "RobertaModel", "BertForMaskedLM", "RobertaForMaskedLM"])
def test_whole_model_matches_transformers(tf, name):
    model_type = "roberta" if name.startswith("Roberta") else "bert"
    hf_cfg = hf_config(tf, model_type)
    kwargs = {"add_pooling_layer": False} if name.endswith("Model") else {}
    theirs = randomize_(getattr(tf, name)(hf_cfg, **kwargs), scale=0.2)
    ours = getattr(E, name)(our_config(hf_cfg)).eval()
    hf_state = theirs.state_dict()
    alias = [k for k in hf_state if k.endswith("decoder.bias")]  # the second name of predictions.bias
    assert set(ours.state_dict()) == set(hf_state) - set(alias)
    ours.load_state_dict({k: v for k, v in hf_state.items() if k not in alias})
    assert ours.num_parameters() == theirs.num_parameters()
    if name.endswith("MaskedLM"):  # tied: one Parameter, loading did not untie it
        decoder = ours.get_submodule(next(iter(ours.tied_weights)).rsplit(".", 1)[0])
        assert decoder.weight is ours.get_parameter(next(iter(ours.tied_weights.values())))
    pad = hf_cfg.pad_token_id
    ids = torch.tensor([[0, 5, 6, 7, 8, 2], [0, 9, 10, 2, pad, pad]])
    mask = (ids != pad).long()
    with torch.no_grad():
        out = theirs(ids, attention_mask=mask)
        close(ours(ids, mask), out.logits if name.endswith("MaskedLM") else out.last_hidden_state, atol=1e-4)


def test_model_class_picks_architecture_and_task():
    bert, roberta = E.EncoderConfig(), E.EncoderConfig.from_dict({"model_type": "xlm-roberta"})
    assert model_class(bert) is E.BertModel and model_class(bert, "masked-lm") is E.BertForMaskedLM
    assert model_class(roberta) is E.RobertaModel and model_class(roberta, "masked-lm") is E.RobertaForMaskedLM
    with pytest.raises(ValueError, match="causal-lm.*does not exist for model_type 'bert'"):
        model_class(bert, "causal-lm")
    with pytest.raises(ValueError, match="task='mlm' is not one of"):
        model_class(bert, "mlm")


# --------------------------------------------------------------------------------------
# Config

@pytest.mark.parametrize("model_type", ["bert", "roberta", "xlm-roberta"])
def test_config_defaults_equal_transformers(tf, model_type):
    theirs = tf.AutoConfig.for_model(model_type)
    ours = E.EncoderConfig.from_dict({"model_type": model_type})
    fields = [f.name for f in dataclasses.fields(E.EncoderConfig) if f.name != "extra"]
    # transformers 5 dropped position_embedding_type (only "absolute" remains, our default)
    assert [f for f in fields if not hasattr(theirs, f)] == ["position_embedding_type"]
    differ = {f: (getattr(ours, f), getattr(theirs, f)) for f in fields if hasattr(theirs, f)
              and getattr(ours, f) != getattr(theirs, f)}
    assert not differ, f"(ours, transformers): {differ}"


def test_config_json_round_trip_keeps_unknown_keys(tmp_path):
    values = {"architectures": ["RobertaForMaskedLM"], "bos_token_id": 0, "eos_token_id": 2, "hidden_size": 64,
              "num_attention_heads": 4, "model_type": "roberta", "layer_norm_eps": 1e-5}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    config = E.EncoderConfig.from_json_file(path)
    assert (config.hidden_size, config.pad_token_id, config.vocab_size, config.head_dim) == (64, 1, 50265, 16)
    assert config.extra == {"architectures": ["RobertaForMaskedLM"], "bos_token_id": 0, "eos_token_id": 2}
    assert E.EncoderConfig.from_dict(config.to_dict()) == config
    assert {k: config.to_dict()[k] for k in values} == values


@pytest.mark.parametrize("change, message", [
    ({"hidden_act": "swishy"}, r"hidden_act: unknown activation 'swishy'; known names: gelu"),
    ({"hidden_size": 32, "num_attention_heads": 5}, r"hidden_size=32 is not divisible by num_attention_heads=5"),
    ({"num_attention_heads": 0}, r"hidden_size=768 is not divisible by num_attention_heads=0"),
    ({"position_embedding_type": "relative_key"}, r"position_embedding_type='relative_key' is not supported"),
])
def test_bad_config_is_a_clear_error(change, message):
    with pytest.raises(ValueError, match=message):
        E.EncoderConfig.from_dict({"model_type": "bert", **change})
    with pytest.raises(ValueError, match=r"^my/config\.json: " + message):  # load_model's path names the file
        config_from_dict({"model_type": "bert", **change}, where="my/config.json")


def test_unknown_model_type_is_a_clear_error():
    with pytest.raises(ValueError, match=r"model_type 'gpt_neox' is not an architecture .*supported: bert, roberta"):
        config_from_dict({"model_type": "gpt_neox"})
    with pytest.raises(ValueError, match="has no 'model_type'"):
        config_from_dict({"hidden_size": 768})


@pytest.mark.parametrize("model_type, fits", [("bert", 40), ("roberta", 38)])
def test_too_long_input_is_a_clear_error(model_type, fits):
    config = E.EncoderConfig.from_dict({**SMALL, "model_type": model_type})  # 40 position embeddings
    model = model_class(config)(config).eval()
    ids = torch.full((1, fits + 1), 7)
    assert model(ids[:, :fits]).shape == (1, fits, 32)
    with pytest.raises(ValueError, match=rf"the input has {fits + 1} tokens, more than the {fits} this model's 40 "
                                         rf"position embeddings allow: truncate it .*max_length={fits}"):
        model(ids)


# --------------------------------------------------------------------------------------
# Sentence embeddings

def test_mean_pooling_ignores_padding():
    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    pooled = E.mean_pooling(hidden, mask)
    close(pooled[0], hidden[0].mean(0), atol=1e-6)
    close(pooled[1], hidden[1, :2].mean(0), atol=1e-6)
    scrambled = hidden.clone()
    scrambled[1, 2:] = 1e3  # whatever sits at the padding
    close(E.mean_pooling(scrambled, mask), pooled, atol=0)


# --------------------------------------------------------------------------------------
# transformers' additive mask and attention weights (chapter 04's exercise references)

def _transformers_additive_mask(mask, dtype):
    """transformers' (B, 1, 1, T) additive mask; its helper is deprecated, so its formula when it is gone."""
    import warnings

    try:
        from transformers.modeling_attn_mask_utils import _prepare_4d_attention_mask
    except ImportError:  # the formula of BertModel.get_extended_attention_mask
        return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return _prepare_4d_attention_mask(mask, dtype, tgt_len=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_extended_attention_mask_matches_transformers(tf, dtype):
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    ours = E.extended_attention_mask(mask, dtype)
    assert ours.dtype == dtype and ours.shape == (3, 1, 1, 5)
    assert torch.equal(ours, _transformers_additive_mask(mask, dtype))
    assert ours[0, 0, 0].tolist() == [0.0, 0.0, 0.0, torch.finfo(dtype).min, torch.finfo(dtype).min]


def test_attention_probs_are_transformers_attention_weights(tf):
    m = tf.models.bert.modeling_bert
    ours, theirs = twins(E.SelfAttention, m.BertSelfAttention, hf_config(tf))
    x = torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(11))
    mask, additive = masks()
    with torch.no_grad():
        _, weights_ref = theirs(x, attention_mask=additive)
        probs = E.attention_probs(ours.query(x), ours.key(x), 4, E.extended_attention_mask(mask, torch.float32))
        close(probs, weights_ref)
        _, weights = ours(x, padding_mask(mask), return_weights=True)  # the boolean mask: the same weights
        close(probs, weights, atol=1e-6)
        unmasked = E.attention_probs(ours.query(x), ours.key(x), 4)
    assert (unmasked[2] - probs[2]).abs().max() > 1e-3  # the mask matters where there is padding
    close(probs.sum(-1), torch.ones(3, 4, 7))


# --------------------------------------------------------------------------------------
# Stretch references: a pre-LN layer, the masked-LM head's top-k guesses

def test_pre_ln_layer_forward_matches_roberta_prelayernorm(tf):
    mod = tf.models.roberta_prelayernorm.modeling_roberta_prelayernorm
    hf_cfg = tf.RobertaPreLayerNormConfig(**SMALL, attn_implementation="eager")
    theirs = randomize_(mod.RobertaPreLayerNormLayer(hf_cfg), seed=3, scale=0.2)
    # roberta-prelayernorm's names for the two norms -> the post-LN Layer's modules in their place
    rename = {"attention.LayerNorm.": "attention.output.LayerNorm.", "intermediate.LayerNorm.": "output.LayerNorm."}
    state = {}
    for key, value in theirs.state_dict().items():
        for old, new in rename.items():
            key = key.replace(old, new) if key.startswith(old) else key
        state[key] = value
    ours = E.Layer(our_config(hf_cfg))
    ours.load_state_dict(state)  # strict: every tensor of the pre-LN layer has a place
    ours.eval()
    x = 2 * torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(12))
    mask, additive = masks()
    with torch.no_grad():
        out = E.pre_ln_layer_forward(ours, x, padding_mask(mask))
        close(out, theirs(x, attention_mask=additive), atol=2e-5)
        assert (out - ours(x, padding_mask(mask))).abs().max() > 1e-2  # not the post-LN layer
        # the residual stream is not normalised: its scale follows x, unlike post-LN's output
        assert out.std() > 1.5 and ours(x, padding_mask(mask)).std() < 1.5


@pytest.mark.parametrize("model_type", ["roberta", "bert"])
def test_fill_mask_top_k_matches_transformers_head(tf, model_type):
    hf_cfg = hf_config(tf, model_type)
    if model_type == "roberta":
        theirs = randomize_(tf.models.roberta.modeling_roberta.RobertaLMHead(hf_cfg), scale=0.5)
        ours = E.RobertaLMHead(our_config(hf_cfg))
    else:
        theirs = randomize_(_hf(tf, "BertOnlyMLMHead")(hf_cfg), scale=0.5)
        ours = E.BertLMHead(our_config(hf_cfg))
    for name, p in theirs.named_parameters():  # the decoder's bias is the head's bias, as in the *ForMaskedLM models
        if name.endswith("decoder.bias"):
            with torch.no_grad():
                p.copy_(theirs.get_parameter(name.replace("decoder.bias", "bias")))
    ours.load_state_dict(theirs.state_dict(), strict=False)
    ours.eval()
    g = torch.Generator().manual_seed(13)
    hidden = torch.randn(2, 6, 32, generator=g)
    ids = torch.tensor([[5, 99, 7, 99, 8, 9], [99, 4, 4, 4, 4, 99]])  # 99: the mask token; 4 masks in all
    with torch.no_grad():
        probs, top = E.fill_mask_top_k(ours, hidden, ids, 99, k=5)
        expected = torch.softmax(theirs(hidden), dim=-1)  # (B, T, V)
    rows = [(0, 1), (0, 3), (1, 0), (1, 5)]  # reading order
    ref = torch.stack([expected[b, t] for b, t in rows]).topk(5, dim=-1)
    assert probs.shape == top.shape == (4, 5) and top.dtype == torch.long
    close(probs, ref.values, atol=1e-6)
    assert torch.equal(top, ref.indices)
    assert (probs[:, :-1] >= probs[:, 1:]).all()  # highest first
