"""Chapter 11, indicative: greedy decode tokens/s of the same exported GPT-2 in Python, Node.js and the browser.

    .venv/bin/python serving/bench.py [--tokens 64] [--repeats 3] [--gpt2-124m] [--no-browser]

One ONNX export (``course_lib.export.to_onnx``) per model, run three ways on one CPU thread each:

- **Python onnxruntime**: ``ort_generate_ids`` with ``OnnxCausalLM(path, threads=1)``;
- **Node.js onnxruntime-node**: ``node serving/node/generate.mjs --threads 1 --no-eos --warmup 1 --json``;
- **browser onnxruntime-web**: the page of ``python -m course_lib serve-web`` in headless Chromium
  (WebAssembly, one thread), driven by ``serving/web/test/drive.mjs``.

Printed per runtime (the median of ``--repeats`` runs, no early stop, the same prompt): tokens/s over
the one-token steps alone (``(tokens - 1) / time of those steps``: what a reader waits for per token)
and over the whole call (prompt included). The token ids of the three must be identical (the script
stops otherwise). ``--gpt2-124m`` adds a GPT-2 124M shape with random, seeded weights (a 500 MB file;
Node and Python only unless ``--browser-124m``). Needs ``make serving`` (npm ci, Chromium). Timings
on a shared 2-core machine move by tens of percent between runs: indicative, not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "The for statement"


def python_ort(path: Path, prompt_ids: list[int], tokens: int, repeats: int) -> dict:
    from course_lib.export import OnnxCausalLM, ort_generate_ids

    runner = OnnxCausalLM(path, threads=1)
    steps, wholes, ids = [], [], None
    for _ in range(repeats + 1):  # the first is a warm-up
        stamps: list[float] = []
        start = time.perf_counter()
        out = ort_generate_ids(runner, torch.tensor([prompt_ids]), tokens, eos_token_id=[],
                               stream=lambda new: stamps.append(time.perf_counter()))
        end = time.perf_counter()
        steps.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
        wholes.append(tokens / (end - start))
        ids = out[0].tolist()
    return {"decode": statistics.median(steps[1:]), "whole": statistics.median(wholes[1:]), "ids": ids}


def node(path: Path, tokens: int, repeats: int) -> dict:
    steps, wholes, ids = [], [], None
    for _ in range(repeats):
        out = subprocess.run(["node", "generate.mjs", str(path), PROMPT, "--max-new-tokens", str(tokens), "--no-eos",
                              "--threads", "1", "--warmup", "1", "--json"], cwd=ROOT / "serving" / "node",
                             capture_output=True, text=True, check=True, timeout=600)
        result = json.loads(out.stdout)
        steps.append(result["timings"]["decodeTokensPerSecond"])
        wholes.append(result["timings"]["tokensPerSecond"])
        ids = result["ids"]
    return {"decode": statistics.median(steps), "whole": statistics.median(wholes), "ids": ids}


def browser(models_dir: Path, tokens: int, repeats: int) -> dict:
    from course_lib.serve_web import find_chromium, serve_in_thread

    server = serve_in_thread(models_dir)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        tasks = {"prompts": [{"prompt": PROMPT, "maxNewTokens": tokens, "stopAtEos": False}] * (repeats + 1)}
        out = subprocess.run(["node", "test/drive.mjs", url, json.dumps(tasks), "--chromium", find_chromium(),
                              "--timeout-ms", "600000"], cwd=ROOT / "serving" / "web", capture_output=True, text=True,
                             timeout=900)
        report = json.loads(out.stdout.strip().splitlines()[-1])
        if report.get("error"):
            raise RuntimeError(report["error"])
    finally:
        server.shutdown()
        server.server_close()
    runs = report["generate"][1:]  # the first is a warm-up
    return {"decode": statistics.median(r["timings"]["decodeTokensPerSecond"] for r in runs),
            "whole": statistics.median(r["timings"]["tokensPerSecond"] for r in runs), "ids": runs[-1]["ids"]}


def bench(label: str, model, tokenizer_json: Path, tmp: Path, args, with_browser: bool) -> None:
    from course_lib import serve_web
    from course_lib.export import to_onnx
    from course_lib.tokenizer_loading import load_tokenizer

    folder = tmp / label
    folder.mkdir()
    path = folder / serve_web.MODEL_FILES["decoder"]
    start = time.perf_counter()
    to_onnx(model, path, tokenizer=tokenizer_json)
    print(f"\n{label}: exported in {time.perf_counter() - start:.1f} s ({path.stat().st_size / 1e6:.1f} MB)")
    prompt_ids = load_tokenizer(tokenizer_json.parent).encode(PROMPT).ids
    results = {"Python onnxruntime": python_ort(path, prompt_ids, args.tokens, args.repeats),
               "Node onnxruntime-node": node(path, args.tokens, args.repeats)}
    if with_browser:
        serve_web.ensure_models(folder, log=lambda line: None)  # the page also loads MiniLM
        results["browser onnxruntime-web"] = browser(folder, args.tokens, args.repeats)
    reference = results["Python onnxruntime"]
    for name, r in results.items():
        if r["ids"] != reference["ids"]:
            raise SystemExit(f"{name}'s tokens differ from Python onnxruntime's: {r['ids']} vs {reference['ids']}")
    print(f"{'runtime (1 thread)':<26}{'decode tok/s':>14}{'whole call tok/s':>18}{'vs Python (decode)':>21}")
    for name, r in results.items():
        print(f"{name:<26}{r['decode']:>14.1f}{r['whole']:>18.1f}{r['decode'] / reference['decode']:>20.2f}x")
    print(f"identical tokens: {len(reference['ids']) - len(prompt_ids)} new, prompt {PROMPT!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpt2-124m", action="store_true", help="also a GPT-2 124M shape, random seeded weights")
    parser.add_argument("--browser-124m", action="store_true", help="run the 124M shape in the browser too")
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    from course_lib.assets import asset_path
    from course_lib.loading import load_model

    print(f"prompt {PROMPT!r}, {args.tokens} new tokens, median of {args.repeats} runs, 1 thread each")
    with tempfile.TemporaryDirectory(prefix="serving_bench_") as tmp:
        tiny = asset_path("tiny-gpt2")
        bench("tiny-gpt2", load_model(tiny), tiny / "tokenizer.json", Path(tmp), args, not args.no_browser)
        if args.gpt2_124m:
            from course_lib.models.gpt2 import GPT2Config, GPT2LMHeadModel

            torch.manual_seed(0)
            config = GPT2Config()  # gpt2 124M: 12 layers, 768 wide, 50257 tokens (prompt from the tiny tokenizer)
            model = GPT2LMHeadModel(config).eval()
            bench("gpt2-124m-shape", model, tiny / "tokenizer.json", Path(tmp), args,
                  args.browser_124m and not args.no_browser)


if __name__ == "__main__":
    main()
