"""Quantization benchmark: bytes, load memory, decode speed and quality of every scheme, one run.

    .venv/bin/python bench/quantization.py [--tokens 32] [--repeats 7] [--mem-repeats 3] [--threads 2]
                                           [--quick] [--json PATH]

Rows: float32, bfloat16 (a cast), and the weight-only schemes of ``course_lib.quantization``:
int8 per-channel, int8 per-tensor, int4 with groups of 32 (the default ``"int4"`` first, then
the other of symmetric / zero point), 64 and 128 (``"int4-g64"``, ``"int4-g128"``: zero point
or not as the library's default). ``--quick`` keeps float32, bfloat16, int8, int4 (g32) and
int4 g128.
Every model is made by ``course_lib.load_model(src, quantize=scheme)`` (quantized while the
file is read) or ``load_model(src, dtype="bfloat16")``. Columns, in three groups:

GPT-2 124M config (transformers' ``GPT2Config()``: 12 layers, 768 wide, vocabulary 50257)
with random weights, made once (seeded) by transformers and written with
``save_pretrained`` into a temporary folder, as ``bench/decode.py`` does:

- params: ``quantization.model_nbytes`` (every parameter and buffer, tied ones once: the
  integers, their bfloat16 scales and zero points, the float biases and LayerNorms), in MB
  (10^6 bytes) and % of float32;
- load peak: ``metrics.load_peak_memory(folder, quantize=..., forward=True)``: in a fresh
  process each, peak resident memory (``VmHWM``) after ``load_model`` and one forward pass
  minus the resident memory after importing torch and course_lib; the median over
  ``--mem-repeats`` rounds (the schemes' order rotating; two processes at a time, each
  measuring only itself), and % of the float32 load. The forward pass matters: float32
  weights are memory-mapped and only become resident when used (see ``load_peak_memory``);
- decode: batch 1, KV cache, greedy, a fixed prompt of 16 random token ids, exactly
  ``--tokens`` new tokens (``eos_token_id=[]``), ``--threads`` threads. Every row runs
  ``load_model``'s default path (``course_lib.fused.speed_up``: PyTorch's fused kernels for the
  float layers, float weights stored as this CPU reads them fastest; quantized layers use their
  own int8/int4 kernels). Also timed, in the same interleaved repetitions: our float32 model on
  the teaching path (``fast=False``: chapter 02's layers) and transformers' float32 ``generate``. Each model is warmed up once; the
  repetitions rotate the order so machine noise hits all alike. tok/s is the decode-step rate
  after the first new token, ``(tokens - 1) / (last - first)`` from the streaming callback
  (the prompt's prefill excluded), median over repetitions; the ratios are against our default
  float32 and our teaching-path float32 (> 1 means faster).

tiny GPT-2 (``course_lib/assets/tiny-gpt2``, the course's trained 1.35M-parameter model, real
weights): held-out perplexity exactly as its model card computes it
(``metrics.perplexity(model, ids, block_size=256)`` over the corpus's held-out split encoded
as one stream; float32 gives 173.68), its % change against float32, and top-1 agreement: the
fraction of held-out positions where the scheme's next-token argmax equals float32's (the
same forward passes: the model is wrapped so that ``perplexity``'s own batches are compared).

all-MiniLM-L6-v2 (real weights): sentence embeddings (``models.encoder.sentence_embeddings``:
mean pooling, L2-normalised) of 64 lines of the course corpus's held-out split (the first 64
with at least 6 words; 32 with ``--quick``); the mean and the minimum over sentences of the
cosine between each scheme's embedding and float32's.

llama.cpp, when ``llama-cpp-python`` is installed (an optional extra that compiles from source,
``pip install -e '.[llama]'``; not part of ``make setup``): the same random weights written by the
course's own GGUF exporter (``course_lib.export.to_gguf``, chapter 11) as F32, Q8_0 and Q4_0 files,
run by ``LlamaCpp`` with the same threads in the same interleaved decode repetitions (its steps
timed with its token callback); printed beside the course's float32 (default and teaching paths), int8 and
int4 (g32) with the ratios course / llama.cpp. ``LlamaCpp`` leaves llama.cpp's repacked Q8_0/Q4_0
buffers off (they crashed llama-cpp-python 0.3.36 on an AVX-512 Xeon); ``--llama-repack`` turns
them on. Without llama-cpp-python the script says so and prints no llama.cpp line.

Then targets (the course's quality bars and chapter 07's) with PASS/FAIL. The script is a
report: it exits 0 whether targets pass or not. ``--json PATH`` writes every number,
repetitions included.

``--quick``: the GPT-2 config with 2 layers (same width and vocabulary), 8 tokens, 2 decode
repetitions, 1 memory round, the first 4,096 held-out tokens, 32 sentences, 5 rows: a smoke
test of the script (under a minute), not a measurement.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import decode as decode_bench  # noqa: E402  (bench/decode.py: the checkpoint, the timer, the CPU's name)
from course_lib.metrics import top1_agreement  # noqa: E402


def scheme_rows(quick: bool) -> tuple[tuple[str, dict], ...]:
    """(label, load_model keyword arguments) per row. int4 labels say what the scheme really is
    (``load_model(quantize="int4")`` is groups of 32 with or without a zero point, as
    ``quantization.parse_scheme`` decides), and the other g32 variant is added beside it."""
    from course_lib.quantization import parse_scheme

    def int4(name: str) -> tuple[str, dict]:
        s = parse_scheme(name)
        return f"int4 g{s.group_size} {'zp' if s.zero_point else 'sym'}", {"quantize": name}

    default = parse_scheme("int4")
    other = "int4-sym" if default.zero_point else "int4-zp"
    rows = [("float32", {}), ("bfloat16", {"dtype": "bfloat16"}), ("int8", {"quantize": "int8"})]
    if quick:
        return tuple(rows + [int4("int4"), int4("int4-g128")])
    return tuple(rows + [("int8-tensor", {"quantize": "int8-tensor"}), int4("int4"), int4(other),
                         int4("int4-g64"), int4("int4-g128")])


UNFUSED, TRANSFORMERS = "float32 teaching", "transformers float32"
PROMPT_LEN = 16
QUICK_HELDOUT = 4096  # --quick: the first 4,096 predictions of the held-out split only

TARGETS = {  # the numbers the course promises (COURSE_SPEC.md) and chapter 07 states
    "int8 bytes": 0.27, "int4 bytes": 0.16, "int8 decode": 1.6, "int4 decode": 1.3, "int8 load peak": 0.60,
    "int8 perplexity": 0.01, "int8 cosine": 0.995, "int4 cosine": 0.95, "vs llama.cpp": 0.9,
}


def median(values):
    return statistics.median(values) if values else float("nan")


_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:5.0f} s] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# GPT-2 124M config: bytes, load memory, decode speed

def load_memory(folder: Path, rows, rounds: int, threads: int, parallel: int = 1) -> dict[str, list[dict]]:
    """``rounds`` fresh-process measurements per row, the rows' order rotating; ``parallel`` processes at a time
    (each measures only itself; their ``load_s`` then includes the contention). The checkpoint was just written,
    so its file is in the page cache for every probe."""
    from concurrent.futures import ThreadPoolExecutor

    from course_lib.metrics import load_peak_memory

    jobs = []
    for r in range(rounds):
        order = rows[r % len(rows):] + rows[:r % len(rows)]
        jobs += [(label, kwargs) for label, kwargs in order]

    def probe(job):
        label, kwargs = job
        return label, load_peak_memory(folder, task="causal-lm", threads=threads, forward=True, **kwargs)

    runs = {label: [] for label, _ in rows}
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for label, result in pool.map(probe, jobs):
            runs[label].append(result)
    return runs


LLAMA_QTYPES = ("F32", "Q8_0", "Q4_0")


def llama_cpp_runners(model, folder: Path, prompt: torch.Tensor, n: int, threads: int, repack: bool) -> dict:
    """{"llama.cpp Q8_0": runner, ...} for ``decode_bench.timed``: ``model``'s weights in the course's GGUF
    files, run by llama.cpp; {} (said why) without llama-cpp-python."""
    from course_lib.assets import asset_path
    from course_lib.export.gguf_export import LLAMA_CPP_INSTALL, LlamaCpp, llama_cpp_available, to_gguf

    if not llama_cpp_available():
        log(f"  llama.cpp: not installed, no llama.cpp rows ({LLAMA_CPP_INSTALL})")
        return {}
    runners = {}
    for qtype in LLAMA_QTYPES:
        # llama.cpp refuses a file without a vocabulary: the tiny GPT-2's (ids past it get [PAD<id>] entries)
        path = to_gguf(model, folder / f"gpt2-{qtype}.gguf", qtype, tokenizer=asset_path("tiny-gpt2"))
        llm = LlamaCpp(path, threads=threads, n_ctx=prompt.shape[1] + n + 8, repack=repack)
        runners[f"llama.cpp {qtype}"] = (lambda stamps, r=llm: torch.tensor([r.generate_ids(prompt, n, stream=stamps)]))
    return runners


def decode_speed(folder: Path, rows, n: int, repeats: int, threads: int = 2,
                 llama_repack: bool = False) -> tuple[dict, dict]:
    """Decode-step rates (and whole-call seconds) of every row, interleaved; model bytes too."""
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging

    from course_lib import load_model
    from course_lib.quantization import model_nbytes

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    prompt = torch.randint(0, 50257, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(0))
    models = {label: load_model(folder, **kwargs) for label, kwargs in rows}  # the default path
    models[UNFUSED] = load_model(folder, fast=False)  # chapter 02's layers
    nbytes = {label: model_nbytes(models[label]) for label, _ in rows}
    ref = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    log(f"  {len(models) + 1} models loaded; warm-up, then the repetitions ...")

    def run_ref(stamps):
        with torch.inference_mode():
            return ref.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                pad_token_id=ref.config.eos_token_id, use_cache=True, streamer=stamps)

    def runner(model):
        return lambda stamps: model.generate(prompt, n, eos_token_id=[], use_cache=True, stream=stamps)

    runners = {label: runner(model) for label, model in models.items()}
    runners[TRANSFORMERS] = run_ref
    runners.update(llama_cpp_runners(models[UNFUSED], folder.parent, prompt, n, threads, llama_repack))
    names = list(runners)
    tokens = {name: decode_bench.timed(run, n)[0] for name, run in runners.items()}  # also the warm-up
    same = {name: tokens[name] == tokens[TRANSFORMERS] for name in ("float32", UNFUSED, "llama.cpp F32")
            if name in tokens}
    results = {name: [] for name in names}
    for r in range(repeats):
        shift = r * len(names) // max(repeats, 1)  # rotate the order every repetition
        for name in names[shift:] + names[:shift]:
            results[name].append(decode_bench.timed(runners[name], n)[1])
    return {"runs": results, "same_tokens_as_transformers": same}, nbytes


# --------------------------------------------------------------------------------------
# Real weights: tiny GPT-2 perplexity and top-1 agreement; MiniLM cosine

class _Recorder(torch.nn.Module):
    """Wraps a model for ``metrics.perplexity``: passes its logits through, and compares each batch's with
    the reference's (``top1_agreement``), so one pass gives both numbers on exactly the same blocks."""

    def __init__(self, model, reference_logits: list | None = None):
        super().__init__()
        self.model, self.reference_logits = model, reference_logits
        self.logits, self.agree, self.count = [], 0.0, 0

    def forward(self, ids):
        logits = self.model(ids)  # (B, T, V)
        if self.reference_logits is None:
            self.logits.append(logits)
        else:
            expected = self.reference_logits[len(self.logits)]
            self.logits.append(None)
            self.agree += top1_agreement(logits, expected) * ids.numel()
            self.count += ids.numel()
        return logits


def heldout_ids(quick: bool) -> torch.Tensor:
    from course_lib import load_tokenizer
    from course_lib.corpus import corpus_text

    ids = torch.tensor(load_tokenizer("tiny-gpt2").encode(corpus_text("heldout")).ids)  # as the model card
    return ids[:QUICK_HELDOUT + 1] if quick else ids


def tiny_gpt2_quality(rows, ids: torch.Tensor) -> dict[str, dict]:
    """Held-out perplexity (``metrics.perplexity``, block_size 256, as the model card) and top-1 agreement."""
    from course_lib import load_model
    from course_lib.metrics import perplexity

    reference = load_model("tiny-gpt2")
    block = reference.config.n_positions  # 256, the model card's block_size
    recorder = _Recorder(reference)
    out = {"float32": {"perplexity": perplexity(recorder, ids, block_size=block), "top1_agreement": 1.0}}
    for label, kwargs in rows:
        if kwargs:
            scored = _Recorder(load_model("tiny-gpt2", **kwargs), recorder.logits)
            ppl = perplexity(scored, ids, block_size=block)
            out[label] = {"perplexity": ppl, "top1_agreement": scored.agree / scored.count}
    return out


def corpus_sentences(count: int) -> list[str]:
    from course_lib.corpus import corpus_lines

    lines = [line.strip() for line in corpus_lines("heldout") if len(line.split()) >= 6]
    return lines[:count]


def minilm_quality(rows, sentences: list[str]) -> dict[str, dict]:
    from course_lib import load_model, load_tokenizer
    from course_lib.metrics import cosine_similarity_rows
    from course_lib.models.encoder import sentence_embeddings

    tok = load_tokenizer("all-MiniLM-L6-v2")
    reference = sentence_embeddings(load_model("all-MiniLM-L6-v2"), tok, sentences)  # (N, 384)
    out = {}
    for label, kwargs in rows:
        emb = reference if not kwargs else sentence_embeddings(load_model("all-MiniLM-L6-v2", **kwargs), tok,
                                                               sentences)
        cos = cosine_similarity_rows(emb, reference)
        out[label] = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}
    return out


# --------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=None, help="new tokens per decode call (default 32; --quick 8)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved decode repetitions (default 7; "
                                                                  "--quick 2)")
    parser.add_argument("--mem-repeats", type=int, default=None, help="fresh-process load rounds (default 3; "
                                                                      "--quick 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 layers, 8 tokens, 5 rows: a smoke test")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write every number here")
    parser.add_argument("--llama-repack", action="store_true",
                        help="let llama.cpp repack Q8_0/Q4_0 weights (crashed llama-cpp-python 0.3.36 on an AVX-512 Xeon)")
    args = parser.parse_args()
    n = args.tokens if args.tokens is not None else (8 if args.quick else 32)
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 7)
    mem_rounds = args.mem_repeats if args.mem_repeats is not None else (1 if args.quick else 3)
    layers = 2 if args.quick else 12
    if n < 2 or repeats < 1 or mem_rounds < 1 or args.threads < 1:
        parser.error("--tokens must be >= 2; --repeats, --mem-repeats and --threads >= 1")
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # save_pretrained's shard bar
    rows = scheme_rows(args.quick)
    labels = [label for label, _ in rows]
    started = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gpt2-random"
        log(f"writing a GPT-2 config with {layers} layers, random weights ...")
        decode_bench.make_checkpoint(folder, layers)
        log(f"load peak memory: {len(rows)} schemes x {mem_rounds} round(s), a fresh process each ...")
        memory = load_memory(folder, rows, mem_rounds, args.threads, parallel=2)
        log(f"decode: {len(rows) + 2} models x {repeats} repetition(s) of {n} tokens ...")
        decode, nbytes = decode_speed(folder, rows, n, repeats, args.threads, args.llama_repack)
    log("tiny GPT-2 perplexity and top-1 agreement ...")
    ids = heldout_ids(args.quick)
    tiny = tiny_gpt2_quality(rows, ids)
    sentences = corpus_sentences(32 if args.quick else 64)
    log(f"all-MiniLM-L6-v2 cosine over {len(sentences)} sentences ...")
    minilm = minilm_quality(rows, sentences)
    seconds = time.perf_counter() - started

    # ---- medians and ratios
    rate = {name: median([t["decode_rate"] for t in ts]) for name, ts in decode["runs"].items()}
    whole = {name: n / median([t["total"] for t in ts]) for name, ts in decode["runs"].items()}
    load_inc = {label: median([m["increase_mb"] for m in memory[label]]) for label in labels}
    f32 = {"bytes": nbytes["float32"], "load": load_inc["float32"], "rate": rate["float32"],
           "teaching": rate[UNFUSED], "ppl": tiny["float32"]["perplexity"]}
    table = {}
    for label in labels:
        table[label] = {
            "params_mb": nbytes[label] / 1e6, "params_frac": nbytes[label] / f32["bytes"],
            "load_increase_mb": load_inc[label], "load_frac": load_inc[label] / f32["load"],
            "decode_tok_s": rate[label], "vs_default_f32": rate[label] / f32["rate"],
            "vs_teaching_f32": rate[label] / f32["teaching"], "whole_call_tok_s": whole[label],
            "perplexity": tiny[label]["perplexity"], "perplexity_change": tiny[label]["perplexity"] / f32["ppl"] - 1,
            "top1_agreement": tiny[label]["top1_agreement"],
            "cosine_mean": minilm[label]["cosine_mean"], "cosine_min": minilm[label]["cosine_min"],
        }

    # ---- the table
    label_name = "GPT-2 124M" if layers == 12 else f"GPT-2 {layers}-layer"
    print(f"Quantization benchmark{' (--quick: a smoke test, not a measurement)' if args.quick else ''}: "
          f"CPU ({decode_bench.cpu_name()}), {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{label_name}: random weights; decode batch 1, prompt {PROMPT_LEN}, {n} new tokens, greedy, KV cache, "
          f"default path, {repeats} interleaved repetitions (medians); load peak: fresh process + one forward, median of "
          f"{mem_rounds}")
    print(f"tiny GPT-2: held-out split{', first part only' if args.quick else ''}, {ids.numel():,} tokens, "
          f"blocks of 256; MiniLM: {len(sentences)} corpus sentences")
    print()
    w = [13, 25, 20, 30, 25, 18]
    groups = (f"{'':{w[0]}}|{label_name + ' params':^{w[1]}}|{'load peak increase':^{w[2]}}|"
              f"{'decode (default path)':^{w[3]}}|{'tiny GPT-2 quality':^{w[4]}}|{'MiniLM cosine':^{w[5]}}")
    print(groups)
    print(f"{'scheme':{w[0]}}|{'MB':>10}{'% f32':>9}{'':6}|{'MB':>9}{'% f32':>9}{'':2}|{'tok/s':>8}{'x default':>10}"
          f"{'x teaching':>11}{'':1}|{'ppl':>9}{'Δ ppl':>8}{'top-1':>8}|{'mean':>8}{'min':>8}{'':2}|")
    print("-" * (sum(w) + len(w)))
    for label in labels:
        t = table[label]
        print(f"{label:{w[0]}}|{t['params_mb']:10.1f}{t['params_frac']:9.1%}{'':6}|{t['load_increase_mb']:9.0f}"
              f"{t['load_frac']:9.0%}{'':2}|{t['decode_tok_s']:8.1f}{t['vs_default_f32']:9.2f}x"
              f"{t['vs_teaching_f32']:10.2f}x{'':1}|{t['perplexity']:9.2f}{t['perplexity_change']:+8.2%}"
              f"{t['top1_agreement']:8.1%}|{t['cosine_mean']:8.4f}{t['cosine_min']:8.4f}{'':2}|")
    print("-" * (sum(w) + len(w)))
    same = decode["same_tokens_as_transformers"]
    print(f"reference decode, same repetitions: our float32 on the teaching path (chapter 02's layers) {rate[UNFUSED]:.1f} tok/s; "
          f"transformers float32 {rate[TRANSFORMERS]:.1f} tok/s (our default float32 "
          f"{rate['float32'] / rate[TRANSFORMERS]:.2f}x, teaching {rate[UNFUSED] / rate[TRANSFORMERS]:.2f}x of it); "
          f"greedy tokens identical to transformers: default {'yes' if same['float32'] else 'NO'}, "
          f"teaching {'yes' if same[UNFUSED] else 'NO'}")
    print("decode tok/s: steps after the first new token; whole generate call (prefill included): "
          + ", ".join(f"{name} {whole[name]:.1f}" for name in [*labels, UNFUSED, TRANSFORMERS]))
    llama = {name: value for name, value in rate.items() if name.startswith("llama.cpp")}
    if llama:
        int4_g32 = next(label for label in labels if label.startswith("int4 g32"))
        pairs = (("float32", "llama.cpp F32"), (UNFUSED, "llama.cpp F32"), ("int8", "llama.cpp Q8_0"),
                 (int4_g32, "llama.cpp Q4_0"))
        print("llama.cpp, the course's GGUF files of the same weights, same repetitions, decode tok/s: "
              + ", ".join(f"{name.removeprefix('llama.cpp ')} {value:.1f}" for name, value in llama.items())
              + f"; F32 greedy tokens identical to transformers: {'yes' if same.get('llama.cpp F32') else 'NO'}")
        print("course / llama.cpp, decode steps (> 1: the course is faster): " + ", ".join(
            f"{ours} / {theirs.removeprefix('llama.cpp ')} {rate[ours] / rate[theirs]:.2f}x" for ours, theirs in pairs))
    print(f"float32 load: {f32['load']:.0f} MB peak increase for {nbytes['float32'] / 1e6:.0f} MB of parameters; "
          f"load_model seconds (median): "
          + ", ".join(f"{label} {median([m['load_s'] for m in memory[label]]):.1f}" for label in labels))
    print("load peak increase of every fresh process (MB): "
          + ", ".join(f"{label} " + "/".join(f"{m['increase_mb']:.0f}" for m in memory[label]) for label in labels))

    # ---- targets
    checks = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"target": name, "pass": bool(ok), "detail": detail})

    int8_rows = [label for label in labels if label.startswith("int8")]
    int4_rows = [label for label in labels if label.startswith("int4")]
    for label in int8_rows:
        frac = table[label]["params_frac"]
        check(f"{label} parameter bytes <= {TARGETS['int8 bytes']:.0%} of float32", frac <= TARGETS["int8 bytes"],
              f"{frac:.1%}")
    for label in int4_rows:
        frac = table[label]["params_frac"]
        check(f"{label} parameter bytes <= {TARGETS['int4 bytes']:.0%} of float32", frac <= TARGETS["int4 bytes"],
              f"{frac:.1%}")
    for label in int8_rows + int4_rows:
        goal = TARGETS["int8 decode" if label.startswith("int8") else "int4 decode"]
        t = table[label]
        check(f"{label} decode >= {goal}x our default float32", t["vs_default_f32"] >= goal,
              f"{t['vs_default_f32']:.2f}x default float32 ({t['decode_tok_s']:.1f} vs {f32['rate']:.1f} tok/s); "
              f"{t['vs_teaching_f32']:.2f}x teaching-path float32 ({f32['teaching']:.1f} tok/s)")
    if "int8" in table:
        t = table["int8"]
        check(f"load_model(quantize='int8') peak <= {TARGETS['int8 load peak']:.0%} of a float32 load",
              t["load_frac"] <= TARGETS["int8 load peak"],
              f"{t['load_frac']:.0%} ({t['load_increase_mb']:.0f} MB vs {f32['load']:.0f} MB)")
        check(f"int8 per-channel perplexity change < {TARGETS['int8 perplexity']:.0%} (tiny GPT-2, held-out)",
              abs(t["perplexity_change"]) < TARGETS["int8 perplexity"],
              f"{t['perplexity_change']:+.2%} ({t['perplexity']:.2f} vs {f32['ppl']:.2f})")
        check(f"int8 MiniLM cosine >= {TARGETS['int8 cosine']} (every sentence)",
              t["cosine_min"] >= TARGETS["int8 cosine"], f"min {t['cosine_min']:.4f}, mean {t['cosine_mean']:.4f}")
    llama_ratios = {}
    if llama:
        for ours, theirs in pairs:
            llama_ratios[f"{ours} / {theirs}"] = rate[ours] / rate[theirs]
            if ours != UNFUSED:  # the targets are for the default path
                check(f"{ours} decode >= {TARGETS['vs llama.cpp']}x {theirs}",
                      rate[ours] / rate[theirs] >= TARGETS["vs llama.cpp"],
                      f"{rate[ours] / rate[theirs]:.2f}x ({rate[ours]:.1f} vs {rate[theirs]:.1f} tok/s)")
    default_int4 = next((label for label, kwargs in rows if kwargs.get("quantize") == "int4"), None)
    if default_int4 is not None:
        t = table[default_int4]
        check(f"{default_int4} (quantize='int4') MiniLM cosine >= {TARGETS['int4 cosine']} (every sentence)",
              t["cosine_min"] >= TARGETS["int4 cosine"], f"min {t['cosine_min']:.4f}, mean {t['cosine_mean']:.4f}")
    print()
    print("targets" + (" (--quick: 2 layers, few tokens: indicative only)" if args.quick else ""))
    for c in checks:
        print(f"  {'PASS' if c['pass'] else 'FAIL'}  {c['target']}: {c['detail']}")
    failed = sum(not c["pass"] for c in checks)
    print(f"{len(checks) - failed} of {len(checks)} targets met; {seconds:.0f} s")

    if args.json is not None:
        report = {
            "settings": {"quick": args.quick, "layers": layers, "tokens": n, "repeats": repeats,
                         "mem_repeats": mem_rounds, "threads": args.threads, "prompt_len": PROMPT_LEN,
                         "sentences": len(sentences), "torch": torch.__version__, "cpu": decode_bench.cpu_name()},
            "rows": table,
            "machine": decode_bench.machine(),
            "reference_decode": {UNFUSED: rate[UNFUSED], TRANSFORMERS: rate[TRANSFORMERS],
                                 "same_tokens_as_transformers": same},
            "llama_cpp": {"decode_tok_s": llama, "ratios": llama_ratios},
            "raw": {"decode": decode["runs"], "load_memory": memory, "tiny_gpt2": tiny, "minilm": minilm},
            "targets": checks, "seconds": seconds,
        }
        decode_bench.write_json(args.json, report)


if __name__ == "__main__":
    main()
