"""Checks for chapter 10's exercises (``exercises/ex10_vision.py``).

Inputs are random: image sizes from 1 pixel to a few dozen, non-square images and kernels,
strides, paddings and dilations given as ints or (height, width) pairs, groups from 1 to
depthwise, float32 and float64, uint8 pictures; BatchNorm statistics with small variances
and large ``eps`` (so a variance used where a standard deviation belongs, or a forgotten
``eps``, shows); crops smaller and larger than the picture, odd and even differences, one
side cropped while the other is padded; position grids from 1 x 1 to 14 x 14 resized up,
down and to non-square grids; stacks of up to 6 layers. Expected answers come from
``course_lib`` (``vision.conv_output_size``, ``vision.im2col``, ``vision.conv2d``,
``vision.fold_batchnorm_weights``, ``models.vit.patchify``, ``image_processing.center_crop``,
``models.vit.interpolate_positions``, ``vision.receptive_field``), themselves tested against
``torch.nn.functional`` and ``transformers`` in ``tests/test_vision_layers.py``,
``tests/test_vit.py`` and ``tests/test_image_processing.py``; they are switched off while the
learner's code runs, and so are PyTorch's ready-made convolutions, unfold, pools, BatchNorm,
pixel_unshuffle and interpolation (``chapter_rules`` below).

Tolerances: selections of values (im2col, patchify, the crop, the [CLS] row) exactly;
float32 results 1e-5 relative (and 1e-5 times the inputs' scale absolute), float64 1e-10.
When a result is wrong, the check tries the usual mistakes on the same input and names the
one that matches.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from course_lib import image_processing as IP
from course_lib import vision as V
from course_lib.grading.registry import (GradeError, call_learner, chapter_rules, exercise, expect_close,
                                         expect_dtype, expect_raises, expect_shape, expect_tensor, expect_tensors,
                                         expect_values, likely, randn, same_value)
from course_lib.models import vit as VIT

ANSWER_KEY = (
    *(f"course_lib.vision.{name}" for name in (
        "conv_output_size", "im2col", "conv2d", "Conv2d", "fold_batchnorm_weights", "fold_batchnorm",
        "receptive_field", "max_pool2d", "avg_pool2d")),
    *(f"course_lib.models.vit.{name}" for name in ("patchify", "unpatchify", "patch_conv", "interpolate_positions")),
    "course_lib.image_processing.center_crop",
)

# PyTorch's ready-made versions of this chapter's answers, with their other spellings.
SHORTCUTS = (
    "torch.nn.functional.conv1d", "torch.nn.functional.conv2d", "torch.nn.functional.conv3d",
    "torch.nn.functional.conv_transpose2d", "torch.conv1d", "torch.conv2d", "torch.conv3d", "torch.conv_transpose2d",
    "torch.convolution", "torch._convolution", "torch.ops.aten.conv2d", "torch.ops.aten.convolution",
    "torch.nn.Conv1d", "torch.nn.Conv2d",
    "torch.nn.functional.unfold", "torch.nn.functional.fold", "torch.nn.Unfold", "torch.nn.Fold",
    "torch._C._nn.im2col", "torch._C._nn.col2im", "torch.ops.aten.im2col", "torch.ops.aten.col2im",
    "torch.nn.functional.max_pool2d", "torch.max_pool2d", "torch.nn.functional.avg_pool2d", "torch._C._nn.avg_pool2d",
    "torch.nn.functional.adaptive_avg_pool2d", "torch._C._nn.adaptive_avg_pool2d",
    "torch.nn.functional.batch_norm", "torch.batch_norm", "torch.nn.BatchNorm2d",
    "torch.nn.functional.pixel_unshuffle", "torch.pixel_unshuffle", "torch.nn.PixelUnshuffle",
    "torch.nn.functional.interpolate", "torch.nn.functional.upsample", "torch.nn.Upsample",
    "torch._C._nn.upsample_bicubic2d", "torch.ops.aten.upsample_bicubic2d", "torch.nn.functional.grid_sample",
    "torch.grid_sampler", "torch.grid_sampler_2d",
)
chapter_rules("ex10", shortcuts=SHORTCUTS)

F64 = torch.float64


# ----------------------------------------------------------------------------- inputs and calls


def call(fn, *args, what: str):
    """Run the learner's function with the answer key switched off; it must leave its inputs as they were."""
    return call_learner(fn, args, what, ANSWER_KEY + SHORTCUTS, "; course_lib is the answer key, and PyTorch's "
                        "ready-made convolutions, unfold, pools, BatchNorm and interpolation are switched off (any "
                        "other torch operation is fine, Tensor.unfold and F.pad included)",
                        "assigning into an argument, `+=`, `.mul_()` ...")


def pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) for values of order 1."""
    return (1e-10, 1e-10) if dtype == F64 else (1e-5, 1e-5)


def expect_int(got: Any, what: str) -> int:
    if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_floating_point():
        raise GradeError(f"{what}: expected a Python int, got a tensor ({got!r}); return `int(...)` of it, or compute "
                         f"with Python numbers")
    if isinstance(got, float):
        raise GradeError(f"{what}: expected an int, got the float {got!r}: a size is a whole number; `/` always "
                         f"gives a float, `//` divides and rounds down")
    if not isinstance(got, numbers.Integral) or isinstance(got, bool):
        raise GradeError(f"{what}: expected an int, got {type(got).__name__} {got!r}")
    return int(got)


# ----------------------------------------------------------------------------- 1. output size


def size_mistakes(size, kernel, stride, padding, dilation) -> dict:
    span = dilation * (kernel - 1) + 1

    def count(room, step=stride):
        return room // step + 1 if room >= 0 else None

    return {
        "the division rounds up; the kernel must fit entirely, so round down (`//`)":
            lambda: -(-(size + 2 * padding - span) // stride) + 1 if size + 2 * padding >= span else None,
        "the dilation is missing: a dilated kernel covers dilation * (kernel - 1) + 1 pixels":
            lambda: count(size + 2 * padding - kernel),
        "the padding was added once; it is added on both sides (2 * padding)":
            lambda: count(size + padding - span),
        "the + 1 is missing: the first position counts too (a kernel as large as the input has 1 position)":
            lambda: (size + 2 * padding - span) // stride,
        "the kernel's span was taken as dilation * kernel": lambda: count(size + 2 * padding - dilation * kernel),
        "the stride is missing": lambda: count(size + 2 * padding - span, 1),
    }


@exercise("ex10.conv_output_size", points=1, reference="course_lib.vision.conv_output_size",
          hints=(
              "Count the positions of the kernel's first (top, left) pixel: it starts at 0 and moves by `stride`, "
              "as long as the whole kernel stays inside the padded input.",
              "A kernel of k taps with dilation d covers d * (k - 1) + 1 pixels; the padded input has size + 2 * "
              "padding. How many pixels can its first pixel travel, and how many stride-steps fit in that?",
              "Integer division rounds down, which is right here: a last step that would push the kernel past "
              "the end does not count. Raise the ValueError before dividing when the travel room is negative.",
          ))
def _(fn, rng):
    cases = [(224, 7, 2, 3, 1), (8, 3, 1, 0, 1), (7, 3, 2, 0, 1), (10, 3, 1, 0, 2), (5, 5, 1, 0, 1),
             (56, 1, 2, 0, 1), (1, 3, 1, 1, 1)]
    while len(cases) < 60:
        case = (int(rng.integers(1, 41)), int(rng.integers(1, 8)), int(rng.integers(1, 5)), int(rng.integers(0, 4)),
                int(rng.integers(1, 4)))
        size, kernel, stride, padding, dilation = case
        if dilation * (kernel - 1) + 1 <= size + 2 * padding:
            cases.append(case)
    for size, kernel, stride, padding, dilation in cases:
        what = f"conv_output_size({size}, kernel={kernel}, stride={stride}, padding={padding}, dilation={dilation})"
        got = expect_int(call(fn, size, kernel, stride, padding, dilation, what=what), what)
        expected = V.conv_output_size(size, kernel, stride, padding, dilation)
        if got != expected:
            raise GradeError(f"{what}: expected {expected}, got {got}."
                             + likely(got, size_mistakes(size, kernel, stride, padding, dilation)))
    for size, kernel, stride, padding, dilation in [(2, 5, 1, 0, 1), (4, 3, 3, 0, 2), (1, 4, 2, 1, 1)]:
        what = f"conv_output_size({size}, kernel={kernel}, stride={stride}, padding={padding}, dilation={dilation})"
        span = dilation * (kernel - 1) + 1
        expect_raises(ValueError, lambda: call(fn, size, kernel, stride, padding, dilation, what=what), what,
                      f"the kernel covers {span} pixels but the padded input has only {size + 2 * padding}")


# ----------------------------------------------------------------------------- 2. im2col


def im2col_mistakes(x, kernel, stride, padding, dilation) -> dict:
    (kh, kw), (ph, pw) = pair(kernel), pair(padding)
    B, C = x.shape[:2]

    def ref():
        return V.im2col(x, kernel, stride, padding, dilation)

    def out_hw():
        H, W = x.shape[-2:]
        (sh, sw), (dh, dw) = pair(stride), pair(dilation)
        return V.conv_output_size(H, kh, sh, ph, dh), V.conv_output_size(W, kw, sw, pw, dw)

    return {
        "the rows are ordered kernel tap first, then channel; F.unfold (and a flattened conv weight) has the "
        "channel first, then the kernel row, then the kernel column":
            lambda: ref().reshape(B, C, kh * kw, -1).transpose(1, 2).reshape(B, C * kh * kw, -1) if C > 1 else None,
        "inside a window the taps are read column by column; read them row by row (kernel row, then kernel column)":
            lambda: ref().reshape(B, C, kh, kw, -1).transpose(2, 3).reshape(B, C * kh * kw, -1) if kh > 1 and kw > 1
            else None,
        "the output positions are numbered column by column; number them row by row (l = i * W_out + j)":
            lambda: ref().reshape(B, C * kh * kw, *out_hw()).transpose(2, 3).reshape(B, C * kh * kw, -1),
        "the dilation is missing: tap (a, b) is dilation * a rows and dilation * b columns from the window's corner":
            lambda: V.im2col(x, kernel, stride, padding, 1),
        "the padding is missing (a frame of `padding` zeros on every side)": lambda: V.im2col(x, kernel, stride, 0,
                                                                                             dilation),
        "the padding was added only at the top and left; it goes on every side":
            lambda: V.im2col(_pad_top_left(x, ph, pw), kernel, stride, 0, dilation) if ph or pw else None,
        "the stride is missing: windows start every stride pixels": lambda: V.im2col(x, kernel, 1, padding, dilation),
        "height and width are swapped in the kernel size": lambda: V.im2col(x, (kw, kh), stride, padding, dilation)
        if kh != kw else None,
    }


def _pad_top_left(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    B, C, H, W = x.shape
    out = x.new_zeros(B, C, H + ph, W + pw)
    out[:, :, ph:, pw:] = x
    return out


def _im2col_cases(rng: np.random.Generator) -> list:
    cases = [(torch.arange(9.0).reshape(1, 1, 3, 3), 2, 1, 0, 1, "the docstring's example")]
    for i in range(14):
        dtype = F64 if i % 4 == 3 else torch.float32
        B, C = int(rng.integers(1, 3)), int(rng.integers(1, 4))
        H, W = int(rng.integers(3, 11)), int(rng.integers(3, 11))
        if i % 3 == 2:  # pairs for everything
            kernel = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
            stride = (int(rng.integers(1, 3)), int(rng.integers(1, 4)))
            padding = (int(rng.integers(0, 3)), int(rng.integers(0, 2)))
            dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        else:
            kernel, stride = int(rng.integers(1, 5)), int(rng.integers(1, 4))
            padding, dilation = int(rng.integers(0, 3)), int(rng.integers(1, 3))
        (kh, kw), (ph, pw), (dh, dw) = pair(kernel), pair(padding), pair(dilation)
        H, W = max(H, dh * (kh - 1) + 1), max(W, dw * (kw - 1) + 1)  # the kernel fits
        x = randn(rng, B, C, H, W, dtype=dtype)
        cases.append((x, kernel, stride, padding, dilation, f"x {tuple(x.shape)} {str(dtype)[6:]}"))
    cases.append((randn(rng, 2, 3, 6, 6), 2, 2, 1, (2, 1), "x (2, 3, 6, 6), dilation (2, 1)"))
    cases.append((randn(rng, 1, 2, 5, 4), (5, 4), 1, 0, 1, "a kernel as large as the image"))
    return cases


@exercise("ex10.im2col", points=3, reference=("course_lib.vision.im2col", "course_lib.vision._im2col",
                                             "course_lib.vision._windows"),
          hints=(
              "Each column is one window, flattened channel by channel, each channel's kh x kw taps row by row. "
              "Pad first (a tensor of zeros with the image copied into its middle, or F.pad), then collect the "
              "windows.",
              "Two ways: (1) loop over the kh * kw kernel taps; tap (a, b) sees, at every output position, a "
              "strided slice of the padded image starting at (a * dilation, b * dilation) with step stride, of "
              "H_out x W_out pixels; (2) `Tensor.unfold(dim, size, step)` twice gives every window as a view, "
              "(B, C, H_out, W_out, ...), to slice for the dilation and permute.",
              "However you collect them, the final reshape to (B, C * kh * kw, L) needs the axes in the order "
              "(B, C, kernel row, kernel column, output row, output column) first: permute, then reshape.",
          ))
def _(fn, rng):
    for x, kernel, stride, padding, dilation, label in _im2col_cases(rng):
        what = f"im2col({label}, kernel_size={kernel}, stride={stride}, padding={padding}, dilation={dilation})"
        got = expect_tensor(call(fn, x, kernel, stride, padding, dilation, what=what), what)
        expected = V.im2col(x, kernel, stride, padding, dilation)
        expect_dtype(got, x.dtype, what, "the columns are copies of the image's values: keep its dtype")
        expect_values(got, expected, what, im2col_mistakes(x, kernel, stride, padding, dilation),
                      why_shape="(batch, channels * kh * kw, H_out * W_out), H_out and W_out as conv_output_size")


# ----------------------------------------------------------------------------- 3. conv2d


def conv_mistakes(x, weight, bias, stride, padding, dilation, groups) -> dict:
    B, C_in = x.shape[:2]
    C_out = weight.shape[0]

    def ref():
        return V.conv2d(x, weight, bias, stride, padding, dilation, groups)

    interleaved = torch.arange(C_in).reshape(C_in // groups, groups).T.reshape(-1)  # group k: channels k, k+g, ...
    return {
        "the bias is missing": lambda: V.conv2d(x, weight, None, stride, padding, dilation, groups)
        if bias is not None else None,
        "the kernel was flipped (a convolution in the maths sense); deep-learning convolutions do not flip it "
        "(cross-correlation)": lambda: V.conv2d(x, weight.flip(-2, -1), bias, stride, padding, dilation, groups),
        "group k took the input channels k, k + g, k + 2g, ...; it takes the consecutive block "
        "[k * C_in/g, (k+1) * C_in/g)": lambda: V.conv2d(x[:, interleaved], weight, bias, stride, padding, dilation,
                                                         groups) if groups > 1 and C_in // groups > 1 else None,
        "H_out and W_out are swapped when the L positions are turned back into an image":
            lambda: ref().reshape(B, C_out, ref().shape[3], ref().shape[2]) if ref().shape[2] != ref().shape[3]
            else None,
        "the stride is missing": lambda: V.conv2d(x, weight, bias, 1, padding, dilation, groups),
        "the dilation is missing": lambda: V.conv2d(x, weight, bias, stride, padding, 1, groups),
        "the padding is missing": lambda: V.conv2d(x, weight, bias, stride, 0, dilation, groups),
    }


def _conv_cases(rng: np.random.Generator) -> list:
    cases = []
    plans = [  # (C_in, C_out, groups)
        (3, 4, 1), (2, 5, 1), (4, 6, 2), (6, 6, 3), (5, 5, 5), (4, 8, 4), (3, 6, 3), (4, 4, 1), (6, 4, 2), (1, 3, 1),
        (3, 2, 1), (8, 4, 4),
    ]
    for i, (C_in, C_out, groups) in enumerate(plans):
        dtype = F64 if i % 4 == 3 else torch.float32
        B = int(rng.integers(1, 3))
        if i % 3 == 1:
            kernel = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
            stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
            padding = (int(rng.integers(0, 2)), int(rng.integers(0, 3)))
            dilation = (int(rng.integers(1, 3)), 1)
        else:
            kernel, stride = int(rng.integers(1, 4)), int(rng.integers(1, 3))
            padding, dilation = int(rng.integers(0, 2)), int(rng.integers(1, 3))
        (kh, kw), (dh, dw) = pair(kernel), pair(dilation)
        H = max(int(rng.integers(3, 10)), dh * (kh - 1) + 1)
        W = max(int(rng.integers(3, 10)), dw * (kw - 1) + 1)
        scale = float(rng.choice([0.1, 1.0, 3.0]))
        x = randn(rng, B, C_in, H, W, scale=scale, dtype=dtype)
        weight = randn(rng, C_out, C_in // groups, kh, kw, dtype=dtype)
        bias = randn(rng, C_out, dtype=dtype) if i % 2 == 0 else None
        cases.append((x, weight, bias, stride, padding, dilation, groups))
    x = randn(rng, 1, 3, 12, 8)  # a ViT patch embedding: kernel = stride
    cases.append((x, randn(rng, 5, 3, 4, 4), randn(rng, 5), 4, 0, 1, 1))
    return cases


@exercise("ex10.conv2d", points=3, reference=("course_lib.vision.conv2d",),
          hints=(
              "After im2col, output pixel l of channel o is the dot product of filter o, flattened, with column l: "
              "all of them at once is one matrix product of the flattened filters (C_out, C_in * kh * kw) with "
              "the columns (C_in * kh * kw, L), for every image of the batch.",
              "The product has (B, C_out, L); `reshape` L back into (H_out, W_out), H_out from conv_output_size "
              "(height) and W_out = L // H_out. The bias, one number per output channel, broadcasts as "
              "(1, C_out, 1, 1).",
              "Groups: the columns' rows come channel by channel, so group k's rows are one consecutive block. "
              "View the columns as (B, g, C_in/g * kh * kw, L) and the filters as (g, C_out/g, C_in/g * kh * kw): "
              "a batched matmul pairs each group with its own filters.",
          ))
def _(fn, rng):
    for x, weight, bias, stride, padding, dilation, groups in _conv_cases(rng):
        what = (f"conv2d(x {tuple(x.shape)} {str(x.dtype)[6:]}, weight {tuple(weight.shape)}, "
                f"bias {'None' if bias is None else tuple(bias.shape)}, stride={stride}, padding={padding}, "
                f"dilation={dilation}, groups={groups})")
        got = expect_tensor(call(fn, x, weight, bias, stride, padding, dilation, groups, what=what), what)
        expected = V.conv2d(x, weight, bias, stride, padding, dilation, groups)
        expect_dtype(got, x.dtype, what, "compute in the input's dtype")
        rtol, atol = tolerances(x.dtype)
        scale = max(1.0, float(x.abs().max()) * math.sqrt(weight[0].numel()))
        expect_values(got, expected, what, conv_mistakes(x, weight, bias, stride, padding, dilation, groups),
                      rtol, atol * scale, why_shape="(batch, C_out, H_out, W_out)")


# ----------------------------------------------------------------------------- 4. BatchNorm folding


def fold_mistakes(weight, bias, gamma, beta, mean, var, eps) -> dict:
    b = bias.double() if bias is not None else torch.zeros_like(mean, dtype=F64)
    g, bt, m, v = gamma.double(), beta.double(), mean.double(), var.double()
    shape = (-1,) + (1,) * (weight.dim() - 1)

    def folded(s, new_bias):
        return torch.cat([(weight.double() * s.view(shape)).flatten(), new_bias])

    s = g / (v + eps).sqrt()
    return {
        "you divided by the variance; BatchNorm divides by the standard deviation, sqrt(running_var + eps)":
            lambda: folded(g / (v + eps), (b - m) * g / (v + eps) + bt),
        "eps is missing: the standard deviation is sqrt(running_var + eps)":
            lambda: folded(g / v.sqrt(), (b - m) * g / v.sqrt() + bt),
        "the conv's bias was not scaled: the BatchNorm scales everything the conv outputs, its bias included, "
        "so the new bias is (bias - running_mean) * s + beta": lambda: folded(s, b - m * s + bt),
        "running_mean is missing from the new bias": lambda: folded(s, b * s + bt),
        "beta (bn_bias) is missing from the new bias": lambda: folded(s, (b - m) * s),
        "gamma (bn_weight) is missing from the scale": lambda: folded(1 / (v + eps).sqrt(),
                                                                      (b - m) / (v + eps).sqrt() + bt),
        "the scale multiplied the weight along its second axis (input channels); each OUTPUT channel's filter, "
        "the first axis, gets its channel's scale": lambda: torch.cat([(weight.double() * s.view(1, -1, 1, 1))
                                                                      .flatten(), (b - m) * s + bt]),
        "you multiplied by the standard deviation instead of dividing": lambda: folded(g * (v + eps).sqrt(),
                                                                                       (b - m) * g * (v + eps).sqrt()
                                                                                       + bt),
    }


def _fold_cases(rng: np.random.Generator) -> list:
    cases = [(torch.full((1, 1, 1, 1), 3.0), torch.tensor([1.0]), torch.tensor([6.0]), torch.tensor([0.5]),
              torch.tensor([4.0]), torch.tensor([8.0]), 1.0, "the docstring's example")]
    for i in range(10):
        dtype = F64 if i % 3 == 2 else torch.float32
        C_out = int(rng.integers(1, 7))
        C_in_g = C_out if i % 4 == 1 else int(rng.integers(1, 5))  # sometimes square, so an axis mix-up can hide
        k = int(rng.choice([1, 3]))
        weight = randn(rng, C_out, C_in_g, k, k, dtype=dtype)
        bias = randn(rng, C_out, dtype=dtype) if i % 2 == 0 else None
        gamma = randn(rng, C_out, dtype=dtype) + 1
        beta = randn(rng, C_out, dtype=dtype)
        mean = randn(rng, C_out, scale=2.0, dtype=dtype)
        var = torch.from_numpy(rng.uniform(0.01, 3.0, size=C_out)).to(dtype)
        eps = [1e-5, 1e-3, 0.1][i % 3]
        label = f"weight {tuple(weight.shape)} {str(dtype)[6:]}, bias {'None' if bias is None else '(C_out,)'}"
        cases.append((weight, bias, gamma, beta, mean, var, eps, label))
    return cases


@exercise("ex10.fold_batchnorm", points=2, reference=("course_lib.vision.fold_batchnorm_weights",
                                                      "course_lib.vision.fold_batchnorm"),
          hints=(
              "In eval mode the BatchNorm is, per channel, y * s + t with fixed numbers s and t: s = gamma divided "
              "by the standard deviation, and t whatever is left. Write BN(W x + b) out and collect what multiplies "
              "x and what does not.",
              "The new filters are the old ones times s, channel by channel: s has C_out values, so reshape it to "
              "(C_out, 1, 1, 1) to scale each output channel's filter. The new bias is what BN makes of the old "
              "bias (zeros when it is None).",
              "The standard deviation is the square root of (running_var + eps), not of running_var alone, and "
              "not the variance itself.",
          ))
def _(fn, rng):
    for weight, bias, gamma, beta, mean, var, eps, label in _fold_cases(rng):
        what = f"fold_batchnorm({label}, eps={eps:g})"
        out = call(fn, weight, bias, gamma, beta, mean, var, eps, what=what)
        new_weight, new_bias = expect_tensors(out, 2, what, "(new_weight, new_bias)")
        exp_weight, exp_bias = V.fold_batchnorm_weights(weight, bias, gamma, beta, mean, var, eps)
        expect_shape(new_weight, tuple(weight.shape), what + ", new_weight", "the same shape as the conv's weight")
        expect_shape(new_bias, (weight.shape[0],), what + ", new_bias", "one bias per output channel")
        for t, name in ((new_weight, "new_weight"), (new_bias, "new_bias")):
            expect_dtype(t, weight.dtype, f"{what}, {name}", "keep the weight's dtype")
        rtol, atol = tolerances(weight.dtype)
        got = torch.cat([new_weight.flatten(), new_bias]).double()
        expected = torch.cat([exp_weight.flatten(), exp_bias]).double()
        if not same_value(got, expected, rtol, atol * 10):
            weight_ok = same_value(new_weight.double(), exp_weight.double(), rtol, atol * 10)
            which = "new_bias" if weight_ok else "new_weight"
            gotten, wanted = (new_weight, exp_weight) if which == "new_weight" else (new_bias, exp_bias)
            try:
                expect_close(gotten, wanted, f"{what}, {which}", rtol=rtol, atol=atol * 10)
            except GradeError as err:
                raise GradeError(str(err) + "." + likely(got, fold_mistakes(weight, bias, gamma, beta, mean, var, eps),
                                                         rtol=rtol, atol=atol * 10)) from None
            raise GradeError(f"{what}, {which}: NaN where a number was expected, or the reverse")


# ----------------------------------------------------------------------------- 5. patchify


def patch_mistakes(x, P) -> dict:
    B, C, H, W = x.shape
    gh, gw = H // P, W // P

    def ref():
        return VIT.patchify(x, P)

    return {
        "each patch was flattened pixel by pixel with the channels last, (row, column, channel); the conv "
        "weight's order is (channel, row, column)": lambda: ref().reshape(B, gh * gw, C, P, P).permute(0, 1, 3, 4, 2)
        .reshape(B, gh * gw, -1) if C > 1 else None,
        "the patches are numbered column by column; number them row by row (left to right, then down)":
            lambda: ref().reshape(B, gh, gw, -1).transpose(1, 2).reshape(B, gh * gw, -1) if gh > 1 and gw > 1 else None,
        "a plain reshape to (B, N, C * P * P) mixes pixels of different patches: split H and W into (patch, pixel) "
        "and permute before the final reshape": lambda: x.reshape(B, gh * gw, C * P * P) if P > 1 else None,
        "inside a patch the pixels are read column by column; read them row by row":
            lambda: ref().reshape(B, gh * gw, C, P, P).transpose(-1, -2).reshape(B, gh * gw, -1) if P > 1 else None,
    }


@exercise("ex10.patchify", points=2, reference=("course_lib.models.vit.patchify",),
          hints=(
              "Patchify is the stride-P convolution's im2col, with windows that do not overlap: no pixel is "
              "computed, only moved. Give each pixel its coordinates (patch row, row in patch, patch column, "
              "column in patch) and put them in the order the result needs.",
              "Split each of H and W into two axes (which patch, where inside it) with one `reshape`; `permute` "
              "then puts the axes in the order the output reads them, slowest first; a final `reshape` merges "
              "them. (`Tensor.unfold` twice is another way to get the split.)",
              "Check the order against a ViT weight: patch n's row times weight.reshape(D, -1)[d] must pair pixel "
              "(c, i, j) with weight[d, c, i, j]; the channel is the slowest-changing index of a flattened patch.",
          ))
def _(fn, rng):
    cases = [(randn(rng, 1, 3, 32, 32), 16, "a (1, 3, 32, 32) image, P=16")]
    for i in range(10):
        P = int(rng.integers(1, 6))
        B, C = int(rng.integers(1, 3)), int(rng.integers(1, 5))
        gh, gw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        if i < 3:
            gw = gh + 1  # non-square grids
        dtype = [torch.float32, F64, torch.uint8][i % 3]
        x = randn(rng, B, C, gh * P, gw * P, dtype=torch.float32)
        if dtype == torch.uint8:
            x = torch.from_numpy(rng.integers(0, 256, size=(B, C, gh * P, gw * P), dtype=np.uint8))
        cases.append((x.to(dtype), P, f"x {tuple(x.shape)} {str(dtype)[6:]}, P={P}"))
    for x, P, label in cases:
        what = f"patchify({label})"
        got = expect_tensor(call(fn, x, P, what=what), what)
        expect_dtype(got, x.dtype, what, "patches are the image's own values: keep its dtype")
        expect_values(got, VIT.patchify(x, P), what, patch_mistakes(x, P),
                      why_shape="(batch, N, C * P * P) with N = (H / P) * (W / P)")
    x = randn(rng, 1, 3, 10, 12)
    expect_raises(ValueError, lambda: call(fn, x, 4, what="patchify"), "patchify(a (1, 3, 10, 12) image, P=4)",
                  "10 rows do not cut into whole 4 x 4 patches")


# ----------------------------------------------------------------------------- 6. centre crop


def crop_variant(pixels: torch.Tensor, height: int, width: int, offset: Callable[[int], int]) -> torch.Tensor:
    """The crop with another rule for the top/left offset of a difference d = H - height (negative: padding)."""
    C, H, W = pixels.shape
    top, left = offset(H - height), offset(W - width)
    out = pixels.new_zeros((C, height, width))
    r0, r1 = max(top, 0), min(top + height, H)
    c0, c1 = max(left, 0), min(left + width, W)
    if r1 > r0 and c1 > c0:
        out[:, r0 - top:r1 - top, c0 - left:c1 - left] = pixels[:, r0:r1, c0:c1]
    return out


def crop_mistakes(pixels, height, width) -> dict:
    H, W = pixels.shape[-2:]
    odd_crop = any(d > 0 and d % 2 for d in (H - height, W - width))
    odd_pad = any(d < 0 and d % 2 for d in (H - height, W - width))
    return {
        "the image was padded with the extra zero row (or column) at the bottom (right); the processors put it at "
        "the top (left): the image starts ceil(difference / 2) rows down": lambda: crop_variant(
            pixels, height, width, lambda d: d // 2 if d >= 0 else -((-d) // 2)) if odd_pad else None,
        "the offset was rounded up; the Hub's processors round (H - height) / 2 down (the extra row stays at the "
        "bottom)": lambda: crop_variant(pixels, height, width, lambda d: -((-d) // 2)) if odd_crop else None,
        "the offset was rounded with round(); Python rounds halves to even, the processors always round down":
            lambda: crop_variant(pixels, height, width, lambda d: round(d / 2)),
        "height and width are swapped": lambda: crop_variant(pixels, width, height, lambda d: d // 2)
        if height != width else None,
        "the crop was taken from the top-left corner, not the middle": lambda: crop_variant(pixels, height, width,
                                                                                            lambda d: min(d, 0)),
    }


@exercise("ex10.center_crop", points=2, reference=("course_lib.image_processing.center_crop",),
          hints=(
              "The crop window starts (H - height) // 2 rows down and (W - width) // 2 columns in. When the crop is "
              "larger, that number is negative: the window starts above the image, and the rows outside the image "
              "are zeros.",
              "Start from a tensor of zeros of shape (C, height, width) (`new_zeros` keeps the dtype), work out "
              "which image rows and columns fall inside the window (clip to [0, H) and [0, W)), and copy that "
              "block to its place in the result, shifted by the offset.",
              "Python's `//` rounds towards minus infinity: for a difference of -3, -3 // 2 is -2, so the image "
              "lands 2 rows down and the extra zero row is at the top, as the processors do. Handle rows and "
              "columns independently.",
          ))
def _(fn, rng):
    cases = [(torch.arange(25, dtype=torch.uint8).reshape(1, 5, 5), 2, 2),
             (torch.full((1, 1, 1), 7, dtype=torch.uint8), 2, 2)]
    for i in range(14):
        C = 3 if i % 2 == 0 else int(rng.integers(1, 5))
        H, W = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        kind = i % 4  # 0 crop both, 1 pad both, 2 crop one side and pad the other, 3 anything
        if kind == 0:
            height, width = int(rng.integers(1, H + 1)), int(rng.integers(1, W + 1))
        elif kind == 1:
            height, width = H + int(rng.integers(1, 5)), W + int(rng.integers(1, 5))
        elif kind == 2:
            height, width = H + int(rng.integers(1, 4)), int(rng.integers(1, W + 1))
        else:
            height, width = int(rng.integers(1, 14)), int(rng.integers(1, 14))
        if i % 2 == 0:
            pixels = torch.from_numpy(rng.integers(1, 256, size=(C, H, W), dtype=np.uint8))
        else:
            pixels = randn(rng, C, H, W) + 5  # no zeros inside the image: a misplaced frame shows
        cases.append((pixels, height, width))
    cases.append((torch.from_numpy(rng.integers(1, 256, size=(3, 7, 10), dtype=np.uint8)), 4, 5))  # odd differences
    for pixels, height, width in cases:
        what = f"center_crop(pixels {tuple(pixels.shape)} {str(pixels.dtype)[6:]}, height={height}, width={width})"
        got = expect_tensor(call(fn, pixels, height, width, what=what), what)
        expect_dtype(got, pixels.dtype, what, "a crop keeps the picture's dtype (uint8 stays uint8)")
        expect_values(got, IP.center_crop(pixels, height, width).contiguous(), what,
                      crop_mistakes(pixels, height, width),
                      why_shape="(C, height, width): zeros around the image where the crop is larger")


# ----------------------------------------------------------------------------- stretch: positions


def bicubic_matrix(n: int, out: int, A: float = -0.75, clamp_index: bool = True, clamp_position: bool = False
                   ) -> torch.Tensor:
    """(out, n) float64 weights of a 1-D bicubic resize, with the knobs of the usual mistakes."""
    position = (torch.arange(out, dtype=F64) + 0.5) * (n / out) - 0.5
    if clamp_position:
        position = position.clamp(min=0)
    below = torch.floor(position)
    t = position - below
    d = torch.stack([1 + t, t, 1 - t, 2 - t], dim=1)
    w = torch.where(d <= 1, ((A + 2) * d - (A + 3)) * d * d + 1, ((A * d - 5 * A) * d + 8 * A) * d - 4 * A)
    idx = below.long()[:, None] + torch.arange(-1, 3)
    if not clamp_index:  # taps outside the grid read zeros
        w = torch.where((idx >= 0) & (idx < n), w, torch.zeros_like(w))
    return torch.zeros(out, n, dtype=F64).scatter_add(1, idx.clamp(0, n - 1), w)


def resized(pe: torch.Tensor, gh: int, gw: int, **knobs) -> torch.Tensor:
    n = math.isqrt(pe.shape[1] - 1)
    grid = pe[0, 1:].double().reshape(n, n, -1)
    grid = torch.einsum("hr,rcd->hcd", bicubic_matrix(n, gh, **knobs), grid)
    grid = torch.einsum("wc,hcd->hwd", bicubic_matrix(n, gw, **knobs), grid)
    return torch.cat([pe[:, :1].double(), grid.reshape(1, gh * gw, -1)], 1)


def position_mistakes(pe: torch.Tensor, gh: int, gw: int) -> dict:
    n, D = math.isqrt(pe.shape[1] - 1), pe.shape[-1]

    def torch_mode(mode, align_corners=None):
        grid = pe[:, 1:].double().reshape(1, n, n, D).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode=mode, align_corners=align_corners)
        return torch.cat([pe[:, :1].double(), grid.permute(0, 2, 3, 1).reshape(1, gh * gw, D)], 1)

    def reshaped_not_permuted():
        grid = F.interpolate(pe[:, 1:].double().reshape(1, D, n, n), size=(gh, gw), mode="bicubic",
                             align_corners=False)
        return torch.cat([pe[:, :1].double(), grid.reshape(1, gh * gw, D)], 1)

    return {
        "the corners were aligned (align_corners=True); transformers resizes with align_corners=False: "
        "position (i + 0.5) * n / out - 0.5": lambda: torch_mode("bicubic", True),
        "this is a bilinear resize; bicubic uses 4 neighbours per axis with Keys' kernel":
            lambda: torch_mode("bilinear", False),
        "the cubic kernel uses A = -0.5; PyTorch (and so transformers) uses A = -0.75": lambda: resized(pe, gh, gw,
                                                                                                         A=-0.5),
        "the neighbours outside the grid were taken as zeros; clamp their indices to [0, n - 1] (the border "
        "repeats)": lambda: resized(pe, gh, gw, clamp_index=False),
        "the source position was clamped at 0 (as bilinear resizing does); bicubic keeps it as it is":
            lambda: resized(pe, gh, gw, clamp_position=True),
        "grid_height and grid_width are swapped": lambda: resized(pe, gw, gh) if gh != gw else None,
        "the (n * n, D) rows were reshaped straight to (D, n, n); the D values of one patch are its channels: "
        "reshape to (n, n, D) and move D to the front (permute)": reshaped_not_permuted,
    }


@exercise("ex10.interpolate_positions", points=4, stretch=True,
          reference=("course_lib.models.vit.interpolate_positions",),
          hints=(
              "Leave row 0 alone. The other n * n rows are an n x n picture with D channels: resize it along the "
              "rows, then along the columns, with the same 1-D rule; each output value is a weighted sum of 4 "
              "neighbours of its source position.",
              "For one axis, build an (out, n) weight matrix: for each output index the source position, its "
              "floor f, the fraction t, the 4 indices f-1 .. f+2 clamped to [0, n-1], the 4 kernel weights at "
              "distances 1+t, t, 1-t, 2-t. Clamped duplicates add up (`scatter_add`, or `index_add`). Then two "
              "matrix products (or `einsum`) over the (n, n, D) grid.",
              "Compute the weights in float64 and cast the result back to the input's dtype; `torch.where` picks "
              "the near (|d| <= 1) or far branch of the kernel for all four distances at once.",
          ))
def _(fn, rng):
    cases = [(randn(rng, 1, 5, 3), 2, 2), (randn(rng, 1, 197, 8, scale=0.02), 24, 24)]
    for i in range(10):
        n = int(rng.integers(1, 9))
        D = int(rng.integers(1, 17))
        gh, gw = int(rng.integers(1, 13)), int(rng.integers(1, 13))
        if i == 0:
            gh, gw = n, n + 3
        dtype = F64 if i % 3 == 2 else torch.float32
        cases.append((randn(rng, 1, 1 + n * n, D, scale=float(rng.choice([0.02, 1.0])), dtype=dtype), gh, gw))
    for pe, gh, gw in cases:
        n = math.isqrt(pe.shape[1] - 1)
        what = (f"interpolate_positions(position_embeddings {tuple(pe.shape)} {str(pe.dtype)[6:]} (a {n} x {n} grid), "
                f"grid_height={gh}, grid_width={gw})")
        got = expect_tensor(call(fn, pe, gh, gw, what=what), what)
        expected = VIT.interpolate_positions(pe, gh, gw)
        expect_dtype(got, pe.dtype, what, "keep the position embeddings' dtype")
        expect_shape(got, tuple(expected.shape), what, "one [CLS] row, then grid_height * grid_width patch rows")
        if not torch.equal(got[:, 0], pe[:, 0]):
            raise GradeError(f"{what}: row 0, the [CLS] position, changed; it has no place in the image: keep it "
                             f"as it is, in front of the resized grid")
        rtol, atol = tolerances(pe.dtype)
        expect_values(got, expected, what, position_mistakes(pe, gh, gw), rtol,
                      atol * max(1.0, float(pe.abs().max())) * 2)


# ----------------------------------------------------------------------------- stretch: receptive field


def field_mistakes(layers) -> dict:
    def walk(grow, update_first=False):
        size, jump = 1, 1
        for k, s, d in layers:
            if update_first:
                jump *= s
            size += grow(k, s, d) * jump
            if not update_first:
                jump *= s
        return size, jump

    return {
        "the dilation is missing: a dilated kernel reaches dilation * (kernel - 1) pixels beyond its first":
            lambda: walk(lambda k, s, d: k - 1),
        "the jump was multiplied by the layer's own stride before adding its kernel; a layer's stride only "
        "spreads the layers AFTER it": lambda: walk(lambda k, s, d: d * (k - 1), update_first=True),
        "the strides are missing from the field: each layer's taps are as far apart, in input pixels, as the "
        "product of the strides before it": lambda: (1 + sum(d * (k - 1) for k, s, d in layers),
                                                     math.prod(s for _, s, _ in layers)),
        "each layer added kernel taps, not kernel - 1 (the first tap is the pixel the field already has)":
            lambda: walk(lambda k, s, d: d * (k - 1) + 1),
    }


@exercise("ex10.receptive_field", points=4, stretch=True, reference=("course_lib.vision.receptive_field",),
          hints=(
              "Start from one output pixel and walk back is one way; walking forward works too: keep (size, jump), "
              "the field of one pixel of the current layer's output, in input-image pixels, and how far apart "
              "neighbouring pixels' fields start. Before any layer both are 1.",
              "On paper: a stride-2 layer, then a 3x3 conv. The conv's neighbouring taps are neighbouring pixels "
              "of ITS input, which are 2 image pixels apart. That spacing is the jump; a layer's stride changes it "
              "only for the layers after it.",
              "A layer of kernel k and dilation d reaches d * (k - 1) of its input pixels beyond the first one, "
              "each `jump` image pixels from the next: that is how much the field grows. Update the jump after.",
          ))
def _(fn, rng):
    cases = [[(3, 1, 1)], [(3, 1, 1), (3, 1, 1)], [(7, 2, 1), (3, 2, 1)], [(3, 1, 2)], [],
             [(7, 2, 1), (3, 2, 1), (3, 1, 1), (3, 1, 1), (3, 2, 1), (3, 1, 1)]]
    for _ in range(14):
        cases.append([(int(rng.integers(1, 8)), int(rng.integers(1, 4)), int(rng.integers(1, 4)))
                      for _ in range(int(rng.integers(1, 7)))])
    for layers in cases:
        what = f"receptive_field({layers})"
        got = call(fn, [tuple(layer) for layer in layers], what=what)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise GradeError(f"{what}: expected a pair (size, jump), got {got!r}")
        got = (expect_int(got[0], what + ", size"), expect_int(got[1], what + ", jump"))
        expected = V.receptive_field(layers)
        if got != expected:
            which = "size" if got[0] != expected[0] else "jump"
            raise GradeError(f"{what}: expected (size, jump) = {expected}, got {got} (the {which} differs)."
                             + likely(got, field_mistakes(layers)))
