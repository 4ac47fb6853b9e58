"""The course's GGUF files in llama.cpp itself (chapter 11), when llama-cpp-python is installed.

llama-cpp-python compiles llama.cpp from source (about 15 minutes on 2 cores), so it is an
optional extra (`pip install -e '.[llama]'`), never part of `make setup`: without it every test
here is skipped and says why. With it: the course's F32 file gives llama.cpp the same greedy
tokens as the course's PyTorch model, and the same logits to float32 rounding; the Q8_0 file's
logits are within Q8_0's error of the course's dequantized Q8_0 model (llama.cpp also rounds the
activations to 8 bits in its integer dot product, which the course's dequantizing reader does not).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib import load_model, load_tokenizer
from course_lib.assets import asset_path
from course_lib.export.gguf_export import LlamaCpp, llama_cpp_available, to_gguf
from course_lib.generation import generate_ids

pytestmark = pytest.mark.skipif(not llama_cpp_available(),
                                reason="llama-cpp-python is not installed (optional, compiles from source: "
                                       "pip install -e '.[llama]'); the GGUF layout tests in test_export_gguf.py "
                                       "still run")

PROMPTS = ["The for statement", "A list is", "def main():\n    "]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-gpt2")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-gpt2")


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    return {q: to_gguf(tiny, folder / f"tiny-{q}.gguf", q, tokenizer=asset_path("tiny-gpt2")) for q in ("F32", "Q8_0")}


def test_llama_cpp_reads_the_tokenizer_in_the_file(files, tok):
    llm = LlamaCpp(files["F32"]).llm
    for text in PROMPTS + ["Unicode: café, naïve — 東京"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok.encode(text).ids, text


def test_f32_greedy_tokens_equal_the_course(files, tiny, tok):
    runner = LlamaCpp(files["F32"])
    for text in PROMPTS:
        prompt = torch.tensor([tok.encode(text).ids])
        ours = generate_ids(tiny, prompt, 40, eos_token_id=[])[0].tolist()
        assert runner.generate_ids(prompt, 40) == ours, text


def test_f32_logits_equal_the_course(files, tiny, tok):
    ids = tok.encode("The for statement is used to iterate over the elements of a sequence.").ids
    with torch.no_grad():
        ours = tiny(torch.tensor([ids]))[0].numpy()
    theirs = LlamaCpp(files["F32"]).logits(ids)
    assert theirs.shape == ours.shape
    assert np.abs(theirs - ours).max() <= 1e-3 * np.abs(ours).max()


def test_q8_0_logits_within_the_formats_error(files, tok):
    ids = tok.encode("The for statement is used to iterate over the elements of a sequence.").ids
    with torch.no_grad():
        ours = load_model(str(files["Q8_0"]))(torch.tensor([ids]))[0].numpy()   # Q8_0 weights, float activations
    theirs = LlamaCpp(files["Q8_0"]).logits(ids)
    rel = np.abs(theirs - ours).max() / np.abs(ours).max()
    assert rel <= 0.02, f"llama.cpp's Q8_0 logits differ from the dequantized model's by {rel:.3%} of the largest"
    assert (theirs.argmax(-1) == ours.argmax(-1)).mean() >= 0.9


def test_errors(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="to_gguf"):
        LlamaCpp(tmp_path / "missing.gguf")
    bare = to_gguf(tiny, tmp_path / "bare.gguf", "F32", tokenizer=False)
    with pytest.raises(ValueError, match="tokenizer="):
        LlamaCpp(bare)
    runner = LlamaCpp(to_gguf(tiny, tmp_path / "t.gguf", "F32", tokenizer=asset_path("tiny-gpt2")), n_ctx=16)
    with pytest.raises(ValueError, match="n_ctx"):
        runner.generate_ids([1, 2, 3], 20)
