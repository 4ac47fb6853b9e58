"""Chapter 10's image layers: convolution, batch normalisation and pooling from primitives.

A convolution is a matrix multiplication in disguise. Cut every ``kh x kw`` window out of
the (padded) image, lay each one out as a column (``im2col``), and one matmul with the
flattened kernels gives every output pixel at once. The windows are a *strided view* of
the padded image (``Tensor.unfold``: no copy until the final reshape), so ``im2col`` is
written with padding, views and ``reshape`` only — never ``torch.nn.functional.unfold``
or ``F.conv2d``, which it mirrors. Pooling reuses the same windows with ``max`` or
``mean`` instead of a matmul; batch normalisation is per-channel ``mean``/``var``.

The reference for every piece is its ``torch.nn.functional`` / ``torch.nn`` counterpart
(``F.unfold``, ``F.conv2d``, ``F.batch_norm``, ``F.max_pool2d``, ``F.avg_pool2d``,
``F.adaptive_avg_pool2d``); ``tests/test_vision_layers.py`` checks each against it, values
and gradients. The modules' parameter and buffer names are torch's (``weight``, ``bias``,
``running_mean``, ``running_var``, ``num_batches_tracked``), which are also the names in
the Hub's ResNet checkpoints, so loading them is a plain mapping.

Shape letters: B batch, C channels (C_in, C_out), H x W image height and width,
kh x kw kernel, H_out x W_out output, L = H_out * W_out output positions, g groups.
All functions work with autograd, on any device and on floating dtypes of their input.
"""

from __future__ import annotations

import math
from typing import Union

import torch
from torch import nn

__all__ = [
    "check_image_batch",
    "conv_output_size", "im2col", "conv2d", "Conv2d",
    "batch_norm2d", "BatchNorm2d", "fold_batchnorm_weights", "fold_batchnorm", "receptive_field",
    "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
    "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
]

Size2 = Union[int, tuple[int, int]]  # one number for both directions, or (height, width)


# --------------------------------------------------------------------------------------
# Argument checks shared by every layer

def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints -> (for height, for width), each >= ``minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        if isinstance(value, str) and name == "padding":
            raise TypeError(f"{name}={value!r}: string paddings ('same', 'valid') are not supported here; "
                            f"pass the number of pixels, e.g. padding=kernel_size // 2 for an odd kernel")
        raise TypeError(f"{name} must be an int or a pair of ints (height, width), got {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum} in both directions, got {tuple(value)}")
    return tuple(value)


def _check_image(x: torch.Tensor, who: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: the input must be a torch.Tensor (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        hint = (" One image without a batch dimension: use x.unsqueeze(0)." if x.dim() == 3 else "")
        raise ValueError(f"{who}: the input must be 4-D (batch, channels, height, width), "
                         f"got shape {tuple(x.shape)}.{hint}")


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution or pooling along one dimension (an int).

    ``floor((size + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1``: a dilated
    kernel spans ``dilation * (kernel - 1) + 1`` pixels; it fits at every ``stride``-th
    position of the padded input where it does not run past the end.

    Raises ValueError when the (dilated) kernel is larger than the padded input, where
    there is not a single position to put it.
    """
    for name, value, minimum in (("size", size, 0), ("kernel", kernel, 1), ("stride", stride, 1),
                                 ("padding", padding, 0), ("dilation", dilation, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    span = dilation * (kernel - 1) + 1  # pixels the dilated kernel covers
    padded = size + 2 * padding
    if span > padded:
        dilated = f" (dilation {dilation} makes it span {span} pixels)" if dilation != 1 else ""
        raise ValueError(f"the kernel of size {kernel}{dilated} is larger than the padded input "
                         f"of size {padded} ({size} + 2 * padding {padding}): use a smaller kernel, "
                         f"more padding or a larger image")
    return (padded - span) // stride + 1


# --------------------------------------------------------------------------------------
# im2col and conv2d

def _pad(x: torch.Tensor, ph: int, pw: int, value: float) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H + 2 ph, W + 2 pw): a frame of ``value`` around the image."""
    B, C, H, W = x.shape
    out = x.new_full((B, C, H + 2 * ph, W + 2 * pw), value)
    out[:, :, ph:ph + H, pw:pw + W] = x  # autograd routes the gradient of this slice back to x
    return out


def _windows(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
             dilation: tuple[int, int], pad_value: float, who: str) -> torch.Tensor:
    """Every kernel window of the padded image, as a view: (B, C, H, W) -> (B, C, H_out, W_out, kh, kw)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    H, W = x.shape[-2:]
    try:
        conv_output_size(H, kh, sh, ph, dh)
        conv_output_size(W, kw, sw, pw, dw)
    except ValueError as err:
        raise ValueError(f"{who}: input of shape {tuple(x.shape)}: {err}") from None
    if ph or pw:
        x = _pad(x, ph, pw, pad_value)  # (B, C, H + 2ph, W + 2pw)
    # unfold(dim, span, step) makes a view whose last dimension walks along one window:
    # (B, C, H_out, W_out, span_h, span_w); a dilated kernel then keeps every d-th pixel.
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    win = x.unfold(2, span_h, sh).unfold(3, span_w, sw)  # (B, C, H_out, W_out, span_h, span_w)
    return win[..., ::dh, ::dw]  # (B, C, H_out, W_out, kh, kw)


def im2col(x: torch.Tensor, kernel_size: Size2, stride: Size2 = 1, padding: Size2 = 0,
           dilation: Size2 = 1) -> torch.Tensor:
    """Lay every kernel window out as a column: x (B, C, H, W) -> (B, C * kh * kw, L).

    Column ``l = i * W_out + j`` holds the window whose top-left corner sits at
    ``(i * stride_h - pad_h, j * stride_w - pad_w)``, its rows ordered channel, then kernel
    row, then kernel column — the layout of ``F.unfold`` and of a conv weight flattened
    to (C_out, C * kh * kw), so ``weight.flatten(1) @ im2col(x)`` is the convolution.
    Padding is zeros. Output dtype and device are x's.
    """
    _check_image(x, "im2col")
    return _im2col(x, _pair(kernel_size, "kernel_size", 1), _pair(stride, "stride", 1),
                   _pair(padding, "padding", 0), _pair(dilation, "dilation", 1), "im2col")


def _im2col(x, kernel, stride, padding, dilation, who: str) -> torch.Tensor:
    """im2col with its arguments already checked; ``who`` names the caller in errors."""
    win = _windows(x, kernel, stride, padding, dilation, 0.0, who)  # (B, C, H_out, W_out, kh, kw)
    B, C, H_out, W_out, kh, kw = win.shape
    cols = win.permute(0, 1, 4, 5, 2, 3)  # (B, C, kh, kw, H_out, W_out)
    return cols.reshape(B, C * kh * kw, H_out * W_out)  # the only copy: (B, C*kh*kw, L)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: Size2 = 1,
           padding: Size2 = 0, dilation: Size2 = 1, groups: int = 1) -> torch.Tensor:
    """2-D convolution (cross-correlation, as in every deep-learning library) by im2col + matmul.

    x (B, C_in, H, W), weight (C_out, C_in / groups, kh, kw), bias (C_out,) or None
    -> (B, C_out, H_out, W_out), with ``H_out = conv_output_size(H, kh, stride, padding, dilation)``.

    With ``groups = g`` the channels split into g independent convolutions: output
    channels ``[k * C_out/g, (k+1) * C_out/g)`` see only input channels
    ``[k * C_in/g, (k+1) * C_in/g)``. ``groups == C_in`` is a depthwise convolution.
    """
    _check_image(x, "conv2d")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"conv2d: the weight must be 4-D (C_out, C_in / groups, kh, kw), got {shape}")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    if weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(f"conv2d: the input is {x.dtype} on {x.device} but the weight is {weight.dtype} on "
                         f"{weight.device}; move one to the other, e.g. x.to(weight)")
    C_out, C_in_g, kh, kw = weight.shape
    B, C_in = x.shape[:2]
    if C_in != C_in_g * groups:
        raise ValueError(f"conv2d: the input has {C_in} channels but the weight {tuple(weight.shape)} expects "
                         f"{C_in_g * groups} (= weight.shape[1] {C_in_g} x groups {groups}); check the "
                         f"previous layer's out_channels or this layer's in_channels")
    if C_out % groups != 0:
        raise ValueError(f"conv2d: groups={groups} does not divide the {C_out} output channels "
                         f"(weight.shape[0]); every group needs the same number of filters")
    if bias is not None and tuple(bias.shape) != (C_out,):
        raise ValueError(f"conv2d: bias has shape {tuple(bias.shape)}, expected ({C_out},) — one per output channel")
    stride, padding = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    dilation = _pair(dilation, "dilation", 1)
    cols = _im2col(x, (kh, kw), stride, padding, dilation, "conv2d")  # (B, C_in*kh*kw, L)
    _, K, L = cols.shape
    H_out = conv_output_size(x.shape[2], kh, stride[0], padding[0], dilation[0])
    W_out = L // H_out
    cols = cols.view(B, groups, K // groups, L)  # (B, g, C_in/g*kh*kw, L): the channels of a group are adjacent
    w = weight.reshape(groups, C_out // groups, K // groups)  # (g, C_out/g, C_in/g*kh*kw)
    out = w @ cols  # (g, C_out/g, K/g) @ (B, g, K/g, L) -> (B, g, C_out/g, L)
    out = out.reshape(B, C_out, H_out, W_out)  # (B, C_out, H_out, W_out)
    if bias is not None:
        out = out + bias.view(1, C_out, 1, 1)  # one number per output channel
    return out


class Conv2d(nn.Module):
    """A learned 2-D convolution; parameters ``weight`` (C_out, C_in / groups, kh, kw) and ``bias`` (C_out,).

    The names, shapes, initialisation (draw for draw) and ``repr`` are ``nn.Conv2d``'s, so
    its checkpoints load as-is. Only zero padding, given as an int or (pad_h, pad_w).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Size2, stride: Size2 = 1,
                 padding: Size2 = 0, dilation: Size2 = 1, groups: int = 1, bias: bool = True,
                 *, device=None, dtype=None):
        super().__init__()
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        for name, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(channels, int) or channels < 1:
                raise ValueError(f"{name} must be a positive int, got {channels!r}")
            if channels % groups != 0:
                raise ValueError(f"groups={groups} does not divide {name}={channels}: each group gets "
                                 f"{name} / groups channels; pick a groups value that divides both "
                                 f"in_channels and out_channels")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        self.dilation = _pair(dilation, "dilation", 1)
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size,
                                               device=device, dtype=dtype))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight.is_meta:  # shapes only (a model about to be filled from a checkpoint)
            return
        # torch's init: uniform(±1/sqrt(fan_in)), fan_in = C_in/g * kh * kw
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W) -> (B, C_out, H_out, W_out)."""
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


# --------------------------------------------------------------------------------------
# BatchNorm2d

def batch_norm2d(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                 weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, training: bool = False,
                 momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """Normalise each channel over the batch and the image: x (B, C, H, W) -> (B, C, H, W).

    ``(x - mean) / sqrt(var + eps) * weight + bias``, per channel; weight, bias,
    running_mean, running_var are (C,).

    - ``training=True``: mean and *biased* variance of this batch (over B, H, W). If the
      running buffers are given they are updated in place, as torch does:
      ``running = (1 - momentum) * running + momentum * batch`` with the *unbiased*
      variance (divide by n - 1) — the running variance estimates the population's.
    - ``training=False``: the running statistics, so an image's output does not depend on
      what else is in its batch; BN is then a fixed per-channel affine map (which is why
      it folds into the convolution before it: ``fold_batchnorm``).

    float16 / bfloat16 inputs are computed in float32 and cast back, like ``layer_norm``.
    """
    _check_image(x, "batch_norm2d")
    C = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (C,):
            raise ValueError(f"batch_norm2d: {name} has shape {tuple(t.shape)} but the input has {C} channels; "
                             f"expected ({C},) — was the BatchNorm built for another layer's width?")
    dtype = x.dtype
    if dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if training:
        n = x.numel() // C  # values per channel: B * H * W
        if n < 2:
            raise ValueError(f"batch_norm2d: training needs more than 1 value per channel to estimate a variance, "
                             f"got input of shape {tuple(x.shape)}; use a larger batch or call .eval()")
        mean = x.mean(dim=(0, 2, 3))  # (C,)
        var = ((x - mean.view(1, C, 1, 1)) ** 2).mean(dim=(0, 2, 3))  # (C,), biased: for normalising
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(momentum * mean.to(running_mean.dtype))
                unbiased = var * (n / (n - 1))
                running_var.mul_(1 - momentum).add_(momentum * unbiased.to(running_var.dtype))
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm2d: evaluation (training=False) uses the running statistics, but "
                             "running_mean or running_var is None; pass them, or use training=True")
        mean, var = running_mean.to(x.dtype), running_var.to(x.dtype)
    y = (x - mean.view(1, C, 1, 1)) / torch.sqrt(var.view(1, C, 1, 1) + eps)  # zero mean, unit variance
    if weight is not None:
        y = y * weight.view(1, C, 1, 1)
    if bias is not None:
        y = y + bias.view(1, C, 1, 1)
    return y.to(dtype)


class BatchNorm2d(nn.Module):
    """Batch normalisation over (B, H, W) per channel, with the names and behaviour of ``nn.BatchNorm2d``.

    Parameters ``weight`` (C,) = 1 and ``bias`` (C,) = 0 (with ``affine``); buffers
    ``running_mean`` (C,) = 0, ``running_var`` (C,) = 1 and ``num_batches_tracked`` ()
    int64 (with ``track_running_stats``). ``momentum=None`` averages all batches seen so
    far equally (factor ``1 / num_batches_tracked``), as in torch. In ``train()`` mode it
    normalises with the batch's statistics and updates the running ones; after ``eval()``
    it uses the running ones.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, device=None, dtype=None):
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int (the number of channels), got {num_features!r}")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, device=device, dtype=dtype))
            self.register_buffer("running_var", torch.ones(num_features, device=device, dtype=dtype))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, H, W), same dtype."""
        if x.dim() == 4 and x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d: the input has {x.shape[1]} channels but this layer was built for "
                             f"{self.num_features} (input shape {tuple(x.shape)})")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average of every batch so far
                factor = 1.0 / float(self.num_batches_tracked)
        # without running statistics (buffers None) a BatchNorm always uses the batch's own
        use_batch = self.training or not self.track_running_stats
        return batch_norm2d(x, self.running_mean, self.running_var, self.weight, self.bias,
                            use_batch, factor, self.eps)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Checkpoints from before torch 0.4.1 (and some converted ones) lack the counter;
        # like nn.BatchNorm2d, start it at 0 rather than reject the file.
        key = prefix + "num_batches_tracked"
        if self.track_running_stats and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


def fold_batchnorm_weights(weight: torch.Tensor, bias: torch.Tensor | None, bn_weight: torch.Tensor | None,
                           bn_bias: torch.Tensor | None, running_mean: torch.Tensor, running_var: torch.Tensor,
                           eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of one convolution equal to a conv followed by an eval-mode BatchNorm.

    weight (C_out, C_in / groups, kh, kw), bias (C_out,) or None (a conv without bias);
    bn_weight (gamma), bn_bias (beta), running_mean, running_var: (C_out,), gamma / beta None
    for a BatchNorm without ``affine`` (1 and 0). Returns ``(weight', bias')``, new tensors of
    the shapes (C_out, C_in / groups, kh, kw) and (C_out,), in ``weight``'s dtype.

    In eval mode BN is ``y * s + t`` per output channel, with ``s = gamma / sqrt(running_var + eps)``
    (the variance's square root: a standard deviation) and ``t = beta - running_mean * s``;
    scaling a channel's output scales its filter, so ``W' = W * s`` (per output channel, the
    first axis) and ``b' = (b - running_mean) * s + beta``. Computed in float64, rounded once.
    """
    C_out = weight.shape[0]
    if running_mean is None or running_var is None:
        raise ValueError("fold_batchnorm: the BatchNorm has no running statistics (track_running_stats=False); "
                         "it normalises with each batch's own, which no fixed convolution can reproduce")
    for name, t in (("bias", bias), ("bn_weight", bn_weight), ("bn_bias", bn_bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t is not None and tuple(t.shape) != (C_out,):
            raise ValueError(f"fold_batchnorm: the conv has {C_out} output channels but the BatchNorm has "
                             f"{t.shape[0] if t.dim() else t.numel()} features ({name} has shape {tuple(t.shape)}); "
                             f"fold the BatchNorm that follows this conv")
    var, mean = running_var.double(), running_mean.double()
    gamma = bn_weight.double() if bn_weight is not None else torch.ones_like(var)
    beta = bn_bias.double() if bn_bias is not None else torch.zeros_like(var)
    b = bias.double() if bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + eps)  # (C_out,): 1 / std, times gamma
    folded_weight = weight.double() * scale.view(-1, *([1] * (weight.dim() - 1)))  # W' = W * s, per output channel
    folded_bias = (b - mean) * scale + beta  # b' = (b - mean) * s + beta
    return folded_weight.to(weight.dtype), folded_bias.to(weight.dtype)


def fold_batchnorm(conv: Conv2d, bn: BatchNorm2d) -> Conv2d:
    """One Conv2d (with bias) equal to ``bn(conv(x))`` with ``bn`` in eval mode.

    The arithmetic is ``fold_batchnorm_weights``'s (``W' = W * s``, ``b' = (b - mean) * s + beta``,
    ``s = gamma / sqrt(var + eps)``): one layer, one pass over memory less at inference. The
    inputs are left unchanged; the result is a new module on conv's device and dtype, in eval mode.
    """
    if getattr(bn, "running_mean", None) is None or getattr(bn, "running_var", None) is None:
        raise ValueError("fold_batchnorm: the BatchNorm has no running statistics (track_running_stats=False); "
                         "it normalises with each batch's own, which no fixed convolution can reproduce")
    with torch.no_grad():
        weight, bias = fold_batchnorm_weights(conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean,
                                              bn.running_var, bn.eps)
        folded = Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
        folded.weight.copy_(weight)
        folded.bias.copy_(bias)
    return folded.eval()


# --------------------------------------------------------------------------------------
# Receptive field

def receptive_field(layers) -> tuple[int, int]:
    """How many input pixels one output pixel of a stack of convolutions / pools sees, along one axis.

    ``layers``: a sequence of ``(kernel, stride, dilation)`` triples of ints >= 1, first layer
    first (padding does not change either number). Returns ``(size, jump)``: ``size`` the
    receptive field (a ``size x size`` square of input pixels for square kernels), ``jump``
    the distance in input pixels between the receptive fields of two neighbouring output
    pixels (the product of the strides: the stack's effective stride). An empty stack sees
    one pixel, ``(1, 1)``.

    Walking the layers from the input: a layer of kernel k and dilation d adds
    ``d * (k - 1)`` of *its input's* pixels to the field, and each of those is ``jump``
    input-image pixels apart, where ``jump`` is the product of the strides *before* it; then
    its own stride multiplies the jump. ResNet's stem (7x7 stride 2, then a 3x3 stride-2
    max-pool): ``receptive_field([(7, 2, 1), (3, 2, 1)]) == (11, 4)``.
    """
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"receptive_field takes a list of (kernel, stride, dilation) triples, got "
                        f"{type(layers).__name__}")
    size, jump = 1, 1
    for i, layer in enumerate(layers):
        if not isinstance(layer, (tuple, list)) or len(layer) != 3 or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in layer):
            raise ValueError(f"receptive_field: layer {i} is {layer!r}; each layer must be a (kernel, stride, "
                             f"dilation) triple of ints >= 1, e.g. (3, 1, 1) for a plain 3x3 conv")
        kernel, stride, dilation = layer
        size += dilation * (kernel - 1) * jump  # the new taps, jump input pixels apart
        jump *= stride
    return size, jump


# --------------------------------------------------------------------------------------
# Pooling

def _check_pool_padding(kernel: tuple[int, int], padding: tuple[int, int], who: str) -> None:
    # torch's rule: a window may not start or end entirely in the padding
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{who}: padding {padding} must be at most half the kernel {kernel} "
                         f"(at most {(kernel[0] // 2, kernel[1] // 2)}), as in torch: a larger padding "
                         f"makes windows of padding only")


def max_pool2d(x: torch.Tensor, kernel_size: Size2, stride: Size2 | None = None, padding: Size2 = 0,
               dilation: Size2 = 1) -> torch.Tensor:
    """The largest value of each window: x (B, C, H, W) -> (B, C, H_out, W_out), same dtype.

    ``stride`` defaults to ``kernel_size`` (windows side by side). Padding is ``-inf``, so
    it never wins. As in torch, the gradient goes to the one element that was the maximum.
    """
    _check_image(x, "max_pool2d")
    kernel = _pair(kernel_size, "kernel_size", 1)
    stride = kernel if stride is None else _pair(stride, "stride", 1)
    padding = _pair(padding, "padding", 0)
    _check_pool_padding(kernel, padding, "max_pool2d")
    win = _windows(x, kernel, stride, padding, _pair(dilation, "dilation", 1), float("-inf"), "max_pool2d")
    return win.flatten(-2).max(dim=-1).values  # (B, C, H_out, W_out)


def avg_pool2d(x: torch.Tensor, kernel_size: Size2, stride: Size2 | None = None, padding: Size2 = 0,
               count_include_pad: bool = True) -> torch.Tensor:
    """The mean of each window: x (B, C, H, W) -> (B, C, H_out, W_out), same dtype.

    ``stride`` defaults to ``kernel_size``. Padding is zeros; with ``count_include_pad``
    (torch's default) they count in the mean (divide by kh * kw), without it a window at
    the border divides by the number of real pixels it covers.
    """
    _check_image(x, "avg_pool2d")
    kernel = _pair(kernel_size, "kernel_size", 1)
    stride = kernel if stride is None else _pair(stride, "stride", 1)
    padding = _pair(padding, "padding", 0)
    _check_pool_padding(kernel, padding, "avg_pool2d")
    win = _windows(x, kernel, stride, padding, (1, 1), 0.0, "avg_pool2d")  # (B, C, H_out, W_out, kh, kw)
    total = win.sum(dim=(-2, -1))  # (B, C, H_out, W_out)
    if count_include_pad:
        return total / (kernel[0] * kernel[1])
    ones = torch.ones(1, 1, *x.shape[-2:], dtype=x.dtype, device=x.device)  # which pixels are real
    count = _windows(ones, kernel, stride, padding, (1, 1), 0.0, "avg_pool2d").sum(dim=(-2, -1))  # (1, 1, Ho, Wo)
    return total / count


def _adaptive_matrix(size: int, out: int, dtype, device) -> torch.Tensor:
    """(out, size) averaging matrix: row i is 1/n over input positions [floor(i*size/out), ceil((i+1)*size/out))."""
    i = torch.arange(out, device=device)
    start = (i * size) // out  # floor(i * size / out)
    end = -((-(i + 1) * size) // out)  # ceil((i + 1) * size / out)
    pos = torch.arange(size, device=device)
    inside = (pos >= start[:, None]) & (pos < end[:, None])  # (out, size)
    return inside.to(dtype) / (end - start).to(dtype)[:, None]


def adaptive_avg_pool2d(x: torch.Tensor, output_size) -> torch.Tensor:
    """Average-pool to a fixed output size: x (B, C, H, W) -> (B, C, out_h, out_w), same dtype.

    Output row i averages input rows ``[floor(i * H / out_h), ceil((i + 1) * H / out_h))``
    (torch's windows; they may overlap and differ in size by one), and likewise for
    columns. ``output_size`` is an int, a pair, or a pair with None to keep that size;
    ``output_size=1`` is the global average pool at the end of a ResNet.

    A rectangle's mean is the mean over its rows of the mean over its columns, so it is
    two small matmuls with averaging matrices: ``A_h @ x @ A_w.T``.
    """
    _check_image(x, "adaptive_avg_pool2d")
    H, W = x.shape[-2:]
    if isinstance(output_size, (tuple, list)) and len(output_size) == 2:
        out_h = H if output_size[0] is None else output_size[0]  # None keeps that size
        out_w = W if output_size[1] is None else output_size[1]
    else:
        out_h = out_w = output_size
    out_h, out_w = _pair((out_h, out_w), "output_size", 1)
    if H == 0 or W == 0:
        raise ValueError(f"adaptive_avg_pool2d: the input {tuple(x.shape)} has an empty image")
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    A_h = _adaptive_matrix(H, out_h, compute, x.device)  # (out_h, H)
    A_w = _adaptive_matrix(W, out_w, compute, x.device)  # (out_w, W)
    return (A_h @ x.to(compute) @ A_w.T).to(x.dtype)  # (B, C, out_h, out_w)


class MaxPool2d(nn.Module):
    """``max_pool2d`` as a module (no parameters); ResNet's stem uses ``MaxPool2d(3, stride=2, padding=1)``."""

    def __init__(self, kernel_size: Size2, stride: Size2 | None = None, padding: Size2 = 0, dilation: Size2 = 1):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        self.dilation = dilation
        _check_pool_padding(_pair(kernel_size, "kernel_size", 1), _pair(padding, "padding", 0), "MaxPool2d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, dilation={self.dilation}"


class AvgPool2d(nn.Module):
    """``avg_pool2d`` as a module (no parameters)."""

    def __init__(self, kernel_size: Size2, stride: Size2 | None = None, padding: Size2 = 0,
                 count_include_pad: bool = True):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        self.count_include_pad = count_include_pad
        _check_pool_padding(_pair(kernel_size, "kernel_size", 1), _pair(padding, "padding", 0), "AvgPool2d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.count_include_pad)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(nn.Module):
    """``adaptive_avg_pool2d`` as a module (no parameters); ``AdaptiveAvgPool2d((1, 1))`` ends a ResNet."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


def check_image_batch(pixel_values, num_channels: int, expected: str) -> None:
    """``pixel_values`` must be a float tensor (B, num_channels, H, W): a clear error naming the fix otherwise.

    The checks every image model shares (ResNet and ViT add their own): a tensor, float
    (rescaled and normalised, not 0-255 integers), a batch dimension, 4-D, the right number of
    channels (channels-last and grayscale inputs named as such). ``expected`` describes the
    shape the model wants, for the messages. Reads only the shape and dtype.
    """
    ch = num_channels
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor {expected}, got {type(pixel_values).__name__}: "
                        f"preprocess the image (resize, rescale, normalise) and convert it with torch.as_tensor")
    if not pixel_values.is_floating_point():
        raise TypeError(f"pixel_values must be float (rescaled to [0, 1] and normalised), got dtype "
                        f"{pixel_values.dtype}: raw 0-255 pixels need the image processor's rescale and "
                        f"normalisation first (at least .float() / 255)")
    shape = tuple(pixel_values.shape)
    if pixel_values.dim() == 3 and shape[0] == ch:
        raise ValueError(f"pixel_values has shape {shape}: one image without a batch dimension; the model "
                         f"takes {expected}: add one with pixel_values[None] (or .unsqueeze(0))")
    if pixel_values.dim() != 4:
        raise ValueError(f"pixel_values must be 4-D {expected}, got shape {shape}")
    if shape[1] != ch:
        if shape[3] == ch:
            hint = (f"this looks channels-last (batch, height, width, channels), as Pillow and NumPy store "
                    f"images: use pixel_values.permute(0, 3, 1, 2)")
        elif shape[1] == 1 and ch == 3:
            hint = "a grayscale image: convert it to RGB first (Image.convert('RGB'), or .expand(-1, 3, -1, -1))"
        else:
            hint = f"this model was trained on {ch}-channel images: convert the images to {ch} channels"
        raise ValueError(f"pixel_values has {shape[1]} channels (shape {shape}), the model expects {ch} "
                         f"(num_channels in config.json): {hint}")
