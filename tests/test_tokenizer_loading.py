"""load_tokenizer / build_tokenizer / encode_batch: parity with published and transformers-made tokenizer.json.

The legacy layouts (vocab.txt; vocab.json + merges.txt) are made on the fly: BERT from the
real MiniLM checkpoint with its tokenizer.json left out; RoBERTa and GPT-2 from small
byte-level BPEs trained on the course corpus, their reference tokenizer.json written by
transformers (test-only oracle) and then deleted.
"""

from __future__ import annotations

import json
import shutil

import pytest

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers  # noqa: E402

from course_lib.assets import asset_path  # noqa: E402
from course_lib.corpus import corpus_lines, corpus_text  # noqa: E402
from course_lib.tokenizer_loading import build_tokenizer, encode_batch, load_tokenizer, save_tokenizer_json  # noqa: E402

HARD_LINES = [
    "Héllo Wörld, café naïve résumé Ångström",            # accents (stripped when lowercasing)
    "e\u0301 combining accent, ﬁ ligature, Ｆｕｌｌｗｉｄｔｈ",
    "北京欢迎你 and 日本語のテキスト mixed with 한국어",        # CJK: one word per character
    "tab\there\x00null\x07bell\u200bzero-width\r\nCRLF",  # control characters
    "x" * 150 + " supercalifragilisticexpialidocious",     # longer than max_input_chars_per_word
    "   leading and trailing spaces   ",
    "emoji 🙂👍🏽 and symbols ∑∫√ ½ ©",
    "[CLS] [MASK] [SEP] [PAD] [UNK] typed as text",
    "<s> <mask> </s> <pad> <unk> a <mask>b<mask> <|endoftext|>text<|endoftext|>",
    "def f(x):\n    return x ** 2  # code",
]
FIELDS = ("ids", "tokens", "attention_mask", "offsets", "type_ids", "special_tokens_mask")


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return corpus_lines("heldout") + HARD_LINES


def assert_same_encodings(ours: Tokenizer, ref: Tokenizer, texts, what: str) -> int:
    """Every field of every encoding equal (and the decoded text); returns how many inputs were compared."""
    for i, (a, b) in enumerate(zip(ours.encode_batch(texts), ref.encode_batch(texts), strict=True)):
        for field in FIELDS:
            if getattr(a, field) != getattr(b, field):
                pytest.fail(f"{what}, input {i} {texts[i]!r}: {field} differ:\n ours {getattr(a, field)}\n"
                            f" ref  {getattr(b, field)}")
        assert ours.decode(a.ids) == ref.decode(b.ids), f"{what}, input {i}: decode differs"
    return len(texts)


def components(tokenizer_json: dict) -> dict:
    """The parts of a tokenizer.json that define its behaviour, with the model's vocab/merges kept whole."""
    return {k: tokenizer_json[k] for k in ("normalizer", "pre_tokenizer", "post_processor", "decoder", "model",
                                           "added_tokens", "truncation", "padding")}


# ---------------------------------------------------------------------------- BERT (vocab.txt)

@pytest.fixture(scope="module")
def minilm():
    return asset_path("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def bert_legacy(minilm, tmp_path_factory):
    """The MiniLM folder without tokenizer.json (and without its 90 MB of weights, not needed here)."""
    folder = tmp_path_factory.mktemp("bert_legacy")
    for f in minilm.iterdir():
        if f.is_file() and f.name != "tokenizer.json" and not f.name.endswith(".safetensors"):
            shutil.copy(f, folder / f.name)
    assert not (folder / "tokenizer.json").exists() and (folder / "vocab.txt").exists()
    return folder


@pytest.fixture(scope="module")
def published_bert(minilm):
    tok = Tokenizer.from_file(str(minilm / "tokenizer.json"))
    # The published sentence-transformers file also truncates and pads to 128: the one
    # setting a vocab.txt cannot carry. Compare the tokenization itself.
    tok.no_truncation()
    tok.no_padding()
    return tok


def test_bert_from_vocab_txt_matches_the_published_tokenizer_json(bert_legacy, published_bert, texts):
    ours = load_tokenizer(bert_legacy)
    n = assert_same_encodings(ours, published_bert, texts, "BERT single")
    pairs = list(zip(texts[::2], texts[1::2]))
    n += assert_same_encodings(ours, published_bert, pairs, "BERT pairs")
    assert n == len(texts) + len(texts) // 2 and len(texts) > 1000  # every held-out line, singly and in pairs
    enc = ours.encode("Hello, World!")
    assert enc.tokens == ["[CLS]", "hello", ",", "world", "!", "[SEP]"] and enc.ids[0] == 101 and enc.ids[-1] == 102
    assert ours.truncation is None and ours.padding is None  # as the Hub's tokenizer.json files


def test_bert_built_json_equals_the_published_one_except_truncation_and_padding(bert_legacy, minilm):
    ours = components(json.loads(build_tokenizer(bert_legacy).to_str()))
    published = components(json.loads((minilm / "tokenizer.json").read_text(encoding="utf-8")))
    assert published["truncation"]["max_length"] == 128 and ours["truncation"] is None
    for key in ours.keys() - {"truncation", "padding"}:
        assert ours[key] == published[key], key


def test_bert_built_json_equals_transformers_conversion(bert_legacy, tmp_path):
    transformers = pytest.importorskip("transformers")
    # transformers 5 ignores BertTokenizerFast(vocab_file=...) (it wants vocab=); from_pretrained
    # reads the folder the same way in every version.
    ref = transformers.BertTokenizerFast.from_pretrained(str(bert_legacy))
    ref.save_pretrained(str(tmp_path))
    theirs = components(json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8")))
    ours = components(json.loads(build_tokenizer(bert_legacy).to_str()))
    assert len(ours["model"]["vocab"]) == 30522
    for key in ours:
        assert ours[key] == theirs[key], key


def test_load_tokenizer_prefers_tokenizer_json(minilm):
    tok = load_tokenizer(minilm)
    assert tok.to_str() == Tokenizer.from_file(str(minilm / "tokenizer.json")).to_str()
    assert load_tokenizer("all-MiniLM-L6-v2").to_str() == tok.to_str()  # the asset name works too


def test_bert_settings_from_tokenizer_config_are_honoured(bert_legacy, tmp_path):
    shutil.copy(bert_legacy / "vocab.txt", tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": False, "strip_accents": False,
         "tokenize_chinese_chars": False}))
    data = json.loads(build_tokenizer(tmp_path).to_str())
    assert data["normalizer"] == {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": False,
                                  "strip_accents": False, "lowercase": False}
    assert load_tokenizer(tmp_path).encode("Hello").tokens[1] != "hello"


# ---------------------------------------------------------------------------- RoBERTa and GPT-2 (vocab.json + merges.txt)

# The real vocabularies' layouts: RoBERTa <s>=0 <pad>=1 </s>=2 <unk>=3 ... <mask> last;
# GPT-2 has one special token, <|endoftext|>, the last id.
BPE_LAYOUTS = {
    "roberta": (["<s>", "<pad>", "</s>", "<unk>"], "<mask>"),
    "gpt2": ([], "<|endoftext|>"),
}


def _train_byte_level_bpe(first_tokens: list[str], last_token: str, folder) -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=first_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([corpus_text("train")], trainer)
    tok.model.save(str(folder))  # vocab.json + merges.txt, as the Hub's legacy files
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    vocab[last_token] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")


@pytest.fixture(scope="module")
def bpe_checkpoints(tmp_path_factory):
    """{flavour: (legacy folder without tokenizer.json, transformers' tokenizer.json as a Tokenizer, its JSON)}."""
    transformers = pytest.importorskip("transformers")
    out = {}
    for flavour, (first, last) in BPE_LAYOUTS.items():
        folder = tmp_path_factory.mktemp(f"{flavour}_legacy")
        _train_byte_level_bpe(first, last, folder)
        if flavour == "roberta":
            # <mask> with lstrip=True, as roberta-base's published tokenizer.json and
            # transformers 4 have it (transformers 5 drops the lstrip by default).
            mask = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)
            ref = transformers.RobertaTokenizerFast.from_pretrained(str(folder), mask_token=mask)
            config = transformers.RobertaConfig(vocab_size=1001)
        else:
            ref = transformers.GPT2TokenizerFast.from_pretrained(str(folder))
            config = transformers.GPT2Config(vocab_size=1001, bos_token_id=1000, eos_token_id=1000)
        ref.save_pretrained(str(folder))
        config.save_pretrained(str(folder))
        ref_json = (folder / "tokenizer.json").read_text(encoding="utf-8")
        (folder / "tokenizer.json").unlink()
        assert (folder / "tokenizer_config.json").exists()
        out[flavour] = (folder, Tokenizer.from_str(ref_json), json.loads(ref_json))
    return out


SPECIAL_TEXTS = ["a <mask> b", "<mask>", "x<mask>y", "  <mask>  ", "The answer is <mask>.",
                 "end<|endoftext|>start", "<|endoftext|>", "one <|endoftext|> two", "<s>hi</s><pad><unk>"]


@pytest.mark.parametrize("flavour", list(BPE_LAYOUTS))
def test_byte_level_bpe_matches_transformers(bpe_checkpoints, texts, flavour):
    folder, ref, _ = bpe_checkpoints[flavour]
    ours = load_tokenizer(folder)
    n = assert_same_encodings(ours, ref, texts + SPECIAL_TEXTS, f"{flavour} single")
    n += assert_same_encodings(ours, ref, list(zip(texts[::2], texts[1::2])), f"{flavour} pairs")
    assert n == len(texts) + len(SPECIAL_TEXTS) + len(texts) // 2 and len(texts) > 1000
    special = {"roberta": "<mask>", "gpt2": "<|endoftext|>"}[flavour]
    ids = ours.encode(f"a {special}").ids
    assert ids[-2 if flavour == "roberta" else -1] == ours.token_to_id(special) == 1000


@pytest.mark.parametrize("flavour", list(BPE_LAYOUTS))
def test_byte_level_bpe_json_equals_transformers_conversion(bpe_checkpoints, flavour):
    folder, _, ref_json = bpe_checkpoints[flavour]
    ours, theirs = components(json.loads(build_tokenizer(folder).to_str())), components(ref_json)
    if flavour == "gpt2":
        # The Hub's gpt2 tokenizer.json has a ByteLevel post-processor that keeps offsets
        # untrimmed; transformers 5 writes an empty template instead. Both add no tokens and
        # trim nothing (the encodings test above proves it), so we follow the Hub.
        assert ours.pop("post_processor") == {"type": "ByteLevel", "add_prefix_space": True,
                                              "trim_offsets": False, "use_regex": True}
        theirs.pop("post_processor")
    for key in ours:
        assert ours[key] == theirs[key], key


@pytest.mark.parametrize("flavour", list(BPE_LAYOUTS))
@pytest.mark.parametrize("layout", ["vocab+merges+config.json", "vocab+merges only"])
def test_byte_level_bpe_flavour_without_tokenizer_config(bpe_checkpoints, texts, tmp_path, flavour, layout):
    folder, ref, _ = bpe_checkpoints[flavour]
    files = ["vocab.json", "merges.txt"] + (["config.json"] if "config" in layout else [])
    for f in files:
        shutil.copy(folder / f, tmp_path / f)
    ours = load_tokenizer(tmp_path)
    assert_same_encodings(ours, ref, texts[:300] + SPECIAL_TEXTS, f"{flavour} {layout}")


def test_special_tokens_map_and_added_tokens_decoder_override_the_defaults(bpe_checkpoints, tmp_path):
    folder, _, _ = bpe_checkpoints["roberta"]
    for f in ("vocab.json", "merges.txt", "config.json"):
        shutil.copy(folder / f, tmp_path / f)
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {"mask_token": {"content": "<mask>", "lstrip": False, "rstrip": False, "normalized": False,
                        "single_word": False}}))
    assert load_tokenizer(tmp_path).encode("a <mask>").tokens[-3:] == ["Ġ", "<mask>", "</s>"]
    (tmp_path / "special_tokens_map.json").unlink()
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {
        "1000": {"content": "<mask>", "lstrip": False, "rstrip": True, "normalized": False, "single_word": False,
                 "special": True},
        "1001": {"content": "<new>", "lstrip": False, "rstrip": False, "normalized": False, "single_word": False,
                 "special": True}}}))
    tok = load_tokenizer(tmp_path)
    added = {i: (t.content, t.rstrip, t.special) for i, t in tok.get_added_tokens_decoder().items()}
    assert added[1000] == ("<mask>", True, True) and added[1001] == ("<new>", False, True)
    assert 1001 in tok.encode("a <new> b").ids


# ---------------------------------------------------------------------------- save_tokenizer_json

@pytest.mark.parametrize("flavour", ["bert", "roberta", "gpt2"])
def test_save_tokenizer_json_round_trip(bert_legacy, bpe_checkpoints, texts, tmp_path, flavour):
    transformers = pytest.importorskip("transformers")
    folder = bert_legacy if flavour == "bert" else bpe_checkpoints[flavour][0]
    ours = build_tokenizer(folder)
    path = save_tokenizer_json(ours, tmp_path / "out")
    assert path == tmp_path / "out" / "tokenizer.json"
    sample = texts[:200] + HARD_LINES
    assert_same_encodings(Tokenizer.from_file(str(path)), ours, sample, f"{flavour} reloaded")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    assert fast(sample)["input_ids"] == [e.ids for e in ours.encode_batch(sample)]
    assert load_tokenizer(path.parent).to_str() == ours.to_str()


# ---------------------------------------------------------------------------- encode_batch

def test_encode_batch_pads_to_the_longest_with_a_mask(minilm):
    torch = pytest.importorskip("torch")
    tok = load_tokenizer(minilm)  # the published file pads to 128: encode_batch pads to the longest
    batch = encode_batch(tok, ["hi", "a somewhat longer sentence", ""])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert set(batch) == {"input_ids", "attention_mask"}
    assert ids.dtype == mask.dtype == torch.long and ids.shape == mask.shape == (3, 6)
    assert ids[0].tolist() == [101, 7632, 102, 0, 0, 0] and mask[0].tolist() == [1, 1, 1, 0, 0, 0]
    assert ids[2].tolist()[:2] == [101, 102] and mask[2].sum() == 2 and mask[1].all()
    assert (ids[mask == 0] == 0).all()  # [PAD] = 0


def test_encode_batch_truncates_keeping_special_tokens_and_pads_left(minilm):
    tok = load_tokenizer(minilm)
    long = " ".join(["word"] * 50)
    batch = encode_batch(tok, [long, "short one"], max_length=8)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][0, 0] == 101 and batch["input_ids"][0, -1] == 102 and batch["attention_mask"][0].all()
    left = encode_batch(tok, [long, "short one"], max_length=8, padding_side="left", return_tensors=None)
    assert left["input_ids"][1] == [0, 0, 0, 0, 101, 2460, 2028, 102]
    assert left["attention_mask"][1] == [0, 0, 0, 0, 1, 1, 1, 1]
    ragged = encode_batch(tok, [long, "short one"], padding=False, return_tensors=None, truncation=False)
    assert [len(x) for x in ragged["input_ids"]] == [52, 4]
    with pytest.raises(ValueError, match="padding=True"):
        encode_batch(tok, [long, "short one"], padding=False)
    with pytest.raises(ValueError, match="max_length >= 3"):
        encode_batch(tok, ["x"], max_length=2)


def test_encode_batch_leaves_the_callers_tokenizer_unchanged(minilm, bpe_checkpoints):
    tok = load_tokenizer(minilm)
    before = (tok.truncation, tok.padding)
    encode_batch(tok, ["a", "b c d"], max_length=3, padding_side="left")
    assert (tok.truncation, tok.padding) == before
    plain = build_tokenizer(bpe_checkpoints["gpt2"][0])
    with pytest.raises(ValueError):
        encode_batch(plain, ["a", "b c"], max_length=4)
    assert plain.truncation is None and plain.padding is None


def test_encode_batch_gpt2_needs_a_pad_token(bpe_checkpoints):
    tok = load_tokenizer(bpe_checkpoints["gpt2"][0])
    with pytest.raises(ValueError, match="no pad token") as err:
        encode_batch(tok, ["one", "one two three"])
    assert "pad_token='<|endoftext|>'" in str(err.value)
    eot = tok.token_to_id("<|endoftext|>")
    batch = encode_batch(tok, ["one", "one two three"], pad_token="<|endoftext|>", padding_side="left")
    n = len(tok.encode("one").ids)
    T = batch["input_ids"].shape[1]
    assert batch["input_ids"][0, : T - n].tolist() == [eot] * (T - n)
    assert batch["attention_mask"][0].tolist() == [0] * (T - n) + [1] * n
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        encode_batch(tok, ["one"], pad_token="[PAD]")


# ---------------------------------------------------------------------------- errors

def test_empty_folder_says_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_tokenizer(tmp_path)
    msg = str(err.value)
    for needle in ("no tokenizer files", "tokenizer.json", "vocab.txt", "vocab.json + merges.txt", "holds nothing",
                   "download"):
        assert needle in msg, msg


def test_missing_vocab_names_the_folder_contents(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "vocab.json").write_text("{}")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(FileNotFoundError, match=r"vocab.txt \(a bert tokenizer, from model_type 'bert'\).*"
                                                r"config.json, merges.txt, vocab.json"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("files", [{"sentencepiece.bpe.model": "x"},
                                   {"sentencepiece.bpe.model": "x", "config.json": '{"model_type": "xlm-roberta"}'},
                                   {"spiece.model": "x", "tokenizer_config.json": '{"tokenizer_class": "T5Tokenizer"}'}])
def test_sentencepiece_only_is_not_supported_and_says_so(tmp_path, files):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match="SentencePiece") as err:
        load_tokenizer(tmp_path)
    assert "does not build" in str(err.value) and "tokenizer.json" in str(err.value)


def test_unknown_flavour_says_how_to_fix(bpe_checkpoints, tmp_path):
    folder, _, _ = bpe_checkpoints["gpt2"]
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    del vocab["<|endoftext|>"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    shutil.copy(folder / "merges.txt", tmp_path / "merges.txt")
    with pytest.raises(ValueError, match="cannot tell which tokenizer") as err:
        load_tokenizer(tmp_path)
    assert "model_type" in str(err.value) and "tokenizer.json" in str(err.value)
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "MPNetTokenizerFast"}')
    with pytest.raises(ValueError, match="'MPNetTokenizer' .* is not one this course builds"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    (tmp_path / "config.json").write_text('{"model_type": "bart"}')
    with pytest.raises(ValueError, match="model_type 'bart'"):
        load_tokenizer(tmp_path)


def test_corrupt_tokenizer_json_and_missing_folder(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json.*download it again"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="no folder"):
        load_tokenizer(tmp_path / "missing")


def test_hub_id_of_the_asset_loads_offline(monkeypatch, tmp_path, minilm):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    tok = load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")
    assert tok.to_str() == load_tokenizer(minilm).to_str()


def test_a_generic_tokenizer_class_defers_to_model_type(bpe_checkpoints, tmp_path):
    folder, ref, _ = bpe_checkpoints["gpt2"]
    for f in ("vocab.json", "merges.txt", "config.json"):
        shutil.copy(folder / f, tmp_path / f)
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    assert_same_encodings(load_tokenizer(tmp_path), ref, SPECIAL_TEXTS, "gpt2 generic class")
