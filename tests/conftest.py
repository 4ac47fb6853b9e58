"""Fixtures several test modules share."""

from __future__ import annotations

import pytest


@pytest.fixture
def hf_home(monkeypatch, tmp_path):
    """An empty HF_HOME, offline, set after huggingface_hub was imported (its constants are stale)."""
    import huggingface_hub  # noqa: F401  (imported first on purpose)

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "hf"
