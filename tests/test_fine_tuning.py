"""Chapter 08's experiments (``course_lib.fine_tuning``) on tiny slices, and the shipped results.json.

The experiment functions run here on a few messages and a few steps: they run, their
results have the documented keys and shapes, and a seed makes them repeat exactly. The
shipped ``course_lib/assets/fine-tuning/results.json`` is checked against its documented
schema, against itself (scores agree with confusion matrices, pruning k = 0 with the full
run), and against the code: the settings it records are the code's, and cheap pieces of
the run (the first training loss, the majority baseline, the tiny GPT-2's perplexity
before LoRA) re-measured now give its numbers. The full command
(``python -m course_lib.fine_tuning``, ~20 min) is not run here.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from course_lib import fine_tuning as ft
from course_lib.classification_data import SPLIT_SHA256, TextSplit, sms_spam_splits

TINY = ft.ClassifierSettings(method="full", max_length=32, batch_size=8, max_steps=3, eval_every=2, train_limit=40,
                             bucket_batches=2, learning_rate=1e-4)


@pytest.fixture(scope="module")
def splits():
    return sms_spam_splits()


@pytest.fixture(scope="module")
def small(splits):
    """The course's split, cut short: 40 train (via train_limit), 24 validation, 32 test messages.

    The slices are taken so that both classes occur."""
    def mixed(split: TextSplit, n: int) -> TextSplit:
        spam = [i for i, y in enumerate(split.labels) if y == 1][: n // 4]
        ham = [i for i, y in enumerate(split.labels) if y == 0][: n - len(spam)]
        keep = sorted(spam + ham)
        return TextSplit(split.name, tuple(split.texts[i] for i in keep), tuple(split.labels[i] for i in keep))
    return {"train": splits["train"], "validation": mixed(splits["validation"], 24), "test": mixed(splits["test"], 32)}


@pytest.fixture(scope="module")
def tokenizer():
    from course_lib.tokenizer_loading import load_tokenizer

    return load_tokenizer("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def tiny_run(small, tokenizer):
    return ft.fine_tune_classifier(TINY, small, progress=False, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def shipped():
    return ft.read_results()


# --------------------------------------------------------------------------------------
# batches

def test_length_bucketed_batches_cover_each_message_once_and_pad_little(splits, tokenizer):
    split = splits["train"][:300]
    batches = ft.LengthBucketedBatches(tokenizer, split, batch_size=16, max_length=64, bucket_batches=4)
    order = batches.epoch_order(seed=1)
    assert len(order) == len(batches) == 19
    assert sorted(i for b in order for i in b) == list(range(300))  # every message once per epoch
    assert order == batches.epoch_order(seed=1) and order != batches.epoch_order(seed=2)
    padded = sum(len(b) * max(batches.lengths[i] for i in b) for b in order)
    g = torch.Generator().manual_seed(1)
    random_order = torch.randperm(300, generator=g).tolist()
    random_padded = sum(16 * max(batches.lengths[i] for i in random_order[s:s + 16]) for s in range(0, 300, 16))
    assert padded < 0.7 * random_padded  # bucketing is the point: far fewer padded tokens
    torch.manual_seed(0)
    first = next(iter(batches))
    assert set(first) == {"input_ids", "attention_mask", "labels"}  # no 'index': the model takes no such input
    B, T = first["input_ids"].shape
    assert first["attention_mask"].shape == (B, T) and first["labels"].shape == (B,) and T <= 64
    assert first["input_ids"].dtype == first["labels"].dtype == torch.long


def test_settings_are_checked_and_round_trip():
    with pytest.raises(ValueError, match="method='partial'.*'full'.*'lora'"):
        ft.ClassifierSettings(method="partial")
    with pytest.raises(ValueError, match="batch_size=0 must be an int >= 1"):
        ft.ClassifierSettings(batch_size=0)
    with pytest.raises(ValueError, match="unknown classifier settings \\['lr'\\]"):
        ft.ClassifierSettings.from_dict({"lr": 1e-3})
    for settings in (ft.FULL, ft.LORA, ft.NOTEBOOK, TINY):
        back = ft.ClassifierSettings.from_dict(json.loads(json.dumps(settings.as_dict())))
        assert back == settings
    assert "lora_r" not in ft.FULL.as_dict() and ft.LORA.as_dict()["lora_targets"] == ["query", "value"]
    assert ft.NOTEBOOK.method == "full" and ft.NOTEBOOK.epochs < ft.FULL.epochs


# --------------------------------------------------------------------------------------
# fine-tuning runs

def test_full_fine_tuning_run_has_the_documented_parts(tiny_run, small):
    run = tiny_run
    assert run.steps == 3 and run.trainable == run.total > 22_000_000  # every weight trains
    h = run.history
    assert h["step"] == [1, 2, 3] and h["eval_step"] == [2, 3] and set(h["eval"]) == {"loss", "accuracy", "macro_f1"}
    assert h["best_metric"] == "macro_f1" and h["best_step"] in (2, 3)
    for name, split in (("validation", small["validation"]), ("test", small["test"])):
        s = run.scores[name]
        m = s["confusion_matrix"]
        assert len(m) == 2 and sum(map(sum, m)) == len(split)
        assert s["accuracy"] == pytest.approx((m[0][0] + m[1][1]) / len(split))
        assert [sum(r) for r in m] == [split.labels.count(0), split.labels.count(1)]
    # the kept weights are the best evaluation's: scoring validation again gives its macro-F1
    best = h["eval"]["macro_f1"][h["eval_step"].index(h["best_step"])]
    assert run.scores["validation"]["macro_f1"] == pytest.approx(best, abs=1e-12)
    summary = json.loads(json.dumps(run.summary()))
    assert summary["settings"] == TINY.as_dict() and summary["steps"] == 3


def test_a_seeded_run_repeats_exactly(tiny_run, small, tokenizer):
    again = ft.fine_tune_classifier(TINY, small, progress=False, tokenizer=tokenizer)
    assert again.history["loss"] == tiny_run.history["loss"]
    assert again.history["eval"] == tiny_run.history["eval"]
    assert again.scores == tiny_run.scores
    for (k, a), b in zip(tiny_run.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), k
    other = ft.fine_tune_classifier(dataclasses.replace(TINY, seed=1), small, progress=False, tokenizer=tokenizer)
    assert other.history["loss"] != tiny_run.history["loss"]  # the seed matters (head init, order, dropout)


def test_first_step_loss_recomputes_the_runs_first_loss(tiny_run, small):
    assert ft.first_step_loss(TINY, small) == pytest.approx(tiny_run.history["loss"][0], abs=1e-6)


def test_lora_run_trains_only_adapters_and_the_classifier(small, tokenizer):
    from course_lib.loading import load_model

    settings = dataclasses.replace(TINY, method="lora", learning_rate=1e-3, max_steps=2)
    run = ft.fine_tune_classifier(settings, small, evaluate_on=("validation",), progress=False, tokenizer=tokenizer)
    # PEFT's count: r * (in + out) per adapted Linear (6 layers x query, value) + the classifier (384 x 2 + 2)
    assert run.trainable == 6 * 2 * 8 * (384 + 384) + 384 * 2 + 2 == 74_498
    assert set(run.scores) == {"validation"}
    base = load_model("all-MiniLM-L6-v2").state_dict()
    changed = {k for k, p in run.model.named_parameters() if p.requires_grad}
    assert changed and all(("lora_" in k or k.startswith("classifier.")) for k in changed)
    for k, v in run.model.state_dict().items():  # frozen weights are the pretrained ones, untouched
        plain = k.removeprefix("bert.").replace(".base_layer.", ".")
        if "lora_" not in k and not k.startswith("classifier.") and plain in base:
            assert torch.equal(v, base[plain]), k


# --------------------------------------------------------------------------------------
# deploy and pruning, on the tiny run's model

def test_deploy_saves_reloads_and_quantizes(tiny_run, small, tokenizer):
    out = ft.deploy(tiny_run.model, small, tokenizer, max_length=TINY.max_length)
    rows = {r["variant"]: r for r in out["rows"]}
    assert list(rows) == ["float32", "int8", "int4"]
    fp32 = rows["float32"]
    assert fp32["test"] == {k: tiny_run.scores["test"][k] for k in ("accuracy", "macro_f1")}
    assert fp32["max_abs_logit_diff"] < 1e-4 and fp32["prediction_agreement"] == 1.0  # the reload is the model
    assert rows["int8"]["parameter_bytes"] < 0.3 * fp32["parameter_bytes"]
    assert rows["int4"]["parameter_bytes"] < rows["int8"]["parameter_bytes"]
    assert rows["int8"]["file_bytes"] < 0.3 * fp32["file_bytes"] and fp32["file_bytes"] > 80e6
    assert sum(map(sum, rows["int4"]["test_confusion_matrix"])) == len(small["test"])


def test_pruning_cost_rows(tiny_run, small, tokenizer):
    out = ft.pruning_cost(tiny_run.model, small, tokenizer, ks=(0, 6, 66), max_length=TINY.max_length,
                          progress=False)
    assert len(out["importance"]) == 6 and all(len(r) == 12 for r in out["importance"])
    rows = [(r["order"], r["k"]) for r in out["rows"]]
    assert rows == [("importance", 0), ("importance", 6), ("importance", 66), ("random", 0), ("random", 6),
                    ("random", 66)]
    assert {**out["rows"][3], "order": "importance"} == out["rows"][0]  # k = 0 is one model, whatever the order
    k0 = out["rows"][0]
    assert k0["heads_left"] == 72 and k0["pruned_heads"] == {}
    assert k0["test"]["accuracy"] == tiny_run.scores["test"]["accuracy"]  # pruning nothing changes nothing
    most = out["rows"][2]
    assert most["heads_left"] == 6 and all(len(h) == 11 for h in most["pruned_heads"].values())
    assert most["parameters"] < k0["parameters"]
    # the first 6 pruned by importance are the 6 lowest importances
    flat = sorted((v, l, h) for l, row in enumerate(out["importance"]) for h, v in enumerate(row))[:6]
    chosen = {(int(l), h) for l, hs in out["rows"][1]["pruned_heads"].items() for h in hs}
    assert chosen == {(l, h) for _, l, h in flat}
    assert sum(p.numel() for p in tiny_run.model.parameters()) == k0["parameters"]  # the model itself is untouched


# --------------------------------------------------------------------------------------
# LoRA on the tiny GPT-2

def test_instruction_examples_are_made_from_disjoint_documents():
    train, heldout = ft.instruction_examples("train"), ft.instruction_examples("heldout")
    assert len(train) > 900 and len(heldout) > 60
    assert not {a for _, a, _ in train} & {a for _, a, _ in heldout}  # paragraphs two topics share stay in train
    assert min(len(a) for _, a, _ in train + heldout) > ft.MIN_ANSWER_CHARS
    prompt, answer, _ = train[0]
    assert prompt == ft.QUESTION.format(title='The "assert" statement')
    assert answer.startswith(" Assert statements are") and "\n" not in answer


def test_gpt2_lora_short_run_round_trips_through_peft_layout(tmp_path):
    settings = dataclasses.replace(ft.GPT2_LORA, steps=3, eval_every=3, warmup_steps=1)
    out = ft.gpt2_lora(settings, progress=False, adapter_folder=tmp_path / "adapter")
    assert sorted(out["adapter_files"]) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["fan_in_fan_out"]
    # r * (in + out) for c_attn (128 -> 384), attn.c_proj (128 -> 128), c_fc (128 -> 512), mlp.c_proj (512 -> 128)
    assert out["trainable_parameters"] == 4 * 8 * ((128 + 384) + (128 + 128) + (128 + 512) + (512 + 128))
    p = out["perplexity"]
    assert p["reloaded"] == p["after"] and out["max_abs_reload_diff"] == 0.0  # same numbers after save + load
    assert p["after"] != p["before"]
    assert out["history"]["step"] == [1, 2, 3]


# --------------------------------------------------------------------------------------
# results.json: schema, consistency, and the code that wrote it

def test_shipped_results_follow_the_schema_and_hold_every_section(shipped):
    assert set(shipped["sections"]) >= {"classifiers", "gpt2", "notebook", "search"}
    assert shipped["data"]["split_sha256"] == SPLIT_SHA256
    assert [r["method"] for r in shipped["table"]] == list(ft.TABLE_METHODS)
    for name, info in shipped["sections"].items():
        assert info["command"].startswith("python -m course_lib.fine_tuning")
        assert info["environment"]["threads"] >= 1


def test_full_fine_tuning_beat_the_linear_probe_on_test(shipped):
    rows = {r["method"]: r for r in shipped["table"]}
    full, probe = rows["full_fine_tuning"]["test"], rows["linear_probe"]["test"]
    assert full["accuracy"] > probe["accuracy"] and full["macro_f1"] > probe["macro_f1"]
    assert rows["majority"]["test"]["macro_f1"] < 0.5 < rows["lora"]["test"]["macro_f1"]


def test_shipped_results_agree_with_themselves(shipped):
    from course_lib.metrics import macro_f1

    rows = {r["method"]: r for r in shipped["table"]}
    for method, row in (("full", rows["full_fine_tuning"]), ("lora", rows["lora"])):
        run = shipped["runs"][method]
        for split in ("validation", "test"):
            m = run["scores"][split]["confusion_matrix"]
            n = sum(map(sum, m))
            assert n == sum(shipped["data"]["sizes"][split].values())
            assert row[split]["accuracy"] == pytest.approx((m[0][0] + m[1][1]) / n)
            true = [0] * sum(m[0]) + [1] * sum(m[1])
            pred = [0] * m[0][0] + [1] * m[0][1] + [0] * m[1][0] + [1] * m[1][1]
            assert row[split]["macro_f1"] == pytest.approx(macro_f1(true, pred))
        h = run["history"]
        assert row["validation"]["macro_f1"] == pytest.approx(h["best_value"])  # the kept weights' validation score
        assert len(h["step"]) == run["steps"]
    assert rows["lora"]["trainable_parameters"] < rows["full_fine_tuning"]["trainable_parameters"] / 100
    k0 = next(r for r in shipped["pruning"]["rows"] if r["k"] == 0)
    assert k0["test"]["accuracy"] == rows["full_fine_tuning"]["test"]["accuracy"]  # pruning 0 heads = the model
    assert shipped["deploy"]["rows"][0]["variant"] == "float32"
    assert shipped["deploy"]["rows"][0]["prediction_agreement"] == 1.0
    search = shipped["validation_search"]
    for method, settings in (("full", ft.FULL), ("lora", ft.LORA)):
        chosen = search[method]["candidates"][search[method]["chosen"]]
        assert ft.ClassifierSettings.from_dict(chosen["settings"]) == settings  # the code's settings won on validation
        assert all("test" not in c for c in search[method]["candidates"])
        # the search's run of the winner and the table's run are the same seeded run (same threads)
        if shipped["sections"]["search"]["environment"]["threads"] == \
                shipped["sections"]["classifiers"]["environment"]["threads"]:
            run = shipped["runs"][method]
            assert chosen["validation"]["macro_f1"] == run["scores"]["validation"]["macro_f1"]
            assert chosen["validation"]["loss"] == pytest.approx(run["scores"]["validation"]["loss"], rel=1e-6)
            assert chosen["best_step"] == run["history"]["best_step"]


def test_shipped_results_were_written_by_this_code_with_its_settings(shipped, splits):
    assert ft.ClassifierSettings.from_dict(shipped["runs"]["full"]["settings"]) == ft.FULL
    assert ft.ClassifierSettings.from_dict(shipped["runs"]["lora"]["settings"]) == ft.LORA
    assert ft.ClassifierSettings.from_dict(shipped["notebook_run"]["settings"]) == ft.NOTEBOOK
    assert ft.GPT2LoRASettings.from_dict(shipped["gpt2_lora"]["settings"]) == ft.GPT2_LORA
    # cheap pieces of the run, measured again now
    recorded = shipped["runs"]["full"]["history"]["loss"][0]
    assert ft.first_step_loss(ft.FULL, splits) == pytest.approx(recorded, abs=1e-4)  # rounded to 5 digits; threads
    rows = {r["method"]: r for r in shipped["table"]}
    majority = ft.majority_baseline(splits)
    assert {s: {k: majority.scores[s][k] for k in ("accuracy", "macro_f1")} for s in ("validation", "test")} == \
        {s: rows["majority"][s] for s in ("validation", "test")}
    from course_lib.corpus import corpus_text
    from course_lib.loading import load_model
    from course_lib.metrics import perplexity
    from course_lib.tokenizer_loading import load_tokenizer

    tok = load_tokenizer("tiny-gpt2")
    model = load_model("tiny-gpt2")
    before = shipped["gpt2_lora"]["perplexity"]["before"]
    heldout = ft._stream(tok, ft.instruction_examples("heldout"))
    assert perplexity(model, heldout, block_size=ft.GPT2_LORA.block_size) == pytest.approx(before["heldout_qa"],
                                                                                          rel=1e-6)
    corpus = torch.tensor(tok.encode(corpus_text("heldout")).ids)
    assert perplexity(model, corpus, block_size=256) == pytest.approx(before["heldout_corpus"], rel=1e-6)


def test_check_results_names_what_is_wrong(shipped):
    def broken(change):
        bad = copy.deepcopy(shipped)
        change(bad)
        return bad

    with pytest.raises(ft.ResultsError, match="schema_version"):
        ft.check_results(broken(lambda r: r.update(schema_version=0)))
    with pytest.raises(ft.ResultsError, match="table rows should be"):
        ft.check_results(broken(lambda r: r["table"].pop()))
    with pytest.raises(ft.ResultsError, match=r"runs\.full\.scores\.test\.confusion_matrix counts"):
        ft.check_results(broken(lambda r: r["runs"]["full"]["scores"]["test"]["confusion_matrix"][0].__setitem__(0, 1)))
    with pytest.raises(ft.ResultsError, match=r"table\[2\]\.test has no key 'macro_f1'"):
        ft.check_results(broken(lambda r: r["table"][2]["test"].pop("macro_f1")))
    with pytest.raises(ft.ResultsError, match="another split"):
        ft.check_results(broken(lambda r: r["data"]["split_sha256"].update(test="0")))
    with pytest.raises(ft.ResultsError, match="must not hold test scores"):
        ft.check_results(broken(lambda r: r["validation_search"]["full"]["candidates"][0].update(test={})))


def test_write_results_merges_sections_and_is_checked(shipped, tmp_path):
    path = tmp_path / "results.json"
    gpt2_only = {k: shipped[k] for k in ("schema_version", "data", "gpt2_lora")}
    gpt2_only["sections"] = {"gpt2": shipped["sections"]["gpt2"]}
    ft.write_results(gpt2_only, path)
    notebook_only = {k: shipped[k] for k in ("schema_version", "data", "notebook_run")}
    notebook_only["sections"] = {"notebook": shipped["sections"]["notebook"]}
    merged = ft.write_results(notebook_only, path)
    assert set(merged["sections"]) == {"gpt2", "notebook"} and merged["gpt2_lora"] == shipped["gpt2_lora"]
    assert ft.read_results(path) == merged
    with pytest.raises(ft.ResultsError):
        ft.write_results({**notebook_only, "notebook_run": {}}, path)
    assert ft.read_results(path) == merged  # a refused write leaves the file as it was
    with pytest.raises(FileNotFoundError, match="python -m course_lib.fine_tuning"):
        ft.read_results(tmp_path / "missing.json")


def test_tables_and_plots_draw_from_the_shipped_results(shipped):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from course_lib import plots

    table = ft.fine_tuning_table(shipped).splitlines()
    assert len(table) == 5 and table[3].startswith("full fine-tuning")
    assert len(ft.deploy_table(shipped).splitlines()) == 1 + len(shipped["deploy"]["rows"])
    assert ft.pruning_table(shipped).splitlines()[1].split()[0] == "0"
    plots.plot_training_runs({m: shipped["runs"][m]["history"] for m in ("full", "lora")})
    plots.plot_confusion_matrices({m: shipped["runs"][m]["scores"]["test"]["confusion_matrix"]
                                   for m in ("full", "lora")}, ["ham", "spam"])
    rows = shipped["pruning"]["rows"]
    ks = [r["k"] for r in rows if r["order"] == "importance"]
    curves = {order: [r["test"]["macro_f1"] for r in rows if r["order"] == order] for order in ("importance", "random")}
    assert [r["k"] for r in rows if r["order"] == "random"] == ks
    plots.plot_pruning_cost(ks, curves, "test macro-F1", total_heads=shipped["pruning"]["total_heads"], reference=0.97)
    assert len(plt.get_fignums()) == 3
    plt.close("all")
