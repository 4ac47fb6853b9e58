"""LoRA from scratch (``course_lib.lora``), checked against Hugging Face's ``peft`` as the oracle.

- the layer: a fresh adapter changes nothing; the forward pass is ``W x + b + (alpha/r) B A x``
  with dropout on the branch only; only A and B get gradients; merge / unmerge are exact
  up to a stated float32 bound and the branch is never added twice;
- ``apply_lora`` selects exactly the layers ``peft`` selects for the same ``target_modules``
  and counts the same trainable parameters;
- adapters: ours load in ``peft`` (``PeftModel.from_pretrained`` on the ``transformers``
  model) and give the same outputs; ``peft``'s load in ours; our key names and shapes are
  the ones ``peft`` writes; ``merge_lora`` equals ``merge_and_unload``;
- bad input (nothing matched, r <= 0, applied twice, an adapter for another model) is a
  clear error that leaves the model untouched.

Models: a BERT encoder with all-MiniLM-L6-v2's config.json (2 layers instead of 6, random
weights, saved by ``transformers`` in the Hub layout of that repository), and the course's
tiny GPT-2 (real weights, Hub gpt2 layout, whose Conv1D weights PEFT handles with
``fan_in_fan_out``). Bar: max |Δ| <= 1e-4 on hidden states and logits (float32, CPU).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from course_lib import load_model
from course_lib.assets import asset_path
from course_lib.layers import LayerNorm, Linear, dropout
from course_lib.lora import (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, LoRAError, LoRALinear, apply_lora,
                             count_parameters, find_lora_targets, load_adapter, lora_modules, merge_lora, save_adapter)
from course_lib.models import ARCHITECTURES
from helpers import assert_close, randomize_

# config.json of sentence-transformers/all-MiniLM-L6-v2, as on the Hub (num_hidden_layers cut from 6 to 2)
MINILM = {
    "_name_or_path": "nreimers/MiniLM-L6-H384-uncased", "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1, "gradient_checkpointing": False, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 384, "initializer_range": 0.02, "intermediate_size": 1536,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
    "num_hidden_layers": 2, "pad_token_id": 0, "position_embedding_type": "absolute",
    "transformers_version": "4.8.2", "type_vocab_size": 2, "use_cache": True, "vocab_size": 30522,
}
TINY_GPT2 = "tiny-gpt2"


# --------------------------------------------------------------------------------------
# Fixtures: the oracles and the checkpoints

@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def peft():
    return pytest.importorskip("peft")


@pytest.fixture(scope="module")
def minilm(tf, tmp_path_factory):
    """A folder in all-MiniLM-L6-v2's layout (bare BertModel keys with the pooler), random weights."""
    folder = tmp_path_factory.mktemp("minilm")
    hf = randomize_(tf.BertModel(tf.BertConfig(**MINILM)), seed=1)
    hf.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(MINILM, indent=2), encoding="utf-8")  # the Hub's own fields
    return folder


@pytest.fixture(scope="module")
def gpt2_folder():
    return asset_path(TINY_GPT2)


def bert_inputs(seed: int = 0):
    """ids (2, 9) with the second row padded after 5 tokens, and its attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    return ids, mask


def gpt2_inputs(seed: int = 0):
    return torch.randint(0, 4096, (2, 12), generator=torch.Generator().manual_seed(seed)), None


ARCH = {
    # name: (our loader, transformers loader, inputs, how to read transformers' output, PEFT targets)
    "bert": (lambda folder: load_model(folder), lambda tf, folder: tf.BertModel.from_pretrained(folder),
             bert_inputs, lambda out: out.last_hidden_state, ["query", "value"]),
    "gpt2": (lambda folder: load_model(folder), lambda tf, folder: tf.GPT2LMHeadModel.from_pretrained(folder),
             gpt2_inputs, lambda out: out.logits, ["c_attn", "c_proj"]),
}


@pytest.fixture(params=["bert", "gpt2"])
def arch(request, minilm, gpt2_folder):
    folder = minilm if request.param == "bert" else gpt2_folder
    ours, theirs, inputs, read, targets = ARCH[request.param]
    return request.param, folder, ours, theirs, inputs, read, targets


def ours_out(model, inputs):
    ids, mask = inputs
    with torch.no_grad():
        return model(ids, mask)


def theirs_out(model, inputs, read):
    ids, mask = inputs
    with torch.no_grad():
        return read(model(input_ids=ids, attention_mask=mask))


def randomize_lora_(model, seed: int = 0, scale: float = 0.1):
    """Random A *and* B (a trained adapter, not the zero-B start), so the adapter visibly matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_modules(model).values():
            layer.lora_A.weight.copy_(scale * torch.randn(layer.lora_A.weight.shape, generator=g))
            layer.lora_B.weight.copy_(scale * torch.randn(layer.lora_B.weight.shape, generator=g))
    return model


def peft_lora_names(peft_model) -> list[str]:
    """Names (in the transformers model) of the layers peft put a LoRA branch on."""
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    return [n.removeprefix(prefix) for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)]


def all_requires_grad(model) -> bool:
    return all(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------------------
# The layer

def make_layer(in_features=24, out_features=40, r=4, alpha=8, p=0.0, seed=0):
    torch.manual_seed(seed)
    base = Linear(in_features, out_features)
    return LoRALinear(base, r=r, alpha=alpha, dropout=p)


def test_fresh_adapter_changes_nothing_and_starts_like_peft():
    torch.manual_seed(5)
    base = Linear(24, 40)
    w, b = base.weight.detach().clone(), base.bias.detach().clone()
    torch.manual_seed(6)
    layer = LoRALinear(base, r=4, alpha=8)
    torch.manual_seed(6)  # PEFT's init of A: kaiming-uniform with a = sqrt(5), the draw nn.Linear makes
    expected_A = torch.nn.init.kaiming_uniform_(torch.empty(4, 24), a=math.sqrt(5))
    assert torch.equal(layer.lora_A.weight, expected_A)
    assert torch.equal(layer.lora_B.weight, torch.zeros(40, 4))
    assert layer.scaling == 2.0
    x = torch.randn(3, 5, 24)
    assert torch.equal(layer(x), x @ w.T + b)  # B = 0: exactly the base layer
    assert torch.equal(layer.base_layer.weight, w)


def test_forward_is_base_plus_scaled_low_rank_update_with_dropout_on_the_branch_only():
    layer = randomize_lora_(make_layer(p=0.3), seed=1)
    W, b = layer.base_layer.weight.detach(), layer.base_layer.bias.detach()
    A, B = layer.lora_A.weight.detach(), layer.lora_B.weight.detach()
    x = torch.randn(2, 7, 24)
    layer.eval()  # no dropout
    assert_close("eval forward", layer(x), x @ W.T + b + 2.0 * (x @ A.T @ B.T), tol=1e-5)
    layer.train()
    torch.manual_seed(11)
    got = layer(x)
    torch.manual_seed(11)
    dropped = dropout(x, 0.3, training=True)  # the same mask: the same generator state
    assert not torch.equal(dropped, x)
    assert_close("train forward", got, x @ W.T + b + 2.0 * (dropped @ A.T @ B.T), tol=1e-5)


def test_only_A_and_B_get_gradients():
    layer = randomize_lora_(make_layer(), seed=2)
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_A.weight", "lora_B.weight"]
    layer(torch.randn(4, 24)).square().sum().backward()
    assert layer.base_layer.weight.grad is None and layer.base_layer.bias.grad is None
    assert layer.lora_A.weight.grad.abs().sum() > 0 and layer.lora_B.weight.grad.abs().sum() > 0


def test_merge_and_unmerge_are_exact_up_to_float32_rounding():
    layer = randomize_lora_(make_layer(in_features=64, out_features=48, r=8, alpha=16), seed=3, scale=0.3).eval()
    x = torch.randn(5, 64)
    W = layer.base_layer.weight.detach().clone()
    before = layer(x)
    layer.merge()
    merged_W = layer.base_layer.weight.detach().clone()
    assert_close("merged weight", merged_W, W + 2.0 * layer.lora_B.weight @ layer.lora_A.weight, tol=1e-6)
    after = layer(x)
    assert torch.equal(after, layer.base_layer(x))  # merged: the base layer alone, the branch not added twice
    assert_close("merged vs unmerged output", after, before, tol=1e-5)
    with pytest.raises(LoRAError, match="already merged"):
        layer.merge()
    layer.train()
    with pytest.raises(LoRAError, match="unmerge"):
        layer(x)  # a training step on a merged layer would never reach A and B
    layer.eval()
    layer.unmerge()
    restored = layer.base_layer.weight.detach()
    # one rounding in W + D, one in (W + D) - D: |restored - W| <= 2^-24 (|W| + |W + D|) per element
    # (the factor 1 + 2^-21 covers the second-order terms of that bound)
    bound = 2.0 ** -24 * (W.abs() + merged_W.abs()) * (1 + 2.0 ** -21)
    assert ((restored - W).abs() <= bound).all()
    assert (restored == W).float().mean() > 0.25  # many elements come back bit for bit (58 % here)
    assert_close("unmerged output", layer(x), before, tol=1e-6)
    with pytest.raises(LoRAError, match="not merged"):
        layer.unmerge()


@pytest.mark.parametrize("kwargs, message", [
    ({"r": 0}, "positive integer"), ({"r": -2}, "positive integer"), ({"r": 2.5}, "positive integer"),
    ({"r": True}, "positive integer"), ({"alpha": 0}, "alpha"), ({"dropout": 1.0}, r"\[0, 1\)"),
])
def test_bad_hyperparameters_are_clear_errors(kwargs, message):
    with pytest.raises(LoRAError, match=message):
        LoRALinear(Linear(8, 8), **kwargs)


def test_only_linear_layers_are_wrapped():
    with pytest.raises(LoRAError, match="LayerNorm"):
        LoRALinear(LayerNorm(8))
    with pytest.raises(LoRAError, match="already has a LoRA branch"):
        LoRALinear(LoRALinear(Linear(8, 8)))


# --------------------------------------------------------------------------------------
# apply_lora: the same layers and counts as peft

TARGETS = {
    "bert": [["query", "value"], ["dense"], ["attention.output.dense", "key"], r"encoder\.layer\.1\..*(query|key)"],
    "gpt2": [["c_attn"], ["c_proj"], ["attn.c_proj", "c_fc"], r".*\.h\.[02]\.mlp\.c_fc"],
}


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_target_matching_and_parameter_counts_equal_peft(name, tf, peft, minilm, gpt2_folder):
    folder = minilm if name == "bert" else gpt2_folder
    ours_load, theirs_load = ARCH[name][0], ARCH[name][1]
    for targets in TARGETS[name]:
        ours = apply_lora(ours_load(folder), targets, r=4, alpha=8)
        theirs = peft.get_peft_model(theirs_load(tf, folder), peft.LoraConfig(r=4, lora_alpha=8,
                                                                             target_modules=targets))
        assert list(lora_modules(ours)) == peft_lora_names(theirs), targets
        trainable, total = theirs.get_nb_trainable_parameters()
        assert (count_parameters(ours).trainable, count_parameters(ours).total) == (trainable, total), targets
    # the defaults are peft's for the model type
    assert list(lora_modules(apply_lora(ours_load(folder)))) == peft_lora_names(
        peft.get_peft_model(theirs_load(tf, folder), peft.LoraConfig()))


def test_apply_lora_freezes_everything_else_and_reports_counts(gpt2_folder):
    model = apply_lora(load_model(gpt2_folder), ["c_attn"], r=4, alpha=8, dropout=0.5)
    assert not any(m.training for m in model.modules())  # load_model's eval mode holds for the new layers too
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [f"transformer.h.{i}.attn.c_attn.lora_{ab}.weight" for i in range(4) for ab in "AB"]
    count = count_parameters(model)
    assert count.trainable == 4 * 4 * (128 + 384)  # 4 blocks x r x (in + out)
    assert str(count) == (f"trainable params: 8,192 || all params: {count.total:,} || "
                          f"trainable%: {100 * 8192 / count.total:.4f}")
    config = model.lora_config
    assert (config.r, config.lora_alpha, config.scaling, config.fan_in_fan_out, config.task_type) == \
        (4, 8, 2.0, True, "CAUSAL_LM")


def test_apply_lora_errors(gpt2_folder):
    model = load_model(gpt2_folder)
    with pytest.raises(LoRAError, match=r"matches no module.*c_attn, c_proj, c_fc"):
        apply_lora(model, ["query", "value"])  # BERT's names on GPT-2
    with pytest.raises(LoRAError, match="'transformer.h.0.ln_1', a LayerNorm"):
        apply_lora(model, ["ln_1"])
    with pytest.raises(LoRAError, match="tied to transformer.wte.weight"):
        apply_lora(model, ["c_attn", "lm_head"])
    with pytest.raises(LoRAError, match="positive integer"):
        apply_lora(model, ["c_attn"], r=0)
    with pytest.raises(LoRAError, match="not a valid regular expression"):
        apply_lora(model, "h.(0")
    with pytest.raises(LoRAError, match="modules_to_save entry 'pooler'"):
        apply_lora(model, ["c_attn"], modules_to_save=["pooler"])
    assert not lora_modules(model) and all_requires_grad(model)  # every refusal left the model as it was
    apply_lora(model, ["c_attn"])
    with pytest.raises(LoRAError, match="already has a LoRA adapter"):
        apply_lora(model, ["c_fc"])


def test_modules_inside_modules_to_save_are_not_targets(minilm):
    model = load_model(minilm)
    assert "pooler.dense" in find_lora_targets(model, ["dense"])
    assert "pooler.dense" not in find_lora_targets(model, ["dense"], modules_to_save=["pooler"])


# --------------------------------------------------------------------------------------
# Adapters: ours -> peft, peft -> ours, merging

def test_our_adapter_loads_in_peft_with_the_same_outputs(arch, tf, peft, tmp_path):
    name, folder, ours_load, theirs_load, inputs, read, targets = arch
    x = inputs()
    base = ours_out(ours_load(folder), x)
    ours = randomize_lora_(apply_lora(ours_load(folder), targets, r=4, alpha=8, dropout=0.1), seed=4).eval()
    expected = ours_out(ours, x)
    assert (expected - base).abs().max() > 1e-2  # the adapter matters: the comparison below has teeth
    save_adapter(ours, tmp_path / "ours", base_model_name_or_path=str(folder))

    # the layout peft writes for the same config, as the reference for names, shapes and fields
    reference = peft.get_peft_model(theirs_load(tf, folder), peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.1, target_modules=targets, task_type=ours.lora_config.task_type))
    reference.save_pretrained(tmp_path / "peft")
    with safe_open(str(tmp_path / "ours" / ADAPTER_WEIGHTS_NAME), "pt") as a, \
            safe_open(str(tmp_path / "peft" / ADAPTER_WEIGHTS_NAME), "pt") as b:
        assert a.metadata() == b.metadata() == {"format": "pt"}
        assert {k: a.get_slice(k).get_shape() for k in a.keys()} == {k: b.get_slice(k).get_shape() for k in b.keys()}
    ours_config = json.loads((tmp_path / "ours" / ADAPTER_CONFIG_NAME).read_text())
    peft_config = json.loads((tmp_path / "peft" / ADAPTER_CONFIG_NAME).read_text())
    for field in ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "fan_in_fan_out", "bias",
                  "modules_to_save", "use_dora", "use_rslora", "rank_pattern", "alpha_pattern"):
        assert ours_config[field] == peft_config[field], field
    assert sorted(ours_config["target_modules"]) == sorted(peft_config["target_modules"])
    assert ours_config["fan_in_fan_out"] is (name == "gpt2")  # GPT-2's Conv1D layers
    assert ours_config["base_model_name_or_path"] == str(folder)

    theirs = peft.PeftModel.from_pretrained(theirs_load(tf, folder), tmp_path / "ours").eval()
    assert_close(f"{name}: peft with our adapter vs ours", theirs_out(theirs, x, read), expected)


def test_peft_adapter_loads_in_ours_with_the_same_outputs(arch, tf, peft, tmp_path):
    name, folder, ours_load, theirs_load, inputs, read, targets = arch
    x = inputs()
    theirs = peft.get_peft_model(theirs_load(tf, folder), peft.LoraConfig(
        r=8, lora_alpha=32, lora_dropout=0.05, target_modules=targets, init_lora_weights=False)).eval()  # random B
    theirs.save_pretrained(tmp_path)
    expected = theirs_out(theirs, x, read)
    ours = load_adapter(ours_load(folder), tmp_path).eval()
    assert (ours.lora_config.r, ours.lora_config.lora_alpha, ours.lora_config.lora_dropout) == (8, 32, 0.05)
    assert list(lora_modules(ours)) == peft_lora_names(theirs)
    assert all(p.requires_grad == (".lora_" in n) for n, p in ours.named_parameters())
    got = ours_out(ours, x)
    assert (got - ours_out(ours_load(folder), x)).abs().max() > 1e-2
    assert_close(f"{name}: ours with peft's adapter vs peft", got, expected)

    # an older peft's adapter_model.bin (a pickle of tensors only) gives the same
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    (bin_folder / ADAPTER_CONFIG_NAME).write_text((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    torch.save(load_file(tmp_path / ADAPTER_WEIGHTS_NAME), bin_folder / "adapter_model.bin")
    assert torch.equal(ours_out(load_adapter(ours_load(folder), bin_folder).eval(), x), got)


def test_merge_lora_equals_peft_merge_and_unload(arch, tf, peft, tmp_path):
    name, folder, ours_load, theirs_load, inputs, read, targets = arch
    x = inputs()
    theirs = peft.get_peft_model(theirs_load(tf, folder), peft.LoraConfig(
        r=4, lora_alpha=16, target_modules=targets, init_lora_weights=False))
    theirs.save_pretrained(tmp_path / "adapter")
    targeted = peft_lora_names(theirs)
    theirs_merged = theirs.merge_and_unload().eval()
    plain = ours_load(folder)
    plain_keys = list(plain.state_dict())
    ours = merge_lora(load_adapter(ours_load(folder), tmp_path / "adapter")).eval()
    assert not lora_modules(ours) and not hasattr(ours, "lora_config")
    assert list(ours.state_dict()) == plain_keys  # plain Linears again: the original parameter names

    theirs_state = theirs_merged.state_dict()
    assert set(plain_keys) <= set(theirs_state)
    changed, worst = 0, 0.0
    for key, weight in ours.state_dict().items():
        reference = theirs_state[key]
        if name == "gpt2" and key.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            reference = reference.T  # transformers' Conv1D keeps (in, out); ours is (out, in)
        assert weight.shape == reference.shape, key
        worst = max(worst, (weight - reference).abs().max().item())
        changed += not torch.equal(weight, plain.state_dict()[key])
    print(f"\n  max|Δ| {name}: merged weights, ours vs peft: {worst:.2e}")
    assert worst <= 1e-6
    assert changed == len(targeted)  # exactly the targeted weights moved
    assert_close(f"{name}: merged ours vs peft merge_and_unload", ours_out(ours, x), theirs_out(theirs_merged, x, read))

    # a merged model is an ordinary model: saved and reloaded by the course's own loader
    ours.save_pretrained(tmp_path / "merged")
    assert torch.equal(ours_out(load_model(tmp_path / "merged"), x), ours_out(ours, x))


def test_adapter_from_a_task_model_fits_the_bare_encoder(tf, peft, minilm, tmp_path):
    """peft on transformers' BertForMaskedLM saves ``bert.encoder...`` keys; our bare BertModel takes them."""
    x = bert_inputs()
    theirs = peft.get_peft_model(tf.BertForMaskedLM.from_pretrained(minilm), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False)).eval()
    theirs.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / ADAPTER_WEIGHTS_NAME), "pt") as f:
        assert all(k.startswith("base_model.model.bert.encoder.") for k in f.keys())
    ours = load_adapter(load_model(minilm), tmp_path).eval()
    with torch.no_grad():
        expected = theirs.base_model.model.bert(input_ids=x[0], attention_mask=x[1]).last_hidden_state
    assert_close("bare encoder with a masked-LM model's adapter", ours_out(ours, x), expected)


def test_modules_to_save_round_trip_with_peft(tf, peft, minilm, tmp_path):
    """A module trained in full (here the pooler) is saved as peft saves it and loaded back."""
    x = bert_inputs()
    ours = randomize_lora_(apply_lora(load_model(minilm), ["query"], r=2, alpha=4, modules_to_save=["pooler"]))
    assert ours.pooler.dense.weight.requires_grad and not ours.encoder.layer[0].attention.self.key.weight.requires_grad
    with torch.no_grad():
        ours.pooler.dense.weight.mul_(-1)  # a "trained" pooler, different from the checkpoint's
    save_adapter(ours, tmp_path)
    with safe_open(str(tmp_path / ADAPTER_WEIGHTS_NAME), "pt") as f:
        assert {"base_model.model.pooler.dense.weight", "base_model.model.pooler.dense.bias"} <= set(f.keys())
    theirs = peft.PeftModel.from_pretrained(tf.BertModel.from_pretrained(minilm), tmp_path).eval()
    with torch.no_grad():
        expected = theirs(input_ids=x[0], attention_mask=x[1]).pooler_output
    ours.eval()
    with torch.no_grad():
        got = ours.pooler(ours(*x))
        again = load_adapter(load_model(minilm), tmp_path).eval()
        assert torch.equal(again.pooler(again(*x)), got)
    assert_close("pooler output, peft with our modules_to_save", got, expected)


# config.json of roberta-base (hidden size, heads and layers cut for speed), with a 2-label head
ROBERTA_SMALL = {
    "architectures": ["RobertaForSequenceClassification"], "attention_probs_dropout_prob": 0.1, "bos_token_id": 0,
    "eos_token_id": 2, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 64, "initializer_range": 0.02,
    "intermediate_size": 256, "layer_norm_eps": 1e-05, "max_position_embeddings": 514, "model_type": "roberta",
    "num_attention_heads": 4, "num_hidden_layers": 1, "pad_token_id": 1, "type_vocab_size": 1, "vocab_size": 50265,
}
LABELS = {"id2label": {"0": "ham", "1": "spam"}, "label2id": {"ham": 0, "spam": 1}}


@pytest.mark.skipif("sequence-classification" not in ARCHITECTURES["bert"][1],
                    reason="the sequence-classification heads have not landed in course_lib.models yet")
@pytest.mark.parametrize("name, targets", [("bert", ["query", "value"]), ("roberta", ["query", "value", "dense"])])
def test_sequence_classification_adapter_round_trip(name, targets, tf, peft, tmp_path):
    """task_type SEQ_CLS: peft trains and saves the new ``classifier`` with the adapter (modules_to_save);
    so do we, both ways. With "dense" in the targets, RoBERTa's ``classifier.dense`` stays out of LoRA
    (it is trained in full), as in peft."""
    if name == "bert":
        cls = "BertForSequenceClassification"
        config = {**MINILM, "architectures": [cls], **LABELS}
        hf = tf.BertForSequenceClassification(tf.BertConfig(**config))
    else:
        config, cls = {**ROBERTA_SMALL, **LABELS}, "RobertaForSequenceClassification"
        hf = tf.RobertaForSequenceClassification(tf.RobertaConfig(**config))
    randomize_(hf, seed=7).save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    x = bert_inputs()
    if name == "roberta":
        x = (x[0].masked_fill(x[1] == 0, 1), x[1])  # RoBERTa pads with id 1
    base = ours_out(load_model(tmp_path / "model", task="sequence-classification"), x)
    ours = randomize_lora_(apply_lora(load_model(tmp_path / "model", task="sequence-classification"), targets,
                                      r=4, alpha=8), seed=8)
    assert ours.lora_config.task_type == "SEQ_CLS" and ours.lora_config.modules_to_save == ("classifier", "score")
    head = [p for n, p in ours.named_parameters() if n.startswith("classifier.")]
    assert head and all(p.requires_grad for p in head)
    with torch.no_grad():
        for p in head:
            p.mul_(-1)  # a "trained" head, different from the checkpoint's
    assert (ours_out(ours, x) - base).abs().max() > 1e-2  # adapter and head matter: the comparison has teeth
    save_adapter(ours, tmp_path / "adapter")
    theirs = peft.PeftModel.from_pretrained(getattr(tf, cls).from_pretrained(tmp_path / "model"),
                                            tmp_path / "adapter", is_trainable=True)
    assert list(lora_modules(ours)) == peft_lora_names(theirs)  # classifier.dense left out by both
    assert count_parameters(ours).trainable == theirs.get_nb_trainable_parameters()[0]
    assert_close(f"{name} SEQ_CLS logits, peft with our adapter", ours_out(ours.eval(), x),
                 theirs_out(theirs.eval(), x, lambda o: o.logits))
    again = load_adapter(load_model(tmp_path / "model", task="sequence-classification"), tmp_path / "adapter")
    assert torch.equal(ours_out(again.eval(), x), ours_out(ours, x))

    # an adapter on a model whose head is already trained (a cross-encoder): peft without task_type
    # saves no classifier, and loading it keeps the checkpoint's head
    plain = peft.get_peft_model(getattr(tf, cls).from_pretrained(tmp_path / "model"), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query"], init_lora_weights=False)).eval()
    plain.save_pretrained(tmp_path / "no-head")
    ours = load_adapter(load_model(tmp_path / "model", task="sequence-classification"), tmp_path / "no-head").eval()
    assert not any(p.requires_grad for n, p in ours.named_parameters() if n.startswith("classifier."))
    assert_close(f"{name} logits, peft adapter without a head", ours_out(ours, x),
                 theirs_out(plain, x, lambda o: o.logits))


# --------------------------------------------------------------------------------------
# Bad adapters: clear errors, the model untouched

@pytest.fixture
def bert_adapter(minilm, tmp_path):
    folder = tmp_path / "adapter"
    save_adapter(randomize_lora_(apply_lora(load_model(minilm), ["query", "value"], r=4, alpha=8)), folder,
                 base_model_name_or_path="sentence-transformers/all-MiniLM-L6-v2")
    return folder


def edit_config(folder, **changes):
    path = folder / ADAPTER_CONFIG_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def edit_weights(folder, edit):
    path = folder / ADAPTER_WEIGHTS_NAME
    state = load_file(path)
    edit(state)
    save_file(state, path, metadata={"format": "pt"})


def refused(model, folder, match):
    with pytest.raises(LoRAError, match=match):
        load_adapter(model, folder)
    assert not lora_modules(model) and not hasattr(model, "lora_config") and all_requires_grad(model)


def test_adapter_for_another_architecture_is_refused(bert_adapter, gpt2_folder, minilm, tmp_path):
    refused(load_model(gpt2_folder), bert_adapter,
            r"(?s)target_modules=\['query', 'value'\] matches no module of this GPT2LMHeadModel.*"
            r"made for sentence-transformers/all-MiniLM-L6-v2.*another architecture")
    gpt2_adapter = tmp_path / "gpt2"
    save_adapter(apply_lora(load_model(gpt2_folder)), gpt2_adapter)
    refused(load_model(minilm), gpt2_adapter, r"\['c_attn'\] matches no module of this BertModel")


def test_adapter_with_wrong_shapes_or_keys_is_refused(bert_adapter, minilm):
    key = "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight"
    edit_weights(bert_adapter, lambda s: s.update({key: s[key].T.contiguous()}))  # A stored (in, r)
    refused(load_model(minilm), bert_adapter, rf"{key}: the adapter has \(384, 4\), this model needs \(4, 384\)")


def test_adapter_with_missing_or_extra_tensors_is_refused(bert_adapter, minilm):
    gone = "base_model.model.encoder.layer.1.attention.self.value.lora_B.weight"
    extra = "base_model.model.encoder.layer.7.attention.self.query.lora_A.weight"  # a 2-layer model has no layer 7
    edit_weights(bert_adapter, lambda s: s.update({extra: s.pop(gone)}))
    refused(load_model(minilm), bert_adapter,
            r"(?s)1 missing from the adapter:\n\s+encoder.layer.1.attention.self.value.lora_B.weight.*"
            r"1 in the adapter but not in this model:\n\s+base_model.model.encoder.layer.7")


def test_adapter_config_that_disagrees_with_the_tensors_is_refused(bert_adapter, minilm):
    edit_config(bert_adapter, r=8)
    refused(load_model(minilm), bert_adapter, r"the adapter has \(4, 384\), this model needs \(8, 384\)")


@pytest.mark.parametrize("changes, match", [
    ({"peft_type": "IA3"}, "peft_type is 'IA3'"),
    ({"use_dora": True}, "use_dora=True"),
    ({"rank_pattern": {"query": 2}}, "rank_pattern"),
    ({"r": 0}, "positive integer"),
])
def test_unsupported_adapter_configs_are_refused(bert_adapter, minilm, changes, match):
    edit_config(bert_adapter, **changes)
    refused(load_model(minilm), bert_adapter, match)


def test_missing_files_and_a_model_with_lora_already(bert_adapter, minilm, tmp_path):
    refused(load_model(minilm), tmp_path / "nowhere", "is not a folder")
    refused(load_model(minilm), minilm, "no adapter_config.json.*load it with load_model")
    (bert_adapter / ADAPTER_WEIGHTS_NAME).unlink()
    refused(load_model(minilm), bert_adapter, "no adapter_model.safetensors")
    with pytest.raises(LoRAError, match="already has a LoRA adapter"):
        load_adapter(apply_lora(load_model(minilm)), tmp_path)
    with pytest.raises(LoRAError, match="no LoRA adapter to save"):
        save_adapter(load_model(minilm), tmp_path / "empty")
    with pytest.raises(LoRAError, match="no LoRA layers to merge"):
        merge_lora(load_model(minilm))
