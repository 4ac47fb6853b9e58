"""Chapter 08: training from primitives: the loss, the optimizer, the schedule, the loop.

Every piece PyTorch (or ``transformers``) offers ready-made is written out here from plain
tensor operations, and ``tests/test_training.py`` checks each against the original:

1. ``cross_entropy``: the loss, from a numerically stable ``log_softmax``, with
   ``ignore_index`` (= ``torch.nn.functional.cross_entropy``, values and gradients);
2. ``AdamW``: Adam with bias correction and *decoupled* weight decay
   (= ``torch.optim.AdamW``, step for step), and ``weight_decay_groups``, the usual recipe
   of no decay on biases and LayerNorm weights;
3. ``warmup_cosine_lr`` and ``WarmupCosineSchedule``: a linear warmup from 0, then a cosine
   down to a floor (= ``transformers``' ``get_cosine_schedule_with_warmup``);
4. ``clip_grad_norm_``: rescale all gradients together when their global L2 norm is too
   big (= ``torch.nn.utils.clip_grad_norm_``);
5. ``accumulate_gradients``: k small batches give the gradient of one k times bigger batch,
   when the loss is divided by the right count;
6. ``train``: the loop that puts them together, with a progress bar, periodic evaluation,
   the best weights kept, and checkpoints that a run can be resumed from, bit for bit.

Batches are whatever the data gives (a dict of tensors is usual: ``input_ids``,
``attention_mask``, ``labels``); a *loss function* ``loss_fn(model, batch)`` turns one into a
loss, so the same loop fine-tunes a classifier, LoRA adapters or a language model
(``classification_loss`` and ``causal_lm_loss`` are two ready-made loss functions).

Shape letters: N items, B batch, T sequence length, C classes (or vocabulary entries).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from course_lib.checkpoint import tied_groups, write_atomic

__all__ = [
    "log_softmax", "cross_entropy", "label_smoothed_cross_entropy",
    "AdamW", "NO_DECAY", "weight_decay_groups",
    "warmup_cosine_lr", "WarmupCosineSchedule",
    "global_grad_norm", "clip_grad_norm_",
    "LossSum", "accumulate_gradients", "classification_loss", "causal_lm_loss", "evaluate", "to_device",
    "seed_everything", "rng_state", "set_rng_state",
    "save_training_checkpoint", "load_training_checkpoint", "save_weights", "load_weights",
    "CHECKPOINT_NAME", "BEST_NAME", "HISTORY_NAME",
    "train",
]


# --------------------------------------------------------------------------------------
# 1. Cross-entropy

def log_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log(softmax(logits))`` along ``dim``, computed without ever forming the softmax.

    log softmax(x)_i = x_i - log sum_j exp(x_j). The sum is taken after shifting by the
    maximum m (x - m <= 0, so no ``exp`` overflows, and the largest term is exp(0) = 1, so
    the log never sees 0): log sum_j exp(x_j) = m + log sum_j exp(x_j - m), the "logsumexp".
    Any shape and floating dtype; returns the same shape and dtype.
    """
    m = logits.amax(dim, keepdim=True).detach()  # the shift cancels out: no gradient through it
    shifted = logits - m  # <= 0
    return shifted - shifted.exp().sum(dim, keepdim=True).log()


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                  reduction: str = "mean") -> torch.Tensor:
    """The negative log-probability of the right class, from raw scores.

    ``logits``: float (N, C) or (B, T, C), any float dtype (float16/bfloat16 are computed in
    float32). Classes are on the *last* axis (``torch.nn.functional.cross_entropy`` wants them
    on axis 1: pass it ``logits.flatten(0, -2)`` and ``targets.flatten()`` to compare).
    ``targets``: int64 class ids, the shape of ``logits`` without its last axis, each in
    [0, C) or equal to ``ignore_index`` (padding, the prompt of a language model, the
    sub-word pieces a token classifier skips): those positions count for nothing.

    ``reduction``: "mean" (over the counted positions only), "sum", or "none" (the loss per
    position, shape of ``targets``, 0 where ignored). Returns a float32 (or the logits'
    float64) tensor: a scalar, or the shape of ``targets`` for "none".

    When every target is ``ignore_index``, "mean" is 0 / 0 = **NaN** (with zero gradients),
    as in PyTorch; "sum" is 0. A training loop that can meet such a batch should add up
    "sum" losses and divide by the count of a whole step (``LossSum``, ``accumulate_gradients``).
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a float tensor, got {getattr(logits, 'dtype', type(logits).__name__)}")
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor of class ids (torch.long), got "
                        f"{getattr(targets, 'dtype', type(targets).__name__)}")
    if logits.dim() < 2 or tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not fit: targets must "
                         f"have the shape of logits without the last (class) axis, e.g. logits (B, T, C) with "
                         f"targets (B, T), or logits (N, C) with targets (N,)")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction={reduction!r}: use 'mean', 'sum' or 'none'")
    n_classes = logits.shape[-1]
    counted = targets != ignore_index  # bool, shape of targets
    out_of_range = counted & ((targets < 0) | (targets >= n_classes))
    if out_of_range.any():
        bad = targets[out_of_range][0].item()
        raise IndexError(f"target {bad} is not a class id: with {n_classes} classes, targets must be in "
                         f"[0, {n_classes - 1}] or ignore_index={ignore_index} (check the labels, or num_labels)")

    logp = log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits)  # (..., C)
    safe = targets.masked_fill(~counted, 0)  # any valid id where ignored: gather needs one
    nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (...): -log p(right class)
    nll = nll.masked_fill(~counted, 0.0)  # ignored positions: loss 0 and no gradient
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    return nll.sum() / counted.sum()  # mean over the counted positions (NaN if there are none)


def label_smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float,
                                 ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against a softened target: ``1 - smoothing`` on the right class, ``smoothing``
    spread evenly over all C classes (= ``torch.nn.functional.cross_entropy(..., label_smoothing=)``).

    Per counted position, with log-probabilities ``logp`` (C,) and the right class y::

        loss = (1 - smoothing) * (-logp[y])  +  smoothing * mean_c(-logp[c])

    The second term is the cross-entropy with the uniform distribution: it grows when the
    model puts (almost) all its probability on one class, so the model is never pushed to
    infinite confidence (Szegedy et al. 2016). The uniform share includes the right class
    (the right class gets ``1 - smoothing + smoothing / C`` in all), as in PyTorch.
    ``smoothing`` in [0, 1]; 0 is ``cross_entropy``. Shapes, dtypes, ``ignore_index`` and
    ``reduction`` as in ``cross_entropy``: ignored positions count for nothing in either
    term, and "mean" divides by the number of counted positions.
    """
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing={smoothing!r} must be a number in [0, 1] (0.1 is usual; 0 is plain cross-entropy)")
    hard = cross_entropy(logits, targets, ignore_index, reduction="none")  # (...) checks the inputs; 0 where ignored
    scores = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    uniform = -log_softmax(scores).mean(dim=-1)  # (...) the cross-entropy with a uniform target
    mixed = (1.0 - smoothing) * hard + smoothing * uniform.masked_fill(targets == ignore_index, 0.0)
    if reduction == "none":
        return mixed
    if reduction == "sum":
        return mixed.sum()
    return mixed.sum() / (targets != ignore_index).sum()  # NaN when nothing counts, as cross_entropy


# --------------------------------------------------------------------------------------
# 2. AdamW

class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), written out; = ``torch.optim.AdamW``.

    For each parameter θ with gradient g, at step t = 1, 2, ...:

        θ ← θ - lr·λ·θ                       decoupled weight decay (not part of the gradient)
        m ← β1·m + (1 - β1)·g                running mean of the gradients
        v ← β2·v + (1 - β2)·g²               running mean of their squares
        m̂ = m / (1 - β1^t),  v̂ = v / (1 - β2^t)     bias correction: m and v start at 0
        θ ← θ - lr · m̂ / (√v̂ + ε)

    Plain Adam adds λ·θ to the gradient (L2 regularisation), and then the division by √v̂
    shrinks the decay of parameters with large gradients; AdamW shrinks every weight by the
    same factor (1 - lr·λ) per step, whatever its gradient.

    ``params``: parameters, or parameter groups (dicts with "params" and any of lr, betas,
    eps, weight_decay; see ``weight_decay_groups``). The state of each parameter is
    ``step`` (int), ``exp_avg`` (m) and ``exp_avg_sq`` (v), tensors of the parameter's shape
    and dtype. ``zero_grad``, ``state_dict`` and ``load_state_dict`` come from
    ``torch.optim.Optimizer``, so a saved state restores exactly and any PyTorch scheduler
    works with it.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        _check_hyperparameters(lr, betas, eps, weight_decay, where="AdamW")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """One update of every parameter that has a gradient. Returns ``closure()``'s loss, if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for i, group in enumerate(self.param_groups):
            lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            _check_hyperparameters(lr, (beta1, beta2), eps, weight_decay, where=f"AdamW param group {i}")
            for p in group["params"]:
                if p.grad is None:  # frozen, or not used in this step's loss: no update at all
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW does not support sparse gradients (nn.Embedding(sparse=True)); "
                                       "use dense embeddings")
                g = p.grad
                state = self.state[p]
                if not state:  # first step: the running means start at zero
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                t = state["step"]

                p.mul_(1 - lr * weight_decay)  # decoupled weight decay
                m.lerp_(g, 1 - beta1)  # m + (1 - β1)(g - m) = β1·m + (1 - β1)·g
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # β2·v + (1 - β2)·g²
                bias_correction1 = 1 - beta1 ** t
                bias_correction2 = 1 - beta2 ** t
                # lr·m̂/(√v̂ + ε) with m̂ = m/bc1, √v̂ = √v/√bc2: the same maths in PyTorch's order of
                # operations, so the result is equal to torch.optim.AdamW's bit for bit
                denom = (v.sqrt() / bias_correction2 ** 0.5).add_(eps)
                p.addcdiv_(m, denom, value=-lr / bias_correction1)
        return loss


def _check_hyperparameters(lr, betas, eps, weight_decay, where: str) -> None:
    if not isinstance(lr, (int, float)) or not lr >= 0:  # `not >=` also catches NaN
        raise ValueError(f"{where}: learning rate lr={lr!r} must be a number >= 0")
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"{where}: betas={tuple(betas)!r} must be two numbers in [0, 1), e.g. (0.9, 0.999)")
    if not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"{where}: eps={eps!r} must be a number >= 0 (1e-8 is usual)")
    if not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise ValueError(f"{where}: weight_decay={weight_decay!r} must be a number >= 0 (0.01 is usual)")


# Substrings of parameter names (lower-cased) that get no weight decay: biases, and the
# scales/shifts of normalisation layers ("LayerNorm" in BERT, "layer_norm" in RoBERTa's head,
# "ln_1"/"ln_2"/"ln_f" in GPT-2, "norm" in Llama). Decay pulls weights towards 0; a LayerNorm
# scale wants to stay near 1 and a bias has no reason to be small.
NO_DECAY = ("bias", "norm", "ln_")


def weight_decay_groups(model: nn.Module, weight_decay: float,
                        no_decay: Sequence[str] = NO_DECAY) -> list[dict]:
    """Parameter groups for an optimizer: weight decay on the matrices, none on biases and norms.

    A trainable parameter whose lower-cased name contains any string of ``no_decay`` goes to
    the group with ``weight_decay`` 0, every other one (linear weights, embeddings) to the
    group with ``weight_decay``. Frozen parameters (``requires_grad=False``, e.g. the base
    model under LoRA adapters) are left out; a tied weight appears once. Each parameter is
    given with its name, so the optimizer's ``param_groups`` (and its state dict) list
    them under ``param_names``. Empty groups are dropped.

    Pass the result to ``AdamW(groups, lr=...)`` (or ``torch.optim.AdamW``).
    """
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay={weight_decay!r} must be >= 0")
    decay, no = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no if any(s in name.lower() for s in no_decay) else decay).append((name, p))
    if not decay and not no:
        raise ValueError(f"{type(model).__name__} has no trainable parameter (all have requires_grad=False)")
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


# --------------------------------------------------------------------------------------
# 3. Warmup + cosine learning rate

def warmup_cosine_lr(step: int, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """The learning rate of optimizer step ``step`` (0 for the first update).

    A straight line from 0 up to ``max_lr`` over the first ``warmup_steps`` steps, then half
    a cosine from ``max_lr`` down to ``min_lr`` at ``total_steps``, and ``min_lr`` after that.

        step < warmup:  max_lr · step / warmup
        after:          min_lr + (max_lr - min_lr) · ½ (1 + cos(π · progress)),
                        progress = (step - warmup) / (total - warmup), at most 1

    The warmup keeps the first updates small while AdamW's running means are still poor
    estimates (the very first update has lr 0: it only fills them); the slow decay lets
    the weights settle at the end. The same definition as ``transformers``'
    ``get_cosine_schedule_with_warmup`` (``min_lr`` = 0) and
    ``get_cosine_with_min_lr_schedule_with_warmup`` (``min_lr_rate`` = min_lr / max_lr) up to
    ``total_steps``; after it they turn back up along the cosine, this stays at ``min_lr``.
    """
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step={step!r} must be an int >= 0")
    _check_schedule(max_lr, warmup_steps, total_steps, min_lr)
    if step < warmup_steps:
        return max_lr * (step / warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return min_lr + (max_lr - min_lr) * cosine


def _check_schedule(max_lr, warmup_steps, total_steps, min_lr) -> None:
    if not isinstance(warmup_steps, int) or not isinstance(total_steps, int) or not 0 <= warmup_steps <= total_steps \
            or total_steps < 1:
        raise ValueError(f"warmup_steps={warmup_steps!r} and total_steps={total_steps!r}: need integers with "
                         f"0 <= warmup_steps <= total_steps and total_steps >= 1")
    if not max_lr >= 0 or not 0 <= min_lr <= max_lr:
        raise ValueError(f"max_lr={max_lr!r} and min_lr={min_lr!r}: need 0 <= min_lr <= max_lr")


class WarmupCosineSchedule:
    """Sets each parameter group's lr to ``warmup_cosine_lr`` of the step; call ``step()`` after
    each ``optimizer.step()``.

    Each group's peak is its lr when the schedule is made (groups may differ), and its floor
    is ``min_lr_ratio`` times that peak. Making the schedule sets the lr of step 0 at once,
    as ``torch.optim.lr_scheduler.LambdaLR`` does. ``state_dict()`` is plain JSON (numbers
    and lists); ``load_state_dict`` restores it into a schedule built with the same settings.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                 min_lr_ratio: float = 0.0):
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio={min_lr_ratio!r} must be in [0, 1] (the floor as a fraction of the peak)")
        self.optimizer = optimizer
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]  # the peaks
        for lr in self.base_lrs:
            _check_schedule(lr, warmup_steps, total_steps, lr * min_lr_ratio)
        self.last_step = 0
        self._apply()

    def lr_at(self, step: int) -> list[float]:
        """The learning rate of each parameter group at ``step``."""
        return [warmup_cosine_lr(step, peak, self.warmup_steps, self.total_steps, peak * self.min_lr_ratio)
                for peak in self.base_lrs]

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.lr_at(self.last_step)):
            group["lr"] = lr

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "base_lrs": list(self.base_lrs), "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "min_lr_ratio": self.min_lr_ratio}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        differ = [f"{k}={state.get(k)!r} (this schedule: {mine[k]!r})"
                  for k in ("warmup_steps", "total_steps", "min_lr_ratio") if state.get(k) != mine[k]]
        if differ:
            raise ValueError(f"the saved schedule has {', '.join(differ)}: build the schedule with the same "
                             f"settings to resume it")
        if len(state["base_lrs"]) != len(self.base_lrs):
            raise ValueError(f"the saved schedule has {len(state['base_lrs'])} parameter groups, the optimizer "
                             f"{len(self.base_lrs)}")
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self.last_step = int(state["last_step"])
        self._apply()


# --------------------------------------------------------------------------------------
# 4. Clipping by the global norm

def _as_list(parameters) -> list[torch.Tensor]:
    return [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)


def global_grad_norm(parameters) -> torch.Tensor:
    """The L2 norm of all gradients together, as if flattened into one long vector.

    sqrt(sum over every entry g of every parameter's gradient of g²) = the norm of the
    vector of per-parameter norms. ``parameters``: a tensor or an iterable of them;
    those without ``.grad`` are skipped. Returns a float32 0-dim tensor on the first
    gradient's device (0 if there is no gradient).
    """
    grads = [p.grad for p in _as_list(parameters) if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    device = grads[0].device
    squares = [g.detach().float().square().sum().to(device) for g in grads]  # ||g||² of each parameter
    return torch.stack(squares).sum().sqrt()  # float32 (half-precision gradients are summed in float32)


def clip_grad_norm_(parameters, max_norm: float, error_if_nonfinite: bool = False) -> torch.Tensor:
    """Scale all gradients by one factor so that their global L2 norm is at most ``max_norm``.

    factor = min(1, max_norm / (norm + 1e-6)): gradients under the limit are untouched; over
    it, every gradient shrinks by the same factor, so the *direction* of the update stays
    the same and only its length is capped (one bad batch cannot throw the model off).
    Returns the norm *before* clipping (a float 0-dim tensor), as ``torch.nn.utils.clip_grad_norm_``.

    A NaN or infinite norm: with ``error_if_nonfinite`` a ``FloatingPointError``; without it,
    PyTorch's behaviour: the factor is 0 (or NaN), finite gradients become 0 and infinite
    ones NaN, and the returned norm says so.
    """
    if not isinstance(max_norm, (int, float)) or not max_norm > 0 or math.isinf(max_norm):
        raise ValueError(f"max_norm={max_norm!r} must be a finite number > 0 (1.0 is usual); "
                         f"to train without clipping, do not call clip_grad_norm_")
    params = _as_list(parameters)
    total = global_grad_norm(params)
    if error_if_nonfinite and not torch.isfinite(total):
        raise FloatingPointError(f"the gradient norm is {total.item()}: some gradient is NaN or infinite. "
                                 f"Lower the learning rate, check the inputs of this batch, or train in float32")
    factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in params:
        if p.grad is not None:
            p.grad.mul_(factor.to(p.grad.device))
    return total


# --------------------------------------------------------------------------------------
# 5. Losses of batches, and gradient accumulation

class LossSum(NamedTuple):
    """A loss *summed* over the items of a batch, and how many items it counts.

    A loss function returns this (instead of a mean) when its batches count different
    numbers of items (tokens with ``ignore_index``, sequences of different lengths): the
    mean over several batches is then sum(totals) / sum(counts), not the mean of the means.
    """

    total: torch.Tensor  # scalar float tensor, the sum of the items' losses
    count: int | torch.Tensor  # number of items counted in it


def to_device(batch: Any, device: torch.device | str) -> Any:
    """``batch`` with every tensor moved to ``device``: a tensor, or dicts/lists/tuples of them."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _model_inputs(batch: dict) -> dict:
    """The batch without its ``labels``: the keyword arguments of the model's forward."""
    if not isinstance(batch, dict) or "input_ids" not in batch:
        raise TypeError(f"expected a batch dict with 'input_ids' (and 'labels'), got "
                        f"{sorted(batch) if isinstance(batch, dict) else type(batch).__name__}; "
                        f"for other batches write a loss_fn(model, batch) of your own")
    return {k: v for k, v in batch.items() if k != "labels"}


def classification_loss(model: nn.Module, batch: dict) -> LossSum:
    """Cross-entropy of a sequence or token classifier on ``batch``, summed, and its count.

    ``batch``: ``input_ids`` (B, T) int64, optionally ``attention_mask`` (B, T) and other
    inputs of ``model`` (all passed by name), and ``labels``: (B,) int64 for sequence
    classification (``model`` returns logits (B, C)), or (B, T) int64 for token
    classification (logits (B, T, C)), -100 where a position does not count.
    """
    if "labels" not in batch:
        raise KeyError(f"the batch has no 'labels' (it has {sorted(batch)})")
    logits = model(**_model_inputs(batch))
    labels = batch["labels"]
    return LossSum(cross_entropy(logits, labels, reduction="sum"), (labels != -100).sum())


def causal_lm_loss(model: nn.Module, batch: dict) -> LossSum:
    """Next-token cross-entropy of a language model on ``batch``, summed, and its count.

    ``batch``: ``input_ids`` (B, T) int64, optionally ``attention_mask`` (B, T) (0 = padding)
    and ``labels`` (B, T) int64 (default: the input ids, -100 at padding; set -100 on a
    prompt to train on the answer only). The logits at position t (B, T, V) predict the
    label at t + 1, as in ``transformers``: the labels are *not* shifted by the caller.
    """
    logits = model(**_model_inputs(batch))  # (B, T, V)
    labels = batch.get("labels")
    if labels is None:
        labels = batch["input_ids"]
        if batch.get("attention_mask") is not None:
            labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
    targets = labels[:, 1:]  # (B, T - 1): the token after each position
    return LossSum(cross_entropy(logits[:, :-1], targets, reduction="sum"), (targets != -100).sum())


def _loss_and_count(out, where: str) -> tuple[torch.Tensor, int | None]:
    """``loss_fn``'s result -> (the loss tensor, its count or None for a mean)."""
    if isinstance(out, tuple) and len(out) == 2:
        total, count = out
        if not (isinstance(total, torch.Tensor) and total.dim() == 0) or not (
                isinstance(count, int) or isinstance(count, torch.Tensor) and count.dim() == 0):
            raise TypeError(f"{where}: loss_fn returned a pair that is not a LossSum(total: scalar tensor, "
                            f"count: int): {type(total).__name__}, {type(count).__name__}")
        return total, int(count)
    if isinstance(out, torch.Tensor) and out.dim() == 0:
        return out, None
    raise TypeError(f"{where}: loss_fn must return a scalar tensor (a mean loss) or a LossSum(total, count), "
                    f"got {type(out).__name__}{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}")


def accumulate_gradients(model: nn.Module, micro_batches: Iterable, loss_fn: Callable) -> float:
    """Forward and backward over several micro-batches; leaves in ``.grad`` the gradient of their total loss.

    Gradients *add up* in ``.grad`` over ``backward()`` calls. So each micro-batch's loss is
    backpropagated as it is, and at the end every gradient is divided once by what the
    loss of one big batch would have been divided by:

    - ``loss_fn(model, batch)`` returns a scalar mean: divide by the number of micro-batches
      (exact when they hold equally many items);
    - it returns a ``LossSum(total, count)``: divide by the sum of the counts (exact always;
      averaging the micro-batches' means instead would give each micro-batch the same
      weight, whatever number of tokens it holds).

    The gradients start from zero (set to None first). Micro-batches are moved to the
    model's device. Returns the step's loss (the mean over micro-batches or over counted
    items) as a float. A NaN or infinite loss raises ``FloatingPointError``.
    """
    device = next(model.parameters()).device
    model.zero_grad(set_to_none=True)
    summed, counts, n, mode = 0.0, 0, 0, None
    for batch in micro_batches:
        loss, count = _loss_and_count(loss_fn(model, to_device(batch, device)), f"micro-batch {n}")
        this_mode = "mean" if count is None else "sum"
        if mode is not None and this_mode != mode:
            raise TypeError("loss_fn returned a mean for some micro-batches and a LossSum for others: pick one")
        mode = this_mode
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss of micro-batch {n} is {value}: lower the learning rate, clip the "
                                     f"gradients (max_grad_norm), check this batch's inputs and labels")
        loss.backward()  # adds this micro-batch's gradient to .grad
        summed += value
        counts += count or 0
        n += 1
    if n == 0:
        raise ValueError("no micro-batch: accumulate_gradients needs at least one")
    divide_by = n if mode == "mean" else counts
    if divide_by == 0:
        raise ValueError("no item of these micro-batches counts (every label is ignore_index=-100): "
                         "there is no loss to learn from; check the labels")
    for p in model.parameters():
        if p.grad is not None:
            p.grad.div_(divide_by)
    return summed / divide_by


def evaluate(model: nn.Module, batches: Iterable, loss_fn: Callable) -> float:
    """The mean loss of ``model`` over ``batches``: eval mode (no dropout), no gradients.

    ``loss_fn`` as for ``accumulate_gradients``: with ``LossSum`` the exact mean over all
    counted items, with a mean loss the mean of the batches' means. The model's training
    mode is restored afterwards.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    summed, counts, n, mode = 0.0, 0, 0, None
    try:
        with torch.no_grad():
            for batch in batches:
                loss, count = _loss_and_count(loss_fn(model, to_device(batch, device)), f"eval batch {n}")
                this_mode = "mean" if count is None else "sum"
                if mode is not None and this_mode != mode:
                    raise TypeError("loss_fn returned a mean for some batches and a LossSum for others: pick one")
                mode = this_mode
                summed += loss.item()
                counts += count or 0
                n += 1
    finally:
        model.train(was_training)
    divide_by = n if mode == "mean" else counts
    if divide_by == 0:
        raise ValueError("evaluate got no batch (or no counted label): the evaluation data is empty")
    return summed / divide_by


# --------------------------------------------------------------------------------------
# 6. Reproducibility: seeds and random-number-generator states

def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and PyTorch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The state of every global random generator (``random``, NumPy, PyTorch CPU and CUDA).

    Restoring it with ``set_rng_state`` replays the same random numbers: dropout masks,
    data shuffles, anything drawn from those generators.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned (also after a round trip through a checkpoint)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------
# 7. Checkpoints: tensors in safetensors, everything else as JSON in the same file
#
# One file, so one atomic rename makes the whole checkpoint appear at once: model,
# optimizer, schedule and RNG tensors are safetensors entries; the rest (step, history,
# settings, hyperparameters) is JSON kept in the file's metadata. Nothing is pickled, so
# loading a checkpoint never runs code.

CHECKPOINT_NAME = "checkpoint.safetensors"  # everything needed to resume
BEST_NAME = "best.safetensors"  # the model's weights at the best evaluation
HISTORY_NAME = "history.json"  # a readable copy of the history (for plots; not used to resume)
_METADATA_KEY = "course_lib.training"


def _encode(value: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """``value`` as JSON, its tensors moved to ``tensors`` (replaced by ``{"__tensor__": name}``).

    Tuples and dicts with integer keys (an optimizer's state) are marked so that
    ``_decode`` gives them back as they were.
    """
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: _encode(v, tensors, f"{key}.{k}") for k, v in value.items()}
        if all(isinstance(k, int) for k in value):
            return {"__int_keys__": [[k, _encode(v, tensors, f"{key}.{k}")] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} at {key!r} in a checkpoint: only tensors, numbers, "
                    f"strings, None, and lists, tuples and dicts of them")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return tensors[value["__tensor__"]]
        if set(value) == {"__int_keys__"}:
            return {int(k): _decode(v, tensors) for k, v in value["__int_keys__"]}
        if set(value) == {"__tuple__"}:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
        return {k: _decode(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


def _model_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's state dict ready for safetensors: each tied tensor once (+ {alias: kept key})
    and a private copy of any tensor that shares memory with another (safetensors refuses those)."""
    state = model.state_dict()
    aliases = {}
    for group in tied_groups(state):
        for alias in group[1:]:
            aliases[alias] = group[0]
            del state[alias]
    owners: dict[int, int] = {}
    for t in state.values():
        if t.numel():
            ptr = t.untyped_storage().data_ptr()
            owners[ptr] = owners.get(ptr, 0) + 1
    tensors = {}
    for k, t in state.items():
        t = t.detach().to("cpu")
        shared = t.numel() and owners.get(state[k].untyped_storage().data_ptr(), 0) > 1
        tensors[k] = t.clone() if shared else t.contiguous()
    return tensors, aliases


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """All tensors of a checkpoint file and its JSON metadata, with a clear error if unreadable."""
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors' own error types vary between versions
        raise ValueError(f"{path} is not a readable safetensors file ({e}); it may be truncated or not a "
                         f"checkpoint written by course_lib.training") from e
    if _METADATA_KEY not in meta:
        raise ValueError(f"{path} has no {_METADATA_KEY!r} metadata: it was not written by course_lib.training")
    return tensors, json.loads(meta[_METADATA_KEY])


def _load_model_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], aliases: dict[str, str],
                        path: Path) -> None:
    state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    for alias, kept in aliases.items():
        state[alias] = state[kept]
    mine = model.state_dict()
    missing, unexpected = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    wrong = [f"{k}: file {tuple(state[k].shape)}, model {tuple(mine[k].shape)}"
             for k in sorted(set(mine) & set(state)) if state[k].shape != mine[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{path} does not fit this {type(model).__name__}: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, wrong shapes {wrong[:5]}. Build the same model as the run that "
                         f"wrote it (same config, same adapters) before loading")
    model.load_state_dict(state)


def save_weights(path: str | os.PathLike, model: nn.Module, info: dict | None = None) -> Path:
    """The model's tensors (state dict, tied copies once) in one safetensors file, written atomically;
    ``info`` (JSON: e.g. the step and the metrics) goes into its metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors, aliases = _model_tensors(model)
    meta = {"format": "pt", _METADATA_KEY: json.dumps({"tied": aliases, "info": info or {}})}
    write_atomic(path, lambda tmp: save_file({f"model.{k}": v for k, v in tensors.items()}, str(tmp), metadata=meta))
    return path


def load_weights(path: str | os.PathLike, model: nn.Module) -> dict:
    """Load what ``save_weights`` (or ``save_training_checkpoint``) wrote into ``model``; returns its info."""
    path = Path(path)
    tensors, meta = _read(path)
    _load_model_tensors(model, tensors, meta["tied"], path)
    return meta.get("info", {})


def save_training_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                             schedule=None, trainer_state: dict | None = None) -> Path:
    """Everything needed to continue training, in one safetensors file written atomically.

    Tensors: ``model.*`` (the state dict, tied copies once), ``optimizer.*`` (its state,
    e.g. AdamW's running means), ``rng.*`` (PyTorch's generator states) and any tensor in
    ``trainer_state``. JSON metadata: the optimizer's hyperparameters, the schedule's
    ``state_dict()``, Python's and NumPy's generator states and ``trainer_state`` (the
    step, the history...). The file is written to a temporary name in the same folder and
    renamed (``checkpoint.write_atomic``): an interrupted save leaves the previous
    checkpoint whole and no temporary file behind.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors, aliases = _model_tensors(model)
    tensors = {f"model.{k}": v for k, v in tensors.items()}
    record = {
        "format": 1,
        "tied": aliases,
        "optimizer": _encode(optimizer.state_dict(), tensors, "optimizer"),
        "schedule": _encode(schedule.state_dict(), tensors, "schedule") if schedule is not None else None,
        "rng": _encode(rng_state(), tensors, "rng"),
        "trainer": _encode(trainer_state or {}, tensors, "trainer"),
    }
    meta = {"format": "pt", _METADATA_KEY: json.dumps(record)}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return path


def load_training_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                             schedule=None, restore_rng: bool = True) -> dict:
    """Restore ``model``, ``optimizer``, ``schedule`` (and the random generators) from a checkpoint.

    Build the same model, optimizer and schedule as the run that saved it, then call this.
    Returns the saved ``trainer_state`` with the saved generator states under ``"rng"``.
    """
    path = Path(path)
    tensors, record = _read(path)
    if "optimizer" not in record:
        raise ValueError(f"{path} holds weights only (save_weights), not a training checkpoint")
    _load_model_tensors(model, tensors, record["tied"], path)
    try:
        optimizer.load_state_dict(_decode(record["optimizer"], tensors))
    except ValueError as e:
        raise ValueError(f"{path}: the optimizer state does not fit this optimizer ({e}); build it with the same "
                         f"parameter groups as the run that saved the checkpoint") from e
    if (record["schedule"] is None) != (schedule is None):
        raise ValueError(f"{path} was saved {'without' if record['schedule'] is None else 'with'} a learning-rate "
                         f"schedule; pass the same kind of schedule to resume it")
    if schedule is not None:
        schedule.load_state_dict(_decode(record["schedule"], tensors))
    rng = _decode(record["rng"], tensors)
    if restore_rng:
        set_rng_state(rng)
    return {**_decode(record["trainer"], tensors), "rng": rng}


# --------------------------------------------------------------------------------------
# 8. The training loop

class _BatchStream:
    """Batches from ``data`` one at a time, epoch after epoch (``iter(data)`` again at each end).

    It remembers the epoch, the number of batches taken in it, and the random generators'
    state when the epoch began: a shuffling loader draws its order from them when the
    epoch starts. To resume in the middle of an epoch, ``replay`` restores that state, starts
    the epoch again and skips the batches already used: the order is the same as it was.
    """

    def __init__(self, data: Iterable):
        self.data = data
        self.epoch, self.position, self.epoch_rng = 0, 0, None
        self._it = None

    def next(self):
        while True:
            if self._it is None:
                self.epoch_rng = rng_state()
                self._it = iter(self.data)
                self.position = 0
            try:
                batch = next(self._it)
            except StopIteration:
                if self.position == 0:
                    raise ValueError("the training data gave no batch: it is empty, or a one-shot iterator already "
                                     "used up (pass a list or a DataLoader, which can be iterated again each "
                                     "epoch)") from None
                self.epoch += 1
                self._it = None
                continue
            self.position += 1
            return batch

    def replay(self, epoch: int, position: int, epoch_rng: dict) -> None:
        if isinstance(self.data, Iterator):  # iter() of an iterator is itself: it cannot start over
            raise ValueError("cannot resume with a one-shot iterator as training data: pass something that "
                             "starts over when iterated again (a list, a DataLoader, an object with __iter__)")
        set_rng_state(epoch_rng)
        self.epoch, self.epoch_rng = epoch, epoch_rng
        self._it = iter(self.data)
        for i in range(position):
            try:
                next(self._it)
            except StopIteration:
                raise ValueError(f"the training data has only {i} batches in epoch {epoch}, the checkpoint was "
                                 f"saved after {position}: resume with the same data") from None
        self.position = position


def _new_history(best_metric: str) -> dict:
    return {"step": [], "epoch": [], "loss": [], "lr": [], "grad_norm": [], "time": [],
            "eval_step": [], "eval": {}, "best_metric": best_metric, "best_step": None, "best_value": None,
            "wall_seconds": 0.0, "resumed_from": None}


def _run_eval(model, eval_data, eval_fn, loss_fn, best_metric: str) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            metrics = eval_fn(model) if eval_fn is not None else {"loss": evaluate(model, eval_data, loss_fn)}
    finally:
        model.train(was_training)
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
        raise TypeError(f"eval_fn must return a dict of numbers, e.g. {{'loss': 0.31, 'accuracy': 0.9}}, "
                        f"got {metrics!r}")
    if best_metric not in metrics:
        raise KeyError(f"best_metric={best_metric!r} is not among the evaluation's metrics {sorted(metrics)}")
    return {k: float(v) for k, v in metrics.items()}


def _is_better(value: float, best: float | None, higher_is_better: bool) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value > best if higher_is_better else value < best)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, train_data: Iterable, loss_fn: Callable, *,
          schedule=None, max_steps: int | None = None, epochs: int | None = None, accumulation_steps: int = 1,
          max_grad_norm: float | None = None, eval_data: Iterable | None = None,
          eval_fn: Callable[[nn.Module], dict] | None = None, eval_every: int | None = None,
          best_metric: str = "loss", higher_is_better: bool = False, restore_best: bool = True,
          checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int | None = None,
          resume: bool = False, seed: int | None = None, progress: bool = True, desc: str = "training") -> dict:
    """Train ``model`` in place; returns the history (losses, learning rates, evaluations, times).

    One optimizer step = ``accumulation_steps`` micro-batches from ``train_data`` (forward,
    backward, gradients added up: ``accumulate_gradients``), then clipping to
    ``max_grad_norm`` (if given), ``optimizer.step()`` and ``schedule.step()`` (if given).

    - ``train_data``: batches, iterated again at each epoch (a list, a ``DataLoader``, an
      object whose ``__iter__`` starts over; an endless iterator works but cannot be resumed).
      Each batch goes to the model's device, then to ``loss_fn(model, batch)``, which returns a
      scalar mean loss or a ``LossSum`` (see ``accumulate_gradients``).
    - Length: ``max_steps`` optimizer steps, or ``epochs`` passes over ``train_data``
      (= epochs · len(train_data) // accumulation_steps steps). Build the schedule with the
      same number of steps.
    - Evaluation, every ``eval_every`` steps (default: 10 times per run) and at the end:
      ``eval_fn(model)`` -> dict of metrics, or the mean loss over ``eval_data``
      ({"loss": ...}); in eval mode, without gradients. The weights with the best
      ``best_metric`` (lowest, or highest with ``higher_is_better``) are kept, and loaded
      back at the end when ``restore_best``.
    - ``checkpoint_dir``: every ``checkpoint_every`` steps (default: at each evaluation) and
      at the end, ``checkpoint.safetensors`` there holds model + optimizer + schedule + step
      + data position + random-generator states + history; ``best.safetensors`` the best
      weights; ``history.json`` a readable copy of the history. Every file is written
      atomically. ``resume=True`` continues from that checkpoint: build the same model,
      optimizer, schedule and data first; the rest of the run is then identical, bit for
      bit on the CPU, to a run that was never interrupted. Without ``resume``, a folder that
      already holds a checkpoint is refused (nothing is overwritten by accident).
    - ``seed``: seeds ``random``, NumPy and PyTorch at the start (seed before building the
      model too, for its initial weights). A NaN or infinite loss or gradient norm stops
      the run with ``FloatingPointError``.

    The model is left in eval mode. History: per step ``step``, ``epoch``, ``loss`` (the
    step's mean over its micro-batches), ``lr`` (of the first parameter group, used for the
    step), ``grad_norm`` (before clipping), ``time`` (seconds since the start); per
    evaluation ``eval_step`` and ``eval[metric]``; ``best_step``, ``best_value``,
    ``wall_seconds``, ``resumed_from`` (the step a resumed run started at).
    """
    from tqdm.auto import tqdm

    # ---- settings, checked before anything runs
    if (max_steps is None) == (epochs is None):
        raise ValueError("give exactly one of max_steps (optimizer steps) or epochs (passes over train_data)")
    if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
        raise ValueError(f"accumulation_steps={accumulation_steps!r} must be an int >= 1")
    if epochs is not None:
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs={epochs!r} must be an int >= 1")
        try:
            n_batches = len(train_data)
        except TypeError:
            raise TypeError("epochs needs train_data with a length (a list, a DataLoader); for an endless "
                            "iterator give max_steps") from None
        max_steps = epochs * n_batches // accumulation_steps
        if max_steps < 1:
            raise ValueError(f"{epochs} epochs of {n_batches} batches make no step of {accumulation_steps} "
                             f"micro-batches: lower accumulation_steps")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps={max_steps!r} must be an int >= 1")
    if max_grad_norm is not None and not (isinstance(max_grad_norm, (int, float)) and max_grad_norm > 0):
        raise ValueError(f"max_grad_norm={max_grad_norm!r} must be > 0 (or None for no clipping)")
    if eval_data is not None and eval_fn is not None:
        raise ValueError("give eval_data (the mean loss is measured on it) or eval_fn (your metrics), not both")
    evaluating = eval_data is not None or eval_fn is not None
    if eval_every is None:
        eval_every = max(1, max_steps // 10)
    if checkpoint_every is None:
        checkpoint_every = eval_every
    if eval_every < 1 or checkpoint_every < 1:
        raise ValueError(f"eval_every={eval_every} and checkpoint_every={checkpoint_every} must be >= 1")
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume and folder is None:
        raise ValueError("resume=True needs the checkpoint_dir of the run to continue")
    settings = {"max_steps": max_steps, "accumulation_steps": accumulation_steps, "max_grad_norm": max_grad_norm,
                "eval_every": eval_every, "checkpoint_every": checkpoint_every, "best_metric": best_metric,
                "higher_is_better": higher_is_better, "seed": seed}
    trainable = [p for p in model.parameters() if p.requires_grad]

    # ---- a fresh start, or where the checkpoint left off
    stream = _BatchStream(train_data)
    history = _new_history(best_metric)
    step, best_state, elapsed = 0, None, 0.0
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        saved = folder / CHECKPOINT_NAME
        if resume:
            if not saved.exists():
                raise FileNotFoundError(f"resume=True, but {folder} holds no {CHECKPOINT_NAME}: check the folder, "
                                        f"or start the run with resume=False")
            state = load_training_checkpoint(saved, model, optimizer, schedule, restore_rng=False)
            differ = [f"{k}={v!r} (checkpoint: {state['settings'].get(k)!r})" for k, v in settings.items()
                      if state["settings"].get(k) != v]
            if differ:
                raise ValueError(f"{saved} was written by a run with other settings: {', '.join(differ)}. Resume "
                                 f"with the same settings, or start a new run in another folder")
            step, history, elapsed = state["step"], state["history"], state["history"]["wall_seconds"]
            history["resumed_from"] = step
            stream.replay(state["epoch"], state["position"], state["epoch_rng"])
            set_rng_state(state["rng"])  # the generators as they were when the checkpoint was written
        elif saved.exists():
            raise FileExistsError(f"{saved} exists: pass resume=True to continue that run, or another "
                                  f"checkpoint_dir (or delete it) to start a new one")
    if not resume and seed is not None:
        seed_everything(seed)

    def save_checkpoint():
        history["wall_seconds"] = round(elapsed + time.perf_counter() - start, 3)
        state = {"step": step, "epoch": stream.epoch, "position": stream.position, "epoch_rng": stream.epoch_rng,
                 "settings": settings, "history": history}
        save_training_checkpoint(folder / CHECKPOINT_NAME, model, optimizer, schedule, state)
        write_atomic(folder / HISTORY_NAME, lambda p: p.write_text(json.dumps(history, indent=1) + "\n",
                                                                   encoding="utf-8"))

    # ---- the loop
    model.train()
    start = time.perf_counter()
    bar = tqdm(total=max_steps, initial=step, desc=desc, disable=not progress)
    shown = {}  # the bar's postfix: training loss, lr, last evaluation
    while step < max_steps:
        lr = optimizer.param_groups[0]["lr"]  # the lr this step uses (the schedule set it)
        micro_batches = (stream.next() for _ in range(accumulation_steps))
        loss = accumulate_gradients(model, micro_batches, loss_fn)
        if max_grad_norm is not None:
            grad_norm = clip_grad_norm_(trainable, max_grad_norm, error_if_nonfinite=True).item()
        else:
            grad_norm = global_grad_norm(trainable).item()
            if not math.isfinite(grad_norm):
                raise FloatingPointError(f"step {step + 1}: the gradient norm is {grad_norm}; lower the learning "
                                         f"rate or set max_grad_norm")
        optimizer.step()
        if schedule is not None:
            schedule.step()
        step += 1
        for key, value in (("step", step), ("epoch", stream.epoch), ("loss", loss), ("lr", lr),
                           ("grad_norm", grad_norm), ("time", round(elapsed + time.perf_counter() - start, 3))):
            history[key].append(value)

        if evaluating and (step % eval_every == 0 or step == max_steps):
            metrics = _run_eval(model, eval_data, eval_fn, loss_fn, best_metric)
            history["eval_step"].append(step)
            for name, value in metrics.items():
                history["eval"].setdefault(name, []).append(value)
            if _is_better(metrics[best_metric], history["best_value"], higher_is_better):
                history["best_step"], history["best_value"] = step, metrics[best_metric]
                if folder is not None:
                    save_weights(folder / BEST_NAME, model, {"step": step, "metrics": metrics})
                else:  # kept in memory, on the CPU
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            shown[f"eval {best_metric}"] = f"{metrics[best_metric]:.4f}"
        shown.update(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        bar.set_postfix(shown, refresh=False)
        if folder is not None and (step % checkpoint_every == 0 or step == max_steps):
            save_checkpoint()
        bar.update(1)
    bar.close()
    history["wall_seconds"] = round(elapsed + time.perf_counter() - start, 3)

    if restore_best and history["best_step"] is not None:
        if folder is not None:
            load_weights(folder / BEST_NAME, model)
        elif best_state is not None:
            model.load_state_dict(best_state)
    model.eval()
    return history
