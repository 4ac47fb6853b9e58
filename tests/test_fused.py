"""course_lib.fused: PyTorch's fused kernels give the reference path's results, and switch back."""

import pytest
import torch

from course_lib import layers, load_model
from course_lib.assets import reference_activations
from course_lib.fused import FusedLinear, fuse, fused_attention, is_fused, unfuse
from course_lib.models.encoder import EncoderConfig, RobertaForMaskedLM


@pytest.fixture(scope="module")
def minilm():
    return load_model("all-MiniLM-L6-v2")


def test_fused_encoder_equals_reference_on_real_weights(minilm):
    ref, _ = reference_activations()
    ids, mask = ref["input_ids"], ref["attention_mask"]
    with torch.no_grad():
        reference = minilm(ids, mask)
        keys = list(minilm.state_dict())
        fuse(minilm)
        try:
            assert is_fused(minilm)
            assert isinstance(minilm.encoder.layer[0].attention.self.query, FusedLinear)
            assert list(minilm.state_dict()) == keys  # same parameters, same names
            fast = minilm(ids, mask)
            _, weights = minilm.encoder.layer[0].attention.self(minilm.embeddings(ids), layers.padding_mask(mask),
                                                                return_weights=True)
        finally:
            unfuse(minilm)
    assert not is_fused(minilm)
    assert type(minilm.encoder.layer[0].attention.self.query) is layers.Linear
    assert minilm.encoder.layer[0].attention.self.attention_fn is layers.scaled_dot_product_attention
    assert minilm.encoder.layer[0].intermediate.intermediate_act_fn is layers.gelu
    real = mask.bool()  # padding positions are meaningless outputs (rounding differs most there)
    torch.testing.assert_close(fast[real], reference[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(fast, ref["hidden_states.6"], atol=1e-4, rtol=0)
    torch.testing.assert_close(weights, ref["layer0.attention_weights"], atol=1e-5, rtol=0)  # weights on request


def test_fused_masked_lm_with_left_padding_and_gradients():
    torch.manual_seed(0)
    config = EncoderConfig.from_dict({"model_type": "roberta", "vocab_size": 120, "hidden_size": 32,
                                      "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
                                      "max_position_embeddings": 40, "type_vocab_size": 1})
    model = RobertaForMaskedLM(config).eval()
    ids = torch.randint(3, 120, (3, 9))
    ids[1, :4] = 1  # left padding
    mask = (ids != 1).long()
    expected = model(ids, mask)
    expected.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    got = fuse(model)(ids, mask)
    got.sum().backward()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-4, rtol=1e-4, msg=name)


def test_fused_attention_matches_chapter_02_with_every_mask_kind():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    pad = layers.padding_mask(torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
    causal = layers.causal_mask(5)
    everything_masked = torch.zeros(5, 5, dtype=torch.bool)
    for mask in [None, pad, causal, pad & causal, everything_masked]:
        torch.testing.assert_close(fused_attention(q, k, v, mask),
                                   layers.scaled_dot_product_attention(q, k, v, mask), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(1, 1, 48), (3, 5, 48)])
def test_fused_linear_equals_reference_with_and_without_gradients(shape):
    torch.manual_seed(0)
    reference = layers.Linear(48, 40)
    fast = FusedLinear(48, 40)
    fast.load_state_dict(reference.state_dict())
    x = torch.randn(shape)
    with torch.inference_mode():  # no gradient: oneDNN's kernel where available
        torch.testing.assert_close(fast(x), reference(x), atol=1e-5, rtol=0)
    fast.weight.data = fast.weight.data.T.contiguous().T  # a transposed layout: the F.linear path
    with torch.no_grad():
        torch.testing.assert_close(fast(x), reference(x), atol=1e-5, rtol=0)
    x.requires_grad_(True)
    fast(x).sum().backward()  # with gradients: F.linear, differentiable
    assert x.grad is not None and fast.weight.grad is not None
