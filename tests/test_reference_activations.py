"""The stored activations chapter 04 compares with are what transformers computes today,
and our encoder reproduces every one of them on the real all-MiniLM-L6-v2 weights."""

import pytest
import torch

from course_lib.assets import reference_activations

pytest.importorskip("transformers")


def test_committed_reference_is_current():
    from reference_activations import compute  # tests/ is on sys.path (rootdir conftest-less import)

    stored, _ = reference_activations()
    fresh = compute()
    assert sorted(stored) == sorted(fresh)
    for name, tensor in fresh.items():
        assert stored[name].shape == tensor.shape, name
        assert torch.allclose(stored[name].double(), tensor.double(), atol=1e-5, rtol=0), name


def test_our_encoder_reproduces_every_stored_piece():
    from course_lib import load_model
    from course_lib.layers import padding_mask

    ref, sentences = reference_activations()
    assert len(sentences) == ref["input_ids"].shape[0]
    model = load_model("all-MiniLM-L6-v2")
    ids, mask = ref["input_ids"], ref["attention_mask"]
    m = padding_mask(mask)
    with torch.no_grad():
        x = model.embeddings(ids)
        torch.testing.assert_close(x, ref["embeddings"], atol=1e-5, rtol=0)
        layer0 = model.encoder.layer[0]
        context, weights = layer0.attention.self(x, m, return_weights=True)
        torch.testing.assert_close(context, ref["layer0.attention.self"], atol=1e-5, rtol=0)
        torch.testing.assert_close(weights, ref["layer0.attention_weights"], atol=1e-5, rtol=0)
        attn = layer0.attention(x, m)
        torch.testing.assert_close(attn, ref["layer0.attention"], atol=1e-5, rtol=0)
        inter = layer0.intermediate(attn)
        torch.testing.assert_close(inter, ref["layer0.intermediate"], atol=1e-5, rtol=0)
        torch.testing.assert_close(layer0.output(inter, attn), ref["layer0.output"], atol=1e-5, rtol=0)
        h = x
        for i, layer in enumerate(model.encoder.layer, start=1):
            h = layer(h, m)
            torch.testing.assert_close(h, ref[f"hidden_states.{i}"], atol=1e-4, rtol=0)
        torch.testing.assert_close(model.pooler(h), ref["pooler_output"], atol=1e-4, rtol=0)
