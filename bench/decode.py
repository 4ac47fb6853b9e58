"""Decode benchmark: GPT-2 generation speed, course_lib vs transformers, same weights, same run.

    .venv/bin/python bench/decode.py [--tokens 64] [--repeats 7] [--threads 2] [--prompt-len 16] [--ab-steps 150]
                                     [--quick] [--json bench/results/decode-1.json]

Model: transformers' ``GPT2Config()`` (gpt2, 124M: 12 layers, 768 wide, vocabulary 50257) with
random weights, made once (seeded) by transformers and written with ``save_pretrained`` into a
temporary folder; ``course_lib.load_model(folder)`` reads that file, so every library holds the
same weights. Batch 1, float32, CPU, KV cache on, greedy, a fixed prompt of ``--prompt-len``
random token ids, exactly ``--tokens`` new tokens (no early stop). Three ways to generate:

- transformers: ``GPT2LMHeadModel.from_pretrained(folder).generate(...)`` under ``torch.inference_mode()``;
- course default: ``load_model(folder)`` then ``model.generate(...)``: the path every user takes
  (``course_lib.fused.speed_up``: PyTorch's fused kernels, float weights stored in the layout this
  CPU reads fastest for one token at a time, measured once per process: ``matvec_layout``);
- course teaching: ``load_model(folder, fast=False)``, chapter 02's layers as written, from
  primitive ops (what the notebooks show).

Each is warmed up once, then the repetitions are interleaved (the order rotates every
repetition) so machine noise hits all three alike. Printed, as medians:
- whole call: new tokens per second of the whole ``generate`` call, and ms per token;
- prefill: time from the call to the first new token (the prompt's forward pass + choosing);
- decode steps: tokens per second after the first token, ``(tokens - 1) / (last - first)``,
  timed with each library's streaming callback — the steady state that the ceiling bounds;
- ratios against transformers: > 1 means course_lib is faster.
All three must produce identical greedy tokens (the script exits with an error otherwise);
max |Δ| of the prompt's last-position logits against transformers is printed too.

llama.cpp, when ``llama-cpp-python`` is installed (``pip install -e '.[llama]'``: it compiles
from source, about 15 minutes on 2 cores; not part of ``make setup``): the same weights written
as an F32 GGUF file by the course's own exporter (``course_lib.export.to_gguf``, chapter 11),
run by ``LlamaCpp`` with the same threads, greedy, timed in the same interleaved repetitions
(its decode steps timed with its token callback). Its tokens are compared with transformers'
and the agreement printed (float32 sums in another order can flip a near-tie of random
weights). Without it the script says what is missing and prints no llama.cpp row.

The memory-bandwidth ceiling. Generating one token multiplies one vector by every weight
matrix, so each step reads all the weights from memory once (they are far larger than the
caches) and does only 2 flops per weight read: the step is bound by memory bandwidth.
Bytes read per token, as counted here: every parameter of the transformer blocks, ``ln_f``,
the token embedding ``wte`` once, as the (tied) LM head — looking up the new token's own
embedding row reads one of those same rows — and one row of the position embedding ``wpe``.
float32, 4 bytes each. The KV cache (read by attention, growing with the sequence) is printed
beside it but not counted: it is about 1 % of the weights here. The machine's read bandwidth
is measured in the same run: ``big.sum()`` over a float32 buffer of 512 MB (256 MB when less
than 4 GB of memory is available), far larger than the caches, timed once in every repetition
with the same threads, median. ceiling tokens/s = bandwidth / bytes per token; each
implementation's decode-step rate is shown as a fraction of it.

What the input checks cost. ``GPT2Model.check_inputs`` runs on every forward call (on
decoding steps only the checks that read metadata) and ``generate_ids`` checks its arguments
and the prompt once per call. Measured in the same run, two ways, on the course's default path (the
fastest, where a fixed cost weighs most):

- with vs without: a fourth runner, the same default model with every check switched off
  (``check_inputs`` replaced on the instance, ``check_generate_inputs`` patched out), runs
  right before or after the default one in every repetition (the order alternates), so each
  pair meets the same machine load; the median over the pairs of (time with checks / time
  without) is printed for the whole call and for the decode steps, with the pairs' range.
  1.000 = no cost; the range shows the machine's noise;
- decode steps one by one: ``--ab-steps`` single decoding steps with the checks and as many
  without, alternating step by step within one sequence (the finest interleaving, the most
  robust to a loaded machine); the ratios of the median and of the fastest step times (on a
  busy machine the fastest steps are the undisturbed ones);
- the checks alone: the same calls timed in a loop (one decode step's checks, the
  prompt's, the per-call argument checks), summed over one generate call and divided by
  that call's median time.

``--quick``: 2 layers (same width and vocabulary), 8 tokens, 3 repetitions unless given,
a 256 MB buffer — a smoke test of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEACHING, DEFAULT = "course teaching", "course default"
NAMES = ("transformers", TEACHING, DEFAULT)
LLAMA = "llama.cpp f32"
UNCHECKED = "course default, input checks off"


def available_memory_bytes() -> int:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def make_checkpoint(folder: Path, layers: int) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=layers)).save_pretrained(folder)  # gpt2 defaults, random weights


def bytes_per_token(model) -> dict[str, int]:
    """Bytes of weights one decode step reads (see the module docstring for how they are counted)."""
    gpt = model.transformer
    blocks = sum(p.numel() * p.element_size() for p in gpt.h.parameters())
    ln_f = sum(p.numel() * p.element_size() for p in gpt.ln_f.parameters())
    wte = gpt.wte.weight.numel() * gpt.wte.weight.element_size()  # the LM head (tied), read whole once
    wpe_row = gpt.wpe.weight[0].numel() * gpt.wpe.weight.element_size()
    return {"blocks": blocks, "ln_f": ln_f, "wte (LM head)": wte, "wpe row": wpe_row,
            "total": blocks + ln_f + wte + wpe_row}


class Stamps:
    """Records when each new token arrives: a transformers streamer and a course_lib ``stream`` callback."""

    def __init__(self):
        self.times: list[float] = []
        self.prompt_seen = False

    def put(self, value) -> None:  # transformers: first the prompt, then each new token
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass

    def __call__(self, new) -> None:  # course_lib: each new token
        self.times.append(time.perf_counter())


def timed(generate, n: int) -> tuple[list[int], dict[str, float]]:
    """Run one generate call; its new tokens and timings."""
    stamps = Stamps()
    start = time.perf_counter()
    out = generate(stamps)
    end = time.perf_counter()
    tokens = out[0, -n:].tolist()
    if len(stamps.times) != n or len(out[0]) < n:
        raise SystemExit(f"expected {n} new tokens with a timestamp each, got {len(stamps.times)} timestamps")
    steady = (n - 1) / (stamps.times[-1] - stamps.times[0]) if n > 1 else float("nan")
    return tokens, {"total": end - start, "prefill": stamps.times[0] - start, "decode_rate": steady}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=None, help="new tokens per call (default 64; --quick 8)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repetitions (default 7; --quick 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="2 layers, 8 tokens, 3 repetitions: a smoke test")
    parser.add_argument("--json", default=None, help="also write the medians and ratios to this JSON file")
    parser.add_argument("--ab-steps", type=int, default=None,
                        help="decoding steps timed with and as many without the input checks (default 150; --quick 20)")
    args = parser.parse_args()
    n = args.tokens if args.tokens is not None else (8 if args.quick else 64)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 7)
    layers = 2 if args.quick else 12
    args.ab_steps = args.ab_steps if args.ab_steps is not None else (20 if args.quick else 150)
    if n < 2 or repeats < 1 or args.prompt_len < 1 or args.threads < 1 or args.ab_steps < 1:
        parser.error("--tokens must be >= 2; --repeats, --prompt-len, --threads and --ab-steps >= 1")
    if args.prompt_len + 2 * args.ab_steps > 1024:
        parser.error("--prompt-len + 2 * --ab-steps must fit GPT-2's 1024 positions")
    torch.set_num_threads(args.threads)

    from transformers import GPT2LMHeadModel  # the oracle: imported here, never by course_lib
    from transformers.utils import logging

    from course_lib import load_model
    from course_lib.fused import matvec_layout_report

    logging.set_verbosity_error()
    logging.disable_progress_bar()

    prompt = torch.randint(0, 50257, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gpt2-random"
        make_checkpoint(folder, layers)
        ref = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
        ours = load_model(folder, fast=False)  # the teaching path
        fused = load_model(folder)  # a second copy, the default (fast) path
        llama = llama_cpp_runner(ours, Path(tmp), prompt, n, args.threads)
    pad = ref.config.eos_token_id
    for model in (ref, ours, fused):
        assert all(p.dtype == torch.float32 for p in model.parameters())

    def run_ref(stamps):
        with torch.inference_mode():
            return ref.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad,
                                use_cache=True, streamer=stamps)

    runners = {
        "transformers": run_ref,
        TEACHING: lambda stamps: ours.generate(prompt, n, eos_token_id=[], use_cache=True, stream=stamps),
        DEFAULT: lambda stamps: fused.generate(prompt, n, eos_token_id=[], use_cache=True, stream=stamps),
    }

    def run_unchecked(stamps):
        with input_checks_off(fused):
            return fused.generate(prompt, n, eos_token_id=[], use_cache=True, stream=stamps)

    runners[UNCHECKED] = run_unchecked
    names = NAMES + ((LLAMA,) if llama else ())
    if llama:
        runners[LLAMA] = llama

    # the same tokens, and how far the logits are apart
    with torch.inference_mode():
        expected = ref(prompt).logits[0, -1]
        logit_diff = {name: (model(prompt)[0, -1] - expected).abs().max().item()
                      for name, model in ((TEACHING, ours), (DEFAULT, fused))}
    tokens = {name: timed(run, n)[0] for name, run in runners.items()}  # also the warm-up
    llama_tokens = tokens.pop(LLAMA, None)
    check_tokens(tokens, tokens["transformers"])

    buffer_mb = 512 if available_memory_bytes() >= 4 * 2**30 and not args.quick else 256
    big = torch.ones(buffer_mb * 2**20 // 4)  # touched: every page is really there
    big.sum()
    bandwidth = []  # bytes / second
    everything = (*names, UNCHECKED)
    results = {name: [] for name in everything}
    for r in range(repeats):  # interleaved, the order rotating
        order = list(names[r % len(names):] + names[:r % len(names)])
        # the default model with and without checks back to back (which first alternates): both meet the same load
        order.insert(order.index(DEFAULT) + r % 2, UNCHECKED)
        for name in order:
            got, t = timed(runners[name], n)
            if name != LLAMA:
                check_tokens({name: got}, tokens["transformers"])
            results[name].append(t)
        sums = []
        for _ in range(3):
            start = time.perf_counter()
            big.sum()
            sums.append(time.perf_counter() - start)
        bandwidth.append(big.numel() * big.element_size() / statistics.median(sums))
    del big

    med = {name: {k: statistics.median(t[k] for t in ts) for k in ts[0]} for name, ts in results.items()}
    bw = statistics.median(bandwidth)
    per_token = bytes_per_token(ours)
    ceiling = bw / per_token["total"]
    C, L, P = ours.config.n_embd, ours.config.n_layer, args.prompt_len
    kv_mean = 2 * L * (P + (n - 1) / 2) * C * 4  # keys + values read per step, averaged over the run
    params = sum(p.numel() for p in ours.parameters())
    label = "GPT-2 124M" if layers == 12 else f"GPT-2 config with {layers} layers ({params / 1e6:.0f}M)"

    print(f"{label}, random weights, batch 1, float32, CPU ({cpu_name()}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; prompt {P} tokens, {n} new tokens, greedy, KV cache; "
          f"{repeats} interleaved repetitions (medians)")
    print(f"tokens: identical in all three ({len(set(tokens['transformers']))} distinct among {n}); "
          f"max |Δ| of last-position prompt logits vs transformers: "
          + ", ".join(f"{k} {v:.1e}" for k, v in logit_diff.items()))
    if llama_tokens is not None:
        same = next((i for i, (a, b) in enumerate(zip(llama_tokens, tokens["transformers"])) if a != b), n)
        print(f"llama.cpp f32 (the course's GGUF file of the same weights): "
              + ("the same tokens" if same == n else f"the same first {same} of {n} new tokens"))
    print()
    print(f"{'':18}{'whole generate call':>34}{'prefill':>12}{'decode steps (after the 1st token)':>50}")
    print(f"{'':18}{'tok/s':>10}{'ms/token':>10}{'ratio':>14}{'ms':>12}{'tok/s':>10}{'ms/token':>10}{'ratio':>14}"
          f"{'of ceiling':>16}")
    ref_med = med["transformers"]
    for name in names:
        m = med[name]
        rate = n / m["total"]
        whole_ratio = ref_med["total"] / m["total"]
        step_ratio = m["decode_rate"] / ref_med["decode_rate"]
        ratio_text = ("" if name == "transformers" else f"{whole_ratio:.2f}x", "" if name == "transformers"
                      else f"{step_ratio:.2f}x")
        print(f"{name:18}{rate:10.1f}{m['total'] / n * 1e3:10.1f}{ratio_text[0]:>14}{m['prefill'] * 1e3:12.1f}"
              f"{m['decode_rate']:10.1f}{1e3 / m['decode_rate']:10.1f}{ratio_text[1]:>14}"
              f"{m['decode_rate'] / ceiling:15.0%}")
    print("ratio: transformers' time / this one's (> 1: faster than transformers)")
    print()
    parts = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in per_token.items() if k != "total")
    print(f"bytes of weights read per token: {per_token['total'] / 1e6:.1f} MB ({parts} MB; float32); "
          f"KV cache read per step, mean over the run: {kv_mean / 1e6:.1f} MB (not counted)")
    print(f"read bandwidth, big.sum() over {buffer_mb} MB, {torch.get_num_threads()} threads: {bw / 1e9:.1f} GB/s "
          f"(min {min(bandwidth) / 1e9:.1f}, max {max(bandwidth) / 1e9:.1f} over the repetitions)")
    print(f"memory-bandwidth ceiling: {bw / 1e9:.1f} GB/s / {per_token['total'] / 1e6:.1f} MB = {ceiling:.1f} tokens/s "
          f"({1e3 / ceiling:.1f} ms/token)")
    print()
    checked = med[DEFAULT]
    pairs = list(zip(results[DEFAULT], results[UNCHECKED]))  # (with, without), run back to back
    whole_ratios = [a["total"] / b["total"] for a, b in pairs]
    step_ratios = [b["decode_rate"] / a["decode_rate"] for a, b in pairs]  # time per step with / without
    whole, steps = statistics.median(whole_ratios), statistics.median(step_ratios)
    costs = input_check_costs(fused, prompt, n)
    steps_ab = interleaved_decode_steps(fused, prompt, args.ab_steps)
    step_with, step_without = (statistics.median(steps_ab[on]) for on in (True, False))
    per_call = costs["call"] + costs["prompt"] + (n - 1) * costs["step"]
    fastest = min(t["total"] for t in results[DEFAULT]) / min(t["total"] for t in results[UNCHECKED])
    low_with, low_without = min(steps_ab[True]), min(steps_ab[False])
    print("input validation (course default, this run; time with the checks / time without, 1.000 = no cost):")
    print(f"  the checks alone: {costs['step'] * 1e6:.1f} us per decode step (metadata only), "
          f"{costs['prompt'] * 1e6:.1f} us at the prompt ({P} tokens: + the ids' range), "
          f"{costs['call'] * 1e6:.1f} us per call (arguments, prompt): {per_call * 1e6:.0f} us per generate call = "
          f"{per_call / checked['total']:.4%} of it; {costs['step'] * checked['decode_rate']:.4%} of a decode step")
    print(f"  decode steps one by one, {args.ab_steps} with and {args.ab_steps} without, alternating: median "
          f"{step_with * 1e3:.2f} / {step_without * 1e3:.2f} ms = {step_with / step_without:.3f}x, fastest "
          f"{low_with * 1e3:.2f} / {low_without * 1e3:.2f} ms = {low_with / low_without:.3f}x")
    print(f"  whole generate calls, with and without back to back, {len(pairs)} pairs: median {whole:.3f}x (decode "
          f"steps {steps:.3f}x), fastest call {fastest:.3f}x; the pairs range over {min(whole_ratios):.3f} .. "
          f"{max(whole_ratios):.3f}: the machine's noise, coarser than the effect")
    print()
    rate = {name: n / med[name]["total"] for name in names}
    steps = {name: med[name]["decode_rate"] for name in names}
    print(f"decode ({label}, batch 1, fp32, KV cache): transformers {rate['transformers']:.1f} tok/s, "
          f"course teaching {rate[TEACHING]:.1f} ({rate[TEACHING] / rate['transformers']:.2f}x), "
          f"course default {rate[DEFAULT]:.1f} ({rate[DEFAULT] / rate['transformers']:.2f}x); "
          f"ceiling {ceiling:.1f} tok/s")
    print(f"course default path: float weights stored as {matvec_layout_report()}")
    if llama:
        print(f"llama.cpp f32: {rate[LLAMA]:.1f} tok/s whole call, {steps[LLAMA]:.1f} decode steps "
              f"({steps[LLAMA] / ceiling:.0%} of the ceiling); course default / llama.cpp: whole call "
              f"{rate[DEFAULT] / rate[LLAMA]:.2f}x, decode steps {steps[DEFAULT] / steps[LLAMA]:.2f}x "
              f"(> 1: the course is faster)")
    if args.json:
        write_json(args.json, {
            "benchmark": "decode", "machine": machine(), "model": label,
            "settings": {"prompt_tokens": P, "new_tokens": n, "repetitions": repeats, "batch": 1, "dtype": "float32"},
            "bandwidth_gb_s": bw / 1e9, "ceiling_tok_s": ceiling, "course_default_layout": matvec_layout_report(),
            "engines": {name: {"whole_call_tok_s": rate[name], "decode_tok_s": steps[name],
                               "prefill_ms": med[name]["prefill"] * 1e3, "share_of_ceiling": steps[name] / ceiling}
                        for name in names},
            "ratios": {"default_vs_transformers": steps[DEFAULT] / steps["transformers"],
                       "teaching_vs_transformers": steps[TEACHING] / steps["transformers"],
                       **({"default_vs_llama_cpp": steps[DEFAULT] / steps[LLAMA]} if llama else {})}})


def machine() -> dict:
    """The machine a measurement was taken on: CPU, threads, torch version, date."""
    import datetime

    return {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": datetime.date.today().isoformat()}


def write_json(path, data: dict) -> None:
    """``data`` as indented JSON in ``path`` (its folder made); anything JSON lacks is written as text."""
    import json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"results written to {path}")


def llama_cpp_runner(model, folder: Path, prompt: torch.Tensor, n: int, threads: int):
    """A ``timed`` runner for llama.cpp on ``model``'s weights as an F32 GGUF file, or None (said why)."""
    from course_lib.assets import asset_path
    from course_lib.export.gguf_export import LLAMA_CPP_INSTALL, LlamaCpp, llama_cpp_available, to_gguf

    if not llama_cpp_available():
        print(f"llama.cpp: not installed, no llama.cpp row ({LLAMA_CPP_INSTALL})")
        return None
    # llama.cpp refuses a file without a vocabulary: the tiny GPT-2's (ids past it get [PAD<id>] entries)
    path = to_gguf(model, folder / "gpt2-f32.gguf", "F32", tokenizer=asset_path("tiny-gpt2"))
    runner = LlamaCpp(path, threads=threads, n_ctx=prompt.shape[1] + n + 8)

    def run(stamps):
        return torch.tensor([runner.generate_ids(prompt, n, stream=stamps)])

    return run


@contextlib.contextmanager
def input_checks_off(model):
    """Within this block ``model`` (a course_lib GPT-2) runs with no input or argument checks at all."""
    from course_lib import generation

    def nothing(*args, **kwargs):
        return None

    model.transformer.check_inputs = nothing  # an instance attribute hides the method
    try:
        with mock.patch.object(generation, "check_generate_inputs", nothing):
            yield
    finally:
        del model.transformer.check_inputs


def interleaved_decode_steps(model, prompt: torch.Tensor, steps: int) -> dict[bool, list[float]]:
    """Seconds of ``steps`` decoding steps with the input checks and ``steps`` without, one by one, alternating.

    One greedy sequence with a KV cache, fed one token at a time; the checks are switched on or
    off before each step's timer starts (``check_inputs`` hidden on the instance or not), in the
    order on, off, off, on, ... so that a slow stretch of the machine hits both alike.
    """
    from course_lib.generation import KVCache

    def nothing(*args, **kwargs):
        return None

    gpt = model.transformer
    cache = KVCache(gpt.config.n_layer, capacity=prompt.size(1) + 2 * steps)
    times = {True: [], False: []}
    with torch.inference_mode():
        token = model(prompt, kv_cache=cache, last_only=True)[:, -1].argmax(-1, keepdim=True)  # (1, 1)
        for i in range(2 * steps):
            checked = i % 4 in (0, 3)
            if not checked:
                gpt.check_inputs = nothing
            start = time.perf_counter()
            logits = model(token, kv_cache=cache, last_only=True)
            times[checked].append(time.perf_counter() - start)
            if not checked:
                del gpt.check_inputs
            token = logits[:, -1].argmax(-1, keepdim=True)
    return times


def time_per_call(fn, calls: int = 2000) -> float:
    """Seconds per call of ``fn()``: the median of 5 loops of ``calls`` calls."""
    fn()
    loops = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        loops.append((time.perf_counter() - start) / calls)
    return statistics.median(loops)


def input_check_costs(model, prompt: torch.Tensor, n: int) -> dict[str, float]:
    """Seconds the checks of one ``generate`` call take: per decode step, at the prompt, and per call."""
    from course_lib import generation

    step_ids = prompt[:, -1:]  # (1, 1): what a decoding step feeds in
    per_call = lambda: generation.check_generate_inputs(model, prompt, n, None, temperature=1.0,  # noqa: E731
                                                        eos_token_id=[])
    return {"step": time_per_call(lambda: model.transformer.check_inputs(step_ids, None, None, 16, decoding=True)),
            "prompt": time_per_call(lambda: model.transformer.check_inputs(prompt, None, None, 0, decoding=True)),
            "call": time_per_call(per_call)}


def check_tokens(tokens: dict[str, list[int]], expected: list[int]) -> None:
    """Exit with an error naming the first position where greedy tokens differ from transformers'."""
    for name, got in tokens.items():
        if got != expected:
            i = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
            raise SystemExit(f"FAIL: {name} generated different greedy tokens from transformers: first at new "
                             f"token {i}: {got[i]} instead of {expected[i]}\n  {name}: {got}\n  transformers: "
                             f"{expected}")


if __name__ == "__main__":
    main()
