"""The ex06 checks have teeth: the solutions pass, typical wrong answers fail.

Each wrong answer is a mistake a learner is likely to make, or a call of the answer key
(``course_lib.generation``, ``course_lib.models.gpt2``, ``course_lib.layers.causal_mask``)
that the checks switch off. The stretch exercises (``min_p_filter``,
``apply_repetition_penalty``) also have ``transformers``' logits processors among their
right answers, and their messages must name the mistake. Every one must be caught for several seeds: with a GradeError,
or, for the few marked "(raises)", by an exception from the wrong answer itself (the grader
reports those as "raised an error", 0 points). Some right answers written differently from
the solution must pass.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib import layers
from course_lib.grading.registry import GradeError
from helpers import assert_wrong_answer_fails, chapter_checks, have_solutions, load_exercise_module

SEEDS = range(3)
FILE = "ex06_gpt2.py"
HAS_SOLUTIONS = have_solutions(FILE)
INF = float("-inf")

checks = chapter_checks


@pytest.mark.skipif(not HAS_SOLUTIONS, reason="a learner hand-out has no solutions/")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(checks("ex06")))
def test_solution_passes(name, seed):
    checks("ex06")[name].grade(getattr(load_exercise_module("solutions", FILE), name), np.random.default_rng(seed))


# ----------------------------------------------------------------------------- attention

def _ij(tq, tk):
    return torch.arange(tq)[:, None], torch.arange(tk)[None, :]


def _causal(tq, tk):
    i, j = _ij(tq, tk)
    return j <= i + (tk - tq)


def _split(transpose=True, order="qkv", heads_first=False, interleaved=False):
    def split_qkv(x, h):
        B, T, C3 = x.shape
        C = C3 // 3
        if heads_first:  # (B, T, H, 3D), then q, k, v from each head's slice
            parts = x.view(B, T, h, 3 * (C // h)).split(C // h, dim=-1)
            parts = [p.reshape(B, T, C) for p in parts]
        elif interleaved:  # q, k, v alternate feature by feature
            parts = list(x.view(B, T, C, 3).unbind(-1))
        else:
            parts = list(x.split(C, dim=-1))
        parts = dict(zip("qkv", parts))
        out = []
        for name in order:
            t = parts[name]
            out.append(t.reshape(B, T, h, C // h).transpose(1, 2) if transpose else t.reshape(B, h, T, C // h))
        return tuple(out)
    return split_qkv


def _kv_step(dim=2, new_first=False, scale="sqrt", use_new=True, mask=None, softmax_dim=-1, return_old=False,
             swap_kv=False):
    def kv_cache_step(q, k_cache, v_cache, k_new, v_new):
        parts_k, parts_v = ([k_new, k_cache], [v_new, v_cache]) if new_first else ([k_cache, k_new], [v_cache, v_new])
        k_all, v_all = torch.cat(parts_k, dim=dim), torch.cat(parts_v, dim=dim)
        k_att, v_att = (k_all, v_all) if use_new else (k_cache, v_cache)
        if swap_kv:
            k_att, v_att = v_att, k_att
        scores = q @ k_att.transpose(-2, -1)
        d = q.size(-1)
        scores = scores / {"sqrt": math.sqrt(d), "D": d, None: 1.0}[scale]
        if mask == "tril":
            scores = scores.masked_fill(~torch.ones(1, k_att.size(2), dtype=torch.bool).tril(), INF)
        out = torch.softmax(scores, dim=softmax_dim) @ v_att
        return (out, k_cache, v_cache) if return_old else (out, k_all, v_all)
    return kv_cache_step


EX06_WRONG_ATTENTION = {
    "causal_mask": {
        "tril without the cache offset": lambda tq, tk: torch.ones(tq, tk, dtype=torch.bool).tril(),
        "inverted (True = masked)": lambda tq, tk: ~_causal(tq, tk),
        "offset with the wrong sign": lambda tq, tk: _ij(tq, tk)[1] <= _ij(tq, tk)[0] - (tk - tq),
        "diagonal left out (j < ...)": lambda tq, tk: _ij(tq, tk)[1] < _ij(tq, tk)[0] + (tk - tq),
        "upper triangle": lambda tq, tk: torch.ones(tq, tk, dtype=torch.bool).triu(diagonal=tk - tq),
        "float 0/1 mask": lambda tq, tk: _causal(tq, tk).float(),
        "shape (t_key, t_query)": lambda tq, tk: _causal(tq, tk).T,
        "answer key": lambda tq, tk: __import__("course_lib.layers", fromlist=["x"]).causal_mask(tq, tk),
    },
    "split_qkv": {
        "split into heads before q/k/v": _split(heads_first=True),
        "q, k, v interleaved feature by feature": _split(interleaved=True),
        "order k, q, v": _split(order="kqv"),
        "heads without transpose (reshape to (B, H, T, D))": _split(transpose=False),
        "(B, T, H, D) not transposed": lambda x, h: tuple(t.reshape(*t.shape[:2], h, -1)
                                                          for t in x.split(x.size(-1) // 3, dim=-1)),
        "q, k, v unsplit into heads": lambda x, h: tuple(x.split(x.size(-1) // 3, dim=-1)),
    },
    "kv_cache_step": {
        "cat on the head axis (raises)": _kv_step(dim=1),
        "cat on the feature axis (raises)": _kv_step(dim=-1),
        "new token first": _kv_step(new_first=True),
        "no 1/sqrt(D) scale": _kv_step(scale=None),
        "divided by D, not sqrt(D)": _kv_step(scale="D"),
        "new token left out of the attention": _kv_step(use_new=False),
        "tril mask without the offset": _kv_step(mask="tril"),
        "softmax over the query axis": _kv_step(softmax_dim=-2),
        "returns the old cache": _kv_step(return_old=True),
        "keys and values swapped": _kv_step(swap_kv=True),
        "answer key (LayerKVCache)": lambda q, kc, vc, kn, vn: (
            __import__("course_lib.generation", fromlist=["x"]).LayerKVCache(), q, q),
    },
}


# ----------------------------------------------------------------------------- choosing a token

def _top_k(op="<", ties=True, fill=INF, largest=True, clamp=True, inplace=False):
    def top_k_filter(logits, k):
        kk = min(k, logits.size(-1)) if clamp else k
        top = torch.topk(logits, kk, dim=-1, largest=largest)
        if not ties:
            keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, top.indices, True)
            return logits.masked_fill(~keep, fill)
        kth = top.values[..., -1:]
        drop = logits < kth if op == "<" else logits <= kth
        if not largest:
            drop = logits > kth
        if inplace:
            return logits.masked_fill_(drop, fill)
        return logits.masked_fill(drop, fill)
    return top_k_filter


def _top_p(rule="before>=", unsort="scatter", sort=True, descending=True):
    def top_p_filter(logits, p):
        if sort:
            s, order = torch.sort(logits, dim=-1, descending=descending)
        else:
            s, order = logits, None
        probs = torch.softmax(s, dim=-1)
        cum = probs.cumsum(-1)
        drop = {"before>=": cum - probs >= p, "cum>": cum > p, "cum>=": cum >= p, "prob<": probs < p}[rule]
        if order is not None:
            if unsort == "scatter":
                drop = drop.scatter(-1, order, drop)
            elif unsort == "gather":
                drop = drop.gather(-1, order)
        return logits.masked_fill(drop, INF)
    return top_p_filter


def _sample(temperature="divide", draw="multinomial", squeeze=True, use_generator=True, twice=False):
    def sample_with_temperature(logits, temperature_value, generator=None):
        t = temperature_value
        scaled = {"divide": logits / t, "multiply": logits * t, "ignore": logits}[temperature]
        probs = torch.softmax(scaled, dim=-1)
        if draw == "argmax":
            return probs.argmax(-1)
        if draw == "categorical":
            return torch.distributions.Categorical(probs=probs).sample()
        if draw == "log-probs":
            probs = torch.log_softmax(scaled, dim=-1)
        g = generator if use_generator else None
        out = torch.multinomial(probs, 1, generator=g)
        if twice:
            out = torch.multinomial(probs, 1, generator=g)
        return out.squeeze(-1) if squeeze else out
    return sample_with_temperature


def _in_place_divide(logits, t, generator=None):
    logits /= t
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)


EX06_WRONG_SAMPLING = {
    "top_k_filter": {
        "strict > (the k-th itself dropped)": _top_k(op="<="),
        "exactly k: ties with the k-th dropped": _top_k(ties=False),
        "k >= V not handled (raises)": _top_k(clamp=False),
        "filtered to 0, not -inf": _top_k(fill=0.0),
        "filtered to -1e9, not -inf": _top_k(fill=-1e9),
        "keeps the k lowest": _top_k(largest=False),
        "masked_fill_ in place": _top_k(inplace=True),
        "answer key": lambda logits, k: __import__("course_lib.generation", fromlist=["x"]).top_k_filter(logits, k),
    },
    "top_p_filter": {
        "cum > p (the token that reaches p is dropped)": _top_p(rule="cum>"),
        "cum >= p (the top token can be dropped)": _top_p(rule="cum>="),
        "drops tokens whose own probability is below p": _top_p(rule="prob<"),
        "sorted order not undone": _top_p(unsort="none"),
        "gather instead of scatter to undo the sort": _top_p(unsort="gather"),
        "no sort (vocabulary order)": _top_p(sort=False),
        "sorted ascending": _top_p(descending=False),
        "answer key": lambda logits, p: __import__("course_lib.generation", fromlist=["x"]).top_p_filter(logits, p),
    },
    "sample_with_temperature": {
        "argmax instead of sampling": _sample(draw="argmax"),
        "temperature multiplied, not divided": _sample(temperature="multiply"),
        "temperature ignored": _sample(temperature="ignore"),
        "generator ignored": _sample(use_generator=False),
        "Categorical(...).sample() (no generator)": _sample(draw="categorical"),
        "(B, 1) not squeezed": _sample(squeeze=False),
        "draws twice, keeps the second": _sample(twice=True),
        "log-probabilities into multinomial (raises)": _sample(draw="log-probs"),
        "logits divided in place": _in_place_divide,
        "float tokens": lambda logits, t, g=None: _sample()(logits, t, g).float(),
        "answer key": lambda logits, t, g=None: __import__("course_lib.generation", fromlist=["x"]).next_token(
            logits, t, generator=g),
    },
}


# ----------------------------------------------------------------------------- batches and the loop

def _greedy(feed="all", position=-1, pick="argmax", steps=0, only_new=False):
    def greedy_generate(logits_fn, input_ids, max_new_tokens):
        ids = input_ids
        for _ in range(max(max_new_tokens + steps, 0)):
            fed = {"all": ids, "last": ids[:, -1:], "prompt": input_ids}[feed]
            logits = logits_fn(fed)[:, position]
            if pick == "argmax":
                new = logits.argmax(-1)
            elif pick == "argmin":
                new = logits.argmin(-1)
            else:
                new = torch.multinomial(torch.softmax(logits, -1), 1).squeeze(-1)
            ids = torch.cat([ids, new[:, None]], dim=1)
        return ids[:, input_ids.size(1):] if only_new else ids
    return greedy_generate


def _answer_key_generate(logits_fn, input_ids, max_new_tokens):
    from course_lib import generation
    from course_lib.grading.ex06 import _ToyModel

    return generation.generate_ids(_ToyModel(logits_fn), input_ids, max_new_tokens, use_cache=False,
                                   eos_token_id=[])


def _decoder_mask(offset=True, padding="keys", causal=True, combine="and", head_axis=True):
    def decoder_attention_mask(attention_mask, new_tokens):
        total = attention_mask.size(-1)
        if causal:
            mask = _causal(new_tokens, total) if offset else torch.ones(new_tokens, total, dtype=torch.bool).tril()
        else:
            mask = torch.ones(new_tokens, total, dtype=torch.bool)
        real = attention_mask != 0
        if padding == "keys":
            pad = real[:, None, None, :]  # (B, 1, 1, P + T)
        elif padding == "queries":
            pad = real[:, None, -new_tokens:, None]  # (B, 1, T, 1)
        else:
            pad = torch.ones(1, 1, 1, total, dtype=torch.bool)
        out = mask & pad if combine == "and" else mask | pad
        return out if head_axis else out[:, 0]
    return decoder_attention_mask


EX06_WRONG_LOOP = {
    "decoder_attention_mask": {
        "causal without the cache offset": _decoder_mask(offset=False),
        "padding ignored": _decoder_mask(padding="none"),
        "padding on the queries, not the keys": _decoder_mask(padding="queries"),
        "causal part forgotten": _decoder_mask(causal=False),
        "| instead of &": _decoder_mask(combine="or"),
        "no head axis: (B, T, P + T)": _decoder_mask(head_axis=False),
        "0/1 integers": lambda m, t: _decoder_mask()(m, t).long(),
        "answer key": lambda m, t: __import__("course_lib.models.gpt2", fromlist=["x"]).gpt2_attention_mask(
            m, m.size(1) - t, t),
        "layers.causal_mask (the answer key of causal_mask)": lambda m, t: __import__(
            "course_lib.layers", fromlist=["x"]).causal_mask(t, m.size(1)) & (m != 0)[:, None, None, :],
    },
    "position_ids_from_mask": {
        "arange, mask ignored": lambda m: torch.arange(m.size(1)).expand(m.shape),
        "pads get -1 (no clamp)": lambda m: m.long().cumsum(-1) - 1,
        "tokens count from 1": lambda m: m.long().cumsum(-1) * m.long(),
        "pads get 1 (as transformers' generate fills them)": lambda m: (m.long().cumsum(-1) - 1).masked_fill(m == 0, 1),
        "pads counted: arange with the pads zeroed": lambda m: torch.arange(m.size(1)) * m.long(),
        "float positions": lambda m: (m.long().cumsum(-1) - 1).clamp(min=0).float(),
        "answer key": lambda m: __import__("course_lib.models.gpt2", fromlist=["x"]).gpt2_position_ids(m, 0, m.size(1)),
    },
    "greedy_generate": {
        "only the last token fed to the model (as if there were a cache)": _greedy(feed="last"),
        "the prompt fed every step (new tokens not fed back)": _greedy(feed="prompt"),
        "the first position's logits": _greedy(position=0),
        "argmin": _greedy(pick="argmin"),
        "sampling instead of argmax": _greedy(pick="sample"),
        "one step short": _greedy(steps=-1),
        "one step too many": _greedy(steps=1),
        "returns only the new tokens": _greedy(only_new=True),
        "answer key": _answer_key_generate,
    },
}

# ----------------------------------------------------------------------------- stretch: min-p, repetition penalty

def _min_p(threshold="scaled", op="<", fill=INF, space="probs", softmax_dim=-1, best="row", out="logits"):
    def min_p_filter(logits, min_p):
        probs = torch.softmax(logits, dim=softmax_dim)
        scores = probs if space == "probs" else logits
        top = {"row": scores.amax(dim=-1, keepdim=True), "global": scores.max(), "row-no-keepdim": None}[best]
        if top is None:  # (...,) against (..., V): raises, or broadcasts wrongly when the sizes happen to fit
            top = scores.amax(dim=-1)
        limit = {"scaled": min_p * top, "absolute": torch.tensor(min_p)}[threshold]
        drop = scores < limit if op == "<" else scores <= limit
        if out == "probs":
            return probs.masked_fill(drop, 0.0)
        return logits.masked_fill(drop, fill)
    return min_p_filter


def _min_p_cumulative(logits, min_p):
    """top-p under another name: cumulative probability, not each token's own."""
    s, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(s, dim=-1)
    drop = probs.cumsum(-1) - probs >= max(min_p, 1e-6)
    return logits.masked_fill(drop.scatter(-1, order, drop), INF)


def _rep(sign_rule="sign", once=True, rows="own", op="scale", inplace=False):
    def apply_repetition_penalty(logits, input_ids, penalty):
        out = logits if inplace else logits.clone()
        for b in range(logits.size(0)):
            history = input_ids.flatten() if rows == "all" else input_ids[b]
            tokens = history.unique() if once else history
            for v in tokens.tolist():
                z = out[b, v]
                if op == "subtract":
                    out[b, v] = z - penalty
                elif sign_rule == "divide all":
                    out[b, v] = z / penalty
                elif sign_rule == "inverted":
                    out[b, v] = z / penalty if z < 0 else z * penalty
                else:
                    out[b, v] = z * penalty if z < 0 else z / penalty
        return out
    return apply_repetition_penalty


EX06_WRONG_STRETCH = {
    "min_p_filter": {
        "threshold min_p itself, not min_p x p(best)": _min_p(threshold="absolute"),
        "the best probability of the whole tensor, not of the row": _min_p(best="global"),
        "logits compared with min_p x the best logit": _min_p(space="logits"),
        "<= (a token at the threshold dropped, the best one with min_p = 1)": _min_p(op="<="),
        "softmax over the first axis": _min_p(softmax_dim=0),
        "dropped tokens set to 0, not -inf": _min_p(fill=0.0),
        "dropped tokens set to -1e9, not -inf": _min_p(fill=-1e9),
        "returns probabilities, not logits": _min_p(out="probs"),
        "cumulative probability (top-p) instead": _min_p_cumulative,
        "amax without keepdim: broadcasts wrongly (raises)": _min_p(best="row-no-keepdim"),
        "answer key": lambda logits, m: __import__("course_lib.generation", fromlist=["x"]).min_p_filter(logits, m),
    },
    "apply_repetition_penalty": {
        "negative logits divided too": _rep(sign_rule="divide all"),
        "the rule inverted (rewards repeats)": _rep(sign_rule="inverted"),
        "penalized once per occurrence": _rep(once=False),
        "every row penalized for every row's tokens": _rep(rows="all"),
        "penalty subtracted": _rep(op="subtract"),
        "changes the logits in place": _rep(inplace=True),
        "every logit penalized, seen or not": lambda logits, ids, pen: torch.where(logits < 0, logits * pen,
                                                                                  logits / pen),
        "only the last token penalized": lambda logits, ids, pen: _rep()(logits, ids[:, -1:], pen),
        "answer key": lambda logits, ids, pen: __import__("course_lib.generation", fromlist=["x"])
        .apply_repetition_penalty(logits, ids, pen),
    },
}

EX06_WRONG = {**EX06_WRONG_ATTENTION, **EX06_WRONG_SAMPLING, **EX06_WRONG_LOOP, **EX06_WRONG_STRETCH}
WRONG = [(name, label, fn) for name, cases in EX06_WRONG.items() for label, fn in cases.items()]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,label,fn", WRONG, ids=[f"ex06.{n}: {l}" for n, l, _ in WRONG])
def test_wrong_answer_fails(name, label, fn, seed):
    assert_wrong_answer_fails("ex06", name, label, fn, seed)


# ----------------------------------------------------------------------------- right answers, written differently

def _top_p_transformers(logits, p):
    """transformers' TopPLogitsWarper: sort ascending, drop while the cumulative mass is <= 1 - p."""
    sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
    remove = sorted_logits.softmax(-1).cumsum(-1) <= (1 - p)
    remove[..., -1:] = False
    return logits.masked_fill(remove.scatter(-1, order, remove), INF)


def _min_p_log_space(logits, min_p):
    """No softmax: p_v >= min_p * p_max  <=>  z_v >= z_max + ln(min_p)."""
    best = logits.amax(dim=-1, keepdim=True)
    return logits.masked_fill(logits < best + math.log(max(min_p, 1e-300)), INF) if min_p > 0 else logits.clone()


def _min_p_transformers(logits, min_p):
    tf = pytest.importorskip("transformers")
    flat = logits.reshape(-1, logits.size(-1))
    out = tf.generation.logits_process.MinPLogitsWarper(min_p)(None, flat.clone())
    return out.reshape(logits.shape)


def _repetition_transformers(logits, ids, penalty):
    tf = pytest.importorskip("transformers")
    return tf.RepetitionPenaltyLogitsProcessor(float(penalty))(ids, logits.clone())


def _kv_step_torch(q, k_cache, v_cache, k_new, v_new):
    k_all, v_all = torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)
    return F.scaled_dot_product_attention(q, k_all, v_all), k_all, v_all


RIGHT = {
    "causal_mask": {"tril with the offset as its diagonal":
                    lambda tq, tk: torch.ones(tq, tk, dtype=torch.bool).tril(diagonal=tk - tq)},
    "split_qkv": {"chunk + layers.split_heads":
                  lambda x, h: tuple(layers.split_heads(t, h) for t in x.chunk(3, dim=-1))},
    "top_p_filter": {"transformers' ascending rule": _top_p_transformers},
    "sample_with_temperature": {
        "layers.softmax, one row at a time": lambda logits, t, g=None: torch.stack(
            [torch.multinomial(layers.softmax(row / t), 1, generator=g)[0] for row in logits]),
        "unnormalised exp into multinomial": lambda logits, t, g=None: torch.multinomial(
            torch.exp(logits / t), 1, generator=g).view(-1)},
    "kv_cache_step": {"torch's scaled_dot_product_attention": _kv_step_torch},
    "position_ids_from_mask": {"(cumsum - 1) * mask": lambda m: (m.cumsum(-1) - 1) * m},
    "decoder_attention_mask": {"torch.tril with the offset, mask as bool": lambda m, t: torch.ones(
        t, m.size(1), dtype=torch.bool).tril(diagonal=m.size(1) - t) & m.bool()[:, None, None, :]},
    "min_p_filter": {"in log space, without a softmax": _min_p_log_space,
                     "transformers' MinPLogitsWarper": _min_p_transformers},
    "apply_repetition_penalty": {"a loop over each row's distinct tokens": _rep(),
                                 "transformers' RepetitionPenaltyLogitsProcessor": _repetition_transformers,
                                 "multiply by 1 / penalty for positive logits": lambda logits, ids, pen: torch.where(
                                     torch.zeros_like(logits, dtype=torch.bool).scatter(-1, ids, True),
                                     torch.where(logits > 0, logits * (1 / pen), logits * pen), logits)},
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,label,fn", [(n, l, f) for n, c in RIGHT.items() for l, f in c.items()],
                         ids=[f"ex06.{n}: {l}" for n, c in RIGHT.items() for l in c])
def test_right_answer_written_differently_passes(name, label, fn, seed):
    checks("ex06")[name].grade(fn, np.random.default_rng(seed))


def test_every_exercise_has_wrong_answers():
    assert set(EX06_WRONG) == set(checks("ex06"))


def test_answer_key_is_named_and_restored():
    from course_lib import generation

    before = (generation.top_k_filter, generation.LayerKVCache, layers.causal_mask)
    with pytest.raises(GradeError, match=r"course_lib\.generation\.top_k_filter\(\).*answer key"):
        checks("ex06")["top_k_filter"].grade(EX06_WRONG["top_k_filter"]["answer key"], np.random.default_rng(0))
    assert (generation.top_k_filter, generation.LayerKVCache, layers.causal_mask) == before


def test_points_add_up():
    exercises = checks("ex06").values()
    assert sum(ex.points for ex in exercises if not ex.stretch) == 14
    assert {ex.function: ex.points for ex in exercises if ex.stretch} == {"min_p_filter": 3,
                                                                          "apply_repetition_penalty": 3}


@pytest.mark.parametrize("name", ["min_p_filter", "apply_repetition_penalty"])
def test_stretch_messages_name_the_mistake(name):
    """The wrong-answer message says which mistake it was, not only that numbers differ."""
    expected = {
        "min_p_filter": {"threshold min_p itself, not min_p x p(best)": "min_p itself",
                         "the best probability of the whole tensor, not of the row": "whole tensor",
                         "logits compared with min_p x the best logit": "compared logits",
                         "<= (a token at the threshold dropped, the best one with min_p = 1)": "most probable token",
                         "dropped tokens set to 0, not -inf": "float('-inf')",
                         "returns probabilities, not logits": "not probabilities",
                         "cumulative probability (top-p) instead": "top-p"},
        "apply_repetition_penalty": {"negative logits divided too": "multiply negative",
                                     "the rule inverted (rewards repeats)": "wrong way",
                                     "penalized once per occurrence": "once per token",
                                     "every row penalized for every row's tokens": "its own ids",
                                     "penalty subtracted": "subtracted",
                                     "changes the logits in place": "in place",
                                     "every logit penalized, seen or not": "does not occur"},
    }[name]
    for label, words in expected.items():
        for seed in SEEDS:
            with pytest.raises(GradeError) as info:
                checks("ex06")[name].grade(EX06_WRONG[name][label], np.random.default_rng(seed))
            assert words in str(info.value), (label, str(info.value))
