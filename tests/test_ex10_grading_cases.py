"""The ex10 checks have teeth: the solutions pass, typical wrong answers fail.

Each wrong answer is a mistake a learner is likely to make, a call of PyTorch's ready-made
version (switched off while the learner's code runs) or of the answer key (``course_lib``).
Every one must be caught for several seeds: with a GradeError, or, for the few marked
"(raises)", by an exception from the wrong answer itself (the grader reports those as
"raised an error", 0 points). Right answers written differently from the solution must pass.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.grading.registry import GradeError
from helpers import (assert_checks_leave_the_global_rng_alone, assert_wrong_answer_fails, chapter_checks,
                     have_solutions, load_exercise_module, unresolved_switched_off_names)

SEEDS = range(3)
FILE = "ex10_vision.py"
HAS_SOLUTIONS = have_solutions(FILE)

checks = chapter_checks


def key():
    """The answer key's modules."""
    from course_lib import image_processing, vision
    from course_lib.models import vit

    return vision, vit, image_processing


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@pytest.mark.skipif(not HAS_SOLUTIONS, reason="a learner hand-out has no solutions/")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(checks("ex10")))
def test_solution_passes(name, seed):
    checks("ex10")[name].grade(getattr(load_exercise_module("solutions", FILE), name), np.random.default_rng(seed))


# ----------------------------------------------------------------------------- output size


def _size(rounding="floor", use_dilation=True, pad_sides=2, plus_one=1, check=True, step=True):
    def conv_output_size(size, kernel, stride=1, padding=0, dilation=1):
        span = (dilation if use_dilation else 1) * (kernel - 1) + 1
        room = size + pad_sides * padding - span
        if check and room < 0:
            raise ValueError("does not fit")
        s = stride if step else 1
        if rounding == "floor":
            return room // s + plus_one
        if rounding == "ceil":
            return -(-room // s) + plus_one
        return room / s + plus_one  # true division
    return conv_output_size


WRONG_SIZE = {
    "rounds up": _size(rounding="ceil"),
    "no dilation": _size(use_dilation=False),
    "padding on one side": _size(pad_sides=1),
    "no + 1": _size(plus_one=0),
    "true division (a float)": _size(rounding="true"),
    "no stride": _size(step=False),
    "no error when the kernel does not fit": _size(check=False),
    "span as dilation * kernel": lambda size, kernel, stride=1, padding=0, dilation=1:
        (size + 2 * padding - dilation * kernel) // stride + 1,
    "answer key": lambda *a: key()[0].conv_output_size(*a),
}


# ----------------------------------------------------------------------------- im2col


def _im2col(order="channel", taps="rows", positions="rows", use_dilation=True, use_padding=True, pad="both",
            use_stride=True, swap_kernel=False):
    def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
        kh, kw = pair(kernel_size)
        if swap_kernel:
            kh, kw = kw, kh
        sh, sw = pair(stride) if use_stride else (1, 1)
        ph, pw = pair(padding) if use_padding else (0, 0)
        dh, dw = pair(dilation) if use_dilation else (1, 1)
        B, C, H, W = x.shape
        if pad == "both":
            padded = x.new_zeros(B, C, H + 2 * ph, W + 2 * pw)
            padded[:, :, ph:ph + H, pw:pw + W] = x
        else:  # top and left only
            padded = x.new_zeros(B, C, H + ph, W + pw)
            padded[:, :, ph:, pw:] = x
        Hp, Wp = padded.shape[-2:]
        H_out, W_out = (Hp - dh * (kh - 1) - 1) // sh + 1, (Wp - dw * (kw - 1) - 1) // sw + 1
        win = padded.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)[..., ::dh, ::dw]
        # win: (B, C, H_out, W_out, kh, kw)
        if taps == "columns":
            win = win.transpose(-1, -2)
        if positions == "columns":
            win = win.transpose(2, 3)
        if order == "channel":
            cols = win.permute(0, 1, 4, 5, 2, 3)  # (B, C, kh, kw, positions)
        else:
            cols = win.permute(0, 4, 5, 1, 2, 3)  # (B, kh, kw, C, positions)
        return cols.reshape(B, C * kh * kw, H_out * W_out)
    return im2col


WRONG_IM2COL = {
    "rows: kernel tap first, then channel": _im2col(order="tap"),
    "taps column by column": _im2col(taps="columns"),
    "positions column by column": _im2col(positions="columns"),
    "no dilation": _im2col(use_dilation=False),
    "no padding": _im2col(use_padding=False),
    "padding at the top and left only": _im2col(pad="top-left"),
    "no stride": _im2col(use_stride=False),
    "kernel height and width swapped": _im2col(swap_kernel=True),
    "F.unfold (a shortcut)": lambda x, k, stride=1, padding=0, dilation=1: F.unfold(x, k, dilation, padding, stride),
    "answer key": lambda *a: key()[0].im2col(*a),
}


# ----------------------------------------------------------------------------- conv2d


def _conv(bias_on=True, flip=False, group_layout="blocks", swap_hw=False, use_groups=True, unfold=None):
    def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        g = groups if use_groups else 1
        B, C_in, H, W = x.shape
        C_out, _, kh, kw = weight.shape
        w = weight.flip(-2, -1) if flip else weight
        if group_layout == "interleaved" and g > 1:
            x = x[:, torch.arange(C_in).reshape(C_in // g, g).T.reshape(-1)]
        cols = (unfold or _im2col())(x, (kh, kw), stride, padding, dilation)  # (B, K, L)
        L = cols.shape[-1]
        (sh, _), (ph, _), (dh, _) = pair(stride), pair(padding), pair(dilation)
        H_out = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        W_out = L // H_out
        out = w.reshape(g, C_out // g, -1) @ cols.reshape(B, g, -1, L)
        out = out.reshape(B, C_out, W_out, H_out) if swap_hw else out.reshape(B, C_out, H_out, W_out)
        if bias is not None and bias_on:
            out = out + bias.reshape(1, -1, 1, 1)
        return out
    return conv2d


def _conv_module(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    layer = torch.nn.Conv2d(x.shape[1], weight.shape[0], weight.shape[-2:], stride, padding, dilation, groups,
                            bias=bias is not None, dtype=x.dtype)
    layer.weight.data = weight
    if bias is not None:
        layer.bias.data = bias
    return layer(x)


WRONG_CONV = {
    "no bias": _conv(bias_on=False),
    "kernel flipped": _conv(flip=True),
    "groups take interleaved channels": _conv(group_layout="interleaved"),
    "H_out and W_out swapped": _conv(swap_hw=True),
    "groups ignored (raises)": _conv(use_groups=False),
    "im2col without dilation inside (raises)": _conv(unfold=_im2col(use_dilation=False)),
    "F.conv2d (a shortcut)": lambda x, w, b=None, s=1, p=0, d=1, g=1: F.conv2d(x, w, b, s, p, d, g),
    "torch.conv2d (a shortcut)": lambda x, w, b=None, s=1, p=0, d=1, g=1: torch.conv2d(x, w, b, s, p, d, g),
    "nn.Conv2d (a shortcut)": _conv_module,
    "F.unfold inside (a shortcut)": _conv(unfold=lambda x, k, s, p, d: F.unfold(x, k, d, p, s)),
    "answer key": lambda *a: key()[0].conv2d(*a),
}


# ----------------------------------------------------------------------------- BatchNorm folding


def _fold(denominator="std", scale_bias=True, use_mean=True, use_beta=True, use_gamma=True, axis=0,
          in_place=False):
    def fold_batchnorm(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps=1e-5):
        if denominator == "std":
            s = 1 / torch.sqrt(running_var + eps)
        elif denominator == "var":
            s = 1 / (running_var + eps)
        elif denominator == "no eps":
            s = 1 / torch.sqrt(running_var)
        else:  # times the std
            s = torch.sqrt(running_var + eps)
        if use_gamma:
            s = s * bn_weight
        b = bias if bias is not None else torch.zeros_like(running_mean)
        shape = (-1, 1, 1, 1) if axis == 0 else (1, -1, 1, 1)
        if in_place:
            new_weight = weight.mul_(s.reshape(shape))
        else:
            new_weight = weight * s.reshape(shape)
        mean = running_mean if use_mean else 0
        new_bias = (b - mean) * s if scale_bias else b - mean * s
        return new_weight, new_bias + (bn_bias if use_beta else 0)
    return fold_batchnorm


WRONG_FOLD = {
    "divides by the variance": _fold(denominator="var"),
    "no eps": _fold(denominator="no eps"),
    "multiplies by the std": _fold(denominator="times std"),
    "conv bias not scaled": _fold(scale_bias=False),
    "running_mean missing": _fold(use_mean=False),
    "beta missing": _fold(use_beta=False),
    "gamma missing": _fold(use_gamma=False),
    "scale along the input channels (raises)": _fold(axis=1),
    "scales the weight in place": _fold(in_place=True),
    "F.batch_norm on the weight (a shortcut)": lambda w, b, g, bt, m, v, eps=1e-5: (
        w * F.batch_norm(torch.ones(1, len(m)), m * 0, v, g, None, False, 0.0, eps).reshape(-1, 1, 1, 1),
        F.batch_norm((b if b is not None else torch.zeros_like(m))[None], m, v, g, bt, False, 0.0, eps)[0]),
    "answer key": lambda *a: key()[0].fold_batchnorm_weights(*a),
}


# ----------------------------------------------------------------------------- patchify


def _patchify(pixel_order="channel", patch_order="rows", permute=True, check=True):
    def patchify(pixel_values, patch_size):
        B, C, H, W = pixel_values.shape
        P = patch_size
        if check and (H % P or W % P):
            raise ValueError("not whole patches")
        gh, gw = H // P, W // P
        x = pixel_values[..., :gh * P, :gw * P]
        if not permute:
            return x.reshape(B, gh * gw, C * P * P)
        x = x.reshape(B, C, gh, P, gw, P)
        grid = (2, 4) if patch_order == "rows" else (4, 2)
        inner = {"channel": (1, 3, 5), "last": (3, 5, 1), "columns": (1, 5, 3)}[pixel_order]
        return x.permute(0, *grid, *inner).reshape(B, gh * gw, C * P * P)
    return patchify


WRONG_PATCHIFY = {
    "channels last in a patch": _patchify(pixel_order="last"),
    "patches column by column": _patchify(patch_order="columns"),
    "reshape without permute": _patchify(permute=False),
    "pixels column by column": _patchify(pixel_order="columns"),
    "no error for partial patches": _patchify(check=False),
    "F.unfold (a shortcut)": lambda x, P: F.unfold(x, P, stride=P).transpose(1, 2),
    "F.pixel_unshuffle (a shortcut)": lambda x, P: F.pixel_unshuffle(x, P).flatten(2).transpose(1, 2),
    "answer key": lambda *a: key()[1].patchify(*a),
}


# ----------------------------------------------------------------------------- centre crop


def _crop(offset=lambda d: d // 2, swap=False, pad=True, dtype=None):
    def center_crop(pixels, height, width):
        if swap:
            height, width = width, height
        C, H, W = pixels.shape
        top, left = offset(H - height), offset(W - width)
        if not pad:
            return pixels[:, max(top, 0):max(top, 0) + height, max(left, 0):max(left, 0) + width].clone()
        out = torch.zeros((C, height, width), dtype=dtype or pixels.dtype)
        r0, r1, c0, c1 = max(top, 0), min(top + height, H), max(left, 0), min(left + width, W)
        out[:, r0 - top:r1 - top, c0 - left:c1 - left] = pixels[:, r0:r1, c0:c1].to(out.dtype)
        return out
    return center_crop


WRONG_CROP = {
    "offset rounded up": _crop(offset=lambda d: -((-d) // 2)),
    "offset rounded with round()": _crop(offset=lambda d: round(d / 2)),
    "padding: extra zero row at the bottom": _crop(offset=lambda d: d // 2 if d >= 0 else -((-d) // 2)),
    "height and width swapped": _crop(swap=True),
    "top-left corner": _crop(offset=lambda d: min(d, 0)),
    "no padding when the crop is larger": _crop(pad=False),
    "float32 result for a uint8 picture": _crop(dtype=torch.float32),
    "answer key": lambda *a: key()[2].center_crop(*a),
}


# ----------------------------------------------------------------------------- stretch: positions


def _positions(A=-0.75, corners=False, clamp_index=True, clamp_position=False, swap=False, mode="cubic",
               reshape_only=False, keep_cls=True, dtype=None):
    def interpolate_positions(position_embeddings, grid_height, grid_width):
        if swap:
            grid_height, grid_width = grid_width, grid_height
        n = math.isqrt(position_embeddings.shape[1] - 1)
        D = position_embeddings.shape[-1]
        mats = []
        for out in (grid_height, grid_width):
            i = torch.arange(out, dtype=torch.float64)
            if corners:
                pos = i * ((n - 1) / (out - 1)) if out > 1 else i * 0
            else:
                pos = (i + 0.5) * (n / out) - 0.5
            if clamp_position or mode == "linear":
                pos = pos.clamp(min=0)
            f = pos.floor()
            t = pos - f
            if mode == "linear":
                d = torch.stack([t, 1 - t], 1)
                w = 1 - d
                idx = f.long()[:, None] + torch.arange(0, 2)
            else:
                d = torch.stack([1 + t, t, 1 - t, 2 - t], 1)
                w = torch.where(d <= 1, ((A + 2) * d - (A + 3)) * d * d + 1, ((A * d - 5 * A) * d + 8 * A) * d - 4 * A)
                idx = f.long()[:, None] + torch.arange(-1, 3)
            if not clamp_index:
                w = torch.where((idx >= 0) & (idx < n), w, torch.zeros_like(w))
            mats.append(torch.zeros(out, n, dtype=torch.float64).index_put_(
                (torch.arange(out)[:, None].expand_as(idx), idx.clamp(0, n - 1)), w, accumulate=True))
        patches = position_embeddings[0, 1:].double()
        grid = patches.reshape(D, n, n).permute(1, 2, 0) if reshape_only else patches.reshape(n, n, D)
        grid = torch.einsum("hr,rcd,wc->hwd", mats[0], grid, mats[1])
        if reshape_only:
            grid = grid.permute(2, 0, 1)
        grid = grid.reshape(1, -1, D).to(dtype or position_embeddings.dtype)
        return torch.cat([position_embeddings[:, :1].to(grid.dtype), grid], 1) if keep_cls else grid
    return interpolate_positions


WRONG_POSITIONS = {
    "A = -0.5": _positions(A=-0.5),
    "align_corners=True": _positions(corners=True),
    "zeros outside the grid": _positions(clamp_index=False),
    "source position clamped at 0": _positions(clamp_position=True),
    "grid height and width swapped": _positions(swap=True),
    "bilinear": _positions(mode="linear"),
    "reshaped to (D, n, n), not permuted": _positions(reshape_only=True),
    "[CLS] row dropped": _positions(keep_cls=False),
    "float32 result whatever the input": _positions(dtype=torch.float32),
    "F.interpolate (a shortcut)": lambda pe, gh, gw: torch.cat([pe[:, :1], F.interpolate(
        pe[:, 1:].reshape(1, math.isqrt(pe.shape[1] - 1), math.isqrt(pe.shape[1] - 1), -1).permute(0, 3, 1, 2),
        size=(gh, gw), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], 1),
    "answer key": lambda *a: key()[1].interpolate_positions(*a),
}


# ----------------------------------------------------------------------------- stretch: receptive field


def _field(use_dilation=True, jump_first=False, use_jump=True, taps=False, as_float=False):
    def receptive_field(layers):
        size, jump = 1, 1
        for k, s, d in layers:
            if jump_first:
                jump *= s
            reach = (d if use_dilation else 1) * (k - 1) + (1 if taps else 0)
            size += reach * (jump if use_jump else 1)
            if not jump_first:
                jump *= s
        return (float(size), float(jump)) if as_float else (size, jump)
    return receptive_field


WRONG_FIELD = {
    "no dilation": _field(use_dilation=False),
    "jump updated before the kernel": _field(jump_first=True),
    "strides ignored in the field": _field(use_jump=False),
    "kernel taps instead of kernel - 1": _field(taps=True),
    "product of the kernels": lambda layers: (math.prod(k for k, _, _ in layers), math.prod(s for _, s, _ in layers)),
    "floats": _field(as_float=True),
    "answer key": lambda layers: key()[0].receptive_field(layers),
}

EX10_WRONG = {"conv_output_size": WRONG_SIZE, "im2col": WRONG_IM2COL, "conv2d": WRONG_CONV,
              "fold_batchnorm": WRONG_FOLD, "patchify": WRONG_PATCHIFY, "center_crop": WRONG_CROP,
              "interpolate_positions": WRONG_POSITIONS, "receptive_field": WRONG_FIELD}
WRONG = [(name, label, fn) for name, cases in EX10_WRONG.items() for label, fn in cases.items()]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,label,fn", WRONG, ids=[f"ex10.{n}: {l}" for n, l, _ in WRONG])
def test_wrong_answer_fails(name, label, fn, seed):
    assert_wrong_answer_fails("ex10", name, label, fn, seed)


def test_messages_name_the_likely_mistake():
    cases = {
        ("conv_output_size", "rounds up"): "rounds up",
        ("conv_output_size", "no dilation"): "dilation is missing",
        ("conv_output_size", "padding on one side"): "both sides",
        ("conv_output_size", "no + 1"): "the first position counts",
        ("conv_output_size", "true division (a float)"): "`//` divides and rounds down",
        ("conv_output_size", "no error when the kernel does not fit"): "ValueError was expected",
        ("im2col", "rows: kernel tap first, then channel"): "kernel tap first",
        ("im2col", "taps column by column"): "column by column",
        ("im2col", "positions column by column"): "numbered column by column",
        ("im2col", "no dilation"): "dilation is missing",
        ("im2col", "no padding"): "padding is missing",
        ("im2col", "padding at the top and left only"): "top and left",
        ("im2col", "F.unfold (a shortcut)"): "ready-made shortcut",
        ("conv2d", "kernel flipped"): "flipped",
        ("conv2d", "groups take interleaved channels"): "consecutive block",
        ("conv2d", "H_out and W_out swapped"): "swapped",
        ("conv2d", "no bias"): "bias is missing",
        ("conv2d", "nn.Conv2d (a shortcut)"): "ready-made shortcut",
        ("fold_batchnorm", "divides by the variance"): "standard deviation",
        ("fold_batchnorm", "no eps"): "eps is missing",
        ("fold_batchnorm", "conv bias not scaled"): "bias was not scaled",
        ("fold_batchnorm", "running_mean missing"): "running_mean is missing",
        ("fold_batchnorm", "scales the weight in place"): "in place",
        ("patchify", "channels last in a patch"): "channels last",
        ("patchify", "patches column by column"): "column by column",
        ("patchify", "reshape without permute"): "permute",
        ("patchify", "F.pixel_unshuffle (a shortcut)"): "ready-made shortcut",
        ("center_crop", "offset rounded up"): "rounded up",
        ("center_crop", "padding: extra zero row at the bottom"): "at the top",
        ("center_crop", "no padding when the crop is larger"): "zeros around the image",
        ("center_crop", "float32 result for a uint8 picture"): "uint8 stays uint8",
        ("interpolate_positions", "A = -0.5"): "A = -0.5",
        ("interpolate_positions", "align_corners=True"): "align_corners=True",
        ("interpolate_positions", "zeros outside the grid"): "clamp their indices",
        ("interpolate_positions", "bilinear"): "bilinear",
        ("interpolate_positions", "reshaped to (D, n, n), not permuted"): "permute",
        ("interpolate_positions", "F.interpolate (a shortcut)"): "ready-made shortcut",
        ("receptive_field", "no dilation"): "dilation is missing",
        ("receptive_field", "jump updated before the kernel"): "before adding its kernel",
        ("receptive_field", "kernel taps instead of kernel - 1"): "kernel - 1",
    }
    for (name, label), text in cases.items():
        messages = []
        for seed in SEEDS:  # some mistakes only show on some inputs; the message must name it where it shows
            with pytest.raises(GradeError) as info:
                checks("ex10")[name].grade(EX10_WRONG[name][label], np.random.default_rng(seed))
            messages.append(str(info.value))
            if text in messages[-1]:
                break
        assert text in messages[-1], f"{name}, {label!r}: {messages[0]}"


# ----------------------------------------------------------------------------- right answers, written differently


def _size_float(size, kernel, stride=1, padding=0, dilation=1):
    if dilation * (kernel - 1) + 1 > size + 2 * padding:
        raise ValueError("the kernel does not fit")
    return math.floor((size + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1)


def _im2col_gather(x, kernel_size, stride=1, padding=0, dilation=1):
    """Index arithmetic: one advanced-indexing read of the padded image."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = pair(kernel_size), pair(stride), pair(padding), pair(dilation)
    xp = F.pad(x, (pw, pw, ph, ph))
    B, C, Hp, Wp = xp.shape
    H_out, W_out = (Hp - dh * (kh - 1) - 1) // sh + 1, (Wp - dw * (kw - 1) - 1) // sw + 1
    rows = (torch.arange(kh) * dh)[:, None, None, None] + (torch.arange(H_out) * sh)[None, None, :, None]
    cols = (torch.arange(kw) * dw)[None, :, None, None] + (torch.arange(W_out) * sw)[None, None, None, :]
    patches = xp[:, :, rows, cols]  # (B, C, kh, kw, H_out, W_out)
    return patches.reshape(B, C * kh * kw, H_out * W_out)


def _conv_per_group(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """A loop over groups and einsum, each group's own im2col."""
    C_in_g = weight.shape[1]
    C_out_g = weight.shape[0] // groups
    outs = []
    for k in range(groups):
        part = x[:, k * C_in_g:(k + 1) * C_in_g]
        cols = _im2col_gather(part, weight.shape[-2:], stride, padding, dilation)
        w = weight[k * C_out_g:(k + 1) * C_out_g].flatten(1)
        outs.append(torch.einsum("ok,bkl->bol", w, cols))
    out = torch.cat(outs, 1)
    (sh, _), (ph, _), (dh, _) = pair(stride), pair(padding), pair(dilation)
    H_out = (x.shape[2] + 2 * ph - dh * (weight.shape[2] - 1) - 1) // sh + 1
    out = out.reshape(x.shape[0], weight.shape[0], H_out, -1)
    return out if bias is None else out + bias[:, None, None]


def _fold_float64(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps=1e-5):
    s = bn_weight.double() * torch.rsqrt(running_var.double() + eps)
    b = torch.zeros_like(s) if bias is None else bias.double()
    return ((weight.double() * s[:, None, None, None]).to(weight.dtype),
            (bn_bias.double() + s * (b - running_mean.double())).to(weight.dtype))


def _patchify_reshape(pixel_values, patch_size):
    B, C, H, W = pixel_values.shape
    if H % patch_size or W % patch_size:
        raise ValueError("partial patches")
    P = patch_size
    x = pixel_values.reshape(B, C, H // P, P, W // P, P).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, -1, C * P * P)


def _crop_with_pad(pixels, height, width):
    """F.pad with negative amounts crops: one call for both cases."""
    H, W = pixels.shape[-2:]
    top, left = (H - height) // 2, (W - width) // 2
    return F.pad(pixels, (-left, width - W + left, -top, height - H + top))


def _positions_direct(position_embeddings, grid_height, grid_width):
    """PyTorch's loop: a 4 x 4 neighbourhood per output patch, weights the outer product of the two axes'."""
    n = math.isqrt(position_embeddings.shape[1] - 1)
    D = position_embeddings.shape[-1]
    grid = position_embeddings[0, 1:].double().reshape(n, n, D)
    A = -0.75

    def weights(out, i):
        pos = (i + 0.5) * n / out - 0.5
        f = math.floor(pos)
        t = pos - f
        ws = []
        for d in (1 + t, t, 1 - t, 2 - t):
            ws.append(((A + 2) * d - (A + 3)) * d * d + 1 if d <= 1 else ((A * d - 5 * A) * d + 8 * A) * d - 4 * A)
        return [min(max(f + o, 0), n - 1) for o in (-1, 0, 1, 2)], ws

    out = torch.zeros(grid_height, grid_width, D, dtype=torch.float64)
    for i in range(grid_height):
        ri, rw = weights(grid_height, i)
        for j in range(grid_width):
            ci, cw = weights(grid_width, j)
            for r, a in zip(ri, rw):
                for c, b in zip(ci, cw):
                    out[i, j] += a * b * grid[r, c]
    patches = out.reshape(1, -1, D).to(position_embeddings.dtype)
    return torch.cat([position_embeddings[:, :1], patches], 1)


def _field_backwards(layers):
    """From the output back to the input: r <- s * r + (span - s)."""
    r = 1
    for k, s, d in reversed(layers):
        r = s * r + d * (k - 1) + 1 - s
    return r, math.prod(s for _, s, _ in layers)


# Each wrong-answer builder above with every knob at its right setting must pass: then each wrong
# answer differs from a right one by exactly the mistake its label names.
RIGHT = {
    "conv_output_size": {"math.floor of a true division": _size_float, "the builder, no mistake": _size()},
    "im2col": {"advanced indexing of the F.pad-ded image": _im2col_gather,
               "Tensor.unfold windows, permuted (the builder, no mistake)": _im2col()},
    "conv2d": {"a loop over groups, einsum": _conv_per_group, "the builder, no mistake": _conv()},
    "fold_batchnorm": {"rsqrt in float64, cast back": _fold_float64, "the builder, no mistake": _fold()},
    "patchify": {"reshape and permute": _patchify_reshape, "the builder, no mistake": _patchify()},
    "center_crop": {"F.pad with negative amounts": _crop_with_pad, "the builder, no mistake": _crop()},
    "interpolate_positions": {"PyTorch's 4 x 4 loop": _positions_direct, "the builder, no mistake": _positions()},
    "receptive_field": {"walking back from the output": _field_backwards, "the builder, no mistake": _field()},
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,label,fn", [(n, l, f) for n, c in RIGHT.items() for l, f in c.items()],
                         ids=[f"ex10.{n}: {l}" for n, c in RIGHT.items() for l in c])
def test_right_answer_written_differently_passes(name, label, fn, seed):
    checks("ex10")[name].grade(fn, np.random.default_rng(seed))


def test_every_exercise_has_wrong_and_right_answers():
    assert set(EX10_WRONG) == set(RIGHT) == set(checks("ex10"))
    assert all(len(cases) >= 4 for cases in EX10_WRONG.values())


def test_every_switched_off_name_exists_in_this_torch():
    """A misspelt shortcut would silently stay switched on."""
    from course_lib.grading import ex10

    assert unresolved_switched_off_names(ex10) == []


def test_points_add_up():
    exercises = checks("ex10").values()
    assert sum(ex.points for ex in exercises if not ex.stretch) == 13
    assert sum(ex.points for ex in exercises if ex.stretch) == 8
    assert {ex.function for ex in exercises if ex.stretch} == {"interpolate_positions", "receptive_field"}


def test_a_check_leaves_the_global_random_generator_alone():
    assert_checks_leave_the_global_rng_alone("ex10", FILE, {n: next(iter(c.values())) for n, c in RIGHT.items()})
