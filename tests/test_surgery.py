"""``course_lib.surgery``: resizing the vocabulary and pruning attention heads, against ``transformers`` and exactly.

- ``resize_token_embeddings`` against ``transformers``' own resize on the same weights
  (its installed version, 5.x: new rows = the mean of the old ones; when the rows'
  covariance is positive definite it adds N(0, 1e-9 * covariance) noise, so there the bar
  is 1e-5 instead of equality), for BERT and RoBERTa masked-LM models and GPT-2.
- ``prune_heads`` is exact: the pruned model equals the unpruned one with those heads
  masked (<= 1e-5), and equals ``transformers``' unpruned model with those heads' columns
  of the output projection set to zero (an oracle that shares no code with ours).
  ``transformers`` 5 removed head pruning, so it cannot load a pruned folder itself;
  ``load_model`` reloads it from ``config.json``'s ``pruned_heads``.
"""

from __future__ import annotations

import copy
import json
import types

import pytest
import torch
import torch.nn.functional as F

from course_lib import load_model, load_tokenizer
from course_lib.fused import fuse
from course_lib.models.gpt2 import PrunedGPT2Attention
from course_lib.quantization import quantize_model
from course_lib.surgery import (attention_blocks, head_importance, input_embeddings, least_important_heads,
                                mask_heads, prune_attention_heads, prune_attention_state, prune_heads,
                                resize_token_embeddings)
from helpers import assert_close, randomize_


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("transformers")


def token_batch(vocab: int, seed: int, lengths=(10, 7), pad: int = 0, bos: int | None = None):
    """(ids, mask) (B, T), right-padded, tokens drawn from 3 .. vocab - 1 (never the pad id)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(3, vocab, (n,), generator=g)
        if bos is not None:
            ids[row, 0] = bos
        mask[row, :n] = 1
    return ids, mask


# --------------------------------------------------------------------------------------
# resize_token_embeddings

def small_lm(tf, arch: str, vocab: int, width: int):
    """(transformers model, task) with random weights: a masked-LM encoder or GPT-2, 1 layer."""
    if arch == "gpt2":
        config = tf.GPT2Config(vocab_size=vocab, n_embd=width, n_layer=1, n_head=4, n_positions=32, bos_token_id=0,
                               eos_token_id=0)
        return tf.GPT2LMHeadModel(config), "causal-lm"
    cls, config_cls = {"bert": (tf.BertForMaskedLM, tf.BertConfig),
                       "roberta": (tf.RobertaForMaskedLM, tf.RobertaConfig)}[arch]
    config = config_cls(vocab_size=vocab, hidden_size=width, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=2 * width, max_position_embeddings=40,
                        pad_token_id=1 if arch == "roberta" else 0, bos_token_id=0, eos_token_id=2)
    return cls(config), "masked-lm"


# (old vocabulary, width, new vocabulary): V < C gives a covariance that is not positive definite, where
# transformers takes the mean exactly; V > C, where it samples around the mean; and shrinking
RESIZES = {"grow, exact mean": (40, 64, 47), "grow, sampled around the mean": (300, 32, 310),
           "shrink": (40, 64, 30)}


@pytest.mark.parametrize("arch", ["bert", "roberta", "gpt2"])
@pytest.mark.parametrize("case", list(RESIZES))
def test_resize_like_transformers(tf, tmp_path, arch, case):
    old, width, new = RESIZES[case]
    theirs, task = small_lm(tf, arch, old, width)
    randomize_(theirs, seed=1)
    theirs.save_pretrained(tmp_path / "model")
    ours = load_model(tmp_path / "model", task=task, fast=False)  # the mean summed in the checkpoint's order
    name, table = input_embeddings(ours)
    before = table.weight.detach().clone()

    torch.manual_seed(0)  # transformers samples the new rows from the global RNG
    theirs.resize_token_embeddings(new)
    returned = resize_token_embeddings(ours, new)
    assert returned is table and table.num_embeddings == new and ours.config.vocab_size == new

    got, expected = table.weight.detach(), theirs.get_input_embeddings().weight.detach()
    assert got.shape == expected.shape == (new, width)
    keep = min(old, new)
    assert torch.equal(got[:keep], before[:keep])  # old rows untouched
    if new > old:
        assert torch.equal(got[old:], before.mean(0).expand(new - old, width))  # exactly the mean, every new row
        if case == "grow, exact mean":
            assert torch.equal(got, expected), f"{arch}: transformers took the mean too"
        else:
            assert_close(f"{arch}: new rows vs transformers' sample around the mean", got, expected, tol=1e-5)
    else:
        assert torch.equal(got, expected)
    head = ours.lm_head if arch == "gpt2" else (ours.cls.predictions if arch == "bert" else ours.lm_head)
    decoder = ours.lm_head if arch == "gpt2" else head.decoder
    assert decoder.weight is table.weight and decoder.out_features == new  # still tied
    if arch != "gpt2":  # the per-token output bias: old entries kept, new ones 0, as transformers leaves them
        assert torch.equal(head.bias, theirs.get_output_embeddings().bias.detach())
    ids, _ = token_batch(keep, seed=2, pad=keep - 1)
    with torch.no_grad():
        logits = ours(ids)
        assert logits.shape == (*ids.shape, new)
        assert_close(f"{arch} {case}: logits after resize vs transformers", logits, theirs.eval()(ids).logits,
                     tol=1e-4)


def test_resized_model_saves_and_reloads(tf, tmp_path):
    theirs, _ = small_lm(tf, "bert", 40, 64)
    randomize_(theirs, seed=3).save_pretrained(tmp_path / "model")
    ours = load_model(tmp_path / "model", task="masked-lm")
    resize_token_embeddings(ours, 45)
    out = ours.save_pretrained(tmp_path / "resized")
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 45
    back, info = tf.AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), info
    ids, _ = token_batch(45, seed=4)  # new tokens included
    with torch.no_grad():
        expected = ours(ids)
        assert_close("resized -> save_pretrained -> transformers", back.eval()(ids).logits, expected)
        assert_close("resized -> save_pretrained -> load_model", load_model(out, task="masked-lm")(ids), expected,
                     tol=1e-6)


def test_resize_after_adding_tokens_to_the_tokenizer():
    """The course's tiny GPT-2 gets two chat tokens: old tokens' logits do not change; a new token's input
    vector is the mean embedding, and its logit (its row of the tied head) the mean of the old logits."""
    model, tok = load_model("tiny-gpt2"), load_tokenizer("tiny-gpt2")
    old = tok.get_vocab_size()
    ids = torch.tensor([tok.encode("The old tokens mean the same.").ids])
    with torch.no_grad():
        before = model(ids)
    assert tok.add_special_tokens(["<|user|>", "<|assistant|>"]) == 2
    resize_token_embeddings(model, tok.get_vocab_size())
    assert model.config.vocab_size == old + 2 and model.lm_head.weight is model.transformer.wte.weight
    with torch.no_grad():
        after = model(ids)
        assert torch.equal(after[..., :old], before)
        assert_close("a new token's logit = the mean of the old logits", after[..., old],
                     before.mean(-1), tol=1e-5)
        prompt = torch.tensor([tok.encode("<|user|> Hello <|assistant|>").ids])
        assert prompt[0, 0] == old and model(prompt).shape == (1, prompt.size(1), old + 2)


def test_resize_refuses_quantized_and_bad_sizes(tf, tmp_path):
    model = load_model("tiny-gpt2")
    with pytest.raises(ValueError, match="positive integer"):
        resize_token_embeddings(model, 0)
    quantize_model(model, "int8")
    with pytest.raises(TypeError, match="resize the embeddings before quantizing"):
        resize_token_embeddings(model, 5000)


# --------------------------------------------------------------------------------------
# prune_heads: an encoder

# bert-base's shapes, cut to 3 layers of 6 heads of 8 features
BERT_SMALL = {"architectures": ["BertForSequenceClassification"], "hidden_act": "gelu", "hidden_size": 48,
              "id2label": {"0": "negative", "1": "positive"}, "intermediate_size": 96, "layer_norm_eps": 1e-12,
              "max_position_embeddings": 64, "model_type": "bert", "num_attention_heads": 6, "num_hidden_layers": 3,
              "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 200}
PRUNE = {0: [1, 4], 2: [0, 2, 5]}


@pytest.fixture(scope="module")
def bert_cls(tf, tmp_path_factory):
    hf = randomize_(tf.BertForSequenceClassification(tf.BertConfig(**BERT_SMALL)), seed=5, scale=0.2)
    folder = tmp_path_factory.mktemp("bert-cls")
    hf.save_pretrained(folder)
    ids, mask = token_batch(200, seed=6, bos=101)
    return types.SimpleNamespace(folder=folder, hf=hf, ids=ids, mask=mask)


def zero_head_columns_(hf_bert, heads_by_layer: dict, head_dim: int):
    """In a transformers BERT: set the output projection's input columns of these heads to 0 (an oracle)."""
    with torch.no_grad():
        for layer, heads in heads_by_layer.items():
            dense = hf_bert.encoder.layer[layer].attention.output.dense
            for h in heads:
                dense.weight[:, h * head_dim:(h + 1) * head_dim] = 0


def test_pruned_encoder_equals_masked_heads(bert_cls, tmp_path):
    model = load_model(bert_cls.folder, task="sequence-classification")
    ids, mask = bert_cls.ids, bert_cls.mask
    params_before = model.num_parameters()
    with torch.no_grad():
        full = model(ids, mask)
        with mask_heads(model, PRUNE):
            masked = model(ids, mask)
        assert torch.equal(model(ids, mask), full)  # the hooks are gone
        prune_heads(model, PRUNE)
        pruned = model(ids, mask)
    assert_close("pruned encoder vs the same heads masked", pruned, masked, tol=1e-5)
    assert not torch.allclose(pruned, full)  # those heads did something
    assert [b.self.num_attention_heads for b in attention_blocks(model)] == [4, 6, 3]
    assert model.config.pruned_heads == PRUNE
    C, D = 48, 8
    assert params_before - model.num_parameters() == 5 * (3 * (C * D + D) + C * D)  # q, k, v rows; output columns
    assert model.bert.encoder.layer[2].attention.self.query.weight.shape == (3 * D, C)
    assert model.bert.encoder.layer[2].attention.output.dense.weight.shape == (C, 3 * D)

    oracle = copy.deepcopy(bert_cls.hf)
    zero_head_columns_(oracle.bert, PRUNE, D)
    with torch.no_grad():
        assert_close("pruned encoder vs transformers with those heads' output columns zeroed", pruned,
                     oracle(ids, attention_mask=mask).logits, tol=1e-4)

    out = model.save_pretrained(tmp_path / "pruned")
    assert json.loads((out / "config.json").read_text())["pruned_heads"] == {"0": [1, 4], "2": [0, 2, 5]}
    reloaded = load_model(out, task="sequence-classification")
    assert reloaded.load_report.ok and reloaded.config.pruned_heads == PRUNE
    with torch.no_grad():
        assert_close("pruned -> save_pretrained -> load_model", reloaded(ids, mask), pruned, tol=1e-6)
        assert_close("pruned, fused", fuse(reloaded)(ids, mask), pruned, tol=1e-5)
    assert reloaded.num_parameters() == model.num_parameters()


def test_pruning_twice_uses_the_original_numbers(bert_cls):
    """Heads keep the numbers they had in the unpruned model: {0: [1]} then {0: [4]} = {0: [1, 4]} at once."""
    once = prune_heads(load_model(bert_cls.folder, task="sequence-classification"), {0: [1, 4]})
    twice = load_model(bert_cls.folder, task="sequence-classification")
    prune_heads(twice, {0: [1]})
    prune_heads(twice, {0: [4, 1]})  # 1 is gone already: skipped
    assert twice.config.pruned_heads == {0: [1, 4]}
    with torch.no_grad():
        assert torch.equal(twice(bert_cls.ids, bert_cls.mask), once(bert_cls.ids, bert_cls.mask))
        with mask_heads(twice, {0: [0, 5]}), mask_heads(once, {0: [0, 5]}):  # still the original numbers
            assert torch.equal(twice(bert_cls.ids, bert_cls.mask), once(bert_cls.ids, bert_cls.mask))


def test_pruning_errors(bert_cls, tmp_path):
    model = load_model(bert_cls.folder, task="sequence-classification")
    with pytest.raises(ValueError, match=r"heads \[6\] do not exist: a layer has heads 0 .. 5"):
        prune_heads(model, {0: [6]})
    with pytest.raises(ValueError, match=r"layer 3 does not exist: the model has layers 0 .. 2"):
        prune_heads(model, {3: [0]})
    with pytest.raises(ValueError, match=r"would leave no head in this layer"):
        prune_heads(model, {1: list(range(6))})
    prune_heads(model, {1: [0]})
    with pytest.raises(ValueError, match=r"heads \[0\] of layer 1 were pruned"):
        with mask_heads(model, {1: [0, 2]}):
            pass
    with torch.no_grad():  # a failed mask_heads leaves no hook behind
        full = model(bert_cls.ids, bert_cls.mask)
        with pytest.raises(RuntimeError, match="inside"):
            with mask_heads(model, {2: [3]}):
                raise RuntimeError("inside")
        assert torch.equal(model(bert_cls.ids, bert_cls.mask), full)
    bad = json.loads((bert_cls.folder / "config.json").read_text())
    bad["pruned_heads"] = {"1": [0, 1, 2, 3, 4, 5]}
    (tmp_path / "config.json").write_text(json.dumps(bad))
    (tmp_path / "model.safetensors").symlink_to(bert_cls.folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"removes all 6 heads of layer 1"):
        load_model(tmp_path, task="sequence-classification")
    quantize_model(model, "int8")
    with pytest.raises(TypeError, match="prune heads before quantizing"):
        prune_heads(model, {0: [0]})


# --------------------------------------------------------------------------------------
# prune_heads: GPT-2's fused c_attn

def test_pruned_gpt2_equals_masked_heads(tmp_path):
    """The course's tiny GPT-2 (real weights): q, k and v rows go from each third of c_attn."""
    model = load_model("tiny-gpt2")
    ids, mask = token_batch(4096, seed=7, lengths=(12, 8))
    ids, mask = ids.flip(1), mask.flip(1)  # left padding, as batched generation has it
    heads = {0: [1], 3: [0, 2]}
    with torch.no_grad():
        with mask_heads(model, heads):
            masked = model(ids, mask)
        prune_heads(model, heads)
        pruned = model(ids, mask)
    assert_close("pruned GPT-2 vs the same heads masked", pruned, masked, tol=1e-5)
    blocks = attention_blocks(model)
    assert [type(b) is PrunedGPT2Attention for b in blocks] == [True, False, False, True]
    assert [b.n_head for b in blocks] == [3, 4, 4, 2]
    assert blocks[3].c_attn.weight.shape == (3 * 2 * 32, 128) and blocks[3].c_proj.weight.shape == (128, 64)
    prompt = torch.tensor([[5, 17, 300, 9]])
    cached = model.generate(prompt, max_new_tokens=8, use_cache=True)
    assert torch.equal(cached, model.generate(prompt, max_new_tokens=8, use_cache=False))  # per-layer head counts

    out = model.save_pretrained(tmp_path / "pruned")
    assert json.loads((out / "config.json").read_text())["pruned_heads"] == {"0": [1], "3": [0, 2]}
    reloaded = load_model(out)
    with torch.no_grad():
        assert_close("pruned GPT-2 -> save_pretrained -> load_model", reloaded(ids, mask), pruned, tol=1e-6)
        assert_close("pruned GPT-2, fused", fuse(reloaded)(ids, mask), pruned, tol=1e-5)
        int8 = load_model(out, quantize="int8")(ids, mask)  # pruned, then quantized while loading
        assert ((int8 - pruned).norm() / pruned.norm()).item() < 0.02


# --------------------------------------------------------------------------------------
# prune_attention_state: the same surgery on plain tensors (chapter 08's stretch exercise)

@pytest.mark.parametrize("arch", ["encoder", "gpt2"])
@pytest.mark.parametrize("heads", [[0], [3, 1], [2, 0, 1]])
def test_prune_attention_state_equals_pruning_the_module(bert_cls, arch, heads):
    if arch == "gpt2":
        model, num_heads = load_model("tiny-gpt2"), 4
    else:
        model, num_heads = load_model(bert_cls.folder, task="sequence-classification"), 6
    block = attention_blocks(model)[1]
    state = {k: v.clone() for k, v in block.state_dict().items()}
    pruned = prune_attention_state(state, heads, num_heads)
    assert all(torch.equal(state[k], v) for k, v in block.state_dict().items())  # the input is unchanged
    prune_attention_heads(block, heads, num_heads)
    after = block.state_dict()
    assert pruned.keys() == after.keys()
    for k, v in after.items():
        assert pruned[k].shape == v.shape and torch.equal(pruned[k], v), k
        assert pruned[k].is_contiguous()


def test_prune_attention_state_errors():
    state = {k: v.clone() for k, v in attention_blocks(load_model("tiny-gpt2"))[0].state_dict().items()}
    with pytest.raises(ValueError, match=r"heads \[4\] do not exist"):
        prune_attention_state(state, [4], 4)
    with pytest.raises(ValueError, match="all 4 heads"):
        prune_attention_state(state, [0, 1, 2, 3], 4)
    with pytest.raises(KeyError, match="c_proj.weight"):
        prune_attention_state({k: v for k, v in state.items() if k != "c_proj.weight"}, [0], 4)
    with pytest.raises(ValueError, match="not a multiple"):
        prune_attention_state(state, [0], 3)
    same = prune_attention_state(state, [], 4)
    assert all(torch.equal(same[k], v) for k, v in state.items())


# --------------------------------------------------------------------------------------
# Which heads matter

def kl_to(reference_logits: torch.Tensor):
    """loss_fn: KL(reference || model) of the class distributions, >= 0, 0 for the reference model itself."""
    def loss_fn(model, batch):
        ids, mask = batch
        return F.kl_div(F.log_softmax(model(ids, mask), -1), F.log_softmax(reference_logits, -1),
                        log_target=True, reduction="batchmean")
    return loss_fn


def test_head_importance_shape_and_sanity(bert_cls):
    model = load_model(bert_cls.folder, task="sequence-classification")
    D = 8
    with torch.no_grad():
        model.bert.encoder.layer[1].attention.output.dense.weight[:, 3 * D:4 * D] = 0  # head (1, 3) does nothing
        model.bert.encoder.layer[0].attention.self.value.weight[2 * D:3 * D] *= 30  # head (0, 2) dominates
        reference = model(bert_cls.ids, bert_cls.mask)
    batches = [(bert_cls.ids, bert_cls.mask)]
    model.train()
    importance = head_importance(model, batches, kl_to(reference), progress=False)
    assert model.training  # the mode is restored
    assert importance.shape == (3, 6) and importance.dtype == torch.float64 and importance.isfinite().all()
    assert importance[1, 3] == 0  # masking a head with no output changes nothing
    assert (importance >= -1e-7).all()  # KL to the unmasked model: never below 0
    assert importance.argmax() == 0 * 6 + 2  # the amplified head matters most
    assert torch.equal(importance, head_importance(model, batches, kl_to(reference), progress=False))

    # one entry by hand: zero the head's output columns in a copy, without hooks
    manual = copy.deepcopy(model).eval()
    with torch.no_grad():
        manual.bert.encoder.layer[2].attention.output.dense.weight[:, 4 * D:5 * D] = 0
        rise = kl_to(reference)(manual, batches[0]).item() - kl_to(reference)(model.eval(), batches[0]).item()
    assert abs(importance[2, 4].item() - rise) <= 1e-6

    prune_heads(model, {2: [1]})
    after = head_importance(model, batches, kl_to(reference), progress=False)
    assert after[2, 1].isnan() and after[:2].isfinite().all()


def test_least_important_heads():
    nan = float("nan")
    importance = torch.tensor([[0.5, nan, 0.1], [0.2, 0.3, -1.0]], dtype=torch.float64)
    assert least_important_heads(importance, 3) == {0: [2], 1: [0, 2]}
    assert least_important_heads(importance, 0) == {}
    # a layer keeps its last head, so fewer than k can come back
    assert least_important_heads(torch.tensor([[0.1, 0.2], [5.0, 6.0]]), 3) == {0: [0], 1: [0]}
    with pytest.raises(ValueError, match="k must be >= 0"):
        least_important_heads(importance, -1)


def test_pruning_the_least_important_heads_costs_least(bert_cls):
    """Pruning the 4 least important heads moves the model less than pruning the 4 most important."""
    model = load_model(bert_cls.folder, task="sequence-classification")
    with torch.no_grad():
        reference = model(bert_cls.ids, bert_cls.mask)
    batches = [(bert_cls.ids, bert_cls.mask)]
    importance = head_importance(model, batches, kl_to(reference), progress=False)
    least = least_important_heads(importance, 4)
    most = least_important_heads(-importance, 4)
    cost = {}
    for name, heads in (("least", least), ("most", most)):
        pruned = prune_heads(load_model(bert_cls.folder, task="sequence-classification"), heads)
        with torch.no_grad():
            cost[name] = kl_to(reference)(pruned, batches[0]).item()
    print(f"\n  KL after pruning the 4 least / most important heads: {cost['least']:.2e} / {cost['most']:.2e}")
    assert cost["least"] < cost["most"]
