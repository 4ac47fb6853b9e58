"""Chapter 07 exercises: quantization, storing weights in 8 and 4 bits.

A float32 weight takes 4 bytes. Symmetric ("absmax") quantization stores an integer ``q``
and a scale instead, with ``w ≈ q * scale``: int8 keeps levels -127..127 (1 byte per
weight), int4 keeps -7..7 (half a byte, two values packed into each byte). The scale is
``max|w| / qmax`` over the weights that share it: the whole tensor ("per-tensor"), one
output row ("per-channel"), or a group of ``group_size`` consecutive weights of a row
("group-wise", int4). The fewer weights share a scale, the less one outlier coarsens the
others, and the more bytes the scales take. An affine scheme adds a zero point per group,
``w ≈ (q - zero) * scale``, so that the 16 levels of int4 span the group's [min, max].
Shapes: N output rows (``out_features``), K values per row (``in_features``), g the group
size, G = K / g groups per row.

Two rules hold everywhere, as in ``course_lib.quantization`` and PyTorch's kernels:

* **Weight scales are bfloat16.** Compute ``max|w| / qmax`` in float32, then round it with
  ``.to(torch.bfloat16)``: that is how the scale is stored (2 bytes) and how the int8 and
  int4 kernels read it, so the integers must be computed with the *rounded* scale (divide
  by ``scale.float()``). A scale that comes out 0 (all the weights it covers are 0)
  becomes 1, so that dividing by it is safe.
* **Round to the nearest level** with ``torch.round`` before converting to an integer
  dtype: ``.to(torch.int8)`` alone truncates toward zero (2.9 -> 2). ``torch.round``
  rounds a value exactly halfway to the even neighbour (2.5 -> 2, 3.5 -> 4); random
  weights are practically never exactly halfway, and where one lands within float
  rounding of a half, the checks accept either level.

The exercises follow the notebook ``notebooks/07_quantization.ipynb``: 1-3 int8 (sections
3 and 4), 4-5 int4 groups (section 5), 6-7 packing (section 6), 8 the error (section 7).
The last two are stretch exercises (section 14) that go past what the chapter shows: int4
with a clipping ratio searched per group, and int8 activations multiplied by int8 weights.

You may use any ``torch`` operation (not its private ``torch._*`` functions). Not
``course_lib.quantization``: it is the answer key, and the grader switches it off while
your code runs. The functions later in this file can call the ones you wrote earlier.

Write the body of each function below, replacing ``raise NotImplementedError``. Then grade:

* in the notebook: ``check("ex07.int8_absmax_round_trip")`` (one cell per exercise; each
  failure shows the next hint, ``check(key, hint=2)`` asks for one) — grading runs in a
  fresh process, so save this file and run the cell again;
* in a terminal: ``python -m course_lib.grade ex07`` (all) or ``python -m course_lib.grade
  ex07.pack_int4`` (one).

The checks use random weights with a few large outliers, odd numbers of rows, all-zero
rows and groups, and group sizes from 4 to 128, and compare with ``course_lib.quantization``:
integers and scales exactly (dtypes too), dequantized weights to float32 rounding, the
error to 1e-5 relative.
"""

from __future__ import annotations

import torch


def int8_absmax_round_trip(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-tensor int8 absmax: quantize ``w`` with one scale, then dequantize it again.

    ``w``: float32, any shape (a weight matrix (N, K) usually). Returns ``(q, scale, w_hat)``:

    * ``scale``: bfloat16, shape () — ``max|w| / 127`` over the whole tensor, computed in
      float32, then rounded to bfloat16. Why round it: the scale is *stored* in bfloat16,
      and the int8 kernel reads that bfloat16 value, so the integers must be the ones for
      the rounded scale (with the float32 scale a few of them would be off by one). An
      all-zero ``w`` gets scale 1.
    * ``q``: int8, the shape of ``w``: ``round(w / scale)``, dividing by the rounded scale
      in float32, clamped to [-127, 127]. (-128 stays unused, so the range is symmetric.
      Here the clamp is only a safety net: rounding the scale to bfloat16 can push
      max|w| / scale above 127, but never past 127.496, which still rounds to 127. With a
      smaller scale it matters: see ``quantize_with_scale``.)
    * ``w_hat``: float32, the shape of ``w``: ``q * scale``, the weights the model computes
      with. An int8 times a bfloat16 tensor is computed in bfloat16, which would round the
      product: make it a float32 product.

    Example::

        w = [[0.5, -1.27], [0.01, 0.0]]
        max|w| = 1.27; 1.27 / 127 = 0.01, in bfloat16 0.010009765625
        q     = [[50, -127], [1, 0]]                 # 0.5 / 0.010009765625 = 49.95 -> 50
        w_hat = [[0.50048828, -1.27124023], [0.01000977, 0.0]]

    Hint: the largest magnitude becomes level 127, so the scale comes first; then each
    weight's nearest level, then back to float32.
    """
    scale = (w.float().abs().amax() / 127).to(torch.bfloat16)  # () rounded as it is stored
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # all-zero w: any scale works, 1 is safe
    q = torch.round(w.float() / scale.float()).clamp(-127, 127).to(torch.int8)
    # float32: the product of a 7-bit int and a bfloat16 is exact
    return q, scale, q.float() * scale.float()


def quantize_with_scale(w: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """Symmetric quantization with a given scale: int8 ``clamp(round(w / scale), -qmax, qmax)``.

    ``w``: float32 (N, K). ``scale``: bfloat16, shape () (one for the tensor) or (N, 1) (one
    per row, shaped to broadcast against ``w``). ``qmax``: 127 (int8) or 7 (int4 levels,
    held here in an int8). Returns int8 (N, K) with values in [-qmax, qmax].

    The scale may be *smaller* than ``max|w| / qmax``: that is clipping. A scale taken from,
    say, the 99.9th percentile of |w| instead of the maximum gives finer steps to all the
    ordinary weights, and the few outliers beyond ``qmax * scale`` are clipped to ±qmax.
    Then ``w / scale`` goes beyond ±qmax and the clamp matters: without it,
    ``.to(torch.int8)`` wraps 200 around to -56.

    Example::

        w = [[0.1, -0.35, 2.0]], scale = 0.1 (bfloat16: 0.10009765625), qmax = 7
        w / scale = [0.999, -3.497, 19.98]  ->  [1, -3, 7]

    Hint: the same three steps as the integers of exercise 1, with ``qmax`` for 127; mind
    which of them has to come last.
    """
    levels = torch.round(w.float() / scale.float())  # may reach beyond ±qmax: the scale clips
    return levels.clamp(-qmax, qmax).to(torch.int8)  # clamp first: int8 would wrap 200 to -56


def per_channel_scales(w: torch.Tensor) -> torch.Tensor:
    """Per-channel int8 absmax scales: one bfloat16 scale per output row of a float32 (N, K) weight.

    Returns bfloat16 (N,): ``scale[i] = max_j |w[i, j]| / 127``, computed in float32, then
    rounded to bfloat16; a row of zeros gets 1. Row i produces output i
    (``y_i = sum_j w[i, j] x_j``), so a kernel can compute ``sum_j q[i, j] * x_j`` and
    multiply that sum by row i's scale once. With one scale per tensor, a single outlier
    (say 50 times the typical weight) makes the step 50 times coarser for *every* weight;
    with one per row it only coarsens its own row, for 2 more bytes per row.

    Example::

        w = [[0.5, -0.1, 0.2, 0.0],
             [1.0, -2.0, 0.3, 0.0],
             [0.0,  0.0, 0.0, 0.0]]
        result = [0.003936767578125, 0.0157470703125, 1.0]   # 0.5 / 127, 2 / 127 in bfloat16; 1

    Hint: exercise 1's scale, taken row by row instead of over the whole tensor. A large
    *negative* weight must fit too.
    """
    row_max = w.float().abs().amax(dim=1)  # (N,) the largest magnitude of each output row
    scale = (row_max / 127).to(torch.bfloat16)
    return scale.masked_fill(scale == 0, 1.0)  # a row of zeros: 1 keeps w / scale finite


def quantize_int4_groups(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4, group-wise: one scale per ``group_size`` consecutive weights of a row.

    ``w``: float32 (N, K), K a multiple of ``group_size`` (g). Group j of row i is
    ``w[i, j*g:(j+1)*g]``. For each group: ``scale = max|group| / 7`` computed in float32,
    rounded to bfloat16 (an all-zero group gets 1); ``q = clamp(round(w / scale), -7, 7) + 8``:
    levels 1..15 stored as unsigned 4-bit values (0, which would be -8, stays unused so the
    range is symmetric).

    Returns ``(q, scale)``: ``q`` uint8 (N, K) with values 1..15 (one value per byte here;
    ``pack_int4`` halves that), ``scale`` bfloat16 (N, K // g). The weight comes back as
    ``(q - 8) * scale``. Why groups: 15 levels are too few for a whole row with an outlier
    in it; groups of 32 to 128 keep an outlier's damage to its own group, and the scales
    cost 16 bits per group (half a bit per weight for g = 32).

    Example, g = 4::

        w = [[0.7, -0.35, 0.1, 0.0,   2.1, 0.0, 0.0, -1.05]]
        scale = [[0.10009765625, 0.30078125]]        # 0.7 / 7 and 2.1 / 7 in bfloat16
        q     = [[15, 5, 9, 8,   15, 8, 8, 5]]       # -0.35 / 0.1001 = -3.497 -> -3 -> 5

    Hint: give the groups a dimension of their own, and exercise 1 happens once per group,
    with 7 for 127. A uint8 cannot hold a negative level.
    """
    N, K = w.shape
    groups = w.float().reshape(N, K // group_size, group_size)  # (N, G, g)
    scale = (groups.abs().amax(dim=-1, keepdim=True) / 7).to(torch.bfloat16)  # (N, G, 1)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.round(groups / scale.float()).clamp(-7, 7) + 8  # (N, G, g) levels 1..15
    return q.to(torch.uint8).reshape(N, K), scale.squeeze(-1)


def quantize_int4_zero_point(w: torch.Tensor, group_size: int
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Affine int4 with a zero point, group-wise: the 16 levels span each group's [min, max].

    ``w``: float32 (N, K), K a multiple of ``group_size`` (g); groups as in
    ``quantize_int4_groups``. For each group, with ``lo = min(smallest value, 0)`` and
    ``hi = max(largest value, 0)`` (the range always includes 0, so 0.0 is exactly one of
    the levels):

    * ``scale = (hi - lo) / 15``, computed in float32, rounded to bfloat16 (1 when it is 0:
      an all-zero group);
    * ``zero = clamp(round(-lo / scale), 0, 15)``: the level that stands for 0.0;
    * ``q = clamp(round(w / scale) + zero, 0, 15)``.

    Returns ``(q, scale, zero)``: ``q`` uint8 (N, K) values 0..15, ``scale`` bfloat16
    (N, K // g), ``zero`` uint8 (N, K // g). The weight comes back as ``(q - zero) * scale``.
    A symmetric scale has to cover ``max|w|`` on both sides; a lopsided group such as
    [-0.1, 0.9] wastes most of the negative levels, where the zero point spends all 16 on
    the range the group really has. A group whose values all have the same sign gets
    zero 0 (all positive) or 15 (all negative) and still fits. The clamps are a safety net:
    rounding the scale to bfloat16 moves a value by at most 1/30 of a level, so q and zero
    land in 0..15 anyway.

    Example, g = 4::

        w = [[-0.1, 0.9, 0.4, 0.2]]
        scale = (0.9 - (-0.1)) / 15 = 0.0667, in bfloat16 0.06689453125
        zero  = round(0.1 / 0.0669) = round(1.495) = 1
        q     = round([-1.495, 13.45, 5.98, 2.99]) + 1 = [0, 14, 7, 4]

    Hint: the groups as in exercise 4; each needs its own lo and hi, then the three formulas
    above in order. Keep values in float until the last step.
    """
    N, K = w.shape
    groups = w.float().reshape(N, K // group_size, group_size)  # (N, G, g)
    lo = groups.amin(dim=-1, keepdim=True).clamp(max=0)  # (N, G, 1), the range includes 0
    hi = groups.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / 15).to(torch.bfloat16)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.round(-lo / scale.float()).clamp(0, 15)  # (N, G, 1)
    q = (torch.round(groups / scale.float()) + zero).clamp(0, 15)  # (N, G, g)
    return q.to(torch.uint8).reshape(N, K), scale.squeeze(-1), zero.squeeze(-1).to(torch.uint8)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack two 4-bit values into each byte: uint8 (..., K) with values 0..15 -> uint8 (..., K / 2).

    ``q``: uint8, any number of leading dimensions, K even. Byte i of a row holds value
    ``2i`` in its low 4 bits and value ``2i + 1`` in its high 4 bits, that is
    ``q[2i] + 16 * q[2i + 1]``. This is the course's storage layout (what a saved int4 model
    holds); PyTorch's int4 kernel wants another one, which ``course_lib`` makes from this.

    Example::

        q = [3, 10, 15, 0]  ->  [3 + 16 * 10, 15 + 16 * 0] = [163, 15]    # 0xA3, 0x0F

    Hint: first pick the values that go low and the ones that go high, each (..., K / 2);
    then a bit shift and a bitwise or.
    """
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of ``pack_int4``: uint8 (..., K / 2) -> uint8 (..., K) with values 0..15.

    Value ``2i`` is the low 4 bits of byte i, value ``2i + 1`` its high 4 bits, so the
    values come back interleaved: low of byte 0, high of byte 0, low of byte 1, ...
    ``unpack_int4(pack_int4(q))`` must give ``q`` back.

    Example::

        packed = [163, 15]  ->  [3, 10, 15, 0]      # 163 = 0xA3: low 3, high 10

    Hint: a mask keeps the low 4 bits, a shift brings the high 4 down; then the two halves
    must be interleaved, not put one after the other.
    """
    low, high = packed & 0x0F, packed >> 4  # 2 x (..., K / 2)
    return torch.stack((low, high), dim=-1).flatten(-2)  # (..., K): low, high, low, high ...


def quantization_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """The relative error of a quantized weight, ``||w - w_hat|| / ||w||``, as a Python float.

    ``w``: float32, any shape, not all zero. ``w_hat``: the same shape, float32 or another
    float dtype (a bfloat16 copy, say). The norms are Frobenius norms, over *all* elements:
    ``sqrt(sum((w - w_hat) ** 2)) / sqrt(sum(w ** 2))``. 0 is perfect; 0.01 is a 1 % error.
    Unlike the mean squared error it does not depend on how large the weights are, so
    layers and schemes can be compared. (``-20 * log10(error)`` is the signal-to-noise
    ratio in decibels: each extra bit of precision adds about 6 dB.)

    Example: ``w = [3.0, 4.0]``, ``w_hat = [3.0, 3.0]``: ``||w - w_hat|| = 1``,
    ``||w|| = 5``, so 0.2.

    Hint: two norms over every element, in a common float dtype; the caller wants a number,
    not a tensor.
    """
    w, w_hat = w.double(), w_hat.double()
    return float(torch.linalg.vector_norm(w - w_hat) / torch.linalg.vector_norm(w))


def quantize_int4_clipped(w: torch.Tensor, group_size: int, ratios: list[float]
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stretch: symmetric int4 per group with a learned clip — each group picks the clipping
    ratio that reconstructs it best.

    ``w``: float32 (N, K), K a multiple of ``group_size`` (g), groups as in
    ``quantize_int4_groups``. ``ratios``: a list of R clipping ratios, e.g.
    ``[1.0, 0.95, ..., 0.5]``. For each group and each ratio r:

    * ``scale_r = r * max|group| / 7``, computed in float32, rounded to bfloat16 (1 for an
      all-zero group);
    * ``q_r = clamp(round(w / scale_r), -7, 7)``: weights beyond ``7 * scale_r`` are clipped;
    * ``error_r = sum over the group of (w - q_r * scale_r) ** 2``.

    The group keeps the scale with the smallest error (the first such ratio on a tie), and
    its ``q`` is stored as in ``quantize_int4_groups``. Returns ``(q, scale)``: ``q`` uint8
    (N, K) values 1..15, ``scale`` bfloat16 (N, K // g); the weight comes back as
    ``(q - 8) * scale``, the same format as plain absmax (ratio 1), so the int4 kernels read
    it unchanged. A smaller ratio makes every step finer (less rounding error for the
    ordinary weights) and clips the largest ones (more error for those): the best ratio
    depends on the group.

    Example, g = 8, ratios [1.0, 0.9, 0.8]::

        w = [[1.4, 0.1, 0.3, 0.5, -0.5, 0.7, -0.1, 0.9]]
        r = 1.0: scale 0.2002, levels [7, 0, 1, 2, -2, 3, 0, 4],  error 0.070
        r = 0.9: scale 0.1797, levels [7, 1, 2, 3, -3, 4, -1, 5], error 0.040  (1.4 -> 1.258)
        r = 0.8: scale 0.1602, levels [7, 1, 2, 3, -3, 4, -1, 6], error 0.093  (1.4 -> 1.121)
        -> scale [[0.1796875]], q = [[15, 9, 10, 11, 5, 12, 7, 13]]

    The checks accept a choice whose error is within 1e-4 (relative) of the smallest:
    float32 sums may order near-ties differently.

    Hint: a loop over the ratios that remembers, per group, the best scale so far (or all
    the ratios at once on a new leading dimension). The clamp belongs inside the error.
    """
    N, K = w.shape
    groups = w.float().reshape(N, K // group_size, group_size)  # (N, G, g)
    peak = groups.abs().amax(dim=-1, keepdim=True)  # (N, G, 1)
    best_scale, best_error = None, None
    for r in ratios:
        candidate = (peak * r / 7).to(torch.bfloat16)
        candidate = candidate.masked_fill(candidate == 0, 1.0)  # all-zero group
        s = candidate.float()
        error = (groups - torch.round(groups / s).clamp(-7, 7) * s).square().sum(dim=-1, keepdim=True)
        if best_scale is None:
            best_scale, best_error = candidate, error
        else:
            better = error < best_error  # strictly: the first ratio wins a tie
            best_scale = torch.where(better, candidate, best_scale)
            best_error = torch.where(better, error, best_error)
    levels = torch.round(groups / best_scale.float()).clamp(-7, 7) + 8  # 1..15
    return levels.to(torch.uint8).reshape(N, K), best_scale.squeeze(-1)


def w8a8_matmul(x: torch.Tensor, q_w: torch.Tensor, w_scale: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stretch: ``x @ W.T`` with the activations in int8 too ("W8A8"), the integer product
    accumulated in int32 and rescaled once.

    ``x``: float32 (M, K), M tokens. ``q_w``: int8 (N, K) and ``w_scale``: bfloat16 (N,), a
    weight quantized per channel (exercises 1-3: ``W ≈ q_w * w_scale[:, None]``). Returns
    ``(q_x, x_scale, acc, y)``:

    * ``x_scale``: float32 (M,), one scale per token (row of x): ``max|x_row| / 127``, 1 for
      a row of zeros. Activations change with every input, so their scales are computed on
      the fly ("dynamic") and never stored: they stay float32.
    * ``q_x``: int8 (M, K), ``clamp(round(x / x_scale), -127, 127)`` row by row.
    * ``acc``: int32 (M, N), ``acc[m, n] = sum_k q_x[m, k] * q_w[n, k]``, exactly. A product
      of two int8 values needs 15 bits and K of them need more: int8 hardware accumulates in
      32 bits, and so must you (an int8 tensor product wraps around).
    * ``y``: float32 (M, N), ``acc[m, n] * x_scale[m] * w_scale[n]``: each sum rescaled once,
      by its row's activation scale and its column's weight scale.

    Example::

        x = [[0.5, -1.0]], q_w = [[127, 0], [64, -127]], w_scale = [0.010009765625, 0.02001953125]
        x_scale = [1 / 127] = [0.007874],  q_x = [[64, -127]]   # 63.5 rounds to even: 64
        acc = [[64 * 127, 64 * 64 + 127 * 127]] = [[8128, 20225]]
        y   = [[8128 / 127 * 0.010009765625, 20225 / 127 * 0.02001953125]] = [[0.6406, 3.1881]]

    Weight-only int8 keeps x in float; W8A8 lets the whole product run on integer units (int8
    tensor cores, VNNI), as SmoothQuant and LLM.int8() do. A per-tensor activation scale
    would let one outlier token coarsen every other token's levels.

    Hint: quantize x like exercise 3 quantized w, but per row and in float32; then integers
    times integers in a dtype wide enough for the sums, and both scales at the end.
    """
    row_max = x.float().abs().amax(dim=1)  # (M,)
    x_scale = (row_max / 127).masked_fill(row_max == 0, 1.0)
    q_x = torch.round(x.float() / x_scale[:, None]).clamp(-127, 127).to(torch.int8)  # (M, K)
    acc = q_x.to(torch.int32) @ q_w.to(torch.int32).T  # (M, N) exact int32 sums
    # y: each sum rescaled once, by its token's scale (rows) and its output's weight scale (columns)
    return q_x, x_scale, acc, acc.float() * x_scale[:, None] * w_scale.float()[None, :]
