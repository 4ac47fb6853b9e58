"""Smoke test of bench/scaling.py: ``--quick`` runs end to end and writes a well-formed JSON report.

Numbers from ``--quick`` are not measurements (2 layers, a few tokens, one repetition, on a busy
CI machine): only their presence, type and sign are checked, and that the course's greedy tokens
agree with transformers'. Runs in a subprocess, offline.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "scaling.py"
LIBRARIES = ("transformers", "course default")
# numbers that may be 0 (differences, counts of agreeing tokens): checked separately, not for > 0
NOT_POSITIVE = {"max_abs_diff", "agreeing_leading_tokens", "rows_identical"}


def positive_numbers(value, path: str = "") -> list[str]:
    """Paths of every number under ``value`` that is not finite and > 0 (keys in NOT_POSITIVE skipped)."""
    bad = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in NOT_POSITIVE:
                bad += positive_numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            bad += positive_numbers(item, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if not (math.isfinite(value) and value > 0):
            bad.append(f"{path} = {value}")
    return bad


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("scaling") / "scaling.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, f"bench/scaling.py --quick failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert out.is_file(), done.stdout[-2000:]
    for heading in ("1. decode", "2. batched throughput", "3. prefill", "4. encoder", "5. peak memory"):
        assert heading in done.stdout, f"no {heading!r} table in the output:\n{done.stdout[-3000:]}"
    return json.loads(out.read_text(encoding="utf-8"))


def test_machine_and_parts(report):
    assert set(report["machine"]) == {"cpu", "threads", "torch", "date"}
    assert report["machine"]["threads"] == 2 and report["machine"]["cpu"]
    assert report["settings"]["quick"] is True
    for part in ("decode", "throughput", "prefill", "encoder", "memory"):
        assert isinstance(report[part], dict) and report[part], part


def test_every_number_is_positive(report):
    assert positive_numbers(report) == []
    assert report["prefill"]["max_abs_diff"] < 1e-3
    for row in report["encoder"].values():
        assert row["max_abs_diff"] < 1e-3


def test_decode_contexts_and_tokens(report):
    decode = report["decode"]
    assert list(decode) == ["32", "256", "1000"]
    for row in decode.values():
        assert row["context"] + row["new_tokens"] <= 1024
        for name in LIBRARIES:
            assert set(row[name]) >= {"decode_tok_s", "prefill_s", "whole_call_tok_s"}
        assert row["course default"]["same_tokens_as_transformers"] is True
        assert row["course_vs_transformers"] > 0
        if "llama.cpp f32" in row:  # installed: its ratio is there too (its tokens may flip a near-tie)
            assert row["course_vs_llama_cpp"] > 0


def test_throughput_prefill_encoder(report):
    assert list(report["throughput"]) == ["1", "4", "16"]
    for key, row in report["throughput"].items():
        assert row["batch"] == int(key) == len(row["prompt_lengths"])
        assert all(16 <= n <= 32 for n in row["prompt_lengths"])
        assert {"tok_s", "decode_steps_tok_s"} <= set(row["transformers"]) <= set(row["course default"])
        assert row["course default"]["same_tokens_as_transformers"] is True
    prefill = report["prefill"]
    assert (prefill["batch"], prefill["prompt_tokens"]) == (8, 128)
    assert prefill["same_next_token"] is True
    assert all("tok_s" in prefill[name] for name in LIBRARIES)
    assert list(report["encoder"]) == ["1", "32"]
    for row in report["encoder"].values():
        assert all("sentences_s" in row[name] for name in LIBRARIES)


def test_memory_shapes_and_schemes(report):
    memory = report["memory"]
    assert len(memory) == 3
    for row in memory.values():
        for scheme in ("float32", "int8", "int4"):
            assert {"increase_mb", "peak_mb", "model_mb", "load_s"} <= set(row[scheme])
        assert row["int8"]["model_mb"] < row["float32"]["model_mb"]
        assert row["int4"]["model_mb"] < row["int8"]["model_mb"]
