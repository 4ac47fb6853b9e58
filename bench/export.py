"""Export benchmark: ONNX Runtime vs the course's fused PyTorch, same weights, same run.

    .venv/bin/python bench/export.py [--tokens 32] [--prompt-len 16] [--repeats 5] [--threads N] [--quick]

Each model is exported once with ``course_lib.export.to_onnx`` into a temporary folder
(the export time is printed) and then run two ways:

- **course_lib fused**: the course's model after ``course_lib.fused.fuse`` (PyTorch's fused
  kernels, oneDNN's linear for one token at a time), the course's fastest PyTorch path;
- **onnxruntime**: the exported file in ``OnnxCausalLM`` / ``OnnxEncoder`` (CPU execution
  provider, all graph optimisations, the same number of threads as PyTorch).

What is timed (``course_lib.timing.compare_timings``: one warm-up each, then ``--repeats``
interleaved repeats whose order rotates, medians):

- **decode**, batch 1, greedy, KV cache, a fixed prompt of ``--prompt-len`` random ids, exactly
  ``--tokens`` new tokens (no early stop): ``generate_ids(fused, ...)`` vs
  ``ort_generate_ids(runner, ...)``. Printed: tokens/s of the whole call (prompt included),
  and of the decode steps alone (``(tokens - 1) / (last token's time - first token's)``,
  from each loop's ``stream`` callback). For the course's tiny GPT-2 (the real asset) and for
  a GPT-2 124M shape (``GPT2Config()``: 12 layers, 768 wide, vocabulary 50257) with random,
  seeded weights. The two must produce identical tokens (the script stops otherwise);
- **encoder**, all-MiniLM-L6-v2 (the real asset): sentences/s for one sentence (batch 1)
  and for 32 corpus lines (batch 32, padded, up to 128 tokens), hidden states and the
  mean-pooled, normalised sentence embedding each way. max |Δ| of the embeddings printed.

- **llama.cpp**, when llama-cpp-python is installed (an optional extra that compiles from source): the
  same weights written by ``course_lib.export.to_gguf`` as F32 and Q8_0 files, decoded greedily by
  llama.cpp; its tokens are compared with the course's (F32: the course's model; Q8_0: the course's
  reading of the same file) and its tok/s timed against the course's fused PyTorch. Without it the
  script says so and prints no llama.cpp column.

Ratios are onnxruntime's rate / course_lib fused's: > 1 means onnxruntime is faster.
Threads: ``--threads``, else what ``course_lib.timing.quiet_threads`` leaves free of other
programs. ``--quick``: 2 layers for the 124M shape, 8 tokens, 3 repeats — a smoke test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class Stamps:
    """Times of each new token in every call of one candidate: a ``stream`` callback."""

    def __init__(self):
        self.calls: list[list[float]] = []

    def start(self) -> "Stamps":
        self.calls.append([])
        return self

    def __call__(self, new) -> None:
        self.calls[-1].append(time.perf_counter())

    def decode_rate(self) -> float:
        """Median over the timed calls (the warm-up left out) of (tokens - 1) / (last - first)."""
        rates = [(len(c) - 1) / (c[-1] - c[0]) for c in self.calls[1:] if len(c) > 1 and c[-1] > c[0]]
        return statistics.median(rates) if rates else float("nan")


def bench_decode(label: str, model, tmp: Path, args, threads: int) -> dict:
    from course_lib.export.onnx_export import OnnxCausalLM, ort_generate_ids, to_onnx
    from course_lib.fused import fuse
    from course_lib.generation import generate_ids
    from course_lib.timing import compare_timings

    start = time.perf_counter()
    path = to_onnx(model, tmp / f"{label.split()[0]}.onnx", check=False)
    export_s = time.perf_counter() - start
    size_mb = path.stat().st_size / 1e6
    runner = OnnxCausalLM(path, threads=threads)
    fused = fuse(model)
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    n = args.tokens

    ours, theirs = generate_ids(fused, prompt, n, eos_token_id=[]), ort_generate_ids(runner, prompt, n,
                                                                                     eos_token_id=[])
    if not torch.equal(ours, theirs):
        first = int((ours != theirs).nonzero()[0, 1]) - args.prompt_len
        raise SystemExit(f"{label}: onnxruntime's greedy tokens differ from course_lib's at new token {first}")
    with torch.inference_mode():
        expected = fused(prompt)[0].numpy()
    max_diff = abs(runner(prompt)[0][0] - expected).max()
    scale = abs(expected).max()  # random weights give large logits: the difference relative to them too

    stamps = {"course_lib fused": Stamps(), "onnxruntime": Stamps()}
    candidates = {
        "course_lib fused": lambda: generate_ids(fused, prompt, n, eos_token_id=[],
                                                 stream=stamps["course_lib fused"].start()),
        "onnxruntime": lambda: ort_generate_ids(runner, prompt, n, eos_token_id=[],
                                                stream=stamps["onnxruntime"].start()),
    }
    report = compare_timings(candidates, repeats=args.repeats, threads=threads, progress=False)
    print(f"== decode: {label}, batch 1, greedy, KV cache, prompt {args.prompt_len} + {n} new tokens")
    print(f"exported in {export_s:.1f} s, {size_mb:.1f} MB; tokens identical; max |Δ| prompt logits "
          f"{max_diff:.2e} (largest |logit| {scale:.1f})")
    print(report.table(per={name: n for name in candidates}, per_unit="tok/s (whole call)"))
    decode = {name: s.decode_rate() for name, s in stamps.items()}
    for name, rate in decode.items():
        print(f"{name:<16}  {rate:8.1f} tok/s (decode steps, median)")
    ratio_call = report.ratio("course_lib fused", "onnxruntime")
    ratio_decode = decode["onnxruntime"] / decode["course_lib fused"]
    print(f"onnxruntime / course_lib fused: {ratio_call:.2f}x whole call, {ratio_decode:.2f}x decode steps")
    print(report.note())
    print()
    return {"call": ratio_call, "decode": ratio_decode,
            "rates": {k: n / report.median(k) for k in candidates}, "decode_rates": decode}


def bench_llama_cpp(label: str, model, tmp: Path, args, threads: int) -> dict | None:
    """llama.cpp (llama-cpp-python) on the course's own GGUF files of ``model``, F32 and Q8_0, vs the course's
    fused PyTorch: greedy tokens compared, decode tok/s (whole call) with interleaved repeats. None when absent."""
    from course_lib.assets import asset_path
    from course_lib.export.gguf_export import LLAMA_CPP_INSTALL, LlamaCpp, llama_cpp_available, to_gguf
    from course_lib.fused import fuse
    from course_lib.generation import generate_ids
    from course_lib.loading import load_model
    from course_lib.timing import compare_timings

    if not llama_cpp_available():
        print(f"== llama.cpp: not installed, no llama.cpp column ({LLAMA_CPP_INSTALL})")
        print()
        return None
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    n = args.tokens
    fused = fuse(model)
    ours = generate_ids(fused, prompt, n, eos_token_id=[])[0].tolist()
    candidates = {"course_lib fused": lambda: generate_ids(fused, prompt, n, eos_token_id=[])}
    print(f"== llama.cpp: {label}, the course's GGUF files, batch 1, greedy, prompt {args.prompt_len} + {n} new tokens")
    for qtype in ("F32", "Q8_0"):
        # llama.cpp needs a vocabulary in the file: the tiny GPT-2's (a larger embedding gets [PAD<id>] entries)
        path = to_gguf(model, tmp / f"{label.split()[0]}-{qtype}.gguf", qtype, tokenizer=asset_path("tiny-gpt2"))
        runner = LlamaCpp(path, threads=threads, n_ctx=args.prompt_len + n + 8)
        theirs = runner.generate_ids(prompt, n)
        if qtype == "F32":
            reference = ours
        else:  # the course's reading of the same file: Q8_0 weights, float activations
            reference = generate_ids(fuse(load_model(str(path))), prompt, n, eos_token_id=[])[0].tolist()
        same = next((i for i, (a, b) in enumerate(zip(theirs, reference)) if a != b), len(reference))
        agree = "identical" if same == len(reference) else f"equal for the first {same - args.prompt_len} new tokens"
        print(f"llama.cpp {qtype}: {path.stat().st_size / 1e6:.1f} MB; tokens vs the course's {qtype}: {agree}")
        candidates[f"llama.cpp {qtype}"] = (lambda r=runner: r.generate_ids(prompt, n))
    report = compare_timings(candidates, repeats=args.repeats, threads=threads, progress=False)
    print(report.table(per={name: n for name in candidates}, per_unit="tok/s (whole call)"))
    ratios = {name: report.ratio(name, "course_lib fused") for name in candidates if name != "course_lib fused"}
    for name, r in ratios.items():
        print(f"course_lib fused / {name}: {r:.2f}x   (> 1: the course is faster)")
    print(report.note())
    print()
    return ratios


def bench_encoder(tmp: Path, args, threads: int) -> dict:
    from course_lib import encode_batch, load_model, load_tokenizer
    from course_lib.assets import asset_path
    from course_lib.corpus import corpus_lines
    from course_lib.export.onnx_export import OnnxEncoder, to_onnx
    from course_lib.fused import fuse
    from course_lib.models.encoder import mean_pooling
    from course_lib.timing import compare_timings

    folder = asset_path("all-MiniLM-L6-v2")
    tok = load_tokenizer(folder)
    start = time.perf_counter()
    path = to_onnx(load_model(folder), tmp / "minilm.onnx", check=False)
    export_s = time.perf_counter() - start
    runner = OnnxEncoder(path, threads=threads)
    fused = fuse(load_model(folder))

    def embed_torch(ids, mask):
        pooled = mean_pooling(fused(ids, mask), mask)
        return pooled / pooled.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    print(f"== encoder: all-MiniLM-L6-v2 (real weights), exported in {export_s:.1f} s, "
          f"{path.stat().st_size / 1e6:.1f} MB")
    ratios = {}
    for batch_texts in (["A short sentence to embed."], corpus_lines("heldout")[:32]):
        batch = encode_batch(tok, batch_texts, max_length=128)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with torch.inference_mode():
            diff = abs(runner(ids, mask)[1] - embed_torch(ids, mask).numpy()).max()
        B = ids.shape[0]
        candidates = {"course_lib fused": lambda: embed_torch(ids, mask), "onnxruntime": lambda: runner(ids, mask)}
        report = compare_timings(candidates, repeats=max(args.repeats, 5), threads=threads, progress=False)
        print(f"batch {B} x {ids.shape[1]} tokens (max |Δ| embeddings {diff:.2e}):")
        print(report.table(per={name: B for name in candidates}, per_unit="sentences/s"))
        ratios[B] = report.ratio("course_lib fused", "onnxruntime")
        print(f"onnxruntime / course_lib fused: {ratios[B]:.2f}x   {report.note()}")
    print()
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=None, help="new tokens per call (default 32; --quick 8)")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 5; --quick 3)")
    parser.add_argument("--threads", type=int, default=None, help="default: the CPUs other programs leave free")
    parser.add_argument("--quick", action="store_true", help="2 layers for the 124M shape, 8 tokens, 3 repeats")
    args = parser.parse_args()
    args.tokens = args.tokens or (8 if args.quick else 32)
    args.repeats = args.repeats or (3 if args.quick else 5)

    import onnxruntime

    from course_lib import load_model
    from course_lib.models.gpt2 import GPT2Config, GPT2LMHeadModel
    from course_lib.timing import cpu_count, cpu_name, quiet_threads

    threads = args.threads or quiet_threads()
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; {cpu_name()}, {cpu_count()} CPUs, "
          f"{threads} thread{'s' if threads != 1 else ''} for both")
    print()
    with tempfile.TemporaryDirectory(prefix="bench_export_") as work:
        tmp = Path(work)
        tiny = bench_decode("tiny-gpt2 (the course's asset, 1.35M parameters)", load_model("tiny-gpt2"), tmp, args,
                            threads)
        torch.manual_seed(0)
        layers = 2 if args.quick else 12
        big = GPT2LMHeadModel(GPT2Config(n_layer=layers)).eval()  # random weights, seeded
        label = f"gpt2-124M-shape ({layers} layers, 768 wide, vocabulary 50257, random weights)"
        large = bench_decode(label, big, tmp, args, threads)
        llama_tiny = bench_llama_cpp("tiny-gpt2", load_model("tiny-gpt2"), tmp, args, threads)
        llama_large = bench_llama_cpp("gpt2-124M-shape", big, tmp, args, threads) if llama_tiny is not None else None
        del big
        encoder = bench_encoder(tmp, args, threads)
    print("summary (onnxruntime / course_lib fused, > 1: onnxruntime faster):")
    print(f"  decode tiny-gpt2: {tiny['call']:.2f}x whole call, {tiny['decode']:.2f}x decode steps")
    print(f"  decode gpt2 124M shape: {large['call']:.2f}x whole call, {large['decode']:.2f}x decode steps")
    print(f"  MiniLM sentences/s: {encoder[1]:.2f}x batch 1, {encoder[32]:.2f}x batch 32")
    if llama_tiny is None:
        print("  llama.cpp: not installed (no column)")
    else:
        print("summary (course_lib fused / llama.cpp, decode tok/s, > 1: the course faster):")
        for label, ratios in (("tiny-gpt2", llama_tiny), ("gpt2 124M shape", llama_large)):
            print(f"  {label}: " + ", ".join(f"{name.split()[-1]} {r:.2f}x" for name, r in ratios.items()))


if __name__ == "__main__":
    main()
