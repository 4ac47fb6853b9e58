"""Load a checkpoint's tokenizer as a ``tokenizers.Tokenizer``, and encode batches with it.

Newer checkpoints ship ``tokenizer.json``: the whole pipeline (normalizer, pre-tokenizer,
model, post-processor, decoder, special tokens) in one file. Older ones only ship the
vocabulary, and the pipeline lived in Python code:

- ``vocab.txt``               -> BERT WordPiece (bert-base-uncased, MiniLM, DistilBERT)
- ``vocab.json`` + ``merges.txt`` -> byte-level BPE, RoBERTa or GPT-2 flavour

``build_tokenizer`` rebuilds that pipeline from the vocabulary files and the settings in
``tokenizer_config.json`` / ``special_tokens_map.json``, the way the Hub's published
``tokenizer.json`` files are built. ``save_tokenizer_json`` writes the result so the next
load is a plain ``Tokenizer.from_file``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from course_lib.hub import TOKENIZER_FILES, resolve_source
from course_lib.tokenization import read_merges_txt, read_vocab_txt

SENTENCEPIECE_FILES = ("sentencepiece.bpe.model", "spiece.model", "tokenizer.model")

# tokenizer_config.json "tokenizer_class" (without "Fast") / config.json "model_type" -> flavour
FLAVOUR_OF_CLASS = {"BertTokenizer": "bert", "DistilBertTokenizer": "bert",
                    "RobertaTokenizer": "roberta", "GPT2Tokenizer": "gpt2"}
FLAVOUR_OF_MODEL_TYPE = {"bert": "bert", "distilbert": "bert", "roberta": "roberta", "gpt2": "gpt2"}
SENTENCEPIECE_CLASSES = {"XLMRobertaTokenizer", "CamembertTokenizer", "AlbertTokenizer", "T5Tokenizer",
                         "LlamaTokenizer", "MarianTokenizer", "XLNetTokenizer"}
SENTENCEPIECE_MODEL_TYPES = {"xlm-roberta", "camembert", "albert", "t5", "llama", "marian", "xlnet"}
GENERIC_CLASSES = {"PreTrainedTokenizer", "TokenizersBackend", "AutoTokenizer"}  # after removing "Fast"

# Special tokens per flavour, in the order they are added (the order only matters for
# tokens missing from the vocabulary: they get the next free ids). A dict value carries
# AddedToken flags: RoBERTa's <mask> swallows the space before it, so "a <mask>" works.
SPECIAL_TOKENS: dict[str, dict[str, Any]] = {
    "bert": {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
             "mask_token": "[MASK]"},
    "roberta": {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
                "cls_token": "<s>", "sep_token": "</s>", "mask_token": {"content": "<mask>", "lstrip": True}},
    "gpt2": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
}
TOKEN_FLAGS = ("lstrip", "rstrip", "single_word", "normalized")


# ---------------------------------------------------------------------------- loading

def load_tokenizer(src: str | os.PathLike, revision: str | None = None):
    """The tokenizer of ``src`` (a folder, a course asset name or a Hub model id) as a ``tokenizers.Tokenizer``.

    Uses ``tokenizer.json`` when the folder has one, else builds the same pipeline from
    ``vocab.txt`` or ``vocab.json`` + ``merges.txt`` (see ``build_tokenizer``).
    The tokenizer remembers its folder as ``tok.source_folder``: ``course_lib.chat_template``
    finds the chat template and the special tokens' roles (tokenizer_config.json) there.
    """
    from tokenizers import Tokenizer

    folder = resolve_source(src, revision=revision, filenames=["config.json", *TOKENIZER_FILES])
    path = folder / "tokenizer.json"
    if path.exists():
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as err:  # the Rust side raises a bare Exception
            raise ValueError(f"{path} is not a valid tokenizer.json ({err}): download it again, or delete it "
                             f"to rebuild the tokenizer from the vocabulary files") from err
    else:
        tok = build_tokenizer(folder)
    tok.source_folder = Path(folder)
    return tok


def save_tokenizer_json(tok, folder: str | os.PathLike) -> Path:
    """Write ``tok`` to ``folder/tokenizer.json`` (creating the folder) and return the file's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.json"
    tok.save(str(path), pretty=True)
    return path


# ---------------------------------------------------------------------------- building

def build_tokenizer(folder: str | os.PathLike):
    """Build the tokenizer of a checkpoint folder from its legacy files (no ``tokenizer.json`` needed).

    BERT flavour from ``vocab.txt``; RoBERTa or GPT-2 flavour from ``vocab.json`` +
    ``merges.txt``. The flavour comes from ``tokenizer_config.json`` "tokenizer_class",
    else ``config.json`` "model_type", else the special tokens in the vocabulary.
    Truncation and padding stay off, as in the published ``tokenizer.json`` files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {str(folder)!r}")
    settings = read_tokenizer_settings(folder)
    flavour = detect_flavour(folder, settings)
    specials = special_tokens(flavour, settings)
    if flavour == "bert":
        tok = _build_wordpiece(folder, settings, specials)
    else:
        tok = _build_byte_level_bpe(folder, flavour, settings, specials)
    _add_tokens(tok, folder, specials, settings)
    tok.post_processor = _post_processor(tok, flavour, settings, specials)
    return tok


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): download it again") from err


def read_tokenizer_settings(folder: Path) -> dict:
    """``tokenizer_config.json`` overlaid with ``special_tokens_map.json`` (which wins, as in transformers).

    Adds ``"_model_type"`` from ``config.json`` and ``"_added_tokens"`` from ``added_tokens.json``.
    """
    settings = dict(_read_json(folder / "tokenizer_config.json"))
    settings.update(_read_json(folder / "special_tokens_map.json"))
    settings["_model_type"] = _read_json(folder / "config.json").get("model_type")
    settings["_added_tokens"] = _read_json(folder / "added_tokens.json")
    return settings


def _vocab_files(folder: Path) -> dict[str, bool]:
    return {"wordpiece": (folder / "vocab.txt").exists(),
            "bpe": (folder / "vocab.json").exists() and (folder / "merges.txt").exists()}


def _no_files_error(folder: Path, needed: str) -> FileNotFoundError:
    contents = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    return FileNotFoundError(
        f"no tokenizer files in {folder}: looked for {needed}; the folder holds "
        f"{', '.join(contents) if contents else 'nothing'}. Fix: download the model's tokenizer files "
        f"into it (e.g. `hf download MODEL_ID tokenizer.json --local-dir {folder}`), or pass the folder "
        f"or Hub id of the original checkpoint")


def _sentencepiece_error(folder: Path, why: str) -> ValueError:
    return ValueError(
        f"{folder}: {why}: a SentencePiece tokenizer, which this course does not build from its model file. "
        f"Fix: use the checkpoint's tokenizer.json (download it from the Hub: `hf download MODEL_ID "
        f"tokenizer.json --local-dir {folder}`), or convert it once, online, with transformers: "
        f"AutoTokenizer.from_pretrained(MODEL_ID).save_pretrained(folder)")


def detect_flavour(folder: Path, settings: dict) -> str:
    """``"bert"``, ``"roberta"`` or ``"gpt2"``: which pipeline the folder's vocabulary files need."""
    files = _vocab_files(folder)
    tokenizer_class = (settings.get("tokenizer_class") or "").removesuffix("Fast")
    if tokenizer_class in GENERIC_CLASSES:  # says nothing about the pipeline
        tokenizer_class = ""
    model_type = settings.get("_model_type")
    sentencepiece = [f for f in SENTENCEPIECE_FILES if (folder / f).exists()]
    fix = ("Fix: put the checkpoint's tokenizer.json in the folder (download it, or save it once with "
           "transformers: AutoTokenizer.from_pretrained(MODEL_ID).save_pretrained(folder))")

    if tokenizer_class in SENTENCEPIECE_CLASSES:
        raise _sentencepiece_error(folder, f"tokenizer_class {tokenizer_class!r} in tokenizer_config.json")
    if model_type in SENTENCEPIECE_MODEL_TYPES and not tokenizer_class:
        raise _sentencepiece_error(folder, f"model_type {model_type!r} in config.json")
    if not any(files.values()):
        if sentencepiece:
            raise _sentencepiece_error(folder, f"only {', '.join(sentencepiece)} (no tokenizer.json)")
        raise _no_files_error(folder, "tokenizer.json, vocab.txt (BERT), vocab.json + merges.txt (RoBERTa, GPT-2)")

    if tokenizer_class:
        if tokenizer_class not in FLAVOUR_OF_CLASS:
            raise ValueError(f"{folder}: tokenizer_class {tokenizer_class!r} (tokenizer_config.json) is not one "
                             f"this course builds from vocabulary files ({', '.join(FLAVOUR_OF_CLASS)}). {fix}")
        flavour, source = FLAVOUR_OF_CLASS[tokenizer_class], f"tokenizer_class {tokenizer_class!r}"
    elif model_type:
        if model_type not in FLAVOUR_OF_MODEL_TYPE:
            raise ValueError(f"{folder}: model_type {model_type!r} (config.json) is not one this course builds "
                             f"a tokenizer for from vocabulary files ({', '.join(FLAVOUR_OF_MODEL_TYPE)}). {fix}")
        flavour, source = FLAVOUR_OF_MODEL_TYPE[model_type], f"model_type {model_type!r}"
    else:
        flavour, source = _flavour_from_vocab(folder, files, fix), "the special tokens of the vocabulary"

    needed = "wordpiece" if flavour == "bert" else "bpe"
    if not files[needed]:
        raise _no_files_error(folder, f"{'vocab.txt' if needed == 'wordpiece' else 'vocab.json + merges.txt'} "
                                      f"(a {flavour} tokenizer, from {source}) or tokenizer.json")
    return flavour


def _flavour_from_vocab(folder: Path, files: dict[str, bool], fix: str) -> str:
    if files["wordpiece"]:
        vocab = set(_read_wordpiece_vocab(folder / "vocab.txt"))
        if {"[CLS]", "[SEP]"} <= vocab:
            return "bert"
    if files["bpe"]:
        vocab = _read_json(folder / "vocab.json")
        if {"<s>", "</s>"} <= vocab.keys():
            return "roberta"
        if "<|endoftext|>" in vocab:
            return "gpt2"
    raise ValueError(f"{folder}: cannot tell which tokenizer these vocabulary files belong to: no "
                     f"tokenizer_config.json 'tokenizer_class', no config.json 'model_type', and the vocabulary "
                     f"lacks BERT's [CLS]/[SEP], RoBERTa's <s>/</s> and GPT-2's <|endoftext|>. Fix: add a "
                     f"config.json with the model_type (bert, roberta, gpt2), or use the model's tokenizer.json. "
                     f"{fix}")


def _token_spec(value: Any) -> dict | None:
    """A special-token setting (a string, or transformers' AddedToken dict) as ``{"content": ..., flags}``."""
    if value is None:
        return None
    if isinstance(value, str):
        return {"content": value}
    if isinstance(value, dict) and "content" in value:
        return {k: value[k] for k in ("content", *TOKEN_FLAGS) if k in value}
    raise ValueError(f"cannot read the special-token setting {value!r}: expected a string or "
                     f"{{'content': ..., 'lstrip': ..., ...}}")


def special_tokens(flavour: str, settings: dict) -> dict[str, dict]:
    """The flavour's special tokens, overridden by the folder's settings: ``{"pad_token": {"content": ...}, ...}``.

    A setting of ``null`` (GPT-2's pad_token) keeps the flavour's default (none for GPT-2).
    """
    out = {}
    for key, default in SPECIAL_TOKENS[flavour].items():
        spec = _token_spec(settings.get(key)) or _token_spec(default)
        base = _token_spec(default)
        if spec["content"] == base["content"]:
            spec = {**base, **spec}  # keep the default's flags unless the setting gives its own
        out[key] = spec
    for key in ("pad_token", "mask_token", "cls_token", "sep_token"):  # tokens a flavour may lack
        if key not in out and _token_spec(settings.get(key)):
            out[key] = _token_spec(settings[key])
    return out


def _build_wordpiece(folder: Path, settings: dict, specials: dict[str, dict]):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = read_vocab_txt(folder / "vocab.txt")
    unk = specials["unk_token"]["content"]
    tok = Tokenizer(models.WordPiece(vocab, unk_token=unk, continuing_subword_prefix="##",
                                     max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,                                             # drop control chars, unify whitespace
        handle_chinese_chars=settings.get("tokenize_chinese_chars", True),  # each CJK char is a word
        strip_accents=settings.get("strip_accents"),                 # None: follow lowercase
        lowercase=settings.get("do_lower_case", True),
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()            # split on whitespace and punctuation
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], add_prefix_space: bool = False):
    """A ``tokenizers.Tokenizer`` around a byte-level BPE vocabulary: GPT-2's regex split, every
    byte spelled as a printable character, the BPE merges, the ByteLevel decoder. No special
    tokens and no post-processor yet (they differ between RoBERTa and GPT-2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab, merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                               end_of_word_suffix="", fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)  # bytes -> printable chars
    tok.decoder = decoders.ByteLevel()
    return tok


def gpt2_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], eos_token: str = "<|endoftext|>"):
    """GPT-2's whole pipeline around a byte-level BPE vocabulary, as in the Hub's ``gpt2/tokenizer.json``:
    no normalizer, no space added in front, nothing added around the text (the ByteLevel
    post-processor only fixes offsets), and ``eos_token`` as a special token, so
    "<|endoftext|>" in a text becomes its one id. ``train_tiny`` builds the tiny GPT-2's with it."""
    from tokenizers import AddedToken

    tok = byte_level_bpe(vocab, merges)
    tok.post_processor = _post_processor(tok, "gpt2", {}, {})
    tok.add_special_tokens([AddedToken(eos_token, special=True)])
    return tok


def _build_byte_level_bpe(folder: Path, flavour: str, settings: dict, specials: dict[str, dict]):
    vocab = _read_json(folder / "vocab.json")
    merges = read_merges_txt(folder / "merges.txt")
    return byte_level_bpe(vocab, merges, add_prefix_space=bool(settings.get("add_prefix_space", False)))


def _post_processor(tok, flavour: str, settings: dict, specials: dict[str, dict]):
    """What goes around the text: [CLS] A [SEP] (BERT), <s> A </s> (RoBERTa), nothing (GPT-2)."""
    from tokenizers import processors

    if flavour == "gpt2":  # offsets keep their leading space (trim_offsets=False), as the Hub's gpt2 file
        return processors.ByteLevel(trim_offsets=False)
    cls, sep = specials["cls_token"]["content"], specials["sep_token"]["content"]
    ids = {t: tok.token_to_id(t) for t in (cls, sep)}  # added by now, so never None
    if flavour == "bert":
        return processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0",
            pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, ids[cls]), (sep, ids[sep])],
        )
    # RoBERTa: <s> A </s>   and   <s> A </s></s> B </s>
    add_prefix_space = bool(settings.get("add_prefix_space", False))
    return processors.RobertaProcessing((sep, ids[sep]), (cls, ids[cls]),
                                        trim_offsets=bool(settings.get("trim_offsets", True)),
                                        add_prefix_space=add_prefix_space)


def _add_tokens(tok, folder: Path, specials: dict[str, dict], settings: dict) -> None:
    """Add the special tokens (and any extra added tokens the configs list), checking their ids."""
    from tokenizers import AddedToken

    # added_tokens_decoder (tokenizer_config.json): {"id": {"content": ..., flags, "special": bool}}
    decoder = {int(i): spec for i, spec in (settings.get("added_tokens_decoder") or {}).items()}
    by_content = {spec["content"]: (i, spec) for i, spec in decoder.items()}
    wanted: dict[str, dict] = {}
    for spec in specials.values():
        wanted.setdefault(spec["content"], {**spec, "special": True})
    for value in settings.get("additional_special_tokens") or []:
        spec = _token_spec(value)
        wanted.setdefault(spec["content"], {**spec, "special": True})
    for content, spec in wanted.items():
        if content in by_content:
            spec.update({k: by_content[content][1][k] for k in TOKEN_FLAGS if k in by_content[content][1]})
    for i, spec in sorted(decoder.items()):
        wanted.setdefault(spec["content"], {k: spec[k] for k in ("content", "special", *TOKEN_FLAGS) if k in spec})
    for content in settings.get("_added_tokens") or {}:
        wanted.setdefault(content, {"content": content, "special": False})

    expected_id = {c: i for c, (i, _) in by_content.items()}
    expected_id.update({c: i for c, i in (settings.get("_added_tokens") or {}).items() if c not in expected_id})
    # Tokens missing from the vocabulary get the next ids in the order added: add by expected id.
    order = sorted(wanted, key=lambda c: (tok.token_to_id(c) is None, expected_id.get(c, float("inf"))))
    for content in order:
        spec = wanted[content]
        flags = {k: spec[k] for k in TOKEN_FLAGS if k in spec}
        special = bool(spec.get("special", True))
        token = AddedToken(content, special=special, **flags)
        (tok.add_special_tokens if special else tok.add_tokens)([token])
    for content, i in expected_id.items():
        if tok.token_to_id(content) != i:
            raise ValueError(f"{folder}: the configs give token {content!r} id {i}, but the vocabulary files give "
                             f"it id {tok.token_to_id(content)}: the files belong to different checkpoints; "
                             f"download the tokenizer files again")


# ---------------------------------------------------------------------------- text in

def check_text(text, name: str = "text") -> str:
    """``text`` if it is a ``str`` that UTF-8 can encode; a clear ``TypeError``/``ValueError`` otherwise.

    A *lone surrogate* (``"\\ud800"``: half of a UTF-16 pair, not a character; it comes from a
    JSON escape such as ``"\\ud83d"`` without its partner, or from bytes decoded with
    ``errors="surrogateescape"``) cannot be tokenized: the error names its position.
    """
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__} ({text!r:.60}); for token ids use "
                        f"the model directly (model.generate for a decoder)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{name} has a lone surrogate {text[err.start]!r} at position {err.start} (half of a "
                         f"UTF-16 pair, not a character): UTF-8 cannot encode it, so no tokenizer can read it. "
                         f"Repair the text (a pair split by a JSON escape joins again with "
                         f"text.encode('utf-16', 'surrogatepass').decode('utf-16')), or drop it: "
                         f"text.encode('utf-8', 'ignore').decode()") from None
    return text


# ---------------------------------------------------------------------------- batches

def encode_batch(tok, texts: str | list[str], max_length: int | None = None, padding: bool = True,
                 truncation: bool = True, return_tensors: str | None = "pt", pad_token: str | None = None,
                 padding_side: str = "right") -> dict:
    """Tokenize a batch of texts in one call: special tokens, truncation, padding, attention mask.

    ``max_length``: cut each sequence to this many tokens, special tokens included (they are
    kept); ``None`` keeps the tokenizer's own truncation setting, if any.
    ``padding``: pad to the longest sequence of the batch with ``pad_token`` (default: the
    tokenizer's pad token, [PAD] or <pad>; GPT-2 has none: pass ``pad_token="<|endoftext|>"``).
    ``padding_side``: "right", or "left" for batched generation with a decoder.
    Returns ``{"input_ids": (B, T) int64, "attention_mask": (B, T) int64}`` — 1 for a real
    token, 0 for a pad — as torch tensors, or as lists of lists when ``return_tensors=None``.
    The tokenizer's own truncation and padding settings are restored afterwards.
    """
    if isinstance(texts, str):
        texts = [texts]
    if texts is None or isinstance(texts, (bytes, dict)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}"
                        f"{'' if texts is None else f' ({texts!r:.60})'}: pass e.g. [\"first text\", \"second\"]")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is an empty list: pass at least one string")
    for i, text in enumerate(texts):
        check_text(text, f"texts[{i}]")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if return_tensors not in ("pt", None):
        raise ValueError(f"return_tensors must be 'pt' (torch tensors) or None (lists), got {return_tensors!r}")
    if max_length is not None and truncation:
        shortest = tok.num_special_tokens_to_add(False) + 1
        if max_length < shortest:
            raise ValueError(f"max_length={max_length} leaves no room for text: this tokenizer adds "
                             f"{shortest - 1} special tokens; use max_length >= {shortest}")

    saved_truncation, saved_padding = tok.truncation, tok.padding
    try:
        if not truncation:
            tok.no_truncation()
        elif max_length is not None:
            tok.enable_truncation(max_length)  # counts the special tokens the post-processor adds
        if padding:
            pad_id, pad = _pad_token(tok, pad_token)
            tok.enable_padding(direction=padding_side, pad_id=pad_id, pad_token=pad)  # to the longest
        else:
            tok.no_padding()
        encodings = tok.encode_batch(texts)
    finally:  # leave the caller's tokenizer as it was
        if saved_truncation:
            tok.enable_truncation(**saved_truncation)
        else:
            tok.no_truncation()
        if saved_padding:
            tok.enable_padding(**saved_padding)
        else:
            tok.no_padding()

    batch = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings]}
    if return_tensors is None:
        return batch
    lengths = {len(ids) for ids in batch["input_ids"]}
    if len(lengths) > 1:
        raise ValueError(f"the sequences have different lengths ({min(lengths)}..{max(lengths)}) and a tensor "
                         f"must be rectangular: use padding=True, or return_tensors=None for lists")
    import torch

    return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def _pad_token(tok, pad_token: str | None) -> tuple[int, str]:
    if pad_token is not None:
        pad_id = tok.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"pad_token {pad_token!r} is not in the tokenizer's vocabulary: pass a token it has "
                             f"(any token works: the attention mask hides the pads)")
        return pad_id, pad_token
    if tok.padding:
        return tok.padding["pad_id"], tok.padding["pad_token"]
    for candidate in ("[PAD]", "<pad>"):
        if tok.token_to_id(candidate) is not None:
            return tok.token_to_id(candidate), candidate
    raise ValueError("this tokenizer has no pad token (GPT-2 has none), so texts of different lengths cannot be "
                     "padded: pass pad_token='<|endoftext|>' (or any token of its vocabulary: the attention mask "
                     "hides the pads), or padding=False")
