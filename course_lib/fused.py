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

``speed_up(model)`` is what ``load_model`` does by default (``fast=True``): ``fuse`` plus the
weight layout that makes one token's matrix-vector products fastest on this CPU. Generating
one token reads every weight once, and how fast a product streams an ``(out, in)`` matrix
depends on how it is stored: as rows (the checkpoint's layout, read by oneDNN's kernel) or as
columns (stored ``(in, out)``, exposed as the transposed view, so ``weight`` still has the
shape and values it had: same ``state_dict``, same names). On the course's AMD EPYC machine
oneDNN on rows was faster; on an Intel Xeon the BLAS product on columns was (GPT-2 124M
decode 37 -> 45 tokens/s). ``matvec_layout`` measures it once per process on the model's
largest weight. ``load_model(..., fast=False)`` keeps chapter 02's layers, as the notebooks
that teach them show.
"""

from __future__ import annotations

import functools
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import layers
from course_lib.models.gpt2 import GPT2Block


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
        return fused_linear(x, self.weight, self.bias)


def fused_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ w.T + bias`` by oneDNN's kernel for a float32 weight stored as rows (no gradient), else ``F.linear``."""
    if (_ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype == w.dtype == torch.float32 and w.is_contiguous()
            and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
        return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")
    return F.linear(x, w, bias)


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


class FusedGPT2Block(GPT2Block):
    """``GPT2Block`` whose one-token decoding step runs fewer operations: the step ``generate`` repeats.

    A step with the KV cache, one new token and no mask (one sequence, or a batch without
    padding) computes what ``GPT2Block.forward`` computes, with PyTorch's attention kernel:
    q, k and v are views of the one ``c_attn`` output (no split into three tensors and no
    head split of each), and the dropouts, identities in evaluation mode, are not called.
    A prompt, a padded batch, training, or another attention function (the ONNX export's)
    goes through ``GPT2Block.forward``.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        attn = self.attn
        if (cache is None or mask is not None or x.size(1) != 1 or self.training
                or attn.attention_fn is not fused_attention):
            return super().forward(x, mask, cache)
        B, H = x.size(0), attn.n_head
        q, k, v = attn.c_attn(self.ln_1(x)).view(B, 3, H, 1, -1).unbind(1)  # 3 x (B, H, 1, D), views
        k, v = cache.append(k, v)  # (B, H, P + 1, D)
        y = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)  # (B, H, 1, D)
        x = x + attn.c_proj(y.reshape(B, 1, -1))  # heads side by side: (B, 1, H * D)
        return x + self.mlp.c_proj(self.mlp.act(self.mlp.c_fc(self.ln_2(x))))


FUSED_CLASSES: dict[type, type] = {layers.Linear: FusedLinear, layers.LayerNorm: FusedLayerNorm,
                                   layers.RMSNorm: FusedRMSNorm, layers.Embedding: FusedEmbedding,
                                   GPT2Block: FusedGPT2Block}
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


# --------------------------------------------------------------------------------------
# The weight layout for one-token products, measured on this machine

LAYOUT_VARIABLE = "COURSE_MATVEC_LAYOUT"  # "rows" or "columns": use it instead of measuring
LAYOUTS = ("rows", "columns")
MEASURE_MIN_ELEMENTS = 4 * 2**20  # smaller weights sit in the caches: nothing to learn, and no time to lose
_measured: dict[str, object] = {}  # the one measurement of this process (``matvec_layout``)


def as_columns(weight: torch.Tensor) -> torch.Tensor:
    """The same (out, in) values stored column by column: a view of a contiguous (in, out) tensor."""
    return weight if weight.t().is_contiguous() else weight.t().contiguous().t()


def weight_layout(weight: torch.Tensor) -> str | None:
    """``"rows"`` (contiguous (out, in)), ``"columns"`` (a view of contiguous (in, out)) or None (neither)."""
    if weight.is_contiguous():
        return "rows"
    return "columns" if weight.t().is_contiguous() else None


def _time_products(weight: torch.Tensor, repeats: int = 5) -> dict[str, float]:
    """Fastest of ``repeats`` one-row products with ``weight`` stored as rows (the fused kernel) and as columns."""
    x = torch.randn(1, weight.shape[1], dtype=weight.dtype)
    stored = {"rows": weight.contiguous(), "columns": as_columns(weight)}
    times = {name: [] for name in LAYOUTS}
    with torch.inference_mode():
        for _ in range(repeats):
            for name, w in stored.items():
                start = time.perf_counter()
                fused_linear(x, w)  # the kernel a fused layer runs
                times[name].append(time.perf_counter() - start)
    return {name: min(t[1:]) for name, t in times.items()}  # the first call of each warms up


def matvec_layout(weight: torch.Tensor | None = None, shape: tuple[int, int] | None = None) -> str:
    """``"rows"`` or ``"columns"``: how to store float32 weights for fast one-token products on this CPU.

    ``COURSE_MATVEC_LAYOUT=rows|columns`` decides without measuring. Otherwise the first call
    with a weight of at least ``MEASURE_MIN_ELEMENTS`` values times one-row products with it
    stored both ways (a few milliseconds) and keeps the answer for the process; rows win only
    when clearly faster (by 10 %). Before that, and for small weights: columns. With only a
    ``shape`` (a model about to be loaded), a random float32 weight of that shape is measured.
    ``matvec_layout_report()`` says what was measured.
    """
    chosen = os.environ.get(LAYOUT_VARIABLE)
    if chosen is not None:
        if chosen not in LAYOUTS:
            raise ValueError(f"{LAYOUT_VARIABLE}={chosen!r}: use 'rows' or 'columns', or unset it to measure")
        return chosen
    if "layout" in _measured:
        return _measured["layout"]
    if weight is None and shape is not None and shape[0] * shape[1] >= MEASURE_MIN_ELEMENTS:
        weight = torch.randn(shape)
    if weight is None or weight.numel() < MEASURE_MIN_ELEMENTS or weight.device.type != "cpu":
        return "columns"
    seconds = _time_products(weight.detach())
    _measured.update(seconds=seconds, shape=tuple(weight.shape), threads=torch.get_num_threads(),
                     layout="rows" if seconds["rows"] < 0.9 * seconds["columns"] else "columns")
    return _measured["layout"]


def matvec_layout_report() -> str:
    """One line: the layout ``speed_up`` chose in this process and why."""
    chosen = os.environ.get(LAYOUT_VARIABLE)
    if chosen is not None:
        return f"{chosen} (set by {LAYOUT_VARIABLE})"
    if "layout" not in _measured:
        return "columns (not measured: no float32 weight large enough yet)"
    s = _measured["seconds"]
    return (f"{_measured['layout']} (measured on a {_measured['shape'][0]}x{_measured['shape'][1]} weight, "
            f"{_measured['threads']} threads: rows {s['rows'] * 1e3:.2f} ms, columns {s['columns'] * 1e3:.2f} ms)")


def _float_linears(model: nn.Module, device: str = "cpu") -> list[layers.Linear]:
    """The float32 ``Linear`` layers on ``device`` (the layouts were measured for float32 weights)."""
    return [m for m in model.modules() if isinstance(m, layers.Linear) and m.weight.dim() == 2
            and m.weight.dtype == torch.float32 and m.weight.device.type == device]


def column_keys(model: nn.Module, dtype: torch.dtype | None = None) -> frozenset[str]:
    """The parameter names ``speed_up`` will store as columns, for a model about to be loaded on the CPU.

    ``model`` holds only shapes (``meta`` tensors). ``load_state`` then writes those weights
    column by column as it reads them, so ``speed_up`` has nothing left to copy: a GPT-2
    Conv1D weight, stored (in, out) in the file, is used as it is read. A tied weight is
    named by its source too (GPT-2's ``lm_head.weight`` is read as ``transformer.wte.weight``).
    ``dtype``: the one the weights are loaded in; only float32 weights change layout.
    """
    if dtype not in (None, torch.float32):
        return frozenset()
    float_linears = set(_float_linears(model, "meta"))
    linears = {name: m for name, m in model.named_modules() if m in float_linears}
    if not linears:
        return frozenset()
    largest = max(linears.values(), key=lambda m: m.weight.numel())
    if matvec_layout(shape=tuple(largest.weight.shape)) != "columns":
        return frozenset()
    names = {f"{name}.weight" for name in linears}
    names |= {source for tied, source in getattr(model, "tied_weights", {}).items() if tied in names}
    return frozenset(names)


def speed_up(model: nn.Module) -> nn.Module:
    """The fastest path this course has for ``model`` on its device, in place; returns ``model``.

    ``fuse`` (PyTorch's fused kernels), then, on the CPU, every float ``Linear`` weight stored
    in the layout ``matvec_layout`` picks for this machine. Same parameters, names, shapes and
    values; results equal chapter 02's layers to float32 rounding. ``load_model`` calls it
    unless ``fast=False``. Tied weights (GPT-2's ``lm_head`` and ``wte``) stay one tensor.
    """
    fuse(model)
    linears = _float_linears(model)
    if not linears:
        return model
    layout = matvec_layout(max((m.weight for m in linears), key=lambda w: w.numel()))
    done = set()
    for m in linears:
        if id(m.weight) in done:
            continue
        done.add(id(m.weight))
        if weight_layout(m.weight) != layout:
            m.weight.data = as_columns(m.weight.data) if layout == "columns" else m.weight.data.contiguous()
    return model
