"""course_lib.training: every piece against PyTorch (and transformers' schedule), and the loop's promises.

Tolerances: float32 values and gradients of the loss <= 1e-6 (float64 <= 1e-12), relative to the
value's size where it is above 1 (a summed loss); AdamW <= 1e-6
over 100 steps (it is in fact bit for bit); the schedule <= 1e-12 relative; clipping <= 1e-6
relative; a resumed run and two runs with one seed: bit for bit.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import training as tr
from course_lib.models.gpt2 import GPT2Config, GPT2LMHeadModel


# --------------------------------------------------------------------------------------
# Small models and data

class TinyClassifier(nn.Module):
    """input_ids (B, T), attention_mask (B, T) -> logits (B, C): mean-pooled embeddings, LayerNorm, dropout, Linear."""

    def __init__(self, vocab: int = 30, dim: int = 16, classes: int = 3, p: float = 0.1):
        super().__init__()
        self.embeddings = nn.Embedding(vocab, dim)
        self.LayerNorm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(dim, classes)

    def forward(self, input_ids, attention_mask=None):
        x = self.embeddings(input_ids)  # (B, T, D)
        m = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        pooled = (x * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True)  # (B, D)
        return self.classifier(self.dropout(self.LayerNorm(pooled)))


def classification_batches(n_batches: int, batch_size: int = 8, seq: int = 6, vocab: int = 30, classes: int = 3,
                           seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(0, vocab, (batch_size, seq), generator=g)
        mask = torch.ones_like(ids)
        mask[:, seq - 2:] = (torch.rand(batch_size, 2, generator=g) > 0.5).long()
        out.append({"input_ids": ids, "attention_mask": mask, "labels": ids[:, 0] % classes})
    return out


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                      resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1))


class TokenData(torch.utils.data.Dataset):
    """Sequences of 12 token ids with a padded tail; a DataLoader over it shuffles with the global RNG."""

    def __init__(self, n: int = 40, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 40, (n, 12), generator=g)
        self.mask = torch.ones(n, 12, dtype=torch.long)
        for i in range(n):
            self.mask[i, 12 - i % 4:] = 0

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i]}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: one thread is faster than two that wait for each other (and the same bits)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


# --------------------------------------------------------------------------------------
# 1. Cross-entropy

@pytest.mark.parametrize("shape", [(13, 7), (3, 5, 11)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_cross_entropy_equals_torch_values_and_gradients(shape, reduction, dtype, tol):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(shape, generator=g, dtype=dtype) * 4).requires_grad_()
    targets = torch.randint(0, shape[-1], shape[:-1], generator=g)
    targets.view(-1)[::3] = -100  # a third ignored
    ours = tr.cross_entropy(logits, targets, reduction=reduction)
    ref = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction=reduction).view(ours.shape)
    assert ours.shape == ref.shape and ours.dtype == dtype
    assert (ours - ref).abs().max().item() <= tol * max(1.0, ref.abs().max().item())  # a sum of 10 losses is ~50
    weights = torch.randn(ours.shape, generator=g, dtype=dtype)  # an arbitrary upstream gradient
    g_ours, = torch.autograd.grad((ours * weights).sum(), logits)
    g_ref, = torch.autograd.grad((ref * weights).sum(), logits)
    assert (g_ours - g_ref).abs().max().item() <= tol


def test_cross_entropy_custom_ignore_index_and_huge_logits():
    logits = torch.tensor([[1e4, 0.0, -1e4], [3.0, 1e4, 2.0], [0.5, 0.1, -0.2]], requires_grad=True)
    targets = torch.tensor([1, 1, 0])
    for ignore in (0, 1, -1):
        t = targets.clone()
        ours = tr.cross_entropy(logits, t, ignore_index=ignore)
        ref = F.cross_entropy(logits, t, ignore_index=ignore)
        assert torch.isfinite(ours) and abs(ours.item() - ref.item()) <= 1e-6 * max(1.0, abs(ref.item()))
        g_ours, = torch.autograd.grad(ours, logits)
        g_ref, = torch.autograd.grad(ref, logits)
        assert (g_ours - g_ref).abs().max().item() <= 1e-6


def test_log_softmax_equals_torch():
    x = torch.randn(4, 9, dtype=torch.float64) * 50
    assert (tr.log_softmax(x) - torch.log_softmax(x, -1)).abs().max().item() <= 1e-12
    assert (tr.log_softmax(x, 0) - torch.log_softmax(x, 0)).abs().max().item() <= 1e-12


def test_cross_entropy_all_ignored_batch_is_nan_with_zero_gradients_like_torch():
    logits = torch.randn(2, 4, 6, requires_grad=True)
    targets = torch.full((2, 4), -100)
    ours, ref = tr.cross_entropy(logits, targets), F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert math.isnan(ours.item()) and math.isnan(ref.item())
    g_ours, = torch.autograd.grad(ours, logits)
    g_ref, = torch.autograd.grad(ref, logits)
    assert torch.equal(g_ours, torch.zeros_like(logits)) and torch.equal(g_ref, g_ours)
    assert tr.cross_entropy(logits, targets, reduction="sum").item() == 0.0
    assert torch.equal(tr.cross_entropy(logits, targets, reduction="none"), torch.zeros(2, 4))


def test_cross_entropy_half_precision_is_computed_in_float32():
    logits = torch.randn(5, 7) * 3
    targets = torch.randint(0, 7, (5,))
    ours = tr.cross_entropy(logits.bfloat16(), targets)
    assert ours.dtype == torch.float32
    assert abs(ours.item() - F.cross_entropy(logits.bfloat16().float(), targets).item()) <= 1e-6


@pytest.mark.parametrize("shape", [(13, 7), (3, 5, 11)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.45, 1.0])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_label_smoothed_cross_entropy_equals_torch_values_and_gradients(shape, reduction, smoothing, dtype, tol):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(shape, generator=g, dtype=dtype) * 4).requires_grad_()
    targets = torch.randint(0, shape[-1], shape[:-1], generator=g)
    targets.view(-1)[1::4] = -100  # a quarter ignored
    ours = tr.label_smoothed_cross_entropy(logits, targets, smoothing, reduction=reduction)
    ref = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction=reduction,
                          label_smoothing=smoothing).view(ours.shape)
    assert ours.shape == ref.shape and ours.dtype == dtype
    assert (ours - ref).abs().max().item() <= tol * max(1.0, ref.abs().max().item())
    weights = torch.randn(ours.shape, generator=g, dtype=dtype)
    g_ours, = torch.autograd.grad((ours * weights).sum(), logits)
    g_ref, = torch.autograd.grad((ref * weights).sum(), logits)
    assert (g_ours - g_ref).abs().max().item() <= tol


def test_label_smoothed_cross_entropy_edge_cases():
    logits = torch.tensor([[1e4, 0.0, -1e4], [3.0, 1e4, 2.0], [0.5, 0.1, -0.2]])
    for ignore in (0, 1, -1):
        targets = torch.tensor([1, 1, 0])
        ours = tr.label_smoothed_cross_entropy(logits, targets, 0.2, ignore_index=ignore)
        ref = F.cross_entropy(logits, targets, ignore_index=ignore, label_smoothing=0.2)
        assert torch.isfinite(ours) and abs(ours.item() - ref.item()) <= 1e-6 * max(1.0, abs(ref.item()))
    x = torch.randn(4, 5)
    t = torch.randint(0, 5, (4,))
    assert torch.equal(tr.label_smoothed_cross_entropy(x, t, 0.0), tr.cross_entropy(x, t))
    all_ignored = tr.label_smoothed_cross_entropy(x, torch.full((4,), -100), 0.1)
    assert math.isnan(all_ignored.item()) and math.isnan(F.cross_entropy(x, torch.full((4,), -100),
                                                                         label_smoothing=0.1).item())
    assert tr.label_smoothed_cross_entropy(x.bfloat16(), t, 0.1).dtype == torch.float32
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="smoothing"):
            tr.label_smoothed_cross_entropy(x, t, bad)
    with pytest.raises(IndexError, match="target 5"):
        tr.label_smoothed_cross_entropy(x, torch.full((4,), 5), 0.1)


def test_cross_entropy_bad_input_is_a_clear_error():
    logits = torch.randn(2, 5, 7)
    with pytest.raises(ValueError, match=r"\(2, 5, 7\).*\(2, 6\)"):
        tr.cross_entropy(logits, torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="shape of logits without the last"):
        tr.cross_entropy(logits, torch.zeros(2, 5, 7, dtype=torch.long))
    with pytest.raises(IndexError, match=r"target 7 .*\[0, 6\]"):
        tr.cross_entropy(logits, torch.full((2, 5), 7))
    with pytest.raises(IndexError, match="target -3"):
        tr.cross_entropy(logits, torch.full((2, 5), -3))
    with pytest.raises(TypeError, match="integer"):
        tr.cross_entropy(logits, torch.zeros(2, 5))
    with pytest.raises(TypeError, match="float"):
        tr.cross_entropy(torch.zeros(2, 5, 7, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        tr.cross_entropy(logits, torch.zeros(2, 5, dtype=torch.long), reduction="avg")


# --------------------------------------------------------------------------------------
# 2. AdamW

def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.LayerNorm(12), nn.GELU(), nn.Linear(12, 12), nn.GELU(),
                         nn.Linear(12, 3))


ADAMW_CONFIGS = {
    "defaults": dict(kwargs={}),
    "betas eps decay": dict(kwargs=dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)),
    "no decay, big lr": dict(kwargs=dict(lr=0.05, weight_decay=0.0)),
    "decay groups + own lr": dict(kwargs=dict(lr=2e-3), groups=True),
    "scheduled lr": dict(kwargs=dict(lr=5e-3, weight_decay=0.05), schedule=True),
}


def param_groups(model, config):
    if config.get("groups"):
        groups = tr.weight_decay_groups(model, 0.2)
        groups[1]["lr"] = 1e-2  # the no-decay group at its own learning rate
        return groups
    return model.parameters()


@pytest.mark.parametrize("name", ADAMW_CONFIGS)
def test_adamw_equals_torch_for_100_steps(name):
    config = ADAMW_CONFIGS[name]
    ours_model, ref_model = mlp(), mlp()
    ours = tr.AdamW(param_groups(ours_model, config), **config["kwargs"])
    ref = torch.optim.AdamW(param_groups(ref_model, config), **config["kwargs"])
    schedules = [tr.WarmupCosineSchedule(o, 10, 100, 0.1) for o in (ours, ref)] if config.get("schedule") else []
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for step in range(100):
        x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if step % 7 == 3:  # a parameter without a gradient this step is left alone by both
                model[0].bias.grad = None
            opt.step()
        for s in schedules:
            s.step()
        worst = max(worst, max_diff(ours_model.parameters(), ref_model.parameters()))
    assert worst <= 1e-6, f"{name}: parameters differ by {worst:.3g} from torch.optim.AdamW"
    for p_ours, p_ref in zip(ours_model.parameters(), ref_model.parameters()):
        s_ours, s_ref = ours.state[p_ours], ref.state[p_ref]
        assert s_ours["step"] == int(s_ref["step"].item())
        assert (s_ours["exp_avg"] - s_ref["exp_avg"]).abs().max().item() <= 1e-6
        assert (s_ours["exp_avg_sq"] - s_ref["exp_avg_sq"]).abs().max().item() <= 1e-6


def test_adamw_state_dict_round_trip_continues_exactly():
    def run(split: int | None):
        model = mlp()
        opt = tr.AdamW(tr.weight_decay_groups(model, 0.1), lr=1e-2)
        g = torch.Generator().manual_seed(2)
        for step in range(40):
            if step == split:  # rebuild the optimizer from its state dict, as a resumed run does
                saved = opt.state_dict()
                opt = tr.AdamW(tr.weight_decay_groups(model, 0.1), lr=1e-2)
                opt.load_state_dict(saved)
            x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return list(model.parameters())

    assert all(torch.equal(a, b) for a, b in zip(run(None), run(17)))


def test_adamw_bad_hyperparameters_are_clear_errors():
    params = mlp().parameters
    with pytest.raises(ValueError, match="lr=-0.001 must be a number >= 0"):
        tr.AdamW(params(), lr=-1e-3)
    with pytest.raises(ValueError, match="betas"):
        tr.AdamW(params(), betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps"):
        tr.AdamW(params(), eps=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        tr.AdamW(params(), weight_decay=-0.1)
    with pytest.raises(ValueError, match="lr=nan"):
        tr.AdamW(params(), lr=float("nan"))
    model = mlp()
    opt = tr.AdamW(model.parameters())
    opt.param_groups[0]["lr"] = -1.0  # set by hand (or a broken schedule) after construction
    model(torch.randn(2, 6)).sum().backward()
    with pytest.raises(ValueError, match="param group 0: learning rate lr=-1.0"):
        opt.step()


def test_weight_decay_groups_split_by_name():
    model = tiny_gpt2()
    model.transformer.wpe.weight.requires_grad_(False)  # frozen: in no group
    decay, no_decay = tr.weight_decay_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    d, n = {name for name, _ in decay["params"]}, {name for name, _ in no_decay["params"]}
    optimizer = tr.AdamW(tr.weight_decay_groups(model, 0.1))  # the optimizer keeps the names
    assert optimizer.param_groups[0]["param_names"] == [name for name, _ in decay["params"]]
    assert "transformer.wte.weight" in d and "transformer.h.0.attn.c_attn.weight" in d
    assert "transformer.h.0.ln_1.weight" in n and "transformer.ln_f.bias" in n and "transformer.h.1.mlp.c_fc.bias" in n
    assert not any("ln_" in x or x.endswith("bias") for x in d)
    assert "transformer.wpe.weight" not in d | n and "lm_head.weight" not in d | n  # frozen; tied = wte
    bert_like = TinyClassifier()
    d2, n2 = ({name for name, _ in g["params"]} for g in tr.weight_decay_groups(bert_like, 0.01))
    assert d2 == {"embeddings.weight", "classifier.weight"}
    assert n2 == {"LayerNorm.weight", "LayerNorm.bias", "classifier.bias"}
    with pytest.raises(ValueError, match="no trainable parameter"):
        tr.weight_decay_groups(bert_like.requires_grad_(False), 0.01)


# --------------------------------------------------------------------------------------
# 3. Warmup + cosine

@pytest.mark.parametrize("warmup, total, min_ratio", [(10, 100, 0.0), (0, 37, 0.0), (5, 5, 0.0), (1, 20, 0.0),
                                                     (25, 60, 0.1), (0, 50, 0.5)])
def test_schedule_equals_transformers(warmup, total, min_ratio):
    from transformers.optimization import get_cosine_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

    def optimizer():
        a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
        return torch.optim.AdamW([{"params": [a], "lr": 3e-3}, {"params": [b], "lr": 1e-4}])

    ours_opt, ref_opt = optimizer(), optimizer()
    ours = tr.WarmupCosineSchedule(ours_opt, warmup, total, min_lr_ratio=min_ratio)
    if min_ratio:
        ref = get_cosine_with_min_lr_schedule_with_warmup(ref_opt, warmup, total, min_lr_rate=min_ratio)
    else:
        ref = get_cosine_schedule_with_warmup(ref_opt, warmup, total)
    for step in range(total + 1):  # where the two definitions coincide
        for group, (a, b) in enumerate(zip(ours.get_last_lr(), ref.get_last_lr())):
            assert a == pytest.approx(b, rel=1e-12, abs=1e-18), f"step {step}, group {group}"
            peak = (3e-3, 1e-4)[group]
            assert a == pytest.approx(tr.warmup_cosine_lr(step, peak, warmup, total, peak * min_ratio), rel=1e-15)
        ours_opt.step()
        ref_opt.step()
        ours.step()
        ref.step()
    for _ in range(5):  # past total_steps: ours stays at the floor
        assert ours.get_last_lr() == pytest.approx([3e-3 * min_ratio, 1e-4 * min_ratio], abs=1e-18)
        ours.step()


def test_warmup_cosine_lr_shape():
    lrs = [tr.warmup_cosine_lr(s, 1.0, 10, 110, 0.1) for s in range(120)]
    assert lrs[0] == 0.0 and lrs[5] == 0.5 and lrs[10] == 1.0 and lrs[110] == pytest.approx(0.1)
    assert lrs[60] == pytest.approx(0.55)  # half-way down the cosine: the middle of peak and floor
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11])) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    with pytest.raises(ValueError, match="warmup_steps"):
        tr.warmup_cosine_lr(0, 1.0, 20, 10)
    with pytest.raises(ValueError, match="min_lr"):
        tr.warmup_cosine_lr(0, -1.0, 0, 10)
    with pytest.raises(ValueError, match="step"):
        tr.warmup_cosine_lr(-1, 1.0, 0, 10)


def test_schedule_state_dict_is_json_and_restores():
    opt = tr.AdamW([nn.Parameter(torch.zeros(3))], lr=1e-2)
    schedule = tr.WarmupCosineSchedule(opt, 4, 30, 0.1)
    for _ in range(11):
        schedule.step()
    saved = json.loads(json.dumps(schedule.state_dict()))
    opt2 = tr.AdamW([nn.Parameter(torch.zeros(3))], lr=1e-2)
    schedule2 = tr.WarmupCosineSchedule(opt2, 4, 30, 0.1)
    schedule2.load_state_dict(saved)
    assert schedule2.get_last_lr() == schedule.get_last_lr() == [tr.warmup_cosine_lr(11, 1e-2, 4, 30, 1e-3)]
    schedule.step(), schedule2.step()
    assert schedule2.get_last_lr() == schedule.get_last_lr()
    with pytest.raises(ValueError, match="total_steps=30 .*this schedule: 40"):
        tr.WarmupCosineSchedule(tr.AdamW([nn.Parameter(torch.zeros(3))], lr=1e-2), 4, 40, 0.1).load_state_dict(saved)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        tr.WarmupCosineSchedule(opt, 4, 30, 1.5)


# --------------------------------------------------------------------------------------
# 4. Clipping

def grads_for(scale: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.zeros(s)) for s in ((5, 4), (4,), (3, 3, 2), (7,))]
    for p in params[:3]:  # the last one has no gradient
        p.grad = torch.randn(p.shape, generator=g) * scale
    return params


@pytest.mark.parametrize("scale, max_norm", [(0.01, 1.0), (1.0, 1.0), (10.0, 0.5), (1e3, 2.0), (3.0, 1e9)])
def test_clip_grad_norm_equals_torch(scale, max_norm):
    ours, ref = grads_for(scale), grads_for(scale)
    n_ours = tr.clip_grad_norm_(ours, max_norm)
    n_ref = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    assert n_ours.item() == pytest.approx(n_ref.item(), rel=1e-6)
    for a, b in zip(ours, ref):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            assert (a.grad - b.grad).abs().max().item() <= 1e-6 * max(1.0, b.grad.abs().max().item())
    after = tr.global_grad_norm(ours).item()
    assert after <= max_norm * (1 + 1e-5) and (n_ref.item() > max_norm or after == pytest.approx(n_ref.item()))


def test_clip_grad_norm_single_tensor_and_no_gradients():
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    assert tr.clip_grad_norm_(p, 1.0).item() == pytest.approx(5.0)
    assert p.grad.tolist() == pytest.approx([0.6, 0.8, 0.0], rel=1e-5)
    assert tr.clip_grad_norm_([nn.Parameter(torch.zeros(2))], 1.0).item() == 0.0


def test_clip_grad_norm_non_finite_as_torch_or_a_clear_error():
    ours, ref = grads_for(1.0), grads_for(1.0)
    for params in (ours, ref):
        params[0].grad[0, 0] = float("inf")
    n_ours, n_ref = tr.clip_grad_norm_(ours, 1.0), torch.nn.utils.clip_grad_norm_(ref, 1.0)
    assert math.isinf(n_ours.item()) and math.isinf(n_ref.item())
    for a, b in zip(ours, ref):
        if a.grad is not None:
            assert torch.equal(a.grad.isnan(), b.grad.isnan())
            assert torch.equal(a.grad.nan_to_num(), b.grad.nan_to_num())
    nan_grads = grads_for(1.0)
    nan_grads[1].grad[2] = float("nan")
    with pytest.raises(FloatingPointError, match="gradient norm is nan"):
        tr.clip_grad_norm_(nan_grads, 1.0, error_if_nonfinite=True)


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("nan"), float("inf")])
def test_clip_grad_norm_bad_max_norm(max_norm):
    with pytest.raises(ValueError, match="max_norm=.* must be a finite number > 0"):
        tr.clip_grad_norm_(grads_for(1.0), max_norm)


# --------------------------------------------------------------------------------------
# 5. Gradient accumulation

def token_model_and_batches():
    """A tiny tagger (B, T) -> (B, T, C) and 4 micro-batches with very different numbers of counted labels."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 5))
    g = torch.Generator().manual_seed(4)
    batches = []
    for counted in (24, 3, 12, 1):
        ids = torch.randint(0, 20, (4, 6), generator=g)
        labels = torch.randint(0, 5, (4, 6), generator=g)
        labels.view(-1)[counted:] = -100
        batches.append({"input_ids": ids, "labels": labels})
    return model, batches


def tagger_loss(model, batch):
    logits = model(batch["input_ids"])
    return tr.LossSum(tr.cross_entropy(logits, batch["labels"], reduction="sum"), (batch["labels"] != -100).sum())


def test_accumulated_gradient_equals_one_big_batch():
    model, batches = token_model_and_batches()
    big_ids = torch.cat([b["input_ids"] for b in batches])
    big_labels = torch.cat([b["labels"] for b in batches])
    model.zero_grad()
    big_loss = F.cross_entropy(model(big_ids).flatten(0, 1), big_labels.flatten())
    big_loss.backward()
    big = [p.grad.clone() for p in model.parameters()]

    loss = tr.accumulate_gradients(model, batches, tagger_loss)
    assert loss == pytest.approx(big_loss.item(), rel=1e-6)
    assert max_diff([p.grad for p in model.parameters()], big) <= 1e-6

    # the mistake it avoids: the mean of the micro-batches' means weighs a batch of 1 token like one of 24
    def mean_loss(model, batch):
        return tr.cross_entropy(model(batch["input_ids"]), batch["labels"])

    tr.accumulate_gradients(model, batches, mean_loss)
    assert max_diff([p.grad for p in model.parameters()], big) > 1e-3


def test_accumulated_mean_losses_equal_one_big_batch_when_sizes_are_equal():
    model = mlp()
    g = torch.Generator().manual_seed(5)
    xs, ys = torch.randn(4, 8, 6, generator=g), torch.randint(0, 3, (4, 8), generator=g)
    model.zero_grad()
    F.cross_entropy(model(xs.flatten(0, 1)), ys.flatten()).backward()
    big = [p.grad.clone() for p in model.parameters()]
    tr.accumulate_gradients(model, list(zip(xs, ys)), lambda m, b: F.cross_entropy(m(b[0]), b[1]))
    assert max_diff([p.grad for p in model.parameters()], big) <= 1e-6


def test_accumulate_gradients_refuses_non_finite_loss_and_nothing_to_learn():
    model, batches = token_model_and_batches()
    calls = []

    def nan_at_second(model, batch):
        calls.append(1)
        return tagger_loss(model, batch).total * (float("nan") if len(calls) == 2 else 1.0)

    with pytest.raises(FloatingPointError, match="micro-batch 1 is nan"):
        tr.accumulate_gradients(model, batches, nan_at_second)
    ignored = [{"input_ids": b["input_ids"], "labels": torch.full_like(b["labels"], -100)} for b in batches]
    with pytest.raises(ValueError, match="every label is ignore_index"):
        tr.accumulate_gradients(model, ignored, tagger_loss)
    with pytest.raises(TypeError, match="LossSum"):
        tr.accumulate_gradients(model, batches, lambda m, b: (tagger_loss(m, b).total, m(b["input_ids"])))


def test_loss_functions_for_batch_dicts():
    model = TinyClassifier().eval()
    batch = classification_batches(1)[0]
    total, count = tr.classification_loss(model, batch)
    assert count == 8
    assert total.item() / 8 == pytest.approx(F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]),
                                                              batch["labels"]).item(), rel=1e-6)
    lm = tiny_gpt2().eval()
    data = TokenData(4)
    ids, mask = data.ids, data.mask
    total, count = tr.causal_lm_loss(lm, {"input_ids": ids, "attention_mask": mask})
    logits = lm(ids, attention_mask=mask)
    labels = ids.masked_fill(mask == 0, -100)
    ref = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")
    assert int(count) == int((labels[:, 1:] != -100).sum()) and total.item() == pytest.approx(ref.item(), rel=1e-6)
    with pytest.raises(KeyError, match="no 'labels'"):
        tr.classification_loss(model, {"input_ids": ids})


# --------------------------------------------------------------------------------------
# 6. The loop: against a hand-written loop, determinism, resume, best weights, errors

def test_train_equals_a_hand_written_loop():
    batches = classification_batches(6)

    def loss_fn(model, batch):
        return F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    torch.manual_seed(0)
    ours = TinyClassifier(p=0.0)
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-2)
    history = tr.train(ours, opt, batches, loss_fn, schedule=tr.WarmupCosineSchedule(opt, 3, 12), max_steps=12,
                       progress=False)

    torch.manual_seed(0)
    ref = TinyClassifier(p=0.0)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    losses, lrs = [], []
    for step in range(12):
        lr = tr.warmup_cosine_lr(step, 1e-2, 3, 12)
        for group in ref_opt.param_groups:
            group["lr"] = lr
        batch = batches[step % len(batches)]
        ref_opt.zero_grad()
        loss = loss_fn(ref, batch)
        loss.backward()
        ref_opt.step()
        losses.append(loss.item())
        lrs.append(lr)
    assert history["loss"] == losses and history["lr"] == lrs and history["epoch"] == [0] * 6 + [1] * 6
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters()))


def run_lm(tmp_path=None, *, seed=0, max_steps=14, fail_at=None, resume=False, model_seed=0, **kwargs):
    """The tiny GPT-2 (tied head, dropout) on a shuffled DataLoader, with everything switched on."""
    model = tiny_gpt2(model_seed)
    torch.manual_seed(123)  # the loader's shuffle draws from the global RNG, which train() seeds
    loader = torch.utils.data.DataLoader(TokenData(), batch_size=6, shuffle=True)  # 7 batches per epoch
    eval_batches = [TokenData(12, seed=9)[i:i + 6] for i in (0, 6)]
    optimizer = tr.AdamW(tr.weight_decay_groups(model, 0.1), lr=5e-3, betas=(0.9, 0.95))
    schedule = tr.WarmupCosineSchedule(optimizer, 3, max_steps, 0.1)
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        if fail_at is not None and calls["n"] > fail_at:
            raise KeyboardInterrupt("simulated interruption")
        return tr.causal_lm_loss(model, batch)

    history = tr.train(model, optimizer, loader, loss_fn, schedule=schedule, max_steps=max_steps,
                       accumulation_steps=2, max_grad_norm=0.5, eval_data=eval_batches, eval_every=4,
                       checkpoint_dir=tmp_path, checkpoint_every=3, resume=resume,
                       seed=seed, progress=False, **kwargs)
    return model, optimizer, history


def without_times(history: dict) -> dict:
    return {k: v for k, v in history.items() if k not in ("time", "wall_seconds", "resumed_from")}


def test_same_seed_same_run_other_seed_other_run():
    model_a, _, a = run_lm(seed=7)
    model_b, _, b = run_lm(seed=7)
    _, _, c = run_lm(seed=8)
    assert a["loss"] == b["loss"] and without_times(a) == without_times(b)
    assert all(torch.equal(x, y) for x, y in zip(model_a.state_dict().values(), model_b.state_dict().values()))
    assert a["loss"] != c["loss"]  # dropout and data order follow the seed


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tmp_path):
    full_model, full_opt, full = run_lm(tmp_path / "full")
    # 4 optimizer steps of 2 micro-batches and an evaluation pass, the 5th step is interrupted: the last
    # checkpoint is at step 3, in the middle of the first epoch; the resumed run starts from another random init
    with pytest.raises(KeyboardInterrupt):
        run_lm(tmp_path / "cut", fail_at=11)
    saved = json.loads((tmp_path / "cut" / tr.HISTORY_NAME).read_text())
    assert saved["step"] == [1, 2, 3]
    model, opt, resumed = run_lm(tmp_path / "cut", resume=True, model_seed=99)
    assert resumed["resumed_from"] == 3
    assert without_times(resumed) == without_times(full)
    assert full["epoch"][-1] >= 1 and full["eval_step"] == [4, 8, 12, 14] and full["best_step"] is not None
    for (k, a), b in zip(full_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    for p_full, p in zip(full_opt.param_groups[0]["params"], opt.param_groups[0]["params"]):
        assert torch.equal(full_opt.state[p_full]["exp_avg_sq"], opt.state[p]["exp_avg_sq"])
    assert sorted(x.name for x in (tmp_path / "cut").iterdir()) == [tr.BEST_NAME, tr.CHECKPOINT_NAME,
                                                                    tr.HISTORY_NAME]


def test_best_weights_are_kept_and_restored(tmp_path):
    scores = iter([0.5, 0.9, 0.7, 0.8])
    kept = {}

    def eval_fn(model):
        score = next(scores)
        kept[score] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"accuracy": score, "loss": 1 - score}

    model = TinyClassifier()
    opt = tr.AdamW(model.parameters(), lr=1e-2)
    history = tr.train(model, opt, classification_batches(5), tr.classification_loss, max_steps=8, eval_fn=eval_fn,
                       eval_every=2, best_metric="accuracy", higher_is_better=True, checkpoint_dir=tmp_path,
                       progress=False)
    assert history["eval_step"] == [2, 4, 6, 8] and history["eval"]["accuracy"] == [0.5, 0.9, 0.7, 0.8]
    assert history["best_step"] == 4 and history["best_value"] == 0.9
    assert all(torch.equal(v, kept[0.9][k]) for k, v in model.state_dict().items())
    assert not model.training
    info = tr.load_weights(tmp_path / tr.BEST_NAME, TinyClassifier())
    assert info["step"] == 4 and info["metrics"]["accuracy"] == 0.9
    # without a folder, the best weights are kept in memory
    scores = iter([0.5, 0.9, 0.7, 0.8])
    model = TinyClassifier()
    tr.train(model, tr.AdamW(model.parameters(), lr=1e-2), classification_batches(5), tr.classification_loss,
             max_steps=8, eval_fn=eval_fn, eval_every=2, best_metric="accuracy", higher_is_better=True,
             progress=False)
    assert all(torch.equal(v, kept[0.9][k]) for k, v in model.state_dict().items())


def test_epochs_accumulation_and_eval_loss():
    model = TinyClassifier(p=0.0)
    batches = classification_batches(6)
    history = tr.train(model, tr.AdamW(model.parameters(), lr=1e-2), batches, tr.classification_loss, epochs=2,
                       accumulation_steps=3, eval_data=batches[:2], restore_best=False, progress=False)
    assert history["step"] == [1, 2, 3, 4] and history["epoch"] == [0, 0, 1, 1]
    assert history["eval_step"] == [1, 2, 3, 4]  # 10 evaluations asked, 4 steps
    assert history["eval"]["loss"][-1] == pytest.approx(tr.evaluate(model, batches[:2], tr.classification_loss))
    assert all(t >= 0 for t in history["time"]) and history["wall_seconds"] >= history["time"][-1]


def test_atomic_checkpoint_write_leaves_old_file_and_no_temp_file(tmp_path, monkeypatch):
    import safetensors.torch

    model = TinyClassifier()
    opt = tr.AdamW(model.parameters())
    path = tmp_path / tr.CHECKPOINT_NAME
    tr.save_training_checkpoint(path, model, opt, trainer_state={"step": 1})
    before = path.read_bytes()

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="No space"):
        tr.save_training_checkpoint(path, model, opt, trainer_state={"step": 2})
    with pytest.raises(OSError, match="No space"):
        tr.save_weights(tmp_path / tr.BEST_NAME, model)
    assert [x.name for x in tmp_path.iterdir()] == [tr.CHECKPOINT_NAME]
    assert path.read_bytes() == before
    monkeypatch.undo()
    assert tr.load_training_checkpoint(path, TinyClassifier(), tr.AdamW(TinyClassifier().parameters()))["step"] == 1


def test_checkpoint_round_trip_holds_everything(tmp_path):
    model = tiny_gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)  # torch's optimizer (tensor "step") works too
    model(torch.zeros(1, 3, dtype=torch.long)).sum().backward()
    opt.step()
    tr.seed_everything(5)
    path = tr.save_training_checkpoint(tmp_path / "c.safetensors", model, opt, trainer_state={"step": 1, "t": (1, 2)})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())

    other = tiny_gpt2(seed=1)
    other_opt = torch.optim.AdamW(other.parameters(), lr=1e-3)
    tr.seed_everything(6)
    state = tr.load_training_checkpoint(path, other, other_opt)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert state["step"] == 1 and state["t"] == (1, 2)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    assert other.lm_head.weight is other.transformer.wte.weight  # still tied
    assert other_opt.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    p, q = next(iter(opt.state)), next(iter(other_opt.state))
    assert torch.equal(opt.state[p]["exp_avg"], other_opt.state[q]["exp_avg"])
    assert torch.equal(opt.state[p]["step"], other_opt.state[q]["step"])


def test_checkpoint_errors_are_clear(tmp_path):
    model = TinyClassifier()
    path = tr.save_training_checkpoint(tmp_path / "c.safetensors", model, tr.AdamW(model.parameters()))
    wider = TinyClassifier(dim=32)
    with pytest.raises(ValueError, match=r"wrong shapes .*embeddings.weight: file \(30, 16\), model \(30, 32\)"):
        tr.load_training_checkpoint(path, wider, tr.AdamW(wider.parameters()))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        tr.load_training_checkpoint(broken, model, tr.AdamW(model.parameters()))
    with pytest.raises(FileNotFoundError):
        tr.load_weights(tmp_path / "none.safetensors", model)
    weights = tr.save_weights(tmp_path / "w.safetensors", model)
    with pytest.raises(ValueError, match="weights only"):
        tr.load_training_checkpoint(weights, model, tr.AdamW(model.parameters()))


def test_train_refuses_to_overwrite_or_to_resume_wrongly(tmp_path):
    def run(**kwargs):
        model = TinyClassifier()
        return tr.train(model, tr.AdamW(model.parameters()), classification_batches(3), tr.classification_loss,
                        checkpoint_dir=tmp_path, progress=False, **{"max_steps": 4, **kwargs})

    with pytest.raises(FileNotFoundError, match="holds no checkpoint.safetensors"):
        run(resume=True)
    run()
    with pytest.raises(FileExistsError, match="pass resume=True"):
        run()
    with pytest.raises(ValueError, match=r"max_steps=6 \(checkpoint: 4\)"):
        run(resume=True, max_steps=6)
    assert run(resume=True)["step"] == [1, 2, 3, 4]  # already finished: nothing more to do


def test_train_bad_settings_and_non_finite_loss():
    model = TinyClassifier()
    batches = classification_batches(3)

    def run(**kwargs):
        return tr.train(model, tr.AdamW(model.parameters()), batches, tr.classification_loss, progress=False,
                        **kwargs)

    with pytest.raises(ValueError, match="exactly one of max_steps"):
        run()
    with pytest.raises(ValueError, match="exactly one of max_steps"):
        run(max_steps=3, epochs=1)
    with pytest.raises(ValueError, match="max_grad_norm=0"):
        run(max_steps=3, max_grad_norm=0)
    with pytest.raises(ValueError, match="accumulation_steps"):
        run(max_steps=3, accumulation_steps=0)
    with pytest.raises(ValueError, match="make no step"):
        run(epochs=1, accumulation_steps=5)
    with pytest.raises(TypeError, match="length"):
        tr.train(model, tr.AdamW(model.parameters()), iter(batches), tr.classification_loss, epochs=1,
                 progress=False)
    with pytest.raises(ValueError, match="a one-shot iterator already used up"):
        tr.train(model, tr.AdamW(model.parameters()), iter(batches), tr.classification_loss, max_steps=5,
                 progress=False)
    with pytest.raises(KeyError, match="best_metric='accuracy'"):
        run(max_steps=2, eval_data=batches, best_metric="accuracy")
    with pytest.raises(ValueError, match="lr=-0.1"):
        tr.AdamW(model.parameters(), lr=-0.1)

    def exploding(model, batch):
        total, count = tr.classification_loss(model, batch)
        return tr.LossSum(total * float("inf"), count)

    with pytest.raises(FloatingPointError, match="loss of micro-batch 0 is inf"):
        tr.train(model, tr.AdamW(model.parameters()), batches, exploding, max_steps=2, progress=False)


def test_resume_needs_data_that_starts_over(tmp_path):
    model = TinyClassifier()
    tr.train(model, tr.AdamW(model.parameters()), classification_batches(3), tr.classification_loss, max_steps=2,
             checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="cannot resume with a one-shot iterator"):
        tr.train(model, tr.AdamW(model.parameters()), iter(classification_batches(3)), tr.classification_loss,
                 max_steps=2, checkpoint_dir=tmp_path, resume=True, progress=False)
