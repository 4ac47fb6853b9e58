"""The ex08 checks have teeth: the solutions pass, typical wrong answers fail.

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
from helpers import assert_wrong_answer_fails, chapter_checks, have_solutions, load_exercise_module

SEEDS = range(3)
FILE = "ex08_fine_tuning.py"
HAS_SOLUTIONS = have_solutions(FILE)

checks = chapter_checks


def key():
    """The answer key's modules."""
    from course_lib import lora, surgery, training

    return training, lora, surgery


@pytest.mark.skipif(not HAS_SOLUTIONS, reason="a learner hand-out has no solutions/")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(checks("ex08")))
def test_solution_passes(name, seed):
    checks("ex08")[name].grade(getattr(load_exercise_module("solutions", FILE), name), np.random.default_rng(seed))


# ----------------------------------------------------------------------------- cross-entropy


def _ce(shift=True, add_back=True, divide="counted", sign=-1, per="pick", ignore="arg", nan_guard=False,
        as_float=False, dtype=None, via_probs=False):
    def cross_entropy(logits, targets, ignore_index=-100):
        x = logits if dtype is None else logits.to(dtype)
        m = x.amax(-1, keepdim=True) if shift else torch.zeros_like(x[..., :1])
        if via_probs:
            e = x.exp()
            logp = (e / e.sum(-1, keepdim=True)).log()
        else:  # x - logsumexp(x) = x - m - log sum exp(x - m); forgetting to add m back subtracts it twice
            logp = x - m - (x - m).exp().sum(-1, keepdim=True).log() - (0 if add_back else m)
        skip = ignore_index if ignore == "arg" else -100
        counted = targets != skip
        safe = torch.where(counted, targets, torch.zeros_like(targets))
        if per == "pick":
            value = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        elif per == "classes":
            value = logp.mean(-1)
        else:  # the probability
            value = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1).exp()
        total = sign * (value * counted).sum()
        if divide == "counted":
            n = counted.sum().clamp(min=1) if nan_guard else counted.sum()
            out = total / n
        elif divide == "all":
            out = total / targets.numel()
        else:
            out = total
        return out.item() if as_float else out
    return cross_entropy


EX08_WRONG_CE = {
    "cross_entropy": {
        "mean over every position, ignored ones as 0": _ce(divide="all"),
        "sum, not mean": _ce(divide="sum"),
        "sign flipped": _ce(sign=1),
        "no max shift (overflows on huge logits)": _ce(shift=False),
        "softmax, then log": _ce(via_probs=True),
        "max subtracted twice (not added back)": _ce(add_back=False),
        "mean of -log p over all classes": _ce(per="classes"),
        "probability, not log-probability": _ce(per="prob"),
        "ignores -100, not the ignore_index argument": _ce(ignore="-100"),
        "guards the count: 0 instead of NaN when nothing counts": _ce(nan_guard=True),
        "returns a Python float": _ce(as_float=True),
        "computes in float32 whatever the input": _ce(dtype=torch.float32),
        "F.cross_entropy (a shortcut)": lambda logits, targets, ignore_index=-100: F.cross_entropy(
            logits.flatten(0, -2), targets.flatten(), ignore_index=ignore_index),
        "torch.log_softmax (a shortcut)": lambda logits, targets, ignore_index=-100: F.nll_loss(
            torch.log_softmax(logits, -1).flatten(0, -2), targets.flatten(), ignore_index=ignore_index),
        "answer key": lambda logits, targets, ignore_index=-100: key()[0].cross_entropy(logits, targets, ignore_index),
    },
}


# ----------------------------------------------------------------------------- AdamW


def _adamw(correct=True, decay="first", eps_inside=False, t_shift=0, return_hats=False, v_from="square",
           swap_betas=False, in_place=False):
    def adamw_step(param, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay):
        b1, b2 = (betas[1], betas[0]) if swap_betas else betas
        t = step + t_shift
        g = grad + weight_decay * param if decay == "l2" else grad
        if in_place:
            param.mul_(1 - lr * weight_decay)
            start = param
        else:
            start = {"first": param * (1 - lr * weight_decay), "no lr": param * (1 - weight_decay)}.get(decay, param)
        m = b1 * exp_avg + (1 - b1) * g
        v = b2 * exp_avg_sq + (1 - b2) * (g * g if v_from == "square" else g)
        m_hat, v_hat = (m / (1 - b1 ** t), v / (1 - b2 ** t)) if correct else (m, v)
        denom = (v_hat + eps).sqrt() if eps_inside else v_hat.sqrt() + eps
        new = start - lr * m_hat / denom
        if decay == "after":
            new = new * (1 - lr * weight_decay)
        return (new, m_hat, v_hat) if return_hats else (new, m, v)
    return adamw_step


def _adamw_with_torch(param, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay):
    p = torch.nn.Parameter(param.clone())
    p.grad = grad.clone()
    optimizer = torch.optim.AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    optimizer.state[p] = {"step": torch.tensor(float(step - 1)), "exp_avg": exp_avg.clone(),
                          "exp_avg_sq": exp_avg_sq.clone()}
    optimizer.step()
    return p.detach(), optimizer.state[p]["exp_avg"], optimizer.state[p]["exp_avg_sq"]


def _adamw_answer_key(param, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay):
    p = torch.nn.Parameter(param.clone())
    p.grad = grad.clone()
    optimizer = key()[0].AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    optimizer.state[p] = {"step": step - 1, "exp_avg": exp_avg.clone(), "exp_avg_sq": exp_avg_sq.clone()}
    optimizer.step()
    return p.detach(), optimizer.state[p]["exp_avg"], optimizer.state[p]["exp_avg_sq"]


EX08_WRONG_ADAMW = {
    "adamw_step": {
        "no bias correction": _adamw(correct=False),
        "L2 regularisation (decay in the gradient)": _adamw(decay="l2"),
        "decay after the update": _adamw(decay="after"),
        "decay without lr": _adamw(decay="no lr"),
        "no weight decay": _adamw(decay="none"),
        "eps inside the square root": _adamw(eps_inside=True),
        "bias correction with step + 1": _adamw(t_shift=1),
        "bias correction with step - 1": _adamw(t_shift=-1),
        "returns m_hat and v_hat": _adamw(return_hats=True),
        "v from the gradient, not its square": _adamw(v_from="plain"),
        "betas swapped": _adamw(swap_betas=True),
        "changes param in place": _adamw(in_place=True),
        "torch.optim.AdamW (a shortcut)": _adamw_with_torch,
        "answer key": _adamw_answer_key,
    },
}


# ----------------------------------------------------------------------------- the schedule


def _schedule(early=False, floor="min_lr", span="after", cap=True, period=1.0, linear=False, guard=True,
              as_tensor=False):
    def warmup_cosine_lr(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
        if step < warmup_steps:
            return max_lr * (step + 1 if early else step) / warmup_steps
        length = (total_steps - warmup_steps) if span == "after" else total_steps
        progress = (step - warmup_steps) / (max(1, length) if guard else length)
        if cap:
            progress = min(1.0, progress)
        fall = 1 - progress if linear else 0.5 * (1 + math.cos(math.pi * period * progress))
        value = {"min_lr": min_lr + (max_lr - min_lr) * fall, "zero": max_lr * fall,
                 "on top": max_lr * fall + min_lr}[floor]
        return torch.tensor(value) if as_tensor else value
    return warmup_cosine_lr


EX08_WRONG_SCHEDULE = {
    "warmup_cosine_lr": {
        "warmup one step ahead": _schedule(early=True),
        "cosine down to 0, min_lr ignored": _schedule(floor="zero"),
        "min_lr added on top": _schedule(floor="on top"),
        "progress over total_steps": _schedule(span="total"),
        "no cap: turns back up after total_steps": _schedule(cap=False),
        "a whole cosine period": _schedule(period=2.0),
        "linear decay": _schedule(linear=True),
        "divides by 0 when warmup == total (raises)": _schedule(guard=False),
        "answer key": lambda *a: key()[0].warmup_cosine_lr(*a),
    },
}


# ----------------------------------------------------------------------------- clipping


def _clip(norm="global", factor="capped", per_tensor=False, by_value=False, returned="before", in_place=False):
    def clip_by_global_norm(grads, max_norm):
        norms = [g.double().pow(2).sum().sqrt() for g in grads]
        if norm == "global":
            total = float(torch.stack(norms).pow(2).sum().sqrt())
        elif norm == "sum of norms":
            total = float(sum(norms))
        else:  # L1
            total = float(sum(g.double().abs().sum() for g in grads))
        if by_value:
            out = [g.clamp(-max_norm, max_norm) for g in grads]
        elif per_tensor:
            out = [g * min(1.0, max_norm / (float(n) + 1e-6)) for g, n in zip(grads, norms)]
        else:
            f = max_norm / (total + 1e-6)
            f = min(1.0, f) if factor == "capped" else f
            out = [g.mul_(f) if in_place else g * f for g in grads]
        return out, (min(total, max_norm) if returned == "after" else total)
    return clip_by_global_norm


def _clip_with_torch(grads, max_norm):
    params = [torch.nn.Parameter(g.clone()) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    total = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return [p.grad for p in params], float(total)


EX08_WRONG_CLIP = {
    "clip_by_global_norm": {
        "each tensor by its own norm": _clip(per_tensor=True),
        "always rescaled to max_norm": _clip(factor="always"),
        "clips values, not the norm": _clip(by_value=True),
        "sum of the tensors' norms": _clip(norm="sum of norms"),
        "L1 norm": _clip(norm="L1"),
        "returns the norm after clipping": _clip(returned="after"),
        "changes the gradients in place": _clip(in_place=True),
        "torch.nn.utils.clip_grad_norm_ (a shortcut)": _clip_with_torch,
        "answer key": lambda grads, max_norm: _clip_answer_key(grads, max_norm),
    },
}


def _clip_answer_key(grads, max_norm):
    params = [torch.nn.Parameter(g.clone()) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    total = key()[0].clip_grad_norm_(params, max_norm)
    return [p.grad for p in params], float(total)


# ----------------------------------------------------------------------------- LoRA


def _lora(scaling="alpha/r", bias="once", whole=False):
    def lora_forward(x, weight, bias_, lora_A, lora_B, alpha):
        r = lora_A.shape[0]
        s = {"alpha/r": alpha / r, "none": 1.0, "alpha": alpha, "r/alpha": r / alpha,
             "alpha/out": alpha / weight.shape[0]}[scaling]
        base = x @ weight.T
        if bias_ is not None and bias != "none":
            base = base + bias_ * (2 if bias == "twice" else 1)
        branch = (x @ lora_A.T) @ lora_B.T
        return (base + branch) * s if whole else base + s * branch
    return lora_forward


def _lora_answer_key(x, weight, bias, lora_A, lora_B, alpha):
    from course_lib.layers import Linear

    base = Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    layer = key()[1].LoRALinear(base, r=lora_A.shape[0], alpha=alpha)
    with torch.no_grad():
        base.weight.copy_(weight)
        if bias is not None:
            base.bias.copy_(bias)
        layer.lora_A.weight.copy_(lora_A)
        layer.lora_B.weight.copy_(lora_B)
    return layer(x)


def _merge(order="BA", scaling="alpha/r", op="add", in_place=False):
    def merge_lora_weight(weight, lora_A, lora_B, alpha):
        r = lora_A.shape[0]
        s = {"alpha/r": alpha / r, "none": 1.0, "alpha": alpha, "r/alpha": r / alpha}[scaling]
        delta = (lora_B @ lora_A) if order == "BA" else (lora_A.T @ lora_B.T)
        if op == "delta":
            return s * delta
        if in_place:
            return weight.add_(s * delta)
        return weight + s * delta if op == "add" else weight - s * delta
    return merge_lora_weight


EX08_WRONG_LORA = {
    "lora_forward": {
        "no scaling": _lora(scaling="none"),
        "scaled by alpha": _lora(scaling="alpha"),
        "scaled by r / alpha": _lora(scaling="r/alpha"),
        "scaled by alpha / out": _lora(scaling="alpha/out"),
        "scaling on the whole output": _lora(whole=True),
        "bias missing": _lora(bias="none"),
        "bias twice": _lora(bias="twice"),
        "A and B in the wrong order (raises)": lambda x, w, b, A, B, alpha: x @ w.T + (x @ B.T) @ A.T,
        "answer key": _lora_answer_key,
    },
    "merge_lora_weight": {
        "transposed update (raises)": _merge(order="AtBt"),
        "no scaling": _merge(scaling="none"),
        "scaled by alpha": _merge(scaling="alpha"),
        "scaled by r / alpha": _merge(scaling="r/alpha"),
        "subtracted": _merge(op="subtract"),
        "only the update": _merge(op="delta"),
        "adds into the weight in place": _merge(in_place=True),
        "answer key": lambda w, A, B, alpha: w + key()[1].lora_delta(A, B, alpha / A.shape[0]),
    },
}


# ----------------------------------------------------------------------------- resize


def _resize(row="mean", shrink=True, dtype_out=None, mean_dtype="float32"):
    def resize_embedding(weight, new_num_rows):
        V, C = weight.shape
        if shrink and new_num_rows <= V:
            return weight[:new_num_rows].clone()
        if row == "mean":
            new = weight.float().mean(0) if mean_dtype == "float32" else weight.mean(0)
        elif row == "zeros":
            new = torch.zeros(C)
        elif row == "last":
            new = weight[-1]
        elif row == "sum":
            new = weight.float().sum(0)
        elif row == "mean with zeros":
            new = weight.float().sum(0) / new_num_rows
        elif row == "random":
            new = torch.randn(C) * weight.float().std()
        new = new.to(weight.dtype)
        out = torch.cat([weight, new.expand(new_num_rows - V, C)])
        return out.to(dtype_out) if dtype_out is not None else out
    return resize_embedding


EX08_WRONG_RESIZE = {
    "resize_embedding": {
        "zero rows": _resize(row="zeros"),
        "copies of the last row": _resize(row="last"),
        "sum of the rows": _resize(row="sum"),
        "mean taken after appending zeros": _resize(row="mean with zeros"),
        "random rows": _resize(row="random"),
        "cannot shrink (raises)": _resize(shrink=False),
        "returns float32 for every table": _resize(dtype_out=torch.float32),
        "mean over the features (raises)": lambda w, n: torch.cat([w, w.mean(1).expand(n - w.shape[0], -1)]),
        "answer key": lambda w, n: key()[2].mean_resized_rows(w, n),
    },
}


# ----------------------------------------------------------------------------- stretch: pruning


def _prune(layout="contiguous", complement=False, fused="thirds", columns=True, prune_bias=False, refuse_all=True):
    def prune_head_weights(weights, heads, num_heads):
        if refuse_all and len(set(heads)) == num_heads:
            raise ValueError("no head left")
        gone = set(heads)
        if complement:
            gone = set(range(num_heads)) - gone
        is_fused = "c_attn.weight" in weights
        width = weights["c_proj.weight" if is_fused else "output.dense.weight"].shape[1]
        D = width // num_heads
        if layout == "contiguous":
            keep = [h * D + i for h in range(num_heads) if h not in gone for i in range(D)]
        else:
            keep = [i for i in range(width) if i % num_heads not in gone]
        keep = torch.tensor(keep, dtype=torch.long)
        out = {}
        for name, t in weights.items():
            if name.startswith(("self.query", "self.key", "self.value")):
                out[name] = t[keep]
            elif name.startswith("c_attn"):
                if fused == "thirds":
                    out[name] = torch.cat([t[keep], t[keep + width], t[keep + 2 * width]])
                elif fused == "q only":
                    out[name] = torch.cat([t[:width][keep], t[width:]])
                else:  # 3H heads in a row
                    out[name] = t[torch.tensor([h * D + i for h in range(3 * num_heads) if h not in gone
                                                for i in range(D)], dtype=torch.long)]
            elif name in ("output.dense.weight", "c_proj.weight"):
                out[name] = t[:, keep] if columns else t[keep]
            elif name in ("output.dense.bias", "c_proj.bias") and prune_bias:
                out[name] = t[keep]
            else:
                out[name] = t.clone()
        return out
    return prune_head_weights


EX08_WRONG_STRETCH = {
    "prune_head_weights": {
        "head h as features h, h + H, ...": _prune(layout="strided"),
        "keeps the heads to remove": _prune(complement=True),
        "c_attn: only the q third": _prune(fused="q only"),
        "c_attn as 3H heads in a row": _prune(fused="3H"),
        "output projection loses rows": _prune(columns=False),
        "output bias pruned too": _prune(prune_bias=True),
        "no error when every head goes": _prune(refuse_all=False),
        "answer key": lambda w, heads, H: key()[2].prune_attention_state(w, heads, H),
    },
    "label_smoothed_cross_entropy": {},
}


def _smooth(convention="all C", reduce_classes="mean", scale_hard=True, mask_uniform=True, smooth=True,
            uniform_term=True, divide="counted"):
    def label_smoothed_cross_entropy(logits, targets, smoothing, ignore_index=-100):
        logp = logits - logits.logsumexp(-1, keepdim=True)
        keep = targets != ignore_index
        nll = -logp.gather(-1, targets.masked_fill(~keep, 0).unsqueeze(-1)).squeeze(-1)
        C = logits.shape[-1]
        if convention == "all C":
            uniform = -logp.sum(-1) if reduce_classes == "sum" else -logp.mean(-1)
        else:
            uniform = (-logp.sum(-1) - nll) / (C - 1)
        eps = smoothing if smooth else 0.0
        hard = (1 - eps) * nll if scale_hard else nll
        n = keep.sum()
        if not uniform_term:
            return (hard * keep).sum() / n
        if not mask_uniform:
            return ((hard * keep).sum() + eps * uniform.sum()) / n
        per = (hard + eps * uniform) * keep
        return per.sum() / (n if divide == "counted" else targets.numel())
    return label_smoothed_cross_entropy


EX08_WRONG_STRETCH["label_smoothed_cross_entropy"] = {
    "epsilon over the C - 1 wrong classes": _smooth(convention="C - 1"),
    "uniform term summed over classes": _smooth(reduce_classes="sum"),
    "right class not scaled by 1 - epsilon": _smooth(scale_hard=False),
    "ignored positions in the uniform term": _smooth(mask_uniform=False),
    "no smoothing": _smooth(smooth=False),
    "only the scaled right-class term": _smooth(uniform_term=False),
    "mean over every position": _smooth(divide="all"),
    "F.cross_entropy with label_smoothing (a shortcut)": lambda logits, targets, s, ignore_index=-100: F.cross_entropy(
        logits.flatten(0, -2), targets.flatten(), ignore_index=ignore_index, label_smoothing=s),
    "answer key": lambda logits, targets, s, ignore_index=-100: key()[0].label_smoothed_cross_entropy(
        logits, targets, s, ignore_index),
}

EX08_WRONG = {**EX08_WRONG_CE, **EX08_WRONG_ADAMW, **EX08_WRONG_SCHEDULE, **EX08_WRONG_CLIP, **EX08_WRONG_LORA,
              **EX08_WRONG_RESIZE, **EX08_WRONG_STRETCH}
WRONG = [(name, label, fn) for name, cases in EX08_WRONG.items() for label, fn in cases.items()]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,label,fn", WRONG, ids=[f"ex08.{n}: {l}" for n, l, _ in WRONG])
def test_wrong_answer_fails(name, label, fn, seed):
    assert_wrong_answer_fails("ex08", name, label, fn, seed)


# ----------------------------------------------------------------------------- right answers, written differently


def _ce_boolean_index(logits, targets, ignore_index=-100):
    """Only the counted rows, flattened; logsumexp; float64 inside, cast back."""
    x = logits.reshape(-1, logits.shape[-1]).double()
    t = targets.reshape(-1)
    keep = t != ignore_index
    x, t = x[keep], t[keep]
    loss = (x.logsumexp(-1) - x[torch.arange(len(t)), t]).mean()  # the mean of nothing is NaN
    return loss.to(logits.dtype)


def _adamw_torch_order(param, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay):
    """PyTorch's order of operations: lerp, addcmul, a bias-corrected denominator, addcdiv, on copies."""
    b1, b2 = betas
    p = param.clone().mul_(1 - lr * weight_decay)
    m = exp_avg.clone().lerp_(grad, 1 - b1)
    v = exp_avg_sq.clone().mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = (v.sqrt() / math.sqrt(1 - b2 ** step)).add_(eps)
    return p.addcdiv_(m, denom, value=-lr / (1 - b1 ** step)), m, v


def _schedule_piecewise(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if step >= total_steps and step >= warmup_steps and total_steps > warmup_steps:
        return float(min_lr)
    if step < warmup_steps:
        return step * (max_lr / warmup_steps)
    if total_steps == warmup_steps:
        return max_lr if step == warmup_steps else min_lr
    angle = math.pi * (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(angle))


def _clip_vector_norm(grads, max_norm):
    if not grads:
        return [], 0.0
    flat = torch.cat([g.reshape(-1).double() for g in grads])
    total = torch.linalg.vector_norm(flat)
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return [(g.double() * scale).to(g.dtype) for g in grads], total.item()


def _clip_no_epsilon(grads, max_norm):
    total = math.sqrt(sum(float((g * g).sum()) for g in grads))
    if total <= max_norm:
        return [g.clone() for g in grads], total
    return [g * (max_norm / total) for g in grads], total


def _lora_merged_first(x, weight, bias, lora_A, lora_B, alpha):
    w = weight + (alpha / lora_A.shape[0]) * torch.einsum("or,ri->oi", lora_B, lora_A)
    y = torch.einsum("...i,oi->...o", x, w)
    return y if bias is None else y + bias


def _resize_repeat(weight, n):
    V = weight.shape[0]
    rows = [weight[:min(V, n)].clone()]
    if n > V:
        rows.append(weight.to(torch.float32).sum(0).div(V).to(weight.dtype).repeat(n - V, 1))
    return torch.cat(rows)


def _prune_loops(weights, heads, num_heads):
    if len(set(heads)) == num_heads:
        raise ValueError("nothing left")
    out = {}
    fused = "c_attn.weight" in weights
    width = weights["c_proj.weight" if fused else "output.dense.weight"].shape[1]
    D = width // num_heads
    for name, t in weights.items():
        if name.startswith(("self.", "c_attn.")):
            parts = t.chunk(3) if fused else (t,)
            out[name] = torch.cat([part[h * D:(h + 1) * D] for part in parts for h in range(num_heads)
                                   if h not in heads])
        elif name in ("c_proj.weight", "output.dense.weight"):
            out[name] = torch.cat([t[:, h * D:(h + 1) * D] for h in range(num_heads) if h not in heads], dim=1)
        else:
            out[name] = t
    return out


def _smooth_soft_targets(logits, targets, smoothing, ignore_index=-100):
    """The softened target distribution written out, its cross-entropy with the model."""
    C = logits.shape[-1]
    keep = targets != ignore_index
    one_hot = (targets.masked_fill(~keep, 0).unsqueeze(-1) == torch.arange(C)).to(logits.dtype)
    soft = (1 - smoothing) * one_hot + smoothing / C
    logp = logits - logits.logsumexp(-1, keepdim=True)
    per = -(soft * logp).sum(-1)
    return per[keep].sum() / keep.sum()


RIGHT = {
    "cross_entropy": {"boolean indexing, float64 inside": _ce_boolean_index},
    "adamw_step": {"PyTorch's order of operations on copies": _adamw_torch_order},
    "warmup_cosine_lr": {"piecewise, with the end handled first": _schedule_piecewise},
    "clip_by_global_norm": {"one flat vector_norm in float64": _clip_vector_norm,
                            "no 1e-6, an if": _clip_no_epsilon},
    "lora_forward": {"merged weight, einsum": _lora_merged_first},
    "merge_lora_weight": {"einsum": lambda w, A, B, alpha: w + torch.einsum("or,ri->oi", B, A) * (alpha / A.shape[0])},
    "resize_embedding": {"sum / V, repeat": _resize_repeat},
    "prune_head_weights": {"loops over heads, chunk": _prune_loops},
    "label_smoothed_cross_entropy": {"soft targets written out": _smooth_soft_targets},
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,label,fn", [(n, l, f) for n, c in RIGHT.items() for l, f in c.items()],
                         ids=[f"ex08.{n}: {l}" for n, c in RIGHT.items() for l in c])
def test_right_answer_written_differently_passes(name, label, fn, seed):
    checks("ex08")[name].grade(fn, np.random.default_rng(seed))


def test_every_exercise_has_wrong_and_right_answers():
    assert set(EX08_WRONG) == set(checks("ex08")) == set(RIGHT)
    assert all(len(cases) >= 4 for cases in EX08_WRONG.values())


def test_answer_key_and_shortcuts_are_named_and_restored():
    from course_lib import training

    before = (training.cross_entropy, F.cross_entropy, torch.optim.AdamW, torch.nn.utils.clip_grad_norm_)
    with pytest.raises(GradeError, match=r"course_lib\.training\.cross_entropy\(\)"):
        checks("ex08")["cross_entropy"].grade(EX08_WRONG["cross_entropy"]["answer key"], np.random.default_rng(0))
    with pytest.raises(GradeError, match=r"torch\.optim\.AdamW\(\)"):
        checks("ex08")["adamw_step"].grade(EX08_WRONG["adamw_step"]["torch.optim.AdamW (a shortcut)"],
                                           np.random.default_rng(0))
    with pytest.raises(GradeError, match=r"softmax\(\)"):
        checks("ex08")["cross_entropy"].grade(EX08_WRONG["cross_entropy"]["torch.log_softmax (a shortcut)"],
                                              np.random.default_rng(0))
    assert (training.cross_entropy, F.cross_entropy, torch.optim.AdamW, torch.nn.utils.clip_grad_norm_) == before


def test_messages_name_the_likely_mistake():
    cases = {
        ("cross_entropy", "mean over every position, ignored ones as 0"): "counted as 0",
        ("cross_entropy", "no max shift (overflows on huge logits)"): "exp overflowed",
        ("cross_entropy", "ignores -100, not the ignore_index argument"): "not the ignore_index argument",
        ("cross_entropy", "guards the count: 0 instead of NaN when nothing counts"): "expected NaN",
        ("adamw_step", "no bias correction"): "no bias correction",
        ("adamw_step", "L2 regularisation (decay in the gradient)"): "L2 regularisation",
        ("adamw_step", "decay after the update"): "applied after the Adam update",
        ("adamw_step", "eps inside the square root"): "eps is inside the square root",
        ("adamw_step", "returns m_hat and v_hat"): "return the raw m and v",
        ("adamw_step", "changes param in place"): "changed one of its inputs in place",
        ("warmup_cosine_lr", "warmup one step ahead"): "one step ahead",
        ("warmup_cosine_lr", "no cap: turns back up after total_steps"): "turns back up",
        ("warmup_cosine_lr", "min_lr added on top"): "on top",
        ("clip_by_global_norm", "each tensor by its own norm"): "its own norm",
        ("clip_by_global_norm", "always rescaled to max_norm"): "under it",
        ("clip_by_global_norm", "sum of the tensors' norms"): "not the sum of the tensors' norms",
        ("clip_by_global_norm", "changes the gradients in place"): "in place",
        ("lora_forward", "scaled by alpha"): "scaled by alpha;",
        ("lora_forward", "scaling on the whole output"): "branch only",
        ("merge_lora_weight", "only the update"): "add the weight",
        ("resize_embedding", "zero rows"): "zeros",
        ("resize_embedding", "mean taken after appending zeros"): "after appending",
        ("prune_head_weights", "head h as features h, h + H, ..."): "consecutive features",
        ("prune_head_weights", "keeps the heads to remove"): "kept the heads you were asked to remove",
        ("prune_head_weights", "c_attn: only the q third"): "each third",
        ("prune_head_weights", "output projection loses rows"): "COLUMNS",
        ("label_smoothed_cross_entropy", "epsilon over the C - 1 wrong classes"): "C - 1 wrong classes",
        ("label_smoothed_cross_entropy", "ignored positions in the uniform term"): "includes the ignored positions",
    }
    for (name, label), text in cases.items():
        found = False
        for seed in SEEDS:  # some mistakes only show on some inputs; the message must name it where it shows
            with pytest.raises(GradeError) as info:
                checks("ex08")[name].grade(EX08_WRONG[name][label], np.random.default_rng(seed))
            found = found or text in str(info.value)
        assert found, f"{name}, {label!r}: {info.value}"


def test_points_add_up():
    exercises = checks("ex08").values()
    assert sum(ex.points for ex in exercises if not ex.stretch) == 14
    assert sum(ex.points for ex in exercises if ex.stretch) == 8
    assert {ex.function for ex in exercises if ex.stretch} == {"prune_head_weights", "label_smoothed_cross_entropy"}


def test_a_check_leaves_the_global_random_generator_alone():
    """A check cell in a notebook must not change the random numbers of the cells after it."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    solutions = load_exercise_module("solutions", FILE) if HAS_SOLUTIONS else None
    for name in ("lora_forward", "merge_lora_weight"):
        fn = getattr(solutions, name) if solutions else EX08_WRONG[name]["no scaling"]
        try:
            checks("ex08")[name].grade(fn, np.random.default_rng(0))
        except GradeError:
            pass
    assert torch.equal(torch.rand(3), expected)
