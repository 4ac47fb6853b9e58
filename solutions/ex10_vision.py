"""Chapter 10 exercises: convolutions from a matrix multiplication, and images as the Hub's models see them.

A convolution slides a small kernel over an image. Cut every kernel-sized window out of the
(padded) image and lay each one out as a column (**im2col**): then one matrix
multiplication with the flattened kernels gives every output pixel at once. That is how the
chapter's ResNet runs, and a Vision Transformer's patch embedding is the same thing with
windows that do not overlap (**patchify**). Around them: the size of a convolution's output,
folding an eval-mode BatchNorm into the convolution before it, and the centre crop of the
Hub's image processors.

Shapes: B batch, C channels (C_in, C_out), H x W image height and width, kh x kw kernel,
H_out x W_out output, L = H_out * W_out output positions, g groups, P patch size,
N = (H / P) * (W / P) patches, D hidden size.

The exercises follow ``notebooks/10_vision.ipynb``: 1-3 convolution (output size, im2col,
conv2d), 4 BatchNorm folding, 5 patches, 6 the centre crop. The last two are stretch
exercises that go past what the chapter shows: resizing a ViT's learned position grid
bicubically, written out, and the receptive field of a stack of layers.

You may use any ``torch`` operation (not its private ``torch._*`` functions), including
``Tensor.unfold`` (a strided *view* of windows), ``F.pad`` and indexing, and ``math``; but
not the ready-made versions of what the exercises ask for: ``F.conv2d`` / ``torch.conv2d``
(and the other convolutions), ``F.unfold`` / ``nn.Unfold``, ``F.fold``, ``nn.Conv2d``,
``F.max_pool2d`` / ``F.avg_pool2d``, ``F.batch_norm``, ``F.pixel_unshuffle``,
``F.interpolate``, ``F.grid_sample``. The grader switches them off while your code runs and
tells you if you called one. ``course_lib`` is the answer key: importing it scores 0.
Functions later in this file may call earlier ones (``conv2d`` may call your ``im2col``).
Every function returns new tensors (or numbers) and leaves its inputs as they were.

Write the body of each function below, replacing ``raise NotImplementedError``. Then grade:

* in the notebook: ``check("ex10.im2col")`` (one cell per exercise; each failure shows the
  next hint, ``check(key, hint=2)`` asks for one) — grading runs in a fresh process, so
  save this file and run the cell again;
* in a terminal: ``python -m course_lib.grade ex10`` (all) or ``python -m course_lib.grade
  ex10.conv2d`` (one).

The checks call your functions on random inputs (non-square images and kernels, strides,
paddings and dilations, groups up to depthwise, float32 and float64, uint8 pictures) and
compare with ``course_lib``'s versions, themselves tested against ``torch.nn.functional``
and ``transformers``: to 1e-5 in float32, exactly where the answer is a selection of values.
"""

from __future__ import annotations

import math

import torch


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """How many output positions a convolution (or pooling) has along one dimension, as an int.

    The input has ``size`` pixels, plus ``padding`` pixels of zeros added on *each* side. A
    kernel of ``kernel`` taps with ``dilation`` d leaves d - 1 pixels between neighbouring
    taps (d = 1: a plain kernel). The kernel is put at the first position and then moved by
    ``stride`` pixels at a time, as long as it lies entirely inside the padded input; the
    answer is the number of positions it takes.

    Raise ``ValueError`` when the kernel does not fit even once (it covers more pixels than
    the padded input has).

    Examples: ``conv_output_size(224, 7, stride=2, padding=3) == 112`` (ResNet's stem);
    ``conv_output_size(8, 3) == 6``; ``conv_output_size(7, 3, stride=2) == 3``;
    ``conv_output_size(10, 3, dilation=2) == 6``; ``conv_output_size(2, 5)`` raises.

    Hint: first work out how many pixels the dilated kernel covers, then how far its first
    pixel can travel.
    """
    span = dilation * (kernel - 1) + 1  # pixels the dilated kernel covers
    room = size + 2 * padding - span  # how far its first pixel can move
    if room < 0:
        raise ValueError(f"a kernel covering {span} pixels does not fit in {size} pixels padded by {padding} "
                         f"on each side")
    return room // stride + 1


def im2col(x: torch.Tensor, kernel_size, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """Lay every kernel window of a batch of images out as a column: (B, C, H, W) -> (B, C * kh * kw, L).

    ``kernel_size``, ``stride``, ``padding``, ``dilation``: each an int (the same for height
    and width) or a pair ``(for height, for width)``. Padding is zeros. ``H_out`` and
    ``W_out`` are ``conv_output_size`` of H and W, and ``L = H_out * W_out``.

    Column ``l = i * W_out + j`` (output pixels row by row) holds the window whose top-left
    tap sits at ``(i * stride_h, j * stride_w)`` of the padded image. Its ``C * kh * kw``
    rows are ordered channel first, then kernel row, then kernel column: row
    ``c * kh * kw + a * kw + b`` holds channel c at kernel tap (a, b), which is pixel
    ``(i * stride_h + a * dilation_h, j * stride_w + b * dilation_w)`` of the padded image.
    That is ``torch.nn.functional.unfold``'s layout, and the order of a conv weight
    (C_out, C, kh, kw) flattened to (C_out, C * kh * kw). Same dtype as ``x``.

    Example: one 1-channel 3 x 3 image holding 0..8, ``kernel_size=2``: four windows, so
    the result has shape (1, 4, 4) and its first column is ``[0, 1, 3, 4]`` (the top-left
    window, read row by row), its last ``[4, 5, 7, 8]``.

    Hint: every kernel tap (a, b) sees a strided sub-grid of the padded image; or take the
    windows as a view with ``Tensor.unfold`` and put the axes in the right order.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    B, C, H, W = x.shape
    H_out, W_out = conv_output_size(H, kh, sh, ph, dh), conv_output_size(W, kw, sw, pw, dw)
    padded = x.new_zeros(B, C, H + 2 * ph, W + 2 * pw)
    padded[:, :, ph:ph + H, pw:pw + W] = x
    rows = []
    for a in range(kh):  # one kernel tap at a time: the pixels it sees at every output position
        for b in range(kw):
            top, left = a * dh, b * dw
            seen = padded[:, :, top:top + sh * (H_out - 1) + 1:sh, left:left + sw * (W_out - 1) + 1:sw]
            rows.append(seen.reshape(B, C, H_out * W_out))  # (B, C, L)
    return torch.stack(rows, dim=2).reshape(B, C * kh * kw, H_out * W_out)  # taps inside each channel


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> torch.Tensor:
    """2-D convolution (cross-correlation, as in every deep-learning library) by im2col and one matmul.

    x (B, C_in, H, W), weight (C_out, C_in / groups, kh, kw), bias (C_out,) or None ->
    (B, C_out, H_out, W_out), in x's dtype; equal to ``torch.nn.functional.conv2d`` with the
    same arguments. ``stride``, ``padding``, ``dilation``: an int or a pair (height, width).

    ``groups = g`` splits the channels into g independent convolutions: input channels
    ``[k * C_in/g, (k+1) * C_in/g)`` feed only output channels ``[k * C_out/g, (k+1) * C_out/g)``,
    through filters ``weight[k * C_out/g : (k+1) * C_out/g]``. ``groups == C_in`` is a
    depthwise convolution (each channel filtered on its own).

    Example: x (2, 3, 8, 8) and weight (4, 3, 3, 3), padding 1 -> (2, 4, 8, 8); output
    pixel (i, j) of channel o is the sum over the window's 27 values times ``weight[o]``,
    plus ``bias[o]``.

    Hint: your im2col gives every window as a column; a flattened filter is a row with the
    same order. With groups, the rows of the columns that belong to one group are next to
    each other.
    """
    B, C_in, H, W = x.shape
    C_out, C_in_g, kh, kw = weight.shape
    sh = stride if isinstance(stride, int) else stride[0]
    ph = padding if isinstance(padding, int) else padding[0]
    dh = dilation if isinstance(dilation, int) else dilation[0]
    cols = im2col(x, (kh, kw), stride, padding, dilation)  # (B, C_in*kh*kw, L)
    L = cols.shape[-1]
    H_out = conv_output_size(H, kh, sh, ph, dh)
    per_group = cols.reshape(B, groups, C_in_g * kh * kw, L)  # (B, g, C_in/g*kh*kw, L)
    filters = weight.reshape(groups, C_out // groups, C_in_g * kh * kw)  # (g, C_out/g, C_in/g*kh*kw)
    out = (filters @ per_group).reshape(B, C_out, H_out, L // H_out)  # (B, g, C_out/g, L) -> images
    if bias is not None:
        out = out + bias.reshape(1, C_out, 1, 1)
    return out


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, bn_weight: torch.Tensor, bn_bias: torch.Tensor,
                   running_mean: torch.Tensor, running_var: torch.Tensor, eps: float = 1e-5
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of ONE convolution equal to a convolution followed by an eval-mode BatchNorm.

    ``weight`` (C_out, C_in / groups, kh, kw) and ``bias`` (C_out,) or None (a conv without
    bias: its bias is 0) are the convolution's; ``bn_weight`` (gamma), ``bn_bias`` (beta),
    ``running_mean``, ``running_var``, all (C_out,), and ``eps`` are the BatchNorm's. In eval
    mode the BatchNorm maps each output channel o of the convolution, value y, to::

        (y - running_mean[o]) / sqrt(running_var[o] + eps) * gamma[o] + beta[o]

    Return ``(new_weight, new_bias)`` of shapes (C_out, C_in / groups, kh, kw) and (C_out,),
    in the inputs' dtype (float32 or float64), such that ``conv2d(x, new_weight, new_bias)``
    equals the BatchNorm applied to ``conv2d(x, weight, bias)`` (same stride, padding, groups).
    New tensors; the inputs stay as they were.

    Example: one 1 x 1 filter of value 3, bias 1, gamma 6, beta 0.5, mean 4, var 8, eps 1:
    the BatchNorm computes ``(3x + 1 - 4) / 3 * 6 + 0.5 = 6x - 5.5``, so the answer is the
    weight ``[[[[6.]]]]`` and the bias ``[-5.5]``.

    Hint: for a fixed channel the BatchNorm is "times a number, plus a number"; a
    convolution's output channel scales with its filter and its bias.
    """
    scale = bn_weight / torch.sqrt(running_var + eps)  # (C_out,): gamma over the standard deviation
    new_weight = weight * scale.reshape(-1, 1, 1, 1)  # each output channel's filter, scaled
    conv_bias = bias if bias is not None else torch.zeros_like(running_mean)
    new_bias = (conv_bias - running_mean) * scale + bn_bias
    return new_weight, new_bias


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping P x P patches, one flattened patch per row: (B, C, H, W) -> (B, N, C * P * P).

    Patches are numbered row by row over the image (left to right, then down), so with
    ``gw = W / P`` patches per row, patch ``n = r * gw + s`` covers pixel rows
    ``[r * P, (r + 1) * P)`` and columns ``[s * P, (s + 1) * P)``. Each patch is flattened
    channel first, then pixel row, then pixel column (the order of a conv weight's
    (C, P, P) dimensions), so that for a ViT projection weight (D, C, P, P)::

        patchify(x, P) @ weight.reshape(D, -1).T  ==  the stride-P convolution, flattened row by row

    N = (H / P) * (W / P); same dtype as the input. Raise ``ValueError`` when H or W is not
    a multiple of P.

    Example: a (1, 3, 224, 224) image and P = 16 -> (1, 196, 768).

    Hint: it is only a reshape and a permutation of axes: split H into (patch row, row
    inside the patch), W likewise, then bring the two "which patch" axes to the front.
    """
    B, C, H, W = pixel_values.shape
    if H % patch_size or W % patch_size:
        raise ValueError(f"a {H} x {W} image does not cut into whole {patch_size} x {patch_size} patches")
    P = patch_size
    windows = pixel_values.unfold(2, P, P).unfold(3, P, P)  # (B, C, H/P, W/P, P, P), a view
    windows = windows.permute(0, 2, 3, 1, 4, 5)  # (B, H/P, W/P, C, P, P): which patch, then its pixels
    return windows.reshape(B, (H // P) * (W // P), C * P * P)


def center_crop(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Cut a ``height`` x ``width`` rectangle from the middle of an image, as the Hub's image processors do.

    ``pixels``: (C, H, W), any dtype (uint8 pictures, float tensors). Returns (C, height,
    width), same dtype. The rectangle starts at row ``(H - height) // 2`` (rounded down: for
    an odd difference the extra row stays at the bottom) and column ``(W - width) // 2``.

    When the crop is larger than the image along a side, the image is centred in a frame of
    zeros instead: the result is zeros except for the image, placed so that the extra zero
    row of an odd difference goes to the *top* (and the extra column to the left). Each
    side is handled on its own (one may be cropped while the other is padded).

    Examples: a 5 x 5 image cropped to 2 x 2 keeps rows 1-2 and columns 1-2; a 1 x 1
    image of value 7 "cropped" to 2 x 2 gives ``[[0, 0], [0, 7]]``.

    Hint: one formula for the offset covers both cases, if you let it go negative; then
    copy the overlap of the image and the crop window into a tensor of zeros.
    """
    C, H, W = pixels.shape
    top, left = (H - height) // 2, (W - width) // 2  # negative: the crop is larger on that side
    out = pixels.new_zeros((C, height, width))
    rows = slice(max(top, 0), min(top + height, H))  # the image's rows inside the crop window
    cols = slice(max(left, 0), min(left + width, W))
    out[:, rows.start - top:rows.stop - top, cols.start - left:cols.stop - left] = pixels[:, rows, cols]
    return out


def interpolate_positions(position_embeddings: torch.Tensor, grid_height: int, grid_width: int) -> torch.Tensor:
    """Resize a ViT's learned square grid of patch positions to ``grid_height`` x ``grid_width`` patches, bicubic.

    ``position_embeddings``: (1, 1 + n * n, D), float32 or float64: row 0 belongs to the
    [CLS] token, rows 1.. to the patches of an n x n grid, row by row. Return
    (1, 1 + grid_height * grid_width, D), same dtype: the [CLS] row unchanged, then the grid,
    seen as a D-channel n x n picture, resized to grid_height x grid_width and flattened row
    by row — what ``transformers``' ViT does with ``interpolate_pos_encoding=True``, that is
    ``torch.nn.functional.interpolate(..., mode="bicubic", align_corners=False)``, which you
    write yourself here (it is switched off):

    * output row i (of ``out`` rows, from ``n`` input rows) reads the input at the position
      ``(i + 0.5) * n / out - 0.5`` (pixel centres line up; no clamping of this position);
    * with ``f`` the integer below that position and ``t`` the fraction above ``f``, it is
      a weighted sum of input rows ``f - 1, f, f + 1, f + 2``, indices clamped to
      ``[0, n - 1]`` (the border repeats), with Keys' cubic kernel at the distances
      ``1 + t, t, 1 - t, 2 - t``, A = -0.75::

          k(d) = (A + 2) |d|^3 - (A + 3) |d|^2 + 1          for |d| <= 1
          k(d) = A |d|^3 - 5A |d|^2 + 8A |d| - 4A           for 1 < |d| < 2

    * rows and columns are independent: resize along the rows, then along the columns.

    Example: n = 2, ``grid_height = grid_width = 2`` gives the input back (t = 0: weights
    0, 1, 0, 0); n = 14 -> 24 x 24 turns (1, 197, 768) into (1, 577, 768).

    Hint: the same 1-D resize twice; a resize of n values to out values is a fixed (out, n)
    matrix of weights, built once per axis.
    """
    cls_pos, patch_pos = position_embeddings[:, :1], position_embeddings[:, 1:]  # (1, 1, D), (1, n*n, D)
    n = math.isqrt(patch_pos.shape[1])
    D = patch_pos.shape[-1]
    A = -0.75
    matrices = []
    for out_size in (grid_height, grid_width):
        position = (torch.arange(out_size, dtype=torch.float64) + 0.5) * (n / out_size) - 0.5  # (out,)
        below = torch.floor(position)
        t = position - below
        distance = torch.stack([1 + t, t, 1 - t, 2 - t], dim=1)  # (out, 4): to rows f-1, f, f+1, f+2
        near = ((A + 2) * distance - (A + 3)) * distance ** 2 + 1
        far = ((A * distance - 5 * A) * distance + 8 * A) * distance - 4 * A
        taps = torch.where(distance <= 1, near, far)  # (out, 4) weights
        rows = (below.long()[:, None] + torch.arange(-1, 3)).clamp(0, n - 1)  # (out, 4) input indices
        matrices.append(torch.zeros(out_size, n, dtype=torch.float64).scatter_add(1, rows, taps))
    grid = patch_pos.reshape(n, n, D).double()  # (rows, columns, D)
    grid = torch.einsum("hr,rcd->hcd", matrices[0], grid)  # resize the rows
    grid = torch.einsum("wc,hcd->hwd", matrices[1], grid)  # then the columns
    patches = grid.reshape(1, grid_height * grid_width, D).to(position_embeddings.dtype)
    return torch.cat([cls_pos, patches], dim=1)


def receptive_field(layers: list[tuple[int, int, int]]) -> tuple[int, int]:
    """The receptive field of a stack of convolutions / pools along one axis, and its jump.

    ``layers``: ``(kernel, stride, dilation)`` of each layer, first layer first (paddings do
    not change the answer). Return ``(size, jump)`` as ints: ``size`` is how many
    neighbouring input pixels reach one output pixel of the last layer (along one axis; a
    ``size x size`` square for square kernels); ``jump`` is how many input pixels apart the
    fields of two neighbouring output pixels start (the stack's effective stride). An empty
    stack sees one pixel: ``(1, 1)``.

    Examples: ``[(3, 1, 1)]`` -> (3, 1); two 3x3 convs ``[(3, 1, 1), (3, 1, 1)]`` -> (5, 1);
    ResNet's stem, a 7x7 stride-2 conv then a 3x3 stride-2 max-pool,
    ``[(7, 2, 1), (3, 2, 1)]`` -> (11, 4); a 3-tap conv with dilation 2 ``[(3, 1, 2)]`` -> (5, 1).

    Hint: walk the layers from the input side, keeping both numbers up to date. A layer
    widens the field by as many of its own input pixels as its kernel reaches beyond one;
    how many image pixels is one of those?
    """
    size, jump = 1, 1
    for kernel, stride, dilation in layers:
        size = size + dilation * (kernel - 1) * jump  # the kernel's extra taps, jump image pixels apart
        jump = jump * stride
    return size, jump
