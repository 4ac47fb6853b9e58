"""resolve_source: local folders, course assets, a hand-made Hub cache, and the errors that name the fix.

No test touches the network: every test that could reach the Hub sets HF_HUB_OFFLINE=1 or
replaces snapshot_download.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from course_lib import hub
from course_lib.assets import asset_path
from course_lib.hub import DEFAULT_FILES, HubError, ModelNotCachedError, resolve_source
from helpers import COMMIT, fake_hub_snapshot

OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def test_local_folder_as_str_or_path(tmp_path, monkeypatch):
    assert resolve_source(tmp_path) == tmp_path
    assert resolve_source(str(tmp_path)) == tmp_path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gpt2").mkdir()  # a local folder wins over the Hub id of the same name
    assert resolve_source("gpt2") == Path("gpt2")


@pytest.mark.parametrize("src", ["./no-such-model", "/no/such/model", "~/no-such-model", "a/b/c", "not a model id!"])
def test_missing_local_path_names_it(src):
    with pytest.raises(FileNotFoundError, match="no folder") as err:
        resolve_source(src)
    assert repr(src) in str(err.value)
    assert not isinstance(err.value, HubError)


def test_a_file_is_not_a_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(NotADirectoryError, match="pass the folder"):
        resolve_source(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no folder"):
        resolve_source(tmp_path / "missing")


def test_course_asset_by_name():
    assert resolve_source("all-MiniLM-L6-v2") == asset_path("all-MiniLM-L6-v2")


def test_hub_id_of_an_asset_resolves_to_it_offline_when_not_cached(hf_home):
    assert resolve_source("sentence-transformers/all-MiniLM-L6-v2") == asset_path("all-MiniLM-L6-v2")


def test_hub_cache_wins_over_the_asset(hf_home):
    snapshot = fake_hub_snapshot(hf_home / "hub", "sentence-transformers/all-MiniLM-L6-v2", {"config.json": "{}"})
    assert resolve_source("sentence-transformers/all-MiniLM-L6-v2") == snapshot


def test_fake_hub_cache_resolves_offline_with_hf_home_set_at_call_time(hf_home):
    snapshot = fake_hub_snapshot(hf_home / "hub", "org/tiny-model", {"config.json": "{}", "vocab.txt": "[PAD]\n"},
                          refs=("main", "v1.0"))
    assert resolve_source("org/tiny-model") == snapshot
    assert resolve_source("org/tiny-model", revision="v1.0") == snapshot
    assert resolve_source("org/tiny-model", revision=COMMIT) == snapshot
    assert resolve_source("org/tiny-model", filenames=["vocab.txt"]) == snapshot
    assert (resolve_source("org/tiny-model") / "vocab.txt").read_text() == "[PAD]\n"
    fake_hub_snapshot(hf_home / "hub", "gpt2", {"config.json": "{}"})  # a model id without an org
    assert resolve_source("gpt2").name == COMMIT


def test_hf_hub_cache_overrides_hf_home(hf_home, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    snapshot = fake_hub_snapshot(tmp_path / "elsewhere", "org/tiny-model", {"config.json": "{}"})
    assert hub.hub_cache_dir() == tmp_path / "elsewhere"
    assert resolve_source("org/tiny-model") == snapshot


def test_offline_with_nothing_cached_says_how_to_prefetch(hf_home):
    with pytest.raises(ModelNotCachedError) as err:
        resolve_source("org/not-downloaded")
    msg = str(err.value)
    for needle in ("'org/not-downloaded'", "HF_HUB_OFFLINE", "no network", str(hf_home / "hub"),
                   "hf download org/not-downloaded", "huggingface-cli download", "HF_HOME"):
        assert needle in msg, f"{needle!r} not in: {msg}"
    assert isinstance(err.value, FileNotFoundError)


def test_offline_unknown_revision_of_a_cached_model(hf_home):
    fake_hub_snapshot(hf_home / "hub", "org/tiny-model", {"config.json": "{}"})
    with pytest.raises(ModelNotCachedError, match="revision 'v9'.*--revision v9"):
        resolve_source("org/tiny-model", revision="v9")
    with pytest.raises(ModelNotCachedError, match=OTHER_COMMIT):
        resolve_source("org/tiny-model", revision=OTHER_COMMIT)


def test_offline_is_read_at_call_time(monkeypatch):
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub.is_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.is_offline()


# Errors the Hub gives online, simulated: snapshot_download replaced, so nothing is fetched.

def _hub_error(cls, message="boom"):
    try:
        import httpx2 as httpx  # the HTTP client of huggingface_hub >= 1.x
    except ImportError:  # pragma: no cover - older huggingface_hub uses requests
        httpx = None
    if httpx is None:
        return cls(message)
    request = httpx.Request("GET", "https://huggingface.co/api/models/org/name")
    return cls(message, response=httpx.Response(404, request=request))


@pytest.fixture
def online_fake(monkeypatch, hf_home):
    """Online mode with a fake snapshot_download that raises what the test sets, and records its call."""
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []
    state = {"raise": None}

    def fake(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        if state["raise"] is not None:
            raise state["raise"]
        return str(hf_home / "hub" / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return calls, state


def test_online_passes_patterns_cache_dir_and_revision(online_fake, hf_home):
    calls, _ = online_fake
    assert resolve_source("org/name", revision="v2") == hf_home / "hub" / "snapshot"
    repo_id, kwargs = calls[0]
    assert repo_id == "org/name" and kwargs["revision"] == "v2" and kwargs["allow_patterns"] == DEFAULT_FILES
    assert kwargs["local_files_only"] is False and kwargs["cache_dir"] == str(hf_home / "hub")
    resolve_source("org/name", filenames=["tokenizer.json"])
    assert calls[1][1]["allow_patterns"] == ["tokenizer.json"]


def test_wrapped_hub_errors_say_what_happened(online_fake):
    from huggingface_hub.utils import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                       RevisionNotFoundError)

    _, state = online_fake
    cases = [
        (_hub_error(RepositoryNotFoundError), "does not exist on the Hugging Face Hub"),
        (_hub_error(GatedRepoError), "gated"),
        (_hub_error(RevisionNotFoundError), "the revision 'v2' does not exist"),
        (LocalEntryNotFoundError("no connection"), "could not be reached.*hf download org/name --revision v2"),
        (ConnectionError("network down"), "could not fetch .*ConnectionError: network down.*HF_HUB_OFFLINE=1"),
    ]
    for error, pattern in cases:
        state["raise"] = error
        with pytest.raises(HubError, match=pattern) as err:
            resolve_source("org/name", revision="v2")
        assert "'org/name'" in str(err.value)
        assert err.value.__cause__ is error  # the original stays attached for debugging
