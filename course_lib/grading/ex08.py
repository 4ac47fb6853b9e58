"""Checks for chapter 08's exercises (``exercises/ex08_fine_tuning.py``).

Inputs are random: logits of every scale up to ±10,000 with ignored positions and other
``ignore_index`` values, float32 and float64; AdamW states at steps 1 to 10,000 with
learning rates, betas, eps and weight decays large enough that every usual mistake moves
the result (a weight decay applied after the update instead of before, eps inside the
square root), and a 30-step run fed back through the learner's own function; schedules
with and without warmup, warmup == total, steps past the end; gradient lists under and
over the limit, all zeros; LoRA ranks 1 to 16 with ``alpha != r``, no bias, a fresh
adapter (B = 0); tables that grow, shrink or stay. Expected answers come from
``course_lib`` (``training.cross_entropy``, ``training.AdamW``, ``training.warmup_cosine_lr``,
``training.clip_grad_norm_``, ``lora.LoRALinear``, ``surgery.mean_resized_rows``,
``surgery.prune_attention_state``, ``training.label_smoothed_cross_entropy``), themselves
tested against PyTorch, ``transformers`` and ``peft`` in ``tests/test_training.py``,
``tests/test_lora.py`` and ``tests/test_surgery.py``; they are switched off while the
learner's code runs, and so are PyTorch's ready-made versions (``chapter_rules`` below).

Tolerances: float64 inputs 1e-10 relative (AdamW's parameters 1e-12 absolute on values
near 1, so a second-order slip such as decaying after the update shows), float32 1e-5
relative; the pruned weights exactly (they are selections). When a result is wrong, the
check tries the usual mistakes on the same input and names the one that matches.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Any, Callable

import numpy as np
import torch

from course_lib import lora as L
from course_lib import surgery as S
from course_lib import training as T
from course_lib.grading.registry import (GradeError, call_learner, chapter_rules, exercise, expect_close,
                                         expect_dtype, expect_raises, expect_shape, expect_tensor, expect_tensors,
                                         likely, randn)

ANSWER_KEY = (
    *(f"course_lib.training.{name}" for name in (
        "log_softmax", "cross_entropy", "label_smoothed_cross_entropy", "AdamW", "warmup_cosine_lr",
        "WarmupCosineSchedule", "global_grad_norm", "clip_grad_norm_")),
    *(f"course_lib.lora.{name}" for name in ("lora_delta", "LoRALinear", "merge_lora")),
    *(f"course_lib.surgery.{name}" for name in ("mean_resized_rows", "resize_token_embeddings", "kept_features",
                                                "prune_linear", "prune_attention_heads", "prune_attention_state",
                                                "prune_heads")),
)

SHORTCUTS = (
    "torch.nn.functional.cross_entropy", "torch.nn.functional.nll_loss", "torch.nn.functional.log_softmax",
    "torch.nn.functional.softmax", "torch.optim.AdamW", "torch.nn.utils.clip_grad_norm_",
)
chapter_rules("ex08", shortcuts=SHORTCUTS)

F64 = torch.float64


# ----------------------------------------------------------------------------- inputs and calls


def call(fn, *args, what: str):
    """Run the learner's function with the answer key switched off; it must leave its inputs as they were."""
    return call_learner(fn, args, what, ANSWER_KEY + SHORTCUTS, "; course_lib is the answer key, and PyTorch's "
                        "ready-made versions are switched off (any other torch operation is fine)",
                        "`+=`, `.mul_()`, `.add_()`, `.lerp_()`, assigning into an argument ...")


@contextlib.contextmanager
def own_rng():
    """Building a reference layer draws from PyTorch's global generator (its initial weights, which are
    overwritten at once); a check must not move a notebook's random numbers."""
    with torch.random.fork_rng(devices=[]):
        yield


def tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) for values of order 1."""
    return (1e-10, 1e-12) if dtype == F64 else (1e-5, 1e-6)


def close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol, equal_nan=True))


def expect_values(got: torch.Tensor, expected: torch.Tensor, what: str, mistakes: dict, rtol: float,
                  atol: float) -> None:
    """``got`` close to ``expected`` (shapes checked before), else a GradeError naming a matching mistake."""
    if close(got, expected, rtol, atol):
        return
    try:
        expect_close(got, expected, what, atol=atol, rtol=rtol)
    except GradeError as err:
        raise GradeError(str(err) + "." + likely(got, mistakes, rtol=rtol, atol=atol)) from None
    raise GradeError(f"{what}: differs from the expected result (NaN where a number was expected, or the reverse)."
                     + likely(got, mistakes, rtol=rtol, atol=atol))


def show(t: torch.Tensor) -> str:
    """A tensor's values when it is small, its shape (and dtype) otherwise."""
    if t.numel() <= 8:
        return str([round(v, 4) for v in t.double().reshape(-1).tolist()] if t.dim() <= 1 else
                   [[round(v, 4) for v in row] for row in t.double().reshape(t.shape[0], -1).tolist()])
    return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"


# ----------------------------------------------------------------------------- 1. cross-entropy


def _logp(logits: torch.Tensor) -> torch.Tensor:
    x = logits.double()
    return x - x.logsumexp(-1, keepdim=True)


def _picked(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    counted = targets != ignore_index
    safe = torch.where(counted, targets, torch.zeros_like(targets))
    return _logp(logits).gather(-1, safe.unsqueeze(-1)).squeeze(-1), counted


def cross_entropy_mistakes(logits, targets, ignore_index) -> dict[str, Callable[[], Any]]:
    def masked_mean(per_position, counted):
        return (per_position * counted).sum() / counted.sum()

    def picked():
        return _picked(logits, targets, ignore_index)

    def ignoring(index):
        lp, counted = _picked(logits, targets, index)
        return -(lp * counted).sum() / counted.sum()

    return {
        "the mean is over every position, the ignored ones counted as 0: divide by the number of counted "
        "positions": lambda: -(picked()[0] * picked()[1]).sum() / targets.numel(),
        "you returned the sum, not the mean over counted positions": lambda: -(picked()[0] * picked()[1]).sum(),
        "the sign is flipped: the loss is MINUS the log-probability of the right class (it is >= 0)":
            lambda: masked_mean(picked()[0], picked()[1]),
        "you averaged -log p over all classes instead of picking the right class's":
            lambda: masked_mean(-_logp(logits).mean(-1), targets != ignore_index),
        "you used the probability, not its log": lambda: masked_mean(-picked()[0].exp(), picked()[1]),
        "the row's maximum was subtracted but not added back (log-softmax is x - m - log sum exp(x - m))":
            lambda: masked_mean(-(picked()[0] + logits.double().amax(-1)), picked()[1]),
        f"you skipped targets equal to -100, not the ignore_index argument ({ignore_index})":
            lambda: ignoring(-100) if ignore_index != -100 else None,
        "nothing was ignored": lambda: ignoring(-(10 ** 9)),
    }


def _ce_cases(rng: np.random.Generator) -> list[tuple[torch.Tensor, torch.Tensor, int, str]]:
    cases = [(torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, 0.0], [1.0, 1.0, 1.0]]), torch.tensor([0, -100, 2]), -100,
              "the docstring's example")]
    for i in range(12):
        dtype = F64 if i % 3 == 2 else torch.float32
        C = int(rng.integers(2, 12))
        shape = (int(rng.integers(2, 9)),) if i % 2 == 0 else (int(rng.integers(1, 4)), int(rng.integers(2, 7)))
        scale = float(rng.choice([0.5, 2.0, 8.0]))
        logits = randn(rng, *shape, C, scale=scale, dtype=dtype)
        targets = torch.from_numpy(rng.integers(0, C, size=shape))
        ignore_index = [-100, -100, 0, -1][i % 4]
        if i % 4:  # some positions ignored (every fourth case has none)
            drop = torch.from_numpy(rng.random(shape) < 0.3)
            drop.view(-1)[-1] = True
            targets = targets.masked_fill(drop, ignore_index)
        counted = targets != ignore_index
        if not counted.any():  # keep one counted position (the all-ignored case has its own test)
            targets.view(-1)[0] = (ignore_index + 1) % C
        cases.append((logits, targets, ignore_index, f"logits {tuple(logits.shape)} {str(dtype)[6:]}, "
                                                     f"ignore_index={ignore_index}"))
    huge = randn(rng, 4, 6, scale=3000.0)
    huge[:, 2] = 1e4  # exp(10000) is inf in float32 and float64
    cases.append((huge, torch.tensor([2, 0, -100, 5]), -100, "logits up to 10,000 (float32)"))
    cases.append((randn(rng, 2, 3, 4), torch.full((2, 3), -100), -100, "every target is ignore_index"))
    return cases


@exercise("ex08.cross_entropy", points=2,
          reference=("course_lib.training.cross_entropy", "course_lib.training.log_softmax"),
          hints=(
              "The loss of one position is minus the log-probability of its right class, and log softmax(x)_c = "
              "x_c - log sum_j exp(x_j). Subtract each row's maximum m first (log sum exp(x) = m + log sum "
              "exp(x - m)): no exp can overflow. Then average over the positions that count.",
              "`amax` over the last dim (keepdim, so that it broadcasts) gives m; `exp`, a `sum` over the last dim "
              "and `log`, in that order, give the rest of the log-sum-exp. To pick one value per position along the "
              "class axis, `gather` wants an index with a trailing axis of size 1 (`unsqueeze`).",
              "An ignored target (-100) is not a class: gather cannot use it. Replace it by any valid class "
              "(`torch.where`), zero those positions' losses, and divide by the number of counted positions, a "
              "boolean mask's sum, not by the number of positions.",
          ))
def _(fn, rng):
    for logits, targets, ignore_index, label in _ce_cases(rng):
        what = f"cross_entropy({label})"
        got = expect_tensor(call(fn, logits, targets, ignore_index, what=what), what)
        expected = T.cross_entropy(logits, targets, ignore_index)
        expect_shape(got, (), what, "the mean loss is one number: a 0-d tensor (`.sum()` without dim, then divide)")
        expect_dtype(got, logits.dtype, what, "compute in the logits' dtype (float32 in, float32 out)")
        if bool(expected.isnan()):
            if not bool(got.isnan()):
                raise GradeError(f"{what}: no position counts, so the mean is 0 / 0: expected NaN (as PyTorch), got "
                                 f"{got.item():.6g}. Divide by the count as it is (do not guard it with max(1, ...))")
            continue
        if not bool(torch.isfinite(got)):
            raise GradeError(f"{what}: your loss is {got.item()} where {expected.item():.6g} was expected: with logits "
                             f"up to {logits.abs().max().item():.0f}, exp overflowed (or log met 0). Subtract each "
                             f"row's maximum before exponentiating, and take the log of the sum, never of a "
                             f"probability")
        rtol, atol = tolerances(logits.dtype)
        expect_values(got, expected, what, cross_entropy_mistakes(logits, targets, ignore_index), rtol,
                      atol * max(1.0, abs(expected.item())))


# ----------------------------------------------------------------------------- 2. AdamW


def reference_adamw(param, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay):
    """The course's AdamW (= torch.optim.AdamW) from the given state: (param, exp_avg, exp_avg_sq), new tensors."""
    p = torch.nn.Parameter(param.clone())
    p.grad = grad.clone()
    optimizer = T.AdamW([p], lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    optimizer.state[p] = {"step": step - 1, "exp_avg": exp_avg.clone(), "exp_avg_sq": exp_avg_sq.clone()}
    optimizer.step()
    state = optimizer.state[p]
    return p.detach().clone(), state["exp_avg"].clone(), state["exp_avg_sq"].clone()


def adamw_variant(param, grad, m, v, t, lr, betas, eps, wd, *, correct=True, decay="first", eps_inside=False,
                  t_shift=0, return_hats=False, v_from="square", swap_betas=False):
    """AdamW with one typical mistake, in float64: (param, m, v)."""
    p, g, m, v = param.double(), grad.double(), m.double(), v.double()
    b1, b2 = (betas[1], betas[0]) if swap_betas else betas
    t = t + t_shift
    if decay == "l2":
        g = g + wd * p
    start = p * (1 - lr * wd) if decay == "first" else (p * (1 - wd) if decay == "no lr" else p)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * (g * g if v_from == "square" else g.abs() if v_from == "abs" else g)
    m_hat, v_hat = (m / (1 - b1 ** t), v / (1 - b2 ** t)) if correct else (m, v)
    denom = (v_hat + eps).sqrt() if eps_inside else v_hat.sqrt() + eps
    new = start - lr * m_hat / denom
    if decay == "after":
        new = new * (1 - lr * wd)
    return (new, m_hat, v_hat) if return_hats else (new, m, v)


ADAMW_MISTAKES = {
    "there is no bias correction: divide m by (1 - beta1^t) and v by (1 - beta2^t), with t = step":
        dict(correct=False),
    "the weight decay was added to the gradient (L2 regularisation, plain Adam); AdamW decouples it: "
    "param * (1 - lr * weight_decay), never through m or v": dict(decay="l2"),
    "the weight decay was applied after the Adam update; AdamW (as PyTorch) shrinks the parameter first, then "
    "subtracts the update": dict(decay="after"),
    "the weight decay misses the learning rate: the factor is (1 - lr * weight_decay)": dict(decay="no lr"),
    "there is no weight decay": dict(decay="none"),
    "eps is inside the square root; it is added to sqrt(v_hat)": dict(eps_inside=True),
    "the bias correction uses step + 1: `step` is already the number of this update (1 for the first)":
        dict(t_shift=1),
    "the bias correction uses step - 1: `step` is the number of this update (1 for the first)": dict(t_shift=-1),
    "you returned the bias-corrected m_hat and v_hat as the new state; return the raw m and v": dict(return_hats=True),
    "v averages the gradient, not its square": dict(v_from="plain"),
    "v averages |grad|, not grad squared": dict(v_from="abs"),
    "beta1 and beta2 are swapped: m uses beta1 (0.9), v uses beta2 (0.999)": dict(swap_betas=True),
}


def _adamw_cases(rng: np.random.Generator) -> list[dict]:
    cases = [dict(param=torch.tensor([1.0, -2.0]), grad=torch.tensor([0.5, -0.1]), exp_avg=torch.zeros(2),
                  exp_avg_sq=torch.zeros(2), step=1, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)]
    for i in range(14):
        dtype = torch.float32 if i < 2 else F64
        shape = tuple(int(n) for n in rng.integers(1, 6, size=int(rng.integers(1, 4))))
        step = int(rng.choice([1, 2, 3, 7, 50, 10000])) if i > 1 else 1
        g_scale = float(rng.choice([1e-3, 0.1, 1.0]))
        grad = randn(rng, *shape, scale=g_scale, dtype=dtype)
        if step == 1:
            m, v = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
        else:
            m = randn(rng, *shape, scale=g_scale * 0.3, dtype=dtype)
            v = (randn(rng, *shape, scale=g_scale, dtype=dtype) ** 2) * 0.1 + (0.1 * g_scale) ** 2
        cases.append(dict(param=randn(rng, *shape, dtype=dtype), grad=grad, exp_avg=m, exp_avg_sq=v, step=step,
                          lr=float(rng.choice([1e-3, 0.01, 0.1, 0.5])),
                          betas=[(0.9, 0.999), (0.8, 0.99), (0.5, 0.9)][i % 3],
                          eps=float([1e-8, 1e-3, 0.1, 1e-6][i % 4] if g_scale > 1e-3 else [1e-5, 1e-4][i % 2]),
                          weight_decay=float([0.01, 0.5, 0.1, 0.0, 0.3][i % 5])))
    return cases


def _adamw_what(case: dict) -> str:
    return (f"adamw_step(param {show(case['param'])}, grad {show(case['grad'])}, step={case['step']}, "
            f"lr={case['lr']:g}, betas={tuple(case['betas'])}, eps={case['eps']:g}, "
            f"weight_decay={case['weight_decay']:g})")


def _check_adamw_result(out, case: dict, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    new_p, new_m, new_v = expect_tensors(out, 3, what, "(new_param, new_exp_avg, new_exp_avg_sq)")
    exp_p, exp_m, exp_v = reference_adamw(**case)
    args = [case[k] for k in ("param", "grad", "exp_avg", "exp_avg_sq", "step", "lr", "betas", "eps", "weight_decay")]
    dtype = case["param"].dtype
    rtol, atol = tolerances(dtype)
    wrong = {text: (lambda kw=kw: adamw_variant(*args, **kw)) for text, kw in ADAMW_MISTAKES.items()}
    for i, (name, got, expected) in enumerate((("new_exp_avg (m)", new_m, exp_m), ("new_exp_avg_sq (v)", new_v, exp_v),
                                               ("new_param", new_p, exp_p))):
        label = f"{what}, {name}"
        expect_shape(got, tuple(expected.shape), label, "the parameter's shape")
        expect_dtype(got, dtype, label, "keep the parameter's dtype")
        tol = atol * max(1.0, float(expected.abs().max())) if expected.numel() else atol
        expect_values(got, expected, label, {text: (lambda make=make, i=i: make()[(1, 2, 0)[i]])
                                             for text, make in wrong.items()}, rtol, tol)
    return new_p, new_m, new_v


@exercise("ex08.adamw_step", points=3,
          reference=("course_lib.training.AdamW",),
          hints=(
              "Two running means, m of the gradients and v of their squares, each moved a little towards the new "
              "value (beta1, beta2). Both start at 0, so they are too small early on: dividing by 1 - beta^t "
              "corrects that. The step is m_hat / (sqrt(v_hat) + eps) times lr, and the weight decay is a separate "
              "shrink of the parameter, before it.",
              "The docstring's six lines, in that order, with `betas` unpacked into beta1 and beta2 and t = "
              "`step` (1 for the first update: no + 1). `tensor.sqrt()` or `torch.sqrt`; Python's `**` for "
              "beta1 ** t. Return m and v as they are after the two running means, before the correction.",
              "Write every line as `new = expression` with fresh names: `param.mul_(...)` or `exp_avg *= ...` "
              "would change the caller's tensors (the grader checks). The decay uses the *old* parameter.",
          ))
def _(fn, rng):
    for case in _adamw_cases(rng):
        what = _adamw_what(case)
        out = call(fn, *(case[k] for k in ("param", "grad", "exp_avg", "exp_avg_sq", "step", "lr", "betas", "eps",
                                           "weight_decay")), what=what)
        _check_adamw_result(out, case, what)
    # 30 steps fed back through your own function, against the course's optimizer run on the same gradients
    shape = (3, 4)
    p = randn(rng, *shape, dtype=F64)
    m, v = torch.zeros(shape, dtype=F64), torch.zeros(shape, dtype=F64)
    reference = torch.nn.Parameter(p.clone())
    optimizer = T.AdamW([reference], lr=0.05, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    for t in range(1, 31):
        g = randn(rng, *shape, scale=float(rng.choice([0.01, 1.0])), dtype=F64)
        what = f"adamw_step at step {t} of 30 steps fed back through your function (lr 0.05, weight_decay 0.1)"
        p, m, v = expect_tensors(call(fn, p, g, m, v, t, 0.05, (0.9, 0.999), 1e-8, 0.1, what=what), 3, what)
        reference.grad = g.clone()
        optimizer.step()
        expect_close(p, reference.detach(), what + ", new_param", atol=1e-10, rtol=1e-10)


# ----------------------------------------------------------------------------- 3. warmup + cosine


def schedule_variant(step, max_lr, warmup, total, min_lr, *, early=False, floor="min_lr", span="after warmup",
                     cap=True, period=1.0, shape="cosine"):
    if step < warmup:
        return max_lr * ((step + 1) if early else step) / warmup
    length = (total - warmup) if span == "after warmup" else total
    progress = (step - warmup) / max(1, length)
    if cap:
        progress = min(1.0, progress)
    fall = 0.5 * (1 + math.cos(math.pi * period * progress)) if shape == "cosine" else 1 - progress
    if floor == "zero":
        return max_lr * fall
    if floor == "on top":
        return max_lr * fall + min_lr
    return min_lr + (max_lr - min_lr) * fall


SCHEDULE_MISTAKES = {
    "the warmup is one step ahead: step 0 must get lr 0 (it only fills AdamW's running means), so use step / "
    "warmup_steps": dict(early=True),
    "the cosine ends at 0, not at min_lr: it goes from max_lr down to min_lr": dict(floor="zero"),
    "min_lr was added on top of the cosine, so the peak is max_lr + min_lr; scale the cosine by (max_lr - min_lr)":
        dict(floor="on top"),
    "progress is measured over total_steps; the cosine part lasts total_steps - warmup_steps": dict(span="total"),
    "after total_steps the cosine turns back up: cap progress at 1 (min_lr from then on)": dict(cap=False),
    "the cosine runs a whole period (back up to max_lr); half a period goes from max_lr to min_lr":
        dict(period=2.0),
    "the decay is linear, not a cosine": dict(shape="linear"),
}


def _schedule_cases(rng: np.random.Generator) -> list[tuple[float, int, int, float]]:
    cases = [(1e-3, 10, 110, 1e-4), (1.0, 0, 50, 0.0), (3e-4, 5, 5, 1e-5), (2e-5, 1, 2, 0.0)]
    for _ in range(6):
        warmup = int(rng.integers(0, 25))
        total = warmup + int(rng.integers(1, 400))
        max_lr = float(10 ** rng.uniform(-5, 0))
        min_lr = 0.0 if rng.random() < 0.3 else max_lr * float(rng.uniform(0.01, 0.5))
        cases.append((max_lr, warmup, total, min_lr))
    return cases


def _steps(rng: np.random.Generator, warmup: int, total: int) -> list[int]:
    wanted = {0, 1, warmup - 1, warmup, warmup + 1, (warmup + total) // 2, total - 1, total, total + 1, 2 * total + 3}
    wanted |= {int(s) for s in rng.integers(0, total + 20, size=12)}
    return sorted(s for s in wanted if s >= 0)


@exercise("ex08.warmup_cosine_lr", points=2,
          reference=("course_lib.training.warmup_cosine_lr",),
          hints=(
              "Two pieces. During the warmup the rate grows in proportion to the step, from 0 at step 0. After it, "
              "half a cosine period takes it from max_lr to min_lr: (1 + cos(pi * progress)) / 2 goes from 1 to 0 "
              "as progress goes from 0 to 1. Past total_steps it stays at min_lr.",
              "progress counts the steps since the warmup ended, divided by the length of the cosine part (not by "
              "total_steps). `min(1.0, ...)` keeps it from passing 1; `math.cos` and `math.pi` are enough.",
              "Edge cases the check uses: warmup_steps = 0 (step 0 already gets max_lr) and warmup_steps == "
              "total_steps (the cosine part has length 0: do not divide by it; use a length of at least 1).",
          ))
def _(fn, rng):
    for max_lr, warmup, total, min_lr in _schedule_cases(rng):
        settings = f"max_lr={max_lr:.6g}, warmup_steps={warmup}, total_steps={total}, min_lr={min_lr:.6g}"
        steps = _steps(rng, warmup, total)
        got = {}
        for step in steps:
            what = f"warmup_cosine_lr(step={step}, {settings})"
            out = call(fn, step, max_lr, warmup, total, min_lr, what=what)
            if isinstance(out, torch.Tensor) and out.numel() == 1:
                out = out.item()
            if isinstance(out, bool) or not isinstance(out, numbers.Real):
                raise GradeError(f"{what}: expected a number (a Python float), got {type(out).__name__}")
            got[step] = float(out)
        expected = {step: T.warmup_cosine_lr(step, max_lr, warmup, total, min_lr) for step in steps}
        bad = [s for s in steps if not math.isclose(got[s], expected[s], rel_tol=1e-9, abs_tol=1e-15 + 1e-12 * max_lr)]
        if bad:
            s = bad[0]
            named = [text for text, kw in SCHEDULE_MISTAKES.items()
                     if all(math.isclose(got[x], schedule_variant(x, max_lr, warmup, total, min_lr, **kw),
                                         rel_tol=1e-9, abs_tol=1e-15 + 1e-12 * max_lr) for x in steps)]
            raise GradeError(f"warmup_cosine_lr(step={s}, {settings}): expected {expected[s]:.8g}, got {got[s]:.8g} "
                             f"({len(bad)} of {len(steps)} steps differ, first at step {s})."
                             + (f" It looks like {named[0]}." if named else ""))


# ----------------------------------------------------------------------------- 4. clipping


def reference_clip(grads: list[torch.Tensor], max_norm: float) -> tuple[list[torch.Tensor], float]:
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        params.append(p)
    total = T.clip_grad_norm_(params, max_norm)
    return [p.grad for p in params], float(total)


def _norms(grads):
    return [float(g.double().square().sum().sqrt()) for g in grads]


def clip_mistakes(grads, max_norm) -> tuple[dict, dict]:
    """(mistakes of the norm, mistakes of the clipped gradients)."""
    total = math.sqrt(sum(n * n for n in _norms(grads)))
    norm_mistakes = {
        "the global norm is the root of the sum of ALL squared entries, not the sum of the tensors' norms":
            lambda: sum(_norms(grads)),
        "that is the L1 norm (sum of |g|); clipping uses the L2 norm": lambda: sum(float(g.double().abs().sum())
                                                                                   for g in grads),
        "only the first tensor's norm was taken": lambda: _norms(grads)[0],
        "the root of the MEAN of the squares; use the sum": lambda: math.sqrt(
            sum(float(g.double().square().sum()) for g in grads) / max(1, sum(g.numel() for g in grads))),
        "you returned the norm after clipping; return the norm before": lambda: min(total, max_norm),
        "you returned the squared norm": lambda: total ** 2,
    }
    grad_mistakes = {
        "each tensor was clipped by its own norm; all tensors share one factor from the global norm":
            lambda: [g * min(1.0, max_norm / (n + 1e-6)) for g, n in zip(grads, _norms(grads))],
        "the gradients were rescaled to max_norm even though their norm was under it: the factor is at most 1":
            lambda: [g * (max_norm / (total + 1e-6)) for g in grads],
        "each value was clamped to [-max_norm, max_norm] (clipping by value); clip by the norm":
            lambda: [g.clamp(-max_norm, max_norm) for g in grads],
        "the factor is upside down: max_norm / norm, not norm / max_norm":
            lambda: [g * min(1.0, (total + 1e-6) / max_norm) for g in grads],
    }
    return norm_mistakes, grad_mistakes


def _clip_cases(rng: np.random.Generator) -> list[tuple[list[torch.Tensor], float]]:
    cases = [([torch.tensor([3.0, 4.0]), torch.tensor([12.0])], 1.0)]
    for i in range(10):
        dtype = F64 if i % 4 == 3 else torch.float32
        n = int(rng.integers(1, 6))
        grads = [randn(rng, *(int(d) for d in rng.integers(1, 6, size=int(rng.integers(0, 4)))),
                       scale=float(rng.choice([0.01, 0.3, 3.0])), dtype=dtype) for _ in range(n)]
        total = math.sqrt(sum(x * x for x in _norms(grads)))
        max_norm = float(rng.choice([0.5, 1.0, 5.0]))
        if i % 3 == 0:  # under the limit: nothing changes
            max_norm = total * float(rng.uniform(1.2, 3.0)) + 1e-3
        elif i % 3 == 1:  # over it
            max_norm = max(1e-3, total * float(rng.uniform(0.05, 0.8)))
        cases.append((grads, max_norm))
    cases.append(([torch.zeros(3), torch.zeros(2, 2)], 1.0))
    return cases


@exercise("ex08.clip_by_global_norm", points=2,
          reference=("course_lib.training.clip_grad_norm_", "course_lib.training.global_grad_norm"),
          hints=(
              "Imagine every gradient flattened and all of them laid end to end in one long vector: its L2 norm is "
              "the global norm. If that is larger than max_norm, multiply every gradient by the same factor "
              "max_norm / norm; otherwise leave them alone.",
              "The global norm is the square root of a sum over the tensors of their sums of squares (not a sum of "
              "their norms). `min(1.0, ...)` (or `torch.clamp(..., max=1)`) makes the factor; keep the small 1e-6 "
              "PyTorch adds to the norm, so that all-zero gradients do not divide by 0.",
              "Return a new list (`g * factor` for each g, not `g.mul_()`, which would change the caller's "
              "gradients) and the norm from *before* clipping, as a Python float (`float(...)` or `.item()`).",
          ))
def _(fn, rng):
    for grads, max_norm in _clip_cases(rng):
        what = f"clip_by_global_norm({len(grads)} tensors {[tuple(g.shape) for g in grads]}, max_norm={max_norm:.6g})"
        copies = [g.clone() for g in grads]
        out = call(fn, grads, max_norm, what=what)
        if any(not torch.equal(g, c) for g, c in zip(grads, copies)):
            raise GradeError(f"{what}: your function changed the gradients it was given in place; return new "
                             f"tensors (`g * factor`, not `g.mul_(factor)` or `g *= factor`)")
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise GradeError(f"{what}: expected a pair (clipped gradients, total norm), got {type(out).__name__}")
        clipped, total = out
        if isinstance(total, torch.Tensor) and total.numel() == 1:
            total = total.item()
        if isinstance(total, bool) or not isinstance(total, numbers.Real):
            raise GradeError(f"{what}: the second item must be the total norm as a number, got {type(total).__name__}")
        if not isinstance(clipped, (list, tuple)) or len(clipped) != len(grads):
            raise GradeError(f"{what}: the first item must be a list of {len(grads)} tensors, one per gradient, got "
                             f"{type(clipped).__name__}" + (f" of length {len(clipped)}" if isinstance(
                                 clipped, (list, tuple)) else ""))
        expected, expected_total = reference_clip(grads, max_norm)
        norm_mistakes, grad_mistakes = clip_mistakes(grads, max_norm)
        if not math.isclose(float(total), expected_total, rel_tol=1e-5, abs_tol=1e-7):
            raise GradeError(f"{what}: total norm expected {expected_total:.6g}, got {float(total):.6g}."
                             + likely(float(total), norm_mistakes, rtol=1e-5, atol=1e-7))
        for i, (got, want) in enumerate(zip(clipped, expected)):
            label = f"{what}, clipped gradient {i}"
            expect_tensor(got, label)
            expect_shape(got, tuple(want.shape), label, "each gradient keeps its shape")
            expect_dtype(got, want.dtype, label, "each gradient keeps its dtype")
        bad = [i for i, (got, want) in enumerate(zip(clipped, expected)) if not close(got, want, 1e-5, 1e-7)]
        if bad:
            def flat(ts):
                return torch.cat([t.double().reshape(-1) for t in ts])

            mistakes = {text: (lambda make=make: flat(make())) for text, make in grad_mistakes.items()}
            try:
                expect_close(clipped[bad[0]], expected[bad[0]], f"{what}, clipped gradient {bad[0]}", rtol=1e-5,
                             atol=1e-7)
            except GradeError as err:
                raise GradeError(str(err) + "." + likely(flat(clipped), mistakes, rtol=1e-5, atol=1e-7)) from None


# ----------------------------------------------------------------------------- 5-6. LoRA


def reference_lora_layer(weight, bias, lora_A, lora_B, alpha) -> L.LoRALinear:
    from course_lib.layers import Linear

    out_f, in_f = weight.shape
    with own_rng():
        base = Linear(in_f, out_f, bias=bias is not None, dtype=weight.dtype)
        layer = L.LoRALinear(base, r=lora_A.shape[0], alpha=alpha)
    with torch.no_grad():
        base.weight.copy_(weight)
        if bias is not None:
            base.bias.copy_(bias)
        layer.lora_A.weight.copy_(lora_A)
        layer.lora_B.weight.copy_(lora_B)
    return layer.eval()


def lora_forward_mistakes(x, weight, bias, A, B, alpha) -> dict:
    r = A.shape[0]
    base = x.double() @ weight.double().T
    with_bias = base + bias.double() if bias is not None else base
    branch = (x.double() @ A.double().T) @ B.double().T
    return {
        "the branch is not scaled: multiply it by alpha / r": lambda: with_bias + branch,
        "the branch is scaled by alpha; the scaling is alpha / r (r = lora_A.shape[0])": lambda: with_bias + branch * alpha,
        "the branch is scaled by r / alpha; the scaling is alpha / r": lambda: with_bias + branch * (r / alpha),
        "the scaling multiplies the whole output; it belongs to the LoRA branch only":
            lambda: (with_bias + branch) * (alpha / r),
        "the bias is missing": lambda: base + branch * (alpha / r),
        "the bias was added twice (once more in the branch)": lambda: with_bias + bias.double() + branch * (alpha / r),
        "the scaling is alpha / (number of output features); r is lora_A.shape[0]":
            lambda: with_bias + branch * (alpha / weight.shape[0]),
    }


def _lora_cases(rng: np.random.Generator) -> list[tuple]:
    cases = [(torch.tensor([[1.0, 2.0]]), torch.eye(2), torch.tensor([0.5, -0.5]), torch.tensor([[1.0, 1.0]]),
              torch.tensor([[0.1], [0.0]]), 2.0)]
    for i in range(10):
        dtype = F64 if i % 4 == 3 else torch.float32
        in_f, out_f = int(rng.integers(2, 25)), int(rng.integers(2, 25))
        r = int(rng.integers(1, min(16, in_f, out_f) + 1))
        alpha = float(rng.choice([a for a in (1, 4, 8, 16, 32) if a != r]))
        lead = tuple(int(n) for n in rng.integers(1, 5, size=int(rng.integers(1, 4))))
        x = randn(rng, *lead, in_f, dtype=dtype)
        weight = randn(rng, out_f, in_f, scale=0.2, dtype=dtype)
        bias = None if i % 3 == 1 else randn(rng, out_f, scale=0.1, dtype=dtype)
        A = randn(rng, r, in_f, scale=1 / math.sqrt(in_f), dtype=dtype)
        B = randn(rng, out_f, r, scale=0.1, dtype=dtype) if i != 5 else torch.zeros(out_f, r, dtype=dtype)
        cases.append((x, weight, bias, A, B, alpha))
    return cases


def _lora_what(name: str, x, weight, bias, A, B, alpha) -> str:
    lead = f"x {tuple(x.shape)}, " if x is not None else ""
    bias_part = "" if x is None else f"bias {'None' if bias is None else tuple(bias.shape)}, "
    return (f"{name}({lead}weight {tuple(weight.shape)}, {bias_part}"
            f"lora_A {tuple(A.shape)}, lora_B {tuple(B.shape)}{' (zeros)' if not B.any() else ''}, alpha={alpha:g}, "
            f"{str(weight.dtype)[6:]})")


@exercise("ex08.lora_forward", points=2,
          reference=("course_lib.lora.LoRALinear",),
          hints=(
              "Two paths from the same x, added at the end: the frozen layer (x W^T + b) and the low-rank branch, "
              "which goes down to r features through A and back up to out features through B, then is multiplied "
              "by alpha / r.",
              "r is the number of rows of lora_A (A is (r, in), B is (out, r)). x @ A.T is (..., r); what do you "
              "multiply that by to get (..., out)? Only the branch gets the scaling; the bias belongs to the frozen "
              "path, and may be None.",
          ))
def _(fn, rng):
    for x, weight, bias, A, B, alpha in _lora_cases(rng):
        what = _lora_what("lora_forward", x, weight, bias, A, B, alpha)
        got = expect_tensor(call(fn, x, weight, bias, A, B, alpha, what=what), what)
        with torch.no_grad():
            expected = reference_lora_layer(weight, bias, A, B, alpha)(x)
        expect_shape(got, tuple(expected.shape), what, "x (..., in) -> (..., out), the leading dimensions kept")
        expect_dtype(got, x.dtype, what, "compute in x's dtype")
        rtol, atol = tolerances(x.dtype)
        expect_values(got, expected, what, lora_forward_mistakes(x, weight, bias, A, B, alpha), rtol, atol * 10)


def merge_mistakes(weight, A, B, alpha) -> dict:
    r = A.shape[0]
    W, BA = weight.double(), B.double() @ A.double()
    return {
        "the update is transposed: B A is (out, in) like the weight, A^T B^T is (in, out)":
            lambda: W + (BA * alpha / r).T,
        "the update is not scaled: multiply B A by alpha / r": lambda: W + BA,
        "the update is scaled by alpha; the scaling is alpha / r": lambda: W + BA * alpha,
        "the update is scaled by r / alpha; the scaling is alpha / r": lambda: W + BA * (r / alpha),
        "the update was subtracted; merging adds it": lambda: W - BA * alpha / r,
        "you returned only the update (alpha / r) B A; add the weight": lambda: BA * alpha / r,
        "you returned the weight unchanged": lambda: W,
    }


@exercise("ex08.merge_lora_weight", points=1,
          reference=("course_lib.lora.lora_delta", "course_lib.lora.merge_lora"),
          hints=(
              "x W^T + s (x A^T) B^T = x (W + s M)^T for one matrix M: find M from the transpose rule (P Q)^T = "
              "Q^T P^T, with s = alpha / r.",
              "M must have the weight's shape (out, in), from B (out, r) and A (r, in) in the order that fits. "
              "Return W + s M as a new tensor (not `weight += ...`, which would change the frozen weight).",
          ))
def _(fn, rng):
    for x, weight, bias, A, B, alpha in _lora_cases(rng) + [(None, *_square_case(rng))]:
        what = _lora_what("merge_lora_weight", None, weight, None, A, B, alpha)
        got = expect_tensor(call(fn, weight, A, B, alpha, what=what), what)
        layer = reference_lora_layer(weight, None, A, B, alpha)
        layer.merge()
        expected = layer.base_layer.weight.detach()
        expect_shape(got, tuple(weight.shape), what, "the merged weight has the weight's shape (out, in)")
        expect_dtype(got, weight.dtype, what, "keep the weight's dtype")
        rtol, atol = tolerances(weight.dtype)
        expect_values(got, expected, what, merge_mistakes(weight, A, B, alpha), rtol, atol * 10)


def _square_case(rng: np.random.Generator) -> tuple:
    """in == out, where a transposed update has the right shape."""
    n = int(rng.integers(3, 10))
    r = int(rng.integers(1, n))
    return (randn(rng, n, n, scale=0.2), None, randn(rng, r, n), randn(rng, n, r, scale=0.3), 8.0 if r != 8 else 4.0)


# ----------------------------------------------------------------------------- 7. resize the embeddings


def resize_mistakes(weight, n) -> dict:
    V = weight.shape[0]
    old = weight[:n].double()
    extra = n - V

    def grow(row):
        return torch.cat([old, row.double().reshape(1, -1).expand(extra, -1)]) if extra > 0 else None

    return {
        "the new rows are zeros; they are the mean of the old rows": lambda: grow(torch.zeros(weight.shape[1])),
        "the mean was taken after appending the new rows (as zeros); it is the mean of the V old rows only":
            lambda: grow(weight.double().sum(0) / n),
        "the new rows copy the last old row; they are the mean of all old rows": lambda: grow(weight[-1]),
        "the new rows copy the first row; they are the mean of all old rows": lambda: grow(weight[0]),
        "the new rows are the sum of the old rows, not their mean": lambda: grow(weight.double().sum(0)),
        "the new rows are ones": lambda: grow(torch.ones(weight.shape[1])),
    }


def _resize_cases(rng: np.random.Generator) -> list[tuple[torch.Tensor, int]]:
    cases = [(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]]), 5), (torch.tensor([[1.0, 2.0], [3.0, 4.0],
                                                                                     [5.0, 0.0]]), 2)]
    for i in range(9):
        V, C = int(rng.integers(1, 40)), int(rng.integers(1, 17))
        dtype = [torch.float32, F64, torch.bfloat16][i % 3] if i < 6 else torch.float32
        w = randn(rng, V, C, scale=float(rng.choice([0.02, 1.0])), dtype=dtype) + float(rng.normal(0, 0.5))
        n = [V + int(rng.integers(1, 6)), V + 1, max(1, V - int(rng.integers(1, 4))), V][i % 4] if i < 8 else V + 3
        cases.append((w, n))
    return cases


@exercise("ex08.resize_embedding", points=2,
          reference=("course_lib.surgery.mean_resized_rows",),
          hints=(
              "Token ids keep their meaning, so the old rows stay where they are; every row you add is one and the "
              "same vector, the average of all the old rows. Shrinking keeps only the first rows.",
              "The average over the token axis gives one (C,) vector: compute it in float32 (`.float()`), then cast "
              "it back to the weight's dtype. `expand` (or `repeat`) makes it as many rows as needed, and "
              "`torch.cat` puts them below the kept rows.",
              "A slice of the first n rows works whether n is smaller or larger than V (it stops at V); only when "
              "n > V is there anything to add. A slice is a view of the weight: return a copy.",
          ))
def _(fn, rng):
    for weight, n in _resize_cases(rng):
        V, C = weight.shape
        what = f"resize_embedding(weight ({V}, {C}) {str(weight.dtype)[6:]}, new_num_rows={n})"
        got = expect_tensor(call(fn, weight, n, what=what), what)
        expected = S.mean_resized_rows(weight, n)
        why = "keep the first rows when shrinking" if n < V else "V old rows plus one row per new token"
        expect_shape(got, (n, C), what, why)
        expect_dtype(got, weight.dtype, what, "keep the table's dtype (compute the mean in float32, then cast back)")
        keep = min(n, V)
        if not torch.equal(got[:keep], weight[:keep]):
            bad = int((got[:keep] != weight[:keep]).any(-1).sum())
            raise GradeError(f"{what}: {bad} of the first {keep} rows changed; the old rows must stay exactly as they "
                             f"were (token id i keeps row i)")
        rtol, atol = (2 ** -7, 1e-6) if weight.dtype == torch.bfloat16 else tolerances(weight.dtype)
        expect_values(got, expected, what + ", the new rows", resize_mistakes(weight, n), rtol, atol * 10)


# ----------------------------------------------------------------------------- stretch: prune heads from weights


def _block(rng: np.random.Generator, fused: bool, H: int, D: int, C: int) -> dict[str, torch.Tensor]:
    inner = H * D
    if fused:
        return {"c_attn.weight": randn(rng, 3 * inner, C), "c_attn.bias": randn(rng, 3 * inner),
                "c_proj.weight": randn(rng, C, inner), "c_proj.bias": randn(rng, C)}
    block = {}
    for name in ("query", "key", "value"):
        block[f"self.{name}.weight"] = randn(rng, inner, C)
        block[f"self.{name}.bias"] = randn(rng, inner)
    block.update({"output.dense.weight": randn(rng, C, inner), "output.dense.bias": randn(rng, C),
                  "output.LayerNorm.weight": 1 + 0.1 * randn(rng, C), "output.LayerNorm.bias": randn(rng, C)})
    return block


def _kept(H: int, D: int, heads, layout: str = "contiguous") -> torch.Tensor:
    gone = set(heads)
    if layout == "strided":  # feature i belongs to head i % H
        return torch.tensor([i for i in range(H * D) if i % H not in gone], dtype=torch.long)
    return torch.tensor([h * D + i for h in range(H) if h not in gone for i in range(D)], dtype=torch.long)


def prune_mistakes(key: str, state: dict, heads, H: int) -> dict:
    fused = "c_attn.weight" in state
    inner = state["c_proj.weight" if fused else "output.dense.weight"].shape[1]
    D = inner // H
    tensor = state[key]
    rows = key in ("c_attn.weight", "c_attn.bias") or key.startswith(("self.query.", "self.key.", "self.value."))
    columns = key in ("c_proj.weight", "output.dense.weight")
    keep_c = _kept(H, D, heads)
    complement = [h for h in range(H) if h not in set(heads)]

    def select(index: torch.Tensor) -> torch.Tensor | None:
        if fused and key.startswith("c_attn."):
            index = torch.cat([index + part * inner for part in range(3)])
        if rows:
            return tensor.index_select(0, index)
        if columns:
            return tensor.index_select(1, index)
        return None

    mistakes = {
        "you kept the heads you were asked to remove (and removed the others)": lambda: select(_kept(H, D,
                                                                                                     complement)),
        "head h was taken as features h, h + H, h + 2H, ...; it owns the D consecutive features h*D .. (h+1)*D - 1":
            lambda: select(_kept(H, D, heads, "strided")),
    }
    if fused and key.startswith("c_attn."):
        mistakes["c_attn holds q, k and v one after the other: remove the head's rows from each third, not just from "
                 "q (the first third)"] = lambda: torch.cat([tensor[:inner].index_select(0, keep_c), tensor[inner:]])
        mistakes["c_attn was treated as 3H heads in a row; remove head h's rows from each of the three thirds"] = \
            lambda: tensor.index_select(0, _kept(3 * H, D, heads))
    return mistakes


def _prune_cases(rng: np.random.Generator) -> list[tuple[dict, list[int], int, str]]:
    cases = []
    for i in range(10):
        fused = i % 2 == 1
        H, D = int(rng.integers(2, 7)), int(rng.integers(1, 6))
        C = H * D if i < 6 else H * D + int(rng.integers(1, 4)) * H  # a block that lost heads before: C > H*D
        heads = [int(h) for h in rng.choice(H, size=int(rng.integers(1, H)), replace=False)]  # unsorted, not all
        cases.append((_block(rng, fused, H, D, C), heads, H, f"{'GPT-2' if fused else 'encoder'} block, C={C}, "
                                                             f"H={H}, D={D}"))
    cases.append((_block(rng, True, 3, 2, 6), [], 3, "GPT-2 block, no head removed"))
    return cases


@exercise("ex08.prune_head_weights", points=4, stretch=True,
          reference=("course_lib.surgery.prune_attention_state",),
          hints=(
              "Head h reads and writes only its own D features: rows h*D .. (h+1)*D - 1 of the query, key and value "
              "projections (and of their biases), and the same columns of the output projection. Removing a head "
              "removes exactly those; the output bias and the LayerNorm do not belong to any head.",
              "Build the list of feature positions that stay, in order (D from the output projection's input "
              "width divided by num_heads), then index rows (dim 0) or columns (dim 1) with it. `.contiguous()` "
              "the results.",
              "GPT-2's c_attn is q, k and v stacked: rows 0 .. H*D - 1 are q, then k, then v. The same positions "
              "go from each third (`split` into three, or add H*D and 2*H*D to the positions).",
          ))
def _(fn, rng):
    for state, heads, H, label in _prune_cases(rng):
        what = f"prune_head_weights({label}, heads={heads})"
        out = call(fn, state, heads, H, what=what)
        if not isinstance(out, dict):
            raise GradeError(f"{what}: expected a dict of tensors, got {type(out).__name__}")
        expected = S.prune_attention_state(state, heads, H)
        if set(out) != set(expected):
            raise GradeError(f"{what}: expected the keys {sorted(expected)}, got {sorted(out)}; return every tensor "
                             f"of the block, pruned or not")
        for key in expected:
            got = expect_tensor(out[key], f"{what}[{key!r}]")
            want = expected[key]
            label_k = f"{what}[{key!r}]"
            mistakes = prune_mistakes(key, state, heads, H)
            if tuple(got.shape) != tuple(want.shape):
                why = ""
                if key in ("c_proj.weight", "output.dense.weight") and got.shape[0] != want.shape[0]:
                    why = ": the output projection loses input COLUMNS (dim 1), its rows are the C output features"
                elif key in ("c_proj.bias", "output.dense.bias") or "LayerNorm" in key:
                    why = ": this tensor has one entry per output feature (C); no head owns it, so it stays as it was"
                raise GradeError(f"{label_k}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}{why}."
                                 + likely(got, mistakes))
            if not torch.equal(got, want):
                raise GradeError(f"{label_k}: {int((got != want).sum())} of {want.numel()} values differ from the "
                                 f"expected selection." + likely(got, mistakes))
    H = 4
    state = _block(rng, bool(rng.integers(0, 2)), H, 2, 8)
    expect_raises(ValueError, lambda: call(fn, state, list(range(H)), H, what="prune_head_weights(every head)"),
                  f"prune_head_weights(a block of {H} heads, heads={list(range(H))})",
                  "removing every head leaves no attention at all")


# ----------------------------------------------------------------------------- stretch: label smoothing


def smoothing_mistakes(logits, targets, eps, ignore_index) -> dict:
    lp, counted = _picked(logits, targets, ignore_index)
    C = logits.shape[-1]
    uniform = -_logp(logits).mean(-1)
    n = counted.sum()

    def mean(per):
        return (per * counted).sum() / n

    other = ((-_logp(logits)).sum(-1) + lp) / max(C - 1, 1)  # mean of -log p over the wrong classes
    return {
        "you spread epsilon over the C - 1 wrong classes (a common convention, not PyTorch's): the uniform part "
        "covers all C classes, the right one included": lambda: mean((1 - eps) * -lp + eps * other),
        "the uniform term was summed over the classes; it is their mean (epsilon / C each)":
            lambda: mean((1 - eps) * -lp + eps * uniform * C),
        "the right class's term is not scaled by (1 - epsilon)": lambda: mean(-lp + eps * uniform),
        "the uniform term includes the ignored positions": lambda: ((1 - eps) * (-lp * counted).sum()
                                                                   + eps * uniform.sum()) / n,
        "the smoothing was ignored (plain cross-entropy)": lambda: mean(-lp),
        "only the right class's term is there, scaled by (1 - epsilon)": lambda: mean((1 - eps) * -lp),
        "the mean is over every position, the ignored ones counted as 0": lambda: ((1 - eps) * -lp + eps * uniform)
        .mul(counted).sum() / targets.numel(),
    }


@exercise("ex08.label_smoothed_cross_entropy", points=4, stretch=True,
          reference=("course_lib.training.label_smoothed_cross_entropy",),
          hints=(
              "The target distribution is (1 - epsilon) on the right class plus epsilon / C on every class; the "
              "loss is its cross-entropy with the model's distribution: sum over classes of target_c * -log p_c. "
              "That splits into (1 - epsilon) times the usual term plus epsilon times the mean of -log p over the "
              "classes.",
              "From one (..., C) tensor of log-probabilities: `gather` the right class for the first term, "
              "`.mean(dim=-1)` for the second. Both terms are zero at ignored positions, and the divisor is the "
              "number of counted positions.",
          ))
def _(fn, rng):
    cases = [(torch.tensor([[2.0, 0.0]]), torch.tensor([0]), 0.1, -100, "the docstring's example")]
    for i, (logits, targets, ignore_index, label) in enumerate(_ce_cases(rng)[1:-1]):
        cases.append((logits, targets, [0.1, 0.0, 0.3, 1.0, 0.05][i % 5], ignore_index, label))
    for logits, targets, eps, ignore_index, label in cases:
        what = f"label_smoothed_cross_entropy({label}, smoothing={eps:g})"
        got = expect_tensor(call(fn, logits, targets, eps, ignore_index, what=what), what)
        expected = T.label_smoothed_cross_entropy(logits, targets, eps, ignore_index)
        expect_shape(got, (), what, "the mean loss is one number: a 0-d tensor")
        expect_dtype(got, logits.dtype, what, "compute in the logits' dtype")
        if not bool(torch.isfinite(got)):
            raise GradeError(f"{what}: your loss is {got.item()} where {expected.item():.6g} was expected: exp "
                             f"overflowed, or log met 0; work with log-probabilities computed after subtracting "
                             f"each row's maximum")
        rtol, atol = tolerances(logits.dtype)
        expect_values(got, expected, what, smoothing_mistakes(logits, targets, eps, ignore_index), rtol,
                      atol * max(1.0, abs(expected.item())))
