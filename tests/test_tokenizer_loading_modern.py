"""The tokenizers of chapter 09's real modern decoders, in the Hub's layout, against ``transformers``.

HuggingFaceTB/SmolLM2-135M(-Instruct) and Qwen/Qwen2.5-0.5B(-Instruct) ship byte-level BPE tokenizers whose
``tokenizer.json`` differs from GPT-2's where it matters: SmolLM2 splits every digit off before GPT-2's
regex (``Digits(individual_digits=True)``) and keeps its 17 special tokens at ids 0-16; Qwen2.5 normalises
to NFC, splits with its own regex (case-insensitive contractions, one digit at a time, no space glued to
punctuation runs) before a ByteLevel step that no longer splits, and appends 22 added tokens (14 special,
8 not: ``<tool_call>``, the FIM markers...) after the vocabulary, with no BOS at all.

Offline, the tests build such folders: a tiny BPE trained here on the course corpus, wrapped in the
normalizer / pre-tokenizer / post-processor / decoder settings exactly as each repository's
``tokenizer.json`` writes them, saved with the published ``tokenizer_config.json`` fields (special tokens,
``added_tokens_decoder``, the real chat template from ``tests/fixtures/chat_templates``) and the
``vocab.json`` + ``merges.txt`` the repositories also ship. Only the vocabulary is small: the added
tokens follow it (ids 600...) instead of sitting at 151643... Then the course's ``load_tokenizer`` and
``encode_chat`` are compared with ``transformers.AutoTokenizer.from_pretrained`` on the same folder, and a
random-weight checkpoint in each layout (``tests/test_llama.py``'s shrunk published configs) generates the
same greedy tokens as ``transformers`` from a chat-templated prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from course_lib import load_model, load_tokenizer
from course_lib.chat_template import apply_chat_template, encode_chat
from helpers import assert_close
from test_llama import reference_model, save_hub_folder, shrunk

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"
VOCAB = 600  # the tiny BPE's size (the published ones: 49152 and 151643)

# ------------------------------------------------------------------ the published settings

SMOLLM2_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>",
                   "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>",
                   "<jupyter_text>", "<jupyter_code>", "<jupyter_output>", "<jupyter_script>", "<empty_output>"]
# HuggingFaceTB/SmolLM2-135M(-Instruct) tokenizer.json (the StarCoder tokenizer's pipeline)
SMOLLM2_PIPELINE = {
    "normalizer": None,
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
    "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
    "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    "model": {"dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
              "fuse_unk": False, "byte_fallback": False, "ignore_merges": False},
}
# HuggingFaceTB/SmolLM2-135M-Instruct tokenizer_config.json (added_tokens_decoder: the 17 tokens above, ids 0-16)
SMOLLM2_INSTRUCT_CONFIG = {
    "add_prefix_space": False, "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
    "bos_token": "<|im_start|>", "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
    "model_max_length": 8192, "pad_token": "<|im_end|>", "tokenizer_class": "GPT2Tokenizer",
    "unk_token": "<|endoftext|>", "vocab_size": 49152,
}

QWEN_ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
              "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
              "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
              "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
QWEN3_ADDED = QWEN_ADDED + ["<tool_response>", "</tool_response>", "<think>", "</think>"]
QWEN_NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>",
                    "</think>"}
QWEN_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
# Qwen/Qwen2.5-0.5B(-Instruct) and Qwen/Qwen3-0.6B tokenizer.json
QWEN_PIPELINE = {
    "normalizer": {"type": "NFC"},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN_REGEX}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
    "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
    "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
    "model": {"dropout": None, "unk_token": None, "continuing_subword_prefix": "", "end_of_word_suffix": "",
              "fuse_unk": False, "byte_fallback": False, "ignore_merges": False},
}
# Qwen/Qwen2.5-0.5B-Instruct tokenizer_config.json (Qwen3-0.6B: the same, with its own template and 4 more tokens)
QWEN_INSTRUCT_CONFIG = {
    "add_prefix_space": False,
    "additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
                                  "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
                                  "<|video_pad|>"],
    "bos_token": None, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
    "model_max_length": 131072, "pad_token": "<|endoftext|>", "split_special_tokens": False,
    "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
}

TEXTS = [
    "Hello world! 123 and 3.14159 and 1,000,000",
    "def foo(x):\n    return x ** 2  # comment\n\n\n",
    "I'm sure they'll say it's fine. I'M SURE THEY'LL SAY IT'S FINE.",
    "Grüße aus Köln! Ça va? naïve café — résumé. Cafe\u0301 (a decomposed é: NFC joins it for Qwen)",
    "日本語のテキスト、한국어 텍스트, Россия и Україна, مرحبا 🙂👍🏽",
    "  leading, multiple   internal    spaces, tabs\tand\r\nnewlines  ",
    "<|im_start|>user\nHi 42<|im_end|>\n<|im_start|>assistant\n<tool_call>{}</tool_call><|endoftext|>",
    "",
]
CHATS = [
    [{"role": "user", "content": "What is 6 * 7?"}],
    [{"role": "system", "content": "Réponds en français."},
     {"role": "user", "content": "Quelle heure est-il ? 12h30"},
     {"role": "assistant", "content": "Il est 12 h 30."}, {"role": "user", "content": "Merci! 日本語は?"}],
]


# ------------------------------------------------------------------ building the folders

def _added(content: str, special: bool = True) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": special}


def _train(specials: list[str], pipeline: dict):
    """A BPE of VOCAB tokens trained on the course corpus with the repository's normalizer and pre-tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from course_lib.corpus import corpus_text

    wrapper = json.loads(Tokenizer(models.BPE()).to_str())
    wrapper.update(normalizer=pipeline["normalizer"], pre_tokenizer=pipeline["pre_tokenizer"])
    tok = Tokenizer.from_str(json.dumps(wrapper))
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([corpus_text("train")[:150_000]] + TEXTS * 3, trainer=trainer)
    return tok


def _write(folder: Path, tok, pipeline: dict, config: dict, added: list[tuple[int, str, bool]]) -> Path:
    """tokenizer.json with the published pipeline, the configs, and vocab.json + merges.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    data = json.loads(tok.to_str())
    data.update({k: pipeline[k] for k in ("normalizer", "pre_tokenizer", "post_processor", "decoder")})
    data["model"].update(pipeline["model"])
    data["added_tokens"] = [{"id": i, **_added(c, special)} for i, c, special in added]
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    config = {**config, "added_tokens_decoder": {str(i): _added(c, special) for i, c, special in added}}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    (folder / "vocab.json").write_text(json.dumps(data["model"]["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = ["#version: 0.2"] + [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    (folder / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")
    return folder


def smollm2_folder(folder: Path) -> Path:
    tok = _train(SMOLLM2_SPECIAL, SMOLLM2_PIPELINE)  # the specials first: ids 0-16, as published
    config = {**SMOLLM2_INSTRUCT_CONFIG,
              "chat_template": (FIXTURES / "SmolLM2-135M-Instruct.jinja").read_text(encoding="utf-8")}
    folder = _write(folder, tok, SMOLLM2_PIPELINE, config, [(i, c, True) for i, c in enumerate(SMOLLM2_SPECIAL)])
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": _added("<|im_start|>"),
        "eos_token": _added("<|im_end|>"), "pad_token": _added("<|im_end|>"), "unk_token": _added("<|endoftext|>")},
        indent=2), encoding="utf-8")
    return folder


def qwen_folder(folder: Path, qwen3: bool = False) -> Path:
    tok = _train([], QWEN_PIPELINE)  # no specials in the vocabulary: they are added after it
    added = [(VOCAB + i, c, c not in QWEN_NOT_SPECIAL) for i, c in enumerate(QWEN3_ADDED if qwen3 else QWEN_ADDED)]
    name = "Qwen3-0.6B" if qwen3 else "Qwen2.5-0.5B-Instruct"
    config = {**QWEN_INSTRUCT_CONFIG, "chat_template": (FIXTURES / f"{name}.jinja").read_text(encoding="utf-8")}
    return _write(folder, tok, QWEN_PIPELINE, config, added)


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("modern-tokenizers")
    return {"SmolLM2-135M-Instruct": smollm2_folder(root / "smollm2"),
            "Qwen2.5-0.5B-Instruct": qwen_folder(root / "qwen"),
            "Qwen3-0.6B": qwen_folder(root / "qwen3", qwen3=True)}


NAMES = ["SmolLM2-135M-Instruct", "Qwen2.5-0.5B-Instruct", "Qwen3-0.6B"]


# ------------------------------------------------------------------ the tokenizer

@pytest.mark.parametrize("name", NAMES)
def test_encode_and_decode_as_transformers(tf, folders, name):
    ours = load_tokenizer(folders[name])
    theirs = tf.AutoTokenizer.from_pretrained(folders[name])
    assert type(theirs).__name__ == ("GPT2Tokenizer" if name.startswith("SmolLM2") else "Qwen2Tokenizer")
    for text in TEXTS:
        ids = ours.encode(text).ids
        assert ids == theirs.encode(text), text
        assert ours.decode(ids, skip_special_tokens=False) == theirs.decode(ids), text
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True), text
    assert ours.get_vocab_size() == len(theirs)


@pytest.mark.parametrize("name", NAMES)
def test_special_and_added_tokens_have_the_published_ids(folders, name):
    tok = load_tokenizer(folders[name])
    if name.startswith("SmolLM2"):
        assert [tok.token_to_id(t) for t in SMOLLM2_SPECIAL] == list(range(17))
        ids = tok.encode("<|im_start|>user<|im_end|>").ids
        assert ids[0] == 1 and ids[-1] == 2 and 0 not in ids[1:-1]  # each special token is one id
    else:
        added = QWEN3_ADDED if name == "Qwen3-0.6B" else QWEN_ADDED
        assert [tok.token_to_id(t) for t in added] == list(range(VOCAB, VOCAB + len(added)))
        ids = tok.encode("<tool_call><|im_end|>").ids
        assert ids == [tok.token_to_id("<tool_call>"), tok.token_to_id("<|im_end|>")]
        assert tok.decode(ids) == "<tool_call>"  # not special: kept when special tokens are skipped


def test_the_published_pipelines_are_what_loads(folders):
    """SmolLM2 splits every digit off (GPT-2 would keep ' 2024' together); Qwen joins decomposed accents (NFC)
    and splits digits one at a time with its own regex."""
    smol = load_tokenizer(folders["SmolLM2-135M-Instruct"])
    assert [p for p, _ in smol.pre_tokenizer.pre_tokenize_str("in 2024")] == ["in", "Ġ", "2", "0", "2", "4"]
    qwen = load_tokenizer(folders["Qwen2.5-0.5B-Instruct"])
    assert qwen.normalizer.normalize_str("Cafe\u0301") == "Caf\u00e9"
    assert [p for p, _ in qwen.pre_tokenizer.pre_tokenize_str("THEY'LL pay 2024!!")] == [
        "THEY", "'LL", "Ġpay", "Ġ", "2", "0", "2", "4", "!!"]
    assert qwen.encode("Hi").ids == qwen.encode("Hi", add_special_tokens=True).ids  # no BOS: Qwen has none


@pytest.mark.parametrize("name", NAMES)
def test_chat_template_to_ids_as_transformers(tf, folders, name):
    ours = load_tokenizer(folders[name])
    theirs = tf.AutoTokenizer.from_pretrained(folders[name])
    switches = [{}, {"enable_thinking": False}] if name == "Qwen3-0.6B" else [{}]
    for messages in CHATS:
        for switch in switches:
            expected = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                  return_dict=False, **switch)
            assert encode_chat(ours, messages, return_tensors=None, **switch) == expected
            text = apply_chat_template(messages, tokenizer_folder=ours, **switch)
            assert text == theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **switch)
            assert encode_chat(ours, text)[0].tolist() == expected


def test_qwen_without_tokenizer_json_is_a_clear_error(folders, tmp_path):
    """Qwen2Tokenizer is not a pipeline the course builds from vocab.json + merges.txt: it asks for tokenizer.json."""
    folder = tmp_path / "qwen-no-json"
    folder.mkdir()
    for name in ("tokenizer_config.json", "vocab.json", "merges.txt"):
        (folder / name).write_bytes((folders["Qwen2.5-0.5B-Instruct"] / name).read_bytes())
    with pytest.raises(ValueError) as err:
        load_tokenizer(folder)
    assert "Qwen2Tokenizer" in str(err.value) and "tokenizer.json" in str(err.value)


# ------------------------------------------------------------------ the whole model

@pytest.mark.parametrize("name, layout, seed", [("SmolLM2-135M-Instruct", "SmolLM2-135M", 31),
                                                ("Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B", 37)])  # seeds: varied tokens
def test_load_model_generates_the_same_greedy_tokens_for_a_chat(tf, folders, tmp_path, name, layout, seed):
    """A random-weight checkpoint in the model's layout (the published config, shrunk) + these tokenizer files:
    load_model, the chat template, encode_chat and generate give the tokens transformers gives."""
    tok = load_tokenizer(folders[name])
    ids_of = tok.token_to_id
    vocab_size = -(-tok.get_vocab_size() // 64) * 64  # padded to a multiple of 64, as the published vocabularies
    # the -Instruct ids: SmolLM2 bos <|im_start|>, eos <|im_end|>; Qwen2.5 bos <|endoftext|>, eos <|im_end|>
    bos = ids_of("<|im_start|>") if layout.startswith("SmolLM2") else ids_of("<|endoftext|>")
    config = shrunk(layout, vocab_size=vocab_size, bos_token_id=bos, eos_token_id=ids_of("<|im_end|>"))
    hf = reference_model(tf, config, seed=seed)
    folder = save_hub_folder(hf, tmp_path / layout, config)
    for file in folders[name].iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    model, tok = load_model(folder), load_tokenizer(folder)
    messages = CHATS[1]
    prompt = encode_chat(tok, messages)
    theirs_tok = tf.AutoTokenizer.from_pretrained(folder)
    assert prompt[0].tolist() == theirs_tok.apply_chat_template(messages, add_generation_prompt=True,
                                                                return_dict=False)
    with torch.no_grad():
        assert_close(f"{name}: logits of the chat prompt", model(prompt), hf(prompt).logits)
        expected = hf.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=config["eos_token_id"])
    out = model.generate(prompt, 12)  # stops at config.json's eos_token_id, as transformers does
    assert torch.equal(out, expected) and len(set(out[0, prompt.shape[1]:].tolist())) > 1
    new = out[0, prompt.shape[1]:].tolist()
    assert tok.decode(new) == theirs_tok.decode(new, skip_special_tokens=True)
