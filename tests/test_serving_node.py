"""Chapter 11 outside Python: the JavaScript tokenizers and the Node.js programs in ``serving/``.

- ``serving/js/tokenizer.mjs`` (GPT-2's byte-level BPE, BERT's WordPiece, read from tokenizer.json)
  gives the same ids as the Python ``tokenizers`` library on hard strings and on random ones;
- ``serving/node/generate.mjs`` (onnxruntime-node, KV cache) generates the same greedy tokens as
  Python's ``ort_generate_ids`` and the course's PyTorch ``generate_ids``;
- ``serving/node/embed.mjs`` gives MiniLM sentence embeddings with cosine >= 0.9999 to Python's.

Skipped only when ``node`` is not installed. When node is there but ``npm ci`` was not run (the
``onnxruntime-node`` package is missing), the ONNX tests fail and say how to install it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from course_lib.serve_web import find_node, require_node_modules, serving_dir

NODE = find_node()
if NODE is None:
    pytest.skip("node (Node.js >= 18) is not installed, so the Node.js programs in serving/ cannot run: install it "
                "(apt-get install nodejs npm), then run `make serving`", allow_module_level=True)

from course_lib import encode_batch, load_model, load_tokenizer  # noqa: E402
from course_lib.assets import asset_path  # noqa: E402
from course_lib.generation import generate_ids  # noqa: E402
from course_lib.models.encoder import sentence_embeddings  # noqa: E402

NODE_DIR = serving_dir() / "node"
HARD_TEXTS = [
    "Hello world!", "", " ", "  leading and trailing spaces   ", "tokens with    multiple     spaces",
    "tabs\tand\nnewlines\r\n", "\u00a0no-break\u3000ideographic\u0085next-line\u2028line-sep",
    "naïve café, Ωμέγα ΟΔΟΣ İstanbul straße", "Ünïcödé ÀÉÎÕÜ façade", "日本語のテキスト and 中文 한국어",
    "emoji 👍🏽 and 🤗! 👨‍👩‍👧", "<|endoftext|>The end<|endoftext|>", "a<|endoftext|>b", "[CLS] hello [MASK] world [SEP]",
    "don't you're it's I'll we've", "supercalifragilisticexpialidocious " * 3, "x" * 150,
    "a\u0000b\u00adc\ufeffd\u200be\ufffdf\x0bg\x0ch", "numbers 12345 3.14159 1,000,000 ١٢٣",
    "punctuation!!! ... ??? (parens) [brackets] {braces} @#$%^&* «quotes» „quotes“ — – …",
    "C++ and C# and F#", "e-mail@example.com http://x.y/z?q=1&r=2", "def main():\n    return 0\n",
    "'s 't 're 've 'm 'll 'd", "   \n\n  \t  ", "Ǆemo ǅ ǆ ﬁ ﬀ ℌ ½ ²", "Zalgo: Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇",
]
CHAR_POOL = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") + list(" \t\n   ") +
             list(".,;:!?'\"()[]{}<>-_/\\@#$%^&*+=~`|") + list("éèêëàâäôöûüçñßøåæœ") + list("ΑΒΓαβγДЖЯдж") +
             list("中文日本語한국") + ["👍", "🤗", "\u0301", "\u00a0", "\u200b", "<|endoftext|>", "[MASK]", "'s", "'ll"])


def random_texts(seed: int, n: int = 40) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(CHAR_POOL) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def record(name: str, data) -> None:
    """Keep a run's output for chapter 11's notebook when COURSE_SERVING_RECORD names a folder."""
    folder = os.environ.get("COURSE_SERVING_RECORD")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def run_node(*args, input_text: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([NODE, *map(str, args)], cwd=NODE_DIR, input=input_text, capture_output=True,
                            text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"node {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
    return result


def js_encode(tokenizer_json, texts, *extra) -> list[dict]:
    return json.loads(run_node("tokenize.mjs", tokenizer_json, "--stdin", *extra, input_text=json.dumps(texts)).stdout)


@pytest.fixture(scope="module")
def onnxruntime_node():
    try:
        return require_node_modules("node", "onnxruntime-node")
    except FileNotFoundError as err:
        pytest.fail(f"{err}. (node is installed, so this is a failed setup, not a reason to skip)")


# --------------------------------------------------------------------------------------
# The tokenizers: ids equal the Python `tokenizers` library's

@pytest.mark.parametrize("asset", ["tiny-gpt2", "all-MiniLM-L6-v2"])
@pytest.mark.parametrize("special", [True, False], ids=["with-special", "no-special"])
def test_js_tokenizer_ids_equal_python(asset, special):
    path = asset_path(asset) / "tokenizer.json"
    tok = load_tokenizer(asset_path(asset))
    tok.no_truncation()
    tok.no_padding()
    texts = HARD_TEXTS + random_texts(seed=1) + random_texts(seed=2)
    got = js_encode(path, texts, *([] if special else ["--no-special"]))
    mismatches = []
    for text, js in zip(texts, got):
        expected = tok.encode(text, add_special_tokens=special)
        if js["ids"] != expected.ids:
            mismatches.append(f"{text!r}:\n  python {expected.tokens}\n  js     {js['tokens']}")
        assert js["tokens"] == [tok.id_to_token(i) for i in js["ids"]]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} texts differ:\n" + "\n".join(mismatches[:5])


@pytest.mark.parametrize("asset", ["tiny-gpt2", "all-MiniLM-L6-v2"])
def test_js_decode_equals_python(asset):
    path = asset_path(asset) / "tokenizer.json"
    tok = load_tokenizer(asset_path(asset))
    texts = HARD_TEXTS + random_texts(seed=3, n=20)
    for text, js in zip(texts, js_encode(path, texts)):
        assert js["decoded"] == tok.decode(js["ids"]), text


def test_js_truncation_equals_encode_batch():
    """max_length counts the special tokens and keeps them: [CLS] first 14 pieces [SEP]."""
    folder = asset_path("all-MiniLM-L6-v2")
    tok = load_tokenizer(folder)
    texts = ["the quick brown fox jumps over the lazy dog " * 4, "short", HARD_TEXTS[7] * 3]
    expected = encode_batch(tok, texts, max_length=16, padding=False, return_tensors=None)["input_ids"]
    got = [r["ids"] for r in js_encode(folder / "tokenizer.json", texts, "--max-length", "16")]
    assert got == expected
    assert max(map(len, got)) == 16


def test_js_tokenizer_errors_name_the_problem(tmp_path):
    unigram = tmp_path / "unigram.json"
    unigram.write_text(json.dumps({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}))
    result = run_node("tokenize.mjs", unigram, "text", check=False)
    assert result.returncode == 2 and "Unigram is not supported" in result.stderr
    result = run_node("tokenize.mjs", tmp_path / "missing.json", "text", check=False)
    assert result.returncode == 2 and "missing.json" in result.stderr


# --------------------------------------------------------------------------------------
# generate.mjs: the exported tiny GPT-2 in onnxruntime-node

@pytest.fixture(scope="module")
def gpt2_export(tmp_path_factory):
    from course_lib.export import to_onnx

    model = load_model("tiny-gpt2")
    path = to_onnx(model, tmp_path_factory.mktemp("gpt2") / "tiny-gpt2.onnx",
                   tokenizer=asset_path("tiny-gpt2") / "tokenizer.json")
    return model, load_tokenizer("tiny-gpt2"), path


GPT2_PROMPTS = ["The for statement", "def main():\n    return", "Unicode: naïve café — 日本語 👍",
                "<|endoftext|>In Python,", "x"]


@pytest.mark.parametrize("prompt", GPT2_PROMPTS)
def test_node_generate_tokens_equal_python(onnxruntime_node, gpt2_export, prompt):
    from course_lib.export import OnnxCausalLM, ort_generate_ids

    model, tok, path = gpt2_export
    n = 40
    out = json.loads(run_node("generate.mjs", path, prompt, "--max-new-tokens", n, "--json").stdout)
    prompt_ids = tok.encode(prompt).ids
    assert out["prompt_ids"] == prompt_ids  # the JS tokenizer, on the prompt
    ids = torch.tensor([prompt_ids])
    ort_ids = ort_generate_ids(OnnxCausalLM(path, threads=1), ids, n)[0].tolist()
    with torch.no_grad():
        torch_ids = generate_ids(model, ids, n)[0].tolist()
    assert out["ids"] == ort_ids, "Node's greedy tokens differ from Python onnxruntime's"
    assert out["ids"] == torch_ids, "Node's greedy tokens differ from the course's PyTorch generate_ids"
    assert out["new_ids"] == out["ids"][len(prompt_ids):] and 1 <= len(out["new_ids"]) <= n
    assert out["text"] == tok.decode(out["ids"])
    assert out["timings"]["tokensPerSecond"] > 0
    if prompt == GPT2_PROMPTS[0]:
        record("node_generate.json", {**out, "python_ort_ids": ort_ids, "pytorch_ids": torch_ids})


def test_node_generate_streams_text_and_stops_at_eos(onnxruntime_node, gpt2_export):
    """Without --json the prompt and the text are printed; --no-eos runs exactly N tokens."""
    from course_lib.export import ort_generate_ids

    model, tok, path = gpt2_export
    result = run_node("generate.mjs", path, "The for statement", "--max-new-tokens", 12)
    ids = ort_generate_ids(path, torch.tensor([tok.encode("The for statement").ids]), 12, threads=1)[0].tolist()
    assert result.stdout == tok.decode(ids) + "\n"
    assert "tok/s" in result.stderr
    out = json.loads(run_node("generate.mjs", path, "<|endoftext|>", "--max-new-tokens", 60, "--no-eos",
                              "--json").stdout)
    assert len(out["new_ids"]) == 60
    expected = ort_generate_ids(path, torch.tensor([[0]]), 60, eos_token_id=[], threads=1)[0].tolist()
    assert out["ids"] == expected


def test_node_programs_explain_bad_input(onnxruntime_node, gpt2_export, tmp_path):
    _, _, path = gpt2_export
    result = run_node("generate.mjs", tmp_path / "nothing.onnx", "hi", check=False)
    assert result.returncode == 2 and "to_onnx" in result.stderr
    result = run_node("embed.mjs", path, "a sentence", check=False)
    assert result.returncode == 2 and "causal-lm model" in result.stderr
    result = run_node("generate.mjs", path, "hi", "--max-new-tokens", "0", check=False)
    assert result.returncode == 2 and "--max-new-tokens" in result.stderr
    result = run_node("generate.mjs", path, "hi", "--max-new-tokens", "100000", check=False)
    assert result.returncode == 2 and "positions" in result.stderr
    result = run_node("generate.mjs", path, "hi", "--top-k", "3", check=False)
    assert result.returncode == 2 and "unknown option --top-k" in result.stderr


# --------------------------------------------------------------------------------------
# embed.mjs: all-MiniLM-L6-v2 (real weights) in onnxruntime-node

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
             "Ünïcödé naïve café — 日本語 👍", "Hi", "the quick brown fox jumps over the lazy dog " * 40]


def test_node_embeddings_match_python(onnxruntime_node, tmp_path):
    from course_lib.export import OnnxEncoder, to_onnx

    folder = asset_path("all-MiniLM-L6-v2")
    model, tok = load_model(folder), load_tokenizer(folder)
    path = to_onnx(model, tmp_path / "minilm.onnx", tokenizer=folder / "tokenizer.json")
    out = json.loads(run_node("embed.mjs", path, *SENTENCES, "--json").stdout)
    expected_ids = encode_batch(tok, SENTENCES, max_length=256, padding=False, return_tensors=None)["input_ids"]
    assert out["ids"] == expected_ids
    assert len(out["ids"][-1]) == 256  # the long sentence was truncated like Python's
    js = np.array(out["embeddings"], dtype=np.float64)
    with torch.no_grad():
        torch_emb = sentence_embeddings(model, tok, SENTENCES).double().numpy()
    ort_emb = OnnxEncoder(path, threads=1).embed(tok, SENTENCES).astype(np.float64)
    for reference in (torch_emb, ort_emb):
        cos = (js * reference).sum(1) / (np.linalg.norm(js, axis=1) * np.linalg.norm(reference, axis=1))
        assert cos.min() >= 0.9999, cos
    sims = np.array(out["similarities"])
    assert np.abs(sims - torch_emb @ torch_emb.T).max() <= 1e-4
    assert sims[0, 1] > sims[0, 2]  # the two sentences about eating are the closest pair
    record("node_embed.json", {"sentences": SENTENCES, "ids": out["ids"], "similarities": out["similarities"],
                               "python_similarities": (torch_emb @ torch_emb.T).tolist(),
                               "cosine_to_pytorch": ((js * torch_emb).sum(1) / np.linalg.norm(js, axis=1)).tolist(),
                               "ms": out["ms"]})
