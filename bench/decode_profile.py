"""Where one decoding step's time goes: GPT-2 124M (random weights), course_lib, batch 1, KV cache.

    .venv/bin/python bench/decode_profile.py [--quantize int8|int4] [--reference] [--steps 48] [--threads 2]
                                            [--layers 12] [--context 16]

What ``bench/decode.py`` measures as one number (tokens/s) this script takes apart, for the
path it profiles (``load_model``'s default path; ``--reference``: ``fast=False``, chapter 02's
layers as written; ``--quantize``: weight-only int8 or int4 with PyTorch's CPU kernels). The model is made with
the course's own ``GPT2LMHeadModel`` (seeded random weights, ``transformers``' config of gpt2),
saved and loaded with ``load_model`` as a user would. A prompt of ``--context`` tokens fills the
cache; then ``--steps`` single-token steps run under ``torch.profiler`` (each step: the forward
pass with the cache, then the greedy choice), after as many unprofiled warm-up steps.

Printed, per token (ms and share of the step's wall time):

- the matrix products of the blocks (``c_attn``, ``c_proj``, ``c_fc``, ``mlp.c_proj``), and the
  LM head (the tied ``wte``, 38.6M weights, 31 % of the bytes) separately, each with the bytes
  its weights hold and the read bandwidth it achieved (bytes / time);
- attention (the fused kernel, reading the cache), the norms and activations, the cache
  update (copies into the pre-allocated cache), choosing the token (argmax), and everything
  else PyTorch ran (views, reshapes, small elementwise ops);
- Python and dispatch: the step's wall time minus the time inside PyTorch's operators — the
  interpreter running the model's ``forward`` methods, the course's input checks, building
  arguments.

And the machine's read bandwidth (a 2-thread ``sum`` over a 512 MB float32 buffer, median of 5)
with the ceiling it sets: tokens/s = bandwidth / bytes of weights read per token.
The profiler adds a little time to every operator: its per-token wall time is a few percent
above an unprofiled run's (printed too).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# profiler op name -> category
CATEGORIES = (
    ("matmul", ("mkldnn::_linear_pointwise", "aten::addmm", "aten::mm", "aten::linear", "aten::matmul",
                "aten::_weight_int8pack_mm", "aten::_weight_int4pack_mm_for_cpu", "aten::bmm")),
    ("attention", ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
                   "aten::softmax", "aten::_softmax", "aten::masked_fill")),
    ("norms and activations", ("aten::native_layer_norm", "aten::layer_norm", "aten::gelu", "aten::_fused_rms_norm",
                               "aten::rms_norm", "aten::tanh", "aten::erf")),
    ("cache update", ("aten::copy_", "aten::index_put_", "aten::slice_scatter")),
    ("choosing the token", ("aten::argmax", "aten::topk", "aten::multinomial", "aten::sort")),
)


def read_bandwidth(threads: int, megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second a ``sum`` over a buffer far larger than the caches reads (median)."""
    torch.set_num_threads(threads)
    big = torch.ones(megabytes * 2**20 // 4)
    big.sum()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        big.sum()
        times.append(time.perf_counter() - start)
    return big.numel() * 4 / statistics.median(times)


def weight_bytes(model) -> tuple[int, int]:
    """(bytes of the blocks' matrices, bytes of the LM head) as stored (float32, or integers + scales)."""
    def nbytes(module):
        return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))

    head = nbytes(model.transformer.wte)
    blocks = sum(nbytes(m) for name, m in model.transformer.h.named_modules()
                 if name.endswith(("c_attn", "c_proj", "c_fc")))
    return blocks, head


def category_of(name: str) -> str:
    for category, names in CATEGORIES:
        if name in names:
            return category
    return "other operators"


def profile_steps(model, prompt: torch.Tensor, steps: int):
    """Per-step wall time (unprofiled and profiled) and the profiler's events of ``steps`` decoding steps."""
    from course_lib.generation import KVCache

    def run(n, profiler=None):
        cache = KVCache(len(model.transformer.h), capacity=prompt.shape[1] + n + 1)
        with torch.no_grad():
            token = model(prompt, kv_cache=cache, last_only=True)[:, -1].argmax(-1, keepdim=True)  # the prompt
            if profiler is not None:
                profiler.start()  # the decoding steps only
            start = time.perf_counter()
            for _ in range(n):
                token = model(token, kv_cache=cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
            seconds = (time.perf_counter() - start) / n
            if profiler is not None:
                profiler.stop()
            return seconds

    run(steps)  # warm up
    plain = statistics.median(run(steps) for _ in range(3))
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
    profiled = run(steps, prof)
    return plain, profiled, prof.events()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quantize", choices=("int8", "int4"), default=None)
    parser.add_argument("--reference", action="store_true", help="chapter 02's layers, not fused")
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--context", type=int, default=16)
    args = parser.parse_args()

    from course_lib import load_model
    from course_lib.fused import matvec_layout_report
    from course_lib.models.gpt2 import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(n_layer=args.layers)).save_pretrained(tmp)
        model = load_model(tmp, quantize=args.quantize, fast=not args.reference)
    blocks_bytes, head_bytes = weight_bytes(model)
    prompt = torch.randint(0, model.config.vocab_size, (1, args.context), generator=torch.Generator().manual_seed(0))
    plain, profiled, events = profile_steps(model, prompt, args.steps)

    # self time per category; the LM head's matrix product told apart by its weight's shape
    head_rows = model.config.vocab_size
    totals, head_time = defaultdict(float), 0.0
    for e in events:
        category = category_of(e.name)
        us = e.self_cpu_time_total
        # the head's weight has vocab rows (an int4 kernel pads them to a multiple of 64, halves the columns)
        if category == "matmul" and any(len(s) == 2 and any(head_rows <= d < head_rows + 64 for d in s)
                                        for s in (e.input_shapes or [])):
            head_time += us
            continue
        totals[category] += us
    per_token = {k: v / 1e3 / args.steps for k, v in totals.items()}  # ms
    head_ms = head_time / 1e3 / args.steps
    wall_ms = profiled * 1e3
    inside = sum(per_token.values()) + head_ms
    bandwidth = read_bandwidth(args.threads)
    read_per_token = blocks_bytes + head_bytes

    path = ("teaching path (fast=False)" if args.reference else "default path" if args.quantize
            else f"default path, float32 weights as {matvec_layout_report()}")
    what = f"{args.quantize or 'float32'}, {path}"
    print(f"GPT-2 124M shape ({args.layers} layers), {what}, {args.threads} threads, context {args.context} + "
          f"{args.steps} steps, torch {torch.__version__}")
    print(f"one step: {plain * 1e3:.2f} ms unprofiled ({1 / plain:.1f} tok/s), {wall_ms:.2f} ms profiled")
    print(f"machine read bandwidth: {bandwidth / 1e9:.1f} GB/s; weights read per token: "
          f"{read_per_token / 1e6:.1f} MB -> ceiling {bandwidth / read_per_token:.1f} tok/s; this path reaches "
          f"{read_per_token / plain / bandwidth:.0%} of it")
    rows = [("matmul: blocks", per_token.get("matmul", 0.0), blocks_bytes),
            ("matmul: LM head", head_ms, head_bytes)]
    rows += [(k, per_token.get(k, 0.0), None) for k, _ in CATEGORIES[1:]]
    rows += [("other operators", per_token.get("other operators", 0.0), None),
             ("Python and dispatch (wall - operators)", max(0.0, wall_ms - inside), None)]
    print(f"\n{'where':42s} {'ms/token':>9s} {'share':>6s} {'weights':>9s} {'achieved':>10s}")
    for label, ms, nbytes in rows:
        achieved = f"{nbytes / (ms / 1e3) / 1e9:.1f} GB/s" if nbytes and ms else ""
        weights = f"{nbytes / 1e6:.0f} MB" if nbytes else ""
        print(f"{label:42s} {ms:9.2f} {ms / wall_ms:6.1%} {weights:>9s} {achieved:>10s}")


if __name__ == "__main__":
    main()
