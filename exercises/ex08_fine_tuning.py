"""Chapter 08 exercises: fine-tuning from primitives, LoRA and model surgery.

Training a model is four small pieces of arithmetic repeated: a **loss** (cross-entropy
from log-softmax), an **optimizer step** (AdamW), a **learning-rate schedule** (warmup, then
a cosine) and a **safety cap** on the gradients (clipping by their global norm). LoRA adds a
low-rank branch ``(alpha / r) * B A`` beside a frozen weight and can fold it back in. Model
surgery changes a trained model's shape: new embedding rows for new tokens, attention heads
removed.

Shapes: N items, B batch, T tokens, C classes (or features), V vocabulary entries, r the
LoRA rank, ``in`` / ``out`` a linear layer's features, H heads of D features each.

The exercises follow the notebook ``notebooks/08_fine_tuning.ipynb``: 1-4 training from
primitives (section 1), 5-6 LoRA (section 5), 7 resizing the vocabulary (section 6). The
last two are stretch exercises (section 9) that go past what the chapter shows: removing
heads from the weights of an encoder block *and* of GPT-2's fused ``c_attn``, and a
label-smoothed cross-entropy.

You may use any ``torch`` operation (not its private ``torch._*`` functions) and ``math``,
but not the ready-made versions of what the exercises ask for: ``F.cross_entropy``,
``F.nll_loss``, ``F.log_softmax`` / ``torch.log_softmax`` / ``F.softmax`` (and their
aliases), ``torch.optim.AdamW`` / ``Adam``, ``torch.nn.utils.clip_grad_norm_``. The grader
switches them off while your code runs and tells you if you called one. ``course_lib`` is the
answer key: importing it scores 0. Functions later in this file may call earlier ones
(``label_smoothed_cross_entropy`` may call your ``cross_entropy``, say).

Every function returns new tensors and leaves its inputs as they were (no ``+=``,
``.mul_()``, ``.add_()`` on an argument): a training loop still needs the old values.

Write the body of each function below, replacing ``raise NotImplementedError``. Then grade:

* in the notebook: ``check("ex08.cross_entropy")`` (one cell per exercise; each failure
  shows the next hint, ``check(key, hint=2)`` asks for one) — grading runs in a fresh
  process, so save this file and run the cell again;
* in a terminal: ``python -m course_lib.grade ex08`` (all) or ``python -m course_lib.grade
  ex08.adamw_step`` (one).

The checks call your functions on random inputs (logits up to ±10,000, ignored positions,
float32 and float64, steps from 1 to 10,000, warmups of 0, LoRA ranks 1 to 16, growing and
shrinking tables, GPT-2's and BERT's block layouts) and compare with ``course_lib``'s
versions (themselves tested against PyTorch and ``transformers``): to 1e-5 relative in
float32, tighter in float64.
"""

from __future__ import annotations

import math

import torch


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """The mean negative log-probability of the right class, skipping ``ignore_index`` targets.

    ``logits``: float32 or float64 scores, (N, C) or (B, T, C): the classes are on the
    *last* axis. ``targets``: int64 class ids, the shape of ``logits`` without its last axis;
    each is in [0, C) or equal to ``ignore_index`` (padding, a prompt's tokens): those
    positions count for nothing, neither in the sum nor in the number it is divided by.
    Returns a 0-d tensor in the logits' dtype::

        loss = mean over counted positions of  -log softmax(logits)[target]
        log softmax(x)_c = x_c - log sum_j exp(x_j)

    It must stay finite for logits in the thousands (``exp(1000)`` is ``inf`` in float32).
    When every target is ``ignore_index`` the mean is 0 / 0: return NaN, as PyTorch does.

    Example::

        logits  = [[2.0, 1.0, 0.1], [0.5, 2.5, 0.0], [1.0, 1.0, 1.0]]
        targets = [0, -100, 2]
        row 0: -log(e^2 / (e^2 + e^1 + e^0.1)) = 0.4170;  row 1 ignored;  row 2: log 3 = 1.0986
        loss = (0.4170 + 1.0986) / 2 = 0.7578

    Hint: compute log-probabilities directly, never the probabilities first. Subtracting each
    row's maximum before exponentiating changes nothing in the result and keeps every
    ``exp`` at most 1.
    """
    raise NotImplementedError


def adamw_step(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, step: int,
               lr: float, betas: tuple[float, float], eps: float, weight_decay: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One AdamW update of one parameter; returns ``(new_param, new_exp_avg, new_exp_avg_sq)``.

    ``param``, ``grad``, ``exp_avg`` (m), ``exp_avg_sq`` (v): float tensors of one shape and
    dtype (m and v are zeros before the first step). ``step``: t, the number of *this*
    update, 1 for the first. ``betas``: (beta1, beta2). The update, as
    ``torch.optim.AdamW`` does it::

        param <- param * (1 - lr * weight_decay)              decoupled weight decay, first
        m     <- beta1 * m + (1 - beta1) * grad
        v     <- beta2 * v + (1 - beta2) * grad^2
        m_hat =  m / (1 - beta1^t)                            bias correction
        v_hat =  v / (1 - beta2^t)
        param <- param - lr * m_hat / (sqrt(v_hat) + eps)

    Return the raw m and v (not the corrected ones: those are recomputed at every step) and
    the new parameter, all new tensors of the inputs' dtype; leave the inputs unchanged.

    Example (one step from zero state)::

        param = [1.0, -2.0], grad = [0.5, -0.1], step = 1, lr = 0.1, betas = (0.9, 0.999),
        eps = 1e-8, weight_decay = 0.01
        m = [0.05, -0.01], v = [0.00025, 0.00001]; at t = 1, m_hat = grad and v_hat = grad^2
        param = [0.999 - 0.1, -1.998 + 0.1] = [0.899, -1.898]

    Hint: m and v start at zero, so without the bias correction the first steps would be
    far too small. The weight decay is *decoupled*: it never enters m or v.
    """
    raise NotImplementedError


def warmup_cosine_lr(step: int, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """The learning rate of optimizer step ``step`` (0 for the first update), as a Python float.

    A straight line from 0 up to ``max_lr`` over the first ``warmup_steps`` steps, then half
    a cosine from ``max_lr`` down to ``min_lr``, reached at ``step == total_steps``, and
    ``min_lr`` for every step after that::

        step < warmup_steps:  max_lr scaled by the fraction of the warmup done, step / warmup_steps
        otherwise:            min_lr + (max_lr - min_lr) * (1 + cos(pi * progress)) / 2,
                              progress = (step - warmup_steps) / (total_steps - warmup_steps), at most 1
                              (a cosine part of length 0 counts as length 1)

    ``0 <= warmup_steps <= total_steps``. With ``warmup_steps == 0`` there is no warmup (step
    0 gets ``max_lr``); with ``warmup_steps == total_steps`` the cosine part has length 0:
    step ``total_steps`` gets ``max_lr`` and every later step ``min_lr``.

    Example: ``max_lr = 1e-3, warmup_steps = 10, total_steps = 110, min_lr = 1e-4``:
    step 0 -> 0.0, 5 -> 5e-4, 10 -> 1e-3, 60 -> 5.5e-4 (half way down), 110 -> 1e-4, 200 -> 1e-4.

    Hint: two cases by ``step``; in the second, measure how far along the cosine part the
    step is, as a fraction from 0 to 1 that stops growing at 1.
    """
    raise NotImplementedError


def clip_by_global_norm(grads: list[torch.Tensor], max_norm: float) -> tuple[list[torch.Tensor], float]:
    """Scale all gradients by one common factor so that their global L2 norm is at most ``max_norm``.

    ``grads``: a list of float tensors of any shapes (one per parameter). The global norm is
    the L2 norm of all their entries together, as if flattened into one long vector::

        total = sqrt(sum over every tensor g, every entry x of g: x^2)
        factor = min(1, max_norm / (total + 1e-6))     (as torch.nn.utils.clip_grad_norm_)

    Returns ``(clipped, total)``: a list of new tensors ``g * factor`` (same shapes and dtypes,
    in order) and ``total`` as a Python float, the norm *before* clipping. Gradients whose
    norm is under the limit come back unchanged; above it, every one shrinks by the same
    factor, so the update keeps its direction and only its length is capped.

    Example::

        grads = [[3.0, 4.0], [12.0]], max_norm = 1.0
        total = sqrt(9 + 16 + 144) = 13  ->  clipped = [[0.2308, 0.3077], [0.9231]]

    Hint: one factor for all tensors, computed from all of them; each tensor's squared norm
    is one number, and the global squared norm is their sum.
    """
    raise NotImplementedError


def lora_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_A: torch.Tensor,
                 lora_B: torch.Tensor, alpha: float) -> torch.Tensor:
    """A linear layer with a LoRA branch: ``x W^T + b + (alpha / r) * x A^T B^T``.

    ``x``: float (..., in), any number of leading dimensions. ``weight``: (out, in), the frozen
    pretrained weight; ``bias``: (out,) or None. ``lora_A``: (r, in), ``lora_B``: (out, r);
    r, the rank, is ``lora_A.shape[0]``. ``alpha``: a number; the branch is scaled by
    ``alpha / r``. Returns (..., out) in ``x``'s dtype.

    The branch goes through the narrow middle: x (..., in) -> A -> (..., r) -> B -> (..., out),
    about r * (in + out) multiply-adds per token instead of in * out.

    Example, in = 2, out = 2, r = 1, alpha = 2 (scaling 2)::

        x = [[1.0, 2.0]], weight = [[1.0, 0.0], [0.0, 1.0]], bias = [0.5, -0.5]
        lora_A = [[1.0, 1.0]], lora_B = [[0.1], [0.0]]
        base = [1.5, 1.5];  x A^T = [[3.0]];  B applied: [[0.3, 0.0]];  times 2: [[0.6, 0.0]]
        result = [[2.1, 1.5]]

    Hint: the base layer and the branch are two separate paths from ``x``, added at the end;
    the scaling belongs to the branch only. A is applied first: check the shapes.
    """
    raise NotImplementedError


def merge_lora_weight(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, alpha: float) -> torch.Tensor:
    """The weight that computes what a LoRA layer computes: ``W + (alpha / r) * B A``, a new tensor.

    ``weight``: (out, in); ``lora_A``: (r, in); ``lora_B``: (out, r); r = ``lora_A.shape[0]``.
    Returns (out, in) in ``weight``'s dtype, and leaves ``weight`` unchanged. With it a plain
    linear layer gives what ``lora_forward`` gives (up to float rounding), with no extra
    cost per token: the model can be saved, reloaded and quantized like any other.

    Example, r = 1, alpha = 2::

        weight = [[1.0, 0.0], [0.0, 1.0]], lora_A = [[1.0, 1.0]], lora_B = [[0.1], [0.0]]
        B A = [[0.1, 0.1], [0.0, 0.0]]  ->  result = [[1.2, 0.2], [0.0, 1.0]]

    Hint: ``x W^T + s x A^T B^T = x (W + s M)^T`` for which matrix M of shape (out, in)?
    """
    raise NotImplementedError


def resize_embedding(weight: torch.Tensor, new_num_rows: int) -> torch.Tensor:
    """An embedding table with ``new_num_rows`` rows, for a tokenizer that gained (or lost) tokens.

    ``weight``: float (V, C), one row per token. Returns a new (``new_num_rows``, C) tensor of
    ``weight``'s dtype: the first ``min(V, new_num_rows)`` rows are the old ones (token ids
    keep their meaning); each added row is the **mean of all V old rows**, computed in
    float32 and then cast to ``weight``'s dtype (as ``transformers`` does). Shrinking drops
    the last rows.

    Why the mean: a new token's logit (a dot product with its row) is then the average of the
    old tokens' logits, so before training it neither takes over the predictions (as a large
    random row could) nor points in a random direction.

    Example::

        weight = [[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]], new_num_rows = 5
        mean row = [3.0, 2.0]  ->  [[1, 2], [3, 4], [5, 0], [3, 2], [3, 2]]
        new_num_rows = 2       ->  [[1, 2], [3, 4]]

    Hint: one average over the token axis (not the feature axis), repeated for every new
    row, and put below the rows that stay. Mind the case where nothing is added.
    """
    raise NotImplementedError


def prune_head_weights(weights: dict[str, torch.Tensor], heads: list[int], num_heads: int
                       ) -> dict[str, torch.Tensor]:
    """Stretch: remove attention heads from one attention block's weights; a new dict.

    ``weights``: the block's tensors under the course's module names, in one of two layouts
    (the weights stored (out, in), as ``Linear`` keeps them):

    * an encoder block (BERT, RoBERTa): ``self.query.weight``, ``self.key.weight``,
      ``self.value.weight`` (H*D, C), their biases (H*D,), ``output.dense.weight`` (C, H*D),
      ``output.dense.bias`` (C,), ``output.LayerNorm.weight`` and ``.bias`` (C,);
    * a GPT-2 block: ``c_attn.weight`` (3*H*D, C) holding the q, k and v projections one after
      the other (q the first H*D rows, then k, then v), ``c_attn.bias`` (3*H*D,),
      ``c_proj.weight`` (C, H*D), ``c_proj.bias`` (C,).

    ``heads``: the heads to remove, numbered 0 .. ``num_heads`` - 1 (any order). Head h owns
    the features h*D .. (h+1)*D - 1 of q, of k and of v (rows of the projections) and the same
    input columns of the output projection. Return a dict with the same keys: those rows and
    columns removed, every other tensor as it was; the remaining heads keep their order.
    Removing every head is an error: raise ``ValueError``. Nothing else changes, which is why
    the pruned block computes exactly what the full block computes with those heads' outputs
    set to zero.

    Example, encoder, C = 4, H = 2 (D = 2), heads = [0]: ``self.query.weight`` keeps rows 2, 3
    (shape (2, 4)), ``self.query.bias`` entries 2, 3, and so on; ``output.dense.weight`` keeps
    columns 2, 3 (shape (4, 2)); ``output.dense.bias`` stays (4,). For GPT-2 with C = 4,
    H = 2, heads = [0]: ``c_attn.weight`` keeps rows 2, 3, 6, 7, 10, 11 (shape (6, 4)).

    Hint: first the positions of the features that stay, from D = (H*D) / num_heads; then
    rows or columns selected with them. For the fused layout, the same positions once in each
    third.
    """
    raise NotImplementedError


def label_smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float,
                                 ignore_index: int = -100) -> torch.Tensor:
    """Stretch: cross-entropy with label smoothing, as ``F.cross_entropy(..., label_smoothing=)``.

    Shapes, dtypes and ``ignore_index`` as in ``cross_entropy``; ``smoothing`` (epsilon) in
    [0, 1]. The target is no longer "all probability on the right class" but a mix: ``1 -
    epsilon`` on the right class plus ``epsilon`` spread *evenly over all C classes* (the right
    one included). The cross-entropy with that target, per counted position::

        loss = (1 - epsilon) * (-log p[target])  +  epsilon * (1 / C) * sum_c (-log p[c])

    and the mean over counted positions only (ignored positions count in neither term, nor in
    the divisor). epsilon = 0 gives ``cross_entropy``. Returns a 0-d tensor in the logits' dtype.

    The second term is smallest when the model spreads its probability evenly, so it pulls
    against infinite confidence: with smoothing the best logits are finite, and a classifier
    trained with it is often better calibrated.

    Example, one position, C = 2, logits [2.0, 0.0], target 0, epsilon = 0.1::

        -log p = [0.1269, 2.1269];  (0.9 * 0.1269) + 0.1 * (0.1269 + 2.1269) / 2 = 0.2269

    Hint: the log-probabilities give both terms: one value picked per position, and one
    average over the class axis. Mask both before the mean. Note the other convention
    (epsilon / (C - 1) on each wrong class) is *not* PyTorch's.
    """
    raise NotImplementedError
