"""The measurements chapter 07 adds to ``course_lib.metrics``: top-1 agreement, row cosines, and the
peak memory of a load measured in a fresh process."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from course_lib.metrics import cosine_similarity_rows, load_peak_memory, top1_agreement


# ---------------------------------------------------------------------------- top1_agreement

def test_top1_agreement_by_hand():
    reference = torch.tensor([[[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]],
                              [[0.0, 0.0, 2.0], [1.0, 2.0, 3.0]]])  # argmax: [[1, 0], [2, 2]]
    logits = torch.tensor([[[0.0, 9.0, 1.0], [0.0, 3.0, 0.0]],  # argmax [[1, 1], [2, 0]]: 2 of 4 agree
                           [[-1.0, -1.0, 0.0], [7.0, 2.0, 3.0]]])
    assert top1_agreement(logits, reference) == pytest.approx(0.5)
    assert top1_agreement(reference, reference) == 1.0
    assert top1_agreement(logits[0, 0], reference[0, 0]) == 1.0  # a single position (V,)


def test_top1_agreement_ignores_scale_and_shift_and_takes_arrays():
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(3, 5, 11, generator=g)
    assert top1_agreement(2.5 * reference + 7.0, reference) == 1.0  # same ranking
    assert top1_agreement(reference.to(torch.bfloat16), reference) > 0.8  # bfloat16 logits work too
    assert top1_agreement(reference.numpy(), reference.tolist()) == 1.0
    assert top1_agreement(-reference, reference) == 0.0  # every argmax becomes the argmin


def test_top1_agreement_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        top1_agreement(torch.zeros(2, 5), torch.zeros(2, 6))


# ---------------------------------------------------------------------------- cosine_similarity_rows

def test_cosine_similarity_rows_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0], [0.0, 0.0]])
    b = torch.tensor([[2.0, 0.0], [-1.0, -1.0], [4.0, -3.0], [1.0, 2.0]])
    cos = cosine_similarity_rows(a, b)
    assert cos.shape == (4,)
    assert cos.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0])  # a zero row gives 0, not NaN


def test_cosine_similarity_rows_matches_torch_on_random_rows():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 7, 16, generator=g), torch.randn(2, 7, 16, generator=g)
    expected = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
    torch.testing.assert_close(cosine_similarity_rows(a, b), expected)
    assert cosine_similarity_rows(np.asarray(a), a.to(torch.bfloat16)).min() > 0.99
    with pytest.raises(ValueError, match="shapes differ"):
        cosine_similarity_rows(a, b[..., :8])


# ---------------------------------------------------------------------------- load_peak_memory

@pytest.fixture(scope="module")
def tiny_memory():
    return {"float32": load_peak_memory("tiny-gpt2"), "int8": load_peak_memory("tiny-gpt2", quantize="int8")}


def test_load_peak_memory_reports_sane_numbers(tiny_memory):
    for name, result in tiny_memory.items():
        assert set(result) >= {"baseline_mb", "peak_mb", "increase_mb", "model_mb", "load_s"}, name
        assert all(isinstance(v, float) and math.isfinite(v) for v in result.values()), result
        assert 20 < result["baseline_mb"] < 4000, result  # torch and course_lib are imported
        assert result["peak_mb"] >= result["baseline_mb"], result
        assert result["increase_mb"] == pytest.approx(result["peak_mb"] - result["baseline_mb"])
        assert 0 < result["increase_mb"] < 1000, result
    float32, int8 = tiny_memory["float32"]["model_mb"], tiny_memory["int8"]["model_mb"]
    assert float32 == pytest.approx(1_350_400 * 4 / 1e6, rel=0.01)  # tied embedding counted once
    assert int8 < 0.3 * float32


def test_load_peak_memory_explains_a_failed_load():
    with pytest.raises(RuntimeError, match="fresh process failed"):
        load_peak_memory("tiny-gpt2", quantize="int3")  # the child's own ValueError, reported
