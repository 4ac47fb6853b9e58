"""Chapter 08's labelled set (the SMS Spam Collection), its fixed split, batches and baselines.

The shipped file and each split are pinned by SHA-256; a changed file or changed splitting
code is a clear error. The linear probe runs on a slice of the split here, for speed
(``python -m course_lib.classification_data --baselines`` measures it on the whole split)."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from course_lib import classification_data as cd
from course_lib.assets import asset_path
from course_lib.metrics import macro_f1

M = cd.Message


@pytest.fixture(scope="module")
def splits():
    return cd.sms_spam_splits()


@pytest.fixture(scope="module")
def tokenizer():
    from course_lib.tokenizer_loading import load_tokenizer

    return load_tokenizer("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def minilm():
    from course_lib.loading import load_model

    return load_model("all-MiniLM-L6-v2")


@pytest.fixture
def fresh_split_cache():
    cd._course_splits.cache_clear()
    yield
    cd._course_splits.cache_clear()


# ---------------------------------------------------------------------------- the file

def test_the_shipped_file_is_the_pinned_one_and_reads_whole():
    path = asset_path("sms-spam") / "SMSSpamCollection"
    assert path == cd.data_path()
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == cd.SMS_SPAM_SHA256, (
        "course_lib/assets/sms-spam/SMSSpamCollection changed: restore it (git checkout); the split and every "
        "number measured on it depend on these bytes")
    messages = cd.read_sms_spam()
    assert len(messages) == data.count(b"\n") + 1 == 5574  # no newline after the last line
    assert sum(m.label for m in messages) == 747 and cd.ID2LABEL == {0: "ham", 1: "spam"}
    assert messages[0] == M("Go until jurong point, crazy.. Available only in bugis n great world la e buffet... "
                            "Cine there got amore wat...", 0)
    assert messages[-1] == M("Rofl. Its true to its name", 0)
    licence = (asset_path("sms-spam") / "LICENSE.txt").read_text(encoding="utf-8")
    assert "CC BY 4.0" in licence and "Almeida" in licence


def test_a_changed_file_is_a_clear_error_naming_it_and_the_fix(tmp_path):
    copy = tmp_path / "SMSSpamCollection"
    data = bytearray(cd.data_path().read_bytes())
    data[100] = ord("X") if data[100] != ord("X") else ord("Y")
    copy.write_bytes(bytes(data))
    with pytest.raises(cd.DataIntegrityError, match=r"(?s)SMSSpamCollection: SHA-256 .* expected edc1f2ca.*"
                                                    r"git checkout -- course_lib/assets/sms-spam/SMSSpamCollection"):
        cd.read_sms_spam(copy)
    crlf = tmp_path / "crlf"  # what git does with core.autocrlf=true: same messages, other bytes
    crlf.write_bytes(cd.data_path().read_bytes().replace(b"\n", b"\r\n"))
    with pytest.raises(cd.DataIntegrityError, match="autocrlf"):
        cd.read_sms_spam(crlf)
    assert len(cd.read_sms_spam(copy, sha256=None)) == 5574  # a different copy, on purpose
    with pytest.raises(FileNotFoundError, match="no data file .*missing.*git checkout"):
        cd.read_sms_spam(tmp_path / "missing")


@pytest.mark.parametrize("body, match", [
    (b"ham\tfine\nspam no tab here\n", "line 2: no TAB"),
    (b"ham\tfine\nSPAM\tshouting\n", "line 2: label 'SPAM' is not one of ham, spam"),
    (b"ham\t  \n", "line 1: the message text is empty"),
    (b"ham\t\xff\xfe\n", "not UTF-8"),
])
def test_malformed_lines_are_clear_errors(tmp_path, body, match):
    path = tmp_path / "bad.tsv"
    path.write_bytes(body)
    with pytest.raises(ValueError, match=match):
        cd.read_sms_spam(path, sha256=None)


def test_a_newline_after_the_last_line_is_fine(tmp_path):
    path = tmp_path / "ok.tsv"
    path.write_bytes(b"ham\tsee you at 5\nspam\tWIN a prize! txt 8007\n")
    assert cd.read_sms_spam(path, sha256=None) == [M("see you at 5", 0), M("WIN a prize! txt 8007", 1)]


# ---------------------------------------------------------------------------- deduplicating

def test_deduplicate_keeps_each_text_once_and_drops_conflicts():
    messages = [M("call me", 0), M("WIN NOW", 1), M("call me", 0), M("WIN  NOW ", 1), M("ok", 0),
                M("which is it", 0), M("which is it", 1), M("call me", 0), M("which  is it", 0)]
    kept, report = cd.deduplicate(messages)
    assert kept == [M("call me", 0), M("WIN NOW", 1), M("ok", 0)]  # first occurrences, in order
    assert (report.n_read, report.n_kept, report.exact_duplicates, report.whitespace_variants,
            report.conflicting_messages) == (9, 3, 2, 1, 3)
    assert report.conflicting_texts == ("which is it",)
    assert report.n_read == (report.n_kept + report.exact_duplicates + report.whitespace_variants
                             + report.conflicting_messages)
    assert "1 texts had conflicting labels (3 messages dropped)" in report.summary()


def test_the_shipped_file_deduplicates_to_5160_messages_without_conflicts():
    messages = cd.read_sms_spam()
    report = cd.deduplication_report()
    assert report.n_read == len(messages)
    assert report.n_kept == len({cd.dedup_key(m.text) for m in messages}) == 5160
    assert report.exact_duplicates == len(messages) - len({m.text for m in messages}) == 403
    assert report.whitespace_variants == 11 and report.conflicting_texts == ()
    assert "no duplicate had a conflicting label" in report.summary()


# ---------------------------------------------------------------------------- the fixed split

def test_every_split_is_the_pinned_one(splits):
    assert list(splits) == ["train", "validation", "test"]
    for name, split in splits.items():
        assert split.sha256() == cd.SPLIT_SHA256[name]
        assert cd.load_split(name) is split


def test_splits_are_disjoint_cover_the_deduplicated_set_and_keep_file_order(splits):
    kept, _ = cd.deduplicate(cd.read_sms_spam())
    keys = {name: {cd.dedup_key(t) for t in split.texts} for name, split in splits.items()}
    assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    assert sum(len(s) for s in splits.values()) == len(kept)
    position = {m.text: i for i, m in enumerate(kept)}
    label = {m.text: m.label for m in kept}
    for split in splits.values():
        places = [position[t] for t in split.texts]
        assert places == sorted(places)
        assert list(split.labels) == [label[t] for t in split.texts]  # each text with its own label


def test_splits_are_70_10_20_and_stratified(splits):
    counts = {name: split.label_counts() for name, split in splits.items()}
    assert counts == {"train": {"ham": 3162, "spam": 450}, "validation": {"ham": 452, "spam": 64},
                      "test": {"ham": 904, "spam": 128}}
    total = {c: sum(counts[s][c] for s in counts) for c in ("ham", "spam")}
    for name, fraction in cd.SPLIT_FRACTIONS.items():
        for c in ("ham", "spam"):  # every class split in the same proportions, to the message
            assert abs(counts[name][c] - fraction * total[c]) <= 1
    print(cd.split_summary(splits))


def test_changed_splitting_code_is_a_clear_error(monkeypatch, fresh_split_cache):
    monkeypatch.setattr(cd, "SPLIT_SEED", cd.SPLIT_SEED + 1)
    with pytest.raises(cd.DataIntegrityError, match="'train' split .* SPLIT_SHA256.*re-measure"):
        cd.sms_spam_splits()


def test_stratified_split_is_seeded_and_refuses_duplicates():
    kept, _ = cd.deduplicate(cd.read_sms_spam())
    a, b = cd.stratified_split(kept, seed=1), cd.stratified_split(kept, seed=1)
    c = cd.stratified_split(kept, seed=2)
    assert a == b and a["test"].texts != c["test"].texts
    assert {n: s.label_counts() for n, s in a.items()} == {n: s.label_counts() for n, s in c.items()}
    with pytest.raises(ValueError, match="deduplicate"):
        cd.stratified_split([M("hi", 0), M("hi", 0)])
    with pytest.raises(ValueError, match="sum to 1"):
        cd.stratified_split(kept, {"train": 0.7, "test": 0.2})
    with pytest.raises(ValueError, match="unknown split 'dev'.*train, validation, test"):
        cd.load_split("dev")


def test_the_readme_shows_the_split_the_code_computes(splits):
    readme = (asset_path("sms-spam") / "README.md").read_text(encoding="utf-8")
    assert cd.split_summary(splits) in readme, "update the split table in course_lib/assets/sms-spam/README.md"
    for needle in ("CC BY 4.0", "LICENSE.txt", "sms_spam_splits", "403 exact duplicates"):
        assert needle in readme


def test_a_slice_is_a_smaller_split(splits):
    head = splits["train"][:10]
    assert isinstance(head, cd.TextSplit) and len(head) == 10 and head.name == "train"
    assert head[0] == M(splits["train"].texts[0], splits["train"].labels[0])


# ---------------------------------------------------------------------------- tokens and batches

def test_token_length_report_counts_what_each_max_length_cuts(tokenizer, splits):
    texts = [t for s in splits.values() for t in s.texts]
    report = cd.token_length_report(tokenizer, texts, cutoffs=(64, 128))
    from tokenizers import Tokenizer

    uncut = Tokenizer.from_str(tokenizer.to_str())
    assert uncut.truncation["max_length"] == uncut.padding["length"] == 128  # MiniLM's tokenizer.json pads
    uncut.no_truncation()                                                       # and cuts to 128 by itself
    uncut.no_padding()
    one_by_one = [len(uncut.encode(t).ids) for t in texts]
    assert report["n"] == len(texts) and report["max"] == max(one_by_one)
    assert report["cut_at"] == {64: sum(n > 64 for n in one_by_one), 128: sum(n > 128 for n in one_by_one)}
    assert report["median"] == sorted(one_by_one)[(len(texts) + 1) // 2 - 1]
    assert cd.token_lengths(tokenizer, ["hello world"]) == [4]  # [CLS] hello world [SEP]


def test_classification_batches_are_padded_masked_and_labelled(tokenizer, splits):
    split = splits["validation"]
    long_text = " ".join(["word"] * 300)
    batches = cd.classification_batches(tokenizer, split, batch_size=50, max_length=64)
    assert len(batches) == 11 and len(batches[-1]["labels"]) == 16
    pad, sep = tokenizer.token_to_id("[PAD]"), tokenizer.token_to_id("[SEP]")
    for batch in batches:
        ids, mask, labels, index = batch["input_ids"], batch["attention_mask"], batch["labels"], batch["index"]
        assert ids.dtype == mask.dtype == labels.dtype == index.dtype == torch.int64
        assert ids.shape == mask.shape and ids.shape[1] <= 64 and labels.shape == index.shape == (ids.shape[0],)
        assert torch.equal(ids[mask == 0], torch.full_like(ids[mask == 0], pad))
        assert labels.tolist() == [split.labels[i] for i in index.tolist()]
        assert (mask.sum(dim=1) == ids.shape[1]).any()  # padded to the longest of the batch
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(len(split)))

    cut = cd.classification_batches(tokenizer, cd.TextSplit("x", (long_text, "hi"), (1, 0)), max_length=64)[0]
    assert cut["input_ids"].shape == (2, 64) and cut["input_ids"][0, -1] == sep  # cut, [SEP] kept


def test_classification_batches_shuffle_by_seed_or_sort_by_length(tokenizer, splits):
    split = splits["validation"]

    def order(**kw):
        return torch.cat([b["index"] for b in cd.classification_batches(tokenizer, split, **kw)]).tolist()

    assert order(shuffle=True, seed=3) == order(shuffle=True, seed=3) != order(shuffle=True, seed=4)
    assert sorted(order(shuffle=True, seed=3)) == list(range(len(split)))
    lengths = cd.token_lengths(tokenizer, split.texts)
    by_length = [lengths[i] for i in order(sort_by_length=True)]
    assert by_length == sorted(by_length)
    with pytest.raises(ValueError, match="shuffle and sort_by_length"):
        cd.classification_batches(tokenizer, split, shuffle=True, sort_by_length=True)
    with pytest.raises(ValueError, match="empty"):
        cd.classification_batches(tokenizer, split[:0])


# ---------------------------------------------------------------------------- baselines

def test_majority_baseline_predicts_ham_everywhere(splits):
    result = cd.majority_baseline(splits)
    assert result.details["predicted_label"] == "ham"
    for name in ("validation", "test"):
        counts = splits[name].label_counts()
        n = len(splits[name])
        assert result.predictions[name] == [0] * n
        assert result.scores[name]["accuracy"] == pytest.approx(counts["ham"] / n)
        ham_f1 = 2 * counts["ham"] / (2 * counts["ham"] + counts["spam"])  # spam: never predicted, F1 0
        assert result.scores[name]["macro_f1"] == pytest.approx(ham_f1 / 2)
    flipped = {n: cd.TextSplit(n, s.texts, tuple(1 - y for y in s.labels)) for n, s in splits.items()}
    assert cd.majority_baseline(flipped).details["predicted_label"] == "spam"
    with pytest.raises(KeyError, match="lack train"):
        cd.majority_baseline({"test": splits["test"]})


def test_logistic_regression_reaches_the_penalised_optimum():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] + 0.3 * torch.randn(400, generator=g) > 0).long()
    probe = cd.fit_logistic_regression(x, y, weight_decay=1e-2)
    assert probe.predict(x) == cd.fit_logistic_regression(x, y, weight_decay=1e-2).predict(x)  # deterministic
    assert sum(p == t for p, t in zip(probe.predict(x), y.tolist())) / 400 > 0.85
    # at the optimum the gradient of the penalised loss vanishes
    weight = probe.classifier.weight.detach().clone().requires_grad_()
    bias = probe.classifier.bias.detach().clone().requires_grad_()
    z = (x - probe.mean) / probe.std
    loss = torch.nn.functional.cross_entropy(z @ weight.T + bias, y) + 0.5 * 1e-2 * weight.pow(2).sum()
    loss.backward()
    assert weight.grad.abs().max() < 1e-4 and bias.grad.abs().max() < 1e-4
    heavier = cd.fit_logistic_regression(x, y, weight_decay=1.0)
    assert heavier.classifier.weight.norm() < probe.classifier.weight.norm()
    with pytest.raises(ValueError, match="weight_decay must be > 0"):
        cd.fit_logistic_regression(x, y, weight_decay=0.0)


def test_embed_texts_sorts_for_speed_but_returns_input_order(minilm, tokenizer, splits):
    from course_lib.models.encoder import sentence_embeddings

    texts = list(splits["validation"].texts[:24])
    ours = cd.embed_texts(minilm, tokenizer, texts, batch_size=8, progress=False)
    reference = sentence_embeddings(minilm, tokenizer, texts, max_length=cd.DEFAULT_MAX_LENGTH, batch_size=1)
    assert ours.shape == (24, 384) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_linear_probe_beats_the_majority_on_a_slice(minilm, tokenizer, splits):
    small = {"train": splits["train"][:400], "validation": splits["validation"][:120], "test": splits["test"][:200]}
    result = cd.linear_probe_baseline(small, model=minilm, tokenizer=tokenizer, weight_decays=(1e-3, 1e-1),
                                      progress=False)
    majority = cd.majority_baseline(small)
    assert result.details["weight_decay"] in (1e-3, 1e-1) and result.details["n_features"] == 384
    assert set(result.details["validation_by_weight_decay"]) == {1e-3, 1e-1}
    assert result.wall_s >= result.details["embed_s"] > 0
    for name in ("validation", "test"):
        assert len(result.predictions[name]) == len(small[name])
        assert result.scores[name]["macro_f1"] == pytest.approx(macro_f1(small[name].labels, result.predictions[name]))
        assert result.scores[name]["macro_f1"] > majority.scores[name]["macro_f1"] + 0.3
    print(cd.results_table([majority, result]))
