"""The README's speed tables, written from the benchmarks' JSON results (never typed by hand).

    .venv/bin/python bench/readme_tables.py          # print the tables
    .venv/bin/python bench/readme_tables.py --write  # put them into README.md, between the markers

Reads ``bench/results/``:

- ``decode-*.json`` (``bench/decode.py --json``, one file per run): decode steps of GPT-2 124M,
  batch 1, float32 — transformers, the course's default path, its teaching path, llama.cpp f32;
- ``quantization-*.json`` (``bench/quantization.py --json``): every scheme's decode speed,
  bytes, load memory and quality, and llama.cpp's F32/Q8_0/Q4_0 in the same runs;
- ``scaling.json`` (``bench/scaling.py``): decode against context length, batches, prefill,
  the encoder, and peak memory of the gpt2 / gpt2-medium / gpt2-large shapes.

Several runs of a script give the median and, in brackets, the range. Each table names the
machine (CPU, threads, torch) and the dates of its runs. ``tests/test_readme.py`` checks that
the README holds exactly what this script writes from the committed results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
START, END = "<!-- bench-tables:start -->", "<!-- bench-tables:end -->"


def load_runs(pattern: str, folder: Path = RESULTS) -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob(pattern))]


def spread(values: list[float], fmt: str = "{:.1f}", suffix: str = "") -> str:
    """The median, and with several values their range: ``45.8 (44.9–46.5)``."""
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    middle = fmt.format(statistics.median(values)) + suffix
    if len(values) == 1 or fmt.format(min(values)) == fmt.format(max(values)):
        return middle
    return f"{middle} ({fmt.format(min(values))}–{fmt.format(max(values))}{suffix})"


def machine_line(runs: list[dict], script: str) -> str:
    machines = {(r["machine"]["cpu"], r["machine"]["threads"], r["machine"]["torch"]) for r in runs}
    dates = sorted({r["machine"]["date"][:10] for r in runs})
    cpu, threads, torch_version = sorted(machines)[0]
    many = f"median of {len(runs)} runs (range)" if len(runs) > 1 else "one run"
    where = "; ".join(f"{c}, {t} threads, torch {v}" for c, t, v in sorted(machines))
    return f"`{script}`, {many}, {where}, {', '.join(dates)}"


def decode_table(runs: list[dict]) -> list[str]:
    engines = list(runs[0]["engines"])
    names = {"transformers": "transformers", "course default": "course, `load_model(...)` (default)",
             "course teaching": "course, `load_model(..., fast=False)` (chapter 02's layers)",
             "llama.cpp f32": "llama.cpp f32 (the course's GGUF file)"}
    has_llama = "llama.cpp f32" in engines
    lines = [f"GPT-2 124M (random weights), batch 1, float32, KV cache, {runs[0]['settings']['new_tokens']} new "
             f"tokens after {runs[0]['settings']['prompt_tokens']}; decode steps after the first token — "
             f"{machine_line(runs, 'bench/decode.py')}:", "",
             "| engine | decode tok/s | share of the bandwidth ceiling | vs transformers |"
             + (" vs llama.cpp f32 |" if has_llama else ""),
             "|---|---|---|---|" + ("---|" if has_llama else "")]
    for name in engines:
        rates = [r["engines"][name]["decode_tok_s"] for r in runs]
        share = [r["engines"][name]["share_of_ceiling"] * 100 for r in runs]
        vs_t = [r["engines"][name]["decode_tok_s"] / r["engines"]["transformers"]["decode_tok_s"] for r in runs]
        row = (f"| {names.get(name, name)} | {spread(rates)} | {spread(share, '{:.0f}', ' %')} | "
               f"{'' if name == 'transformers' else spread(vs_t, '{:.2f}', '×')} |")
        if has_llama:
            vs_l = [r["engines"][name]["decode_tok_s"] / r["engines"]["llama.cpp f32"]["decode_tok_s"] for r in runs]
            row += f" {'' if name == 'llama.cpp f32' else spread(vs_l, '{:.2f}', '×')} |"
        lines.append(row)
    ceiling = [r["ceiling_tok_s"] for r in runs]
    bandwidth = [r["bandwidth_gb_s"] for r in runs]
    lines += ["", f"The ceiling: every weight read once per token (494.6 MB) at the read bandwidth measured in "
                  f"the same runs, {spread(bandwidth)} GB/s: {spread(ceiling)} tok/s. The default path stored "
                  f"its float weights as: {'; '.join(sorted({r['course_default_layout'].split(' (')[0] for r in runs}))}."]
    return lines


LLAMA_PAIRS = (("float32", "llama.cpp F32"), ("int8", "llama.cpp Q8_0"), ("int4 g32", "llama.cpp Q4_0"))


def quantization_table(runs: list[dict]) -> list[str]:
    rows = list(runs[0]["rows"])
    has_llama = bool(runs[0].get("llama_cpp", {}).get("decode_tok_s"))
    lines = [f"Every scheme on the default path, GPT-2 124M shape (random weights) for speed, bytes and memory; "
             f"the course's tiny GPT-2 and all-MiniLM-L6-v2 (real weights) for quality — "
             f"{machine_line(runs, 'bench/quantization.py')}:", "",
             "| scheme | bytes (% of float32) | `load_model` peak, load + one forward | decode tok/s | vs float32 |"
             + (" llama.cpp, same run | course / llama.cpp |" if has_llama else "")
             + " tiny GPT-2 perplexity | MiniLM cosine (mean / min) |",
             "|---|---|---|---|---|" + ("---|---|" if has_llama else "") + "---|---|"]
    for label in rows:
        get = [r["rows"][label] for r in runs]
        ppl = (f"{get[0]['perplexity']:.2f}" if label == "float32"
               else spread([g["perplexity_change"] * 100 for g in get], "{:+.2f}", " %"))
        cosine = "1" if label == "float32" else f"{get[0]['cosine_mean']:.4f} / {get[0]['cosine_min']:.4f}"
        row = (f"| {label} | {get[0]['params_mb']:.0f} MB ({get[0]['params_frac']:.1%}) | "
               f"{spread([g['load_increase_mb'] for g in get], '{:.0f}', ' MB')} | "
               f"{spread([g['decode_tok_s'] for g in get])} | "
               f"{'' if label == 'float32' else spread([g['vs_default_f32'] for g in get], '{:.2f}', '×')} |")
        if has_llama:
            theirs = next((t for ours, t in LLAMA_PAIRS if label == ours or label.startswith(ours + " zp")), None)
            if theirs is None:
                row += " | |"
            else:
                rates = [r["llama_cpp"]["decode_tok_s"][theirs] for r in runs]
                ratios = [g["decode_tok_s"] / r["llama_cpp"]["decode_tok_s"][theirs] for g, r in zip(get, runs)]
                row += f" {theirs.removeprefix('llama.cpp ')} {spread(rates)} | {spread(ratios, '{:.2f}', '×')} |"
        lines.append(row + f" {ppl} | {cosine} |")
    teaching = [r["reference_decode"]["float32 teaching"] for r in runs]
    theirs = [r["reference_decode"]["transformers float32"] for r in runs]
    lines += ["", f"In the same repetitions: the teaching path (`fast=False`) float32 {spread(teaching)} tok/s, "
                  f"`transformers` float32 {spread(theirs)} tok/s."]
    return lines


def scaling_tables(report: dict) -> list[str]:
    m = report["machine"]
    lines = [f"`bench/scaling.py`, one run, {m['cpu']}, {m['threads']} threads, torch {m['torch']}, "
             f"{m['date'][:10]}; medians of {report['settings']['repeats']} interleaved repetitions; ratios: "
             f"the course's speed / the other's:", ""]
    decode = report["decode"]
    has_llama = any("llama.cpp f32" in row for row in decode.values())
    lines += ["| GPT-2 124M decode, batch 1, context | transformers tok/s | course tok/s | course / transformers |"
              + (" llama.cpp f32 tok/s | course / llama.cpp |" if has_llama else ""),
              "|---|---|---|---|" + ("---|---|" if has_llama else "")]
    for context, row in decode.items():
        line = (f"| {context} | {row['transformers']['decode_tok_s']:.1f} | {row['course default']['decode_tok_s']:.1f} "
                f"| {row['course_vs_transformers']:.2f}× |")
        if has_llama:
            line += (f" {row['llama.cpp f32']['decode_tok_s']:.1f} | {row['course_vs_llama_cpp']:.2f}× |"
                     if "llama.cpp f32" in row else " | |")
        lines.append(line)
    lines += ["", "| GPT-2 124M, batch (left-padded, 32 new tokens each) | transformers tok/s | course tok/s | "
                  "course / transformers |", "|---|---|---|---|"]
    for batch, row in report["throughput"].items():
        lines.append(f"| {batch} | {row['transformers']['tok_s']:.1f} | {row['course default']['tok_s']:.1f} | "
                     f"{row['course_vs_transformers']:.2f}× |")
    p = report["prefill"]
    lines += ["", "| one forward pass | transformers | course | course / transformers |", "|---|---|---|---|",
              f"| GPT-2 124M prefill, {p['batch']} × {p['prompt_tokens']} tokens | {p['transformers']['tok_s']:,.0f} "
              f"tok/s | {p['course default']['tok_s']:,.0f} tok/s | {p['course_vs_transformers']:.2f}× |"]
    for batch, row in report["encoder"].items():
        lines.append(f"| all-MiniLM-L6-v2, {batch} sentence{'s' if batch != '1' else ''} × {row['tokens']} tokens | "
                     f"{row['transformers']['sentences_s']:,.1f} sentences/s | "
                     f"{row['course default']['sentences_s']:,.1f} sentences/s | {row['course_vs_transformers']:.2f}× |")
    memory = report.get("memory")
    if memory:
        lines += ["", "| peak memory of `load_model` + one forward, fresh process | float32 | int8 | int4 (g32) |",
                  "|---|---|---|---|"]
        for shape, row in memory.items():
            cells = [f"{row[s]['increase_mb']:,.0f} MB" + ("" if s == "float32" else
                                                           f" ({row[s]['fraction_of_float32']:.0%})")
                     for s in ("float32", "int8", "int4")]
            lines.append(f"| {shape} ({row['n_layer']} layers × {row['n_embd']}; {row['float32']['model_mb']:,.0f} "
                         f"MB of float32 weights) | " + " | ".join(cells) + " |")
    return lines


def render(folder: Path = RESULTS) -> str:
    parts = []
    decode = load_runs("decode-*.json", folder)
    if decode:
        parts += ["#### Decode speed against `transformers` and llama.cpp", ""] + decode_table(decode) + [""]
    quant = load_runs("quantization-*.json", folder)
    if quant:
        parts += ["#### Quantized", ""] + quantization_table(quant) + [""]
    scaling = load_runs("scaling.json", folder)
    if scaling:
        parts += ["#### How cost grows", ""] + scaling_tables(scaling[0]) + [""]
    return "\n".join(parts).rstrip() + "\n"


def readme_block(text: str) -> str:
    """What the README holds between the markers."""
    if START not in text or END not in text:
        raise SystemExit(f"README.md has no {START} ... {END} block")
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="replace the README's block with the tables")
    args = parser.parse_args()
    tables = render()
    if not args.write:
        sys.stdout.write(tables)
        return
    text = README.read_text(encoding="utf-8")
    readme_block(text)  # the markers are there
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    README.write_text(f"{before}{START}\n{tables}{END}{after}", encoding="utf-8")
    print(f"README.md: tables written from {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
