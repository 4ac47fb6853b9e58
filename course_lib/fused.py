"""Fused kernels: chapter 02's layers, computed by PyTorch's own fused operators, for speed.

Chapter 02 writes every layer from primitive tensor operations so that you can read it.
Each primitive is one pass over memory: exact GELU is four (divide, erf, add, multiply),
LayerNorm about eight, softmax five. PyTorch's ``F.gelu``, ``F.layer_norm``, ``F.linear``
(bias added inside the matrix product) and ``F.scaled_dot_product_attention`` compute the
same values in one pass each, with vector instructions. On large batches that is the
difference between our encoder and ``transformers`` (``bench/encoder.py``).

``fuse(model)`` switches a model's layers to these kernels in place and returns it:

- ``Linear``, ``LayerNorm``, ``Embedding`` become subclasses whose ``forward`` calls the
  fused operator — same parameters, same ``state_dict``, same names;
- activation and attention functions held by modules (``intermediate_act_fn``,
  ``attention_fn``, ...) are swapped for their fused twins. Attention weights, when a
  caller asks for them, still come from chapter 02's code (the fused kernel never forms them).

The results equal the reference path to float32 rounding (``tests/test_fused.py``).
``unfuse(model)`` switches back. The notebooks teach and compare with the reference path.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import layers


def _onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


_ONEDNN_LINEAR = _onednn_linear_available()


class FusedLinear(layers.Linear):
    """``layers.Linear`` computed by ``F.linear`` (the bias is added inside the matrix product).

    On the CPU, when no gradient is needed and the weight is float32 (out, in) contiguous,
    it calls oneDNN's linear kernel instead. For one token at a time (matrix-vector
    products, nearly all of generation's work) it read the weights about 1.7x as fast as
    the BLAS call behind ``F.linear`` on the course's CI machine (AMD EPYC, 2 threads);
    on an Intel Xeon with a 300 MiB cache it was about 20 % slower. ``bench/decode.py``
    measures it on yours.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (_ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype == w.dtype == torch.float32 and w.is_contiguous()
                and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
            return torch.ops.mkldnn._linear_pointwise(x, w, self.bias, "none", [], "")
        return F.linear(x, w, self.bias)


class FusedLayerNorm(layers.LayerNorm):
    """``layers.LayerNorm`` computed by ``F.layer_norm`` (one pass for mean, variance and scaling)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.normalized_shape,), self.weight, self.bias, self.eps)


class FusedRMSNorm(layers.RMSNorm):
    """``layers.RMSNorm`` computed by ``F.rms_norm`` (one pass instead of square, mean, root, divide, scale).

    Half-precision inputs are normalised in float32 and cast back, as the reference does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float() if dtype in (torch.float16, torch.bfloat16) else x
        return F.rms_norm(h, (self.normalized_shape,), self.weight, self.eps).to(dtype)


class FusedEmbedding(layers.Embedding):
    """``layers.Embedding`` computed by ``F.embedding``."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight, self.padding_idx)


def fused_attention(q, k, v, mask=None, dropout_p: float = 0.0, training: bool = False, scale=None,
                    return_weights: bool = False):
    """``layers.scaled_dot_product_attention`` by ``F.scaled_dot_product_attention`` (same bool mask convention).

    Rows with nothing to attend to give 0, as ours do. Asked for the weights, it uses
    chapter 02's function: the fused kernel never materialises them.
    """
    if return_weights:
        return layers.scaled_dot_product_attention(q, k, v, mask, dropout_p, training, scale, return_weights=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p if training else 0.0,
                                          scale=scale)


FUSED_CLASSES: dict[type, type] = {layers.Linear: FusedLinear, layers.LayerNorm: FusedLayerNorm,
                                   layers.RMSNorm: FusedRMSNorm, layers.Embedding: FusedEmbedding}
FUSED_FUNCTIONS = {
    layers.gelu: F.gelu,
    layers.gelu_tanh: functools.partial(F.gelu, approximate="tanh"),
    layers.relu: F.relu,
    layers.silu: F.silu,
    layers.scaled_dot_product_attention: fused_attention,
}


def _swap(model: nn.Module, classes: dict, functions: dict) -> nn.Module:
    for module in model.modules():
        new_class = classes.get(type(module))
        if new_class is not None:
            module.__class__ = new_class  # a subclass with another forward and no extra state
        for name, value in list(vars(module).items()):
            if callable(value) and not isinstance(value, nn.Module) and _hashable(value) and value in functions:
                setattr(module, name, functions[value])
    return model


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def fuse(model: nn.Module) -> nn.Module:
    """Switch ``model``'s layers to PyTorch's fused kernels, in place; returns ``model``."""
    return _swap(model, FUSED_CLASSES, FUSED_FUNCTIONS)


def unfuse(model: nn.Module) -> nn.Module:
    """Switch back to chapter 02's reference layers, in place; returns ``model``."""
    return _swap(model, {v: k for k, v in FUSED_CLASSES.items()}, {v: k for k, v in FUSED_FUNCTIONS.items()})


def is_fused(model: nn.Module) -> bool:
    """True when any layer of ``model`` runs a fused kernel."""
    return any(type(m) in FUSED_CLASSES.values() for m in model.modules())
