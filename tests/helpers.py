"""Helpers several test modules share (pytest puts tests/ on sys.path: ``from helpers import ...``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from course_lib.grading import registry
from course_lib.paths import course_root

COMMIT = "0123456789abcdef0123456789abcdef01234567"


# ------------------------------------------------------------------ exercises and grading

def load_exercise_module(folder: str, filename: str):
    """``exercises/<filename>`` or ``solutions/<filename>`` imported as a fresh module."""
    path = course_root() / folder / filename
    spec = importlib.util.spec_from_file_location(f"{Path(filename).stem}_{folder}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def chapter_checks(chapter: str) -> dict:
    """{function name: its registered check} for chapter ``exNN``."""
    return {ex.function: ex for ex in registry.load_chapter(chapter)}


def have_solutions(*filenames: str) -> bool:
    """False in a learner hand-out (no solutions/)."""
    return all((course_root() / "solutions" / f).exists() for f in filenames)


# ------------------------------------------------------------------ the Hugging Face Hub cache

def fake_hub_snapshot(hub_cache: Path, repo_id: str, files: dict[str, str | bytes] | None = None,
                      refs: tuple[str, ...] = ("main",), commit: str = COMMIT) -> Path:
    """The Hub cache layout, models--org--name/{refs/<ref>, snapshots/<commit>/<files>} (blobs skipped);
    returns the snapshot folder."""
    repo = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in (files or {}).items():
        (snapshot / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


# ------------------------------------------------------------------ models

def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Every parameter random (tied ones once): LayerNorm scales around 1, everything else around 0,
    so a weight loaded into the wrong place shows. Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm_scale = name.endswith(("LayerNorm.weight", "layer_norm.weight")) or ".ln_" in f".{name}"
            p.copy_(1 + 0.1 * noise if is_norm_scale and name.endswith("weight") else scale * noise)
    return model.eval()
