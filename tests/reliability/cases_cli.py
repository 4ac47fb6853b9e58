"""Command-line tools given what a newcomer types: each case runs the tool's ``main(argv)`` in
this process and exits (``SystemExit``) with a non-zero status; ``words`` must be in what it
printed. Nothing touches the network: ``HF_HUB_OFFLINE`` is set, or ``snapshot_download`` is
replaced by one that fails as the real one does on a machine without network.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from unittest import mock

from . import Case


@contextlib.contextmanager
def _hub_env(tmp_path: Path, offline: bool):
    """An empty HF_HOME in ``tmp_path``, offline or not, for the duration of one case."""
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1" if offline else ""}
    with mock.patch.dict(os.environ, env):
        for var in ("TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
            os.environ.pop(var, None)
        yield


def download_with_offline_set(tmp_path: Path):
    from course_lib import download

    with _hub_env(tmp_path, offline=True):
        status = download.main(["gpt2", "--to", str(tmp_path / "course-models")])
    assert not (tmp_path / "course-models").exists(), "an offline download left an empty folder behind"
    raise SystemExit(status)


def download_without_network(tmp_path: Path):
    """What huggingface_hub raises when it cannot connect and the cache does not hold the model."""
    import huggingface_hub
    from huggingface_hub.utils import LocalEntryNotFoundError

    from course_lib import download

    def no_connection(*args, **kwargs):
        raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub, and we "
                                      "cannot find the appropriate snapshot folder on the local disk.")

    with _hub_env(tmp_path, offline=False), mock.patch.object(huggingface_hub, "snapshot_download", no_connection):
        raise SystemExit(download.main(["gpt2"]))


def download_function_without_network(tmp_path: Path):
    """The same from Python: ``download.download`` raises, and its message holds the whole fix."""
    import huggingface_hub

    from course_lib import download

    def no_connection(*args, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    with _hub_env(tmp_path, offline=False), mock.patch.object(huggingface_hub, "snapshot_download", no_connection):
        download.download("gpt2", tmp_path / "hub")


def download_without_models(tmp_path: Path):
    from course_lib import download

    download.main([])


def generate_from_a_missing_folder(tmp_path: Path):
    from course_lib.__main__ import main

    with _hub_env(tmp_path, offline=True):
        raise SystemExit(main(["generate", str(tmp_path / "my-model"), "Hello", "--max-new-tokens", "2"]))


def generate_with_top_p_above_one(tmp_path: Path):
    from course_lib.__main__ import main

    with _hub_env(tmp_path, offline=True):
        raise SystemExit(main(["generate", "Hello", "--top-p", "1.5", "--max-new-tokens", "2"]))


def generate_with_an_unquoted_prompt(tmp_path: Path):
    from course_lib.__main__ import main

    main(["generate", "tiny-gpt2", "The", "for", "statement"])


def grade_an_unknown_chapter(tmp_path: Path):
    from course_lib.grade import main

    raise SystemExit(main(["ex99"]))


CASES = [
    Case("cli-download-offline-set", "command line", download_with_offline_set, SystemExit,
         ("downloading needs the network", "unset HF_HUB_OFFLINE",
          "on a machine that has network", "--to course-models", "export HF_HOME=", "HF_HUB_OFFLINE=1"),
         problem="`python -m course_lib.download gpt2` with `HF_HUB_OFFLINE=1` set",
         fix="`unset HF_HUB_OFFLINE` if this machine is online; otherwise download on a machine that is, "
             "copy the folder here and set `HF_HOME` to it (*Workshops*)",
         readme=True),
    Case("cli-download-no-network", "command line", download_without_network, SystemExit,
         ("'gpt2'", "could not be reached", "downloading needs the network", "on a machine that has network",
          "python -m course_lib.download gpt2 --to course-models", "export HF_HOME=/path/to/course-models"),
         problem="`python -m course_lib.download gpt2` on a machine without network",
         fix="run that command on a machine that has network, copy its folder here and set "
             "`HF_HOME=/path/to/course-models` and `HF_HUB_OFFLINE=1` (*Workshops*)",
         readme=True),
    Case("cli-download-function-no-network", "command line", download_function_without_network,
         OSError,  # course_lib.hub.HubError
         ("cannot download 'gpt2'", "could not be reached", "ConnectionError", "on a machine that has network",
          "export HF_HOME=")),
    Case("cli-download-no-models", "command line", download_without_models, SystemExit,
         ("name at least one model", "--all")),
    Case("cli-generate-missing-folder", "command line", generate_from_a_missing_folder, SystemExit,
         ("error:", "my-model", "check the path")),
    Case("cli-generate-top-p-above-one", "command line", generate_with_top_p_above_one, SystemExit,
         ("top_p", "1.5", "(0, 1]")),
    Case("cli-generate-unquoted-prompt", "command line", generate_with_an_unquoted_prompt, SystemExit,
         ("got 4 words", "one prompt per call", "quoted", 'python -m course_lib generate "The for statement"'),
         problem='`python -m course_lib generate tiny-gpt2 The for statement` (prompt not quoted)',
         fix='quote the prompt: `python -m course_lib generate "The for statement"`',
         readme=True),
    Case("cli-grade-unknown-chapter", "command line", grade_an_unknown_chapter, SystemExit,
         ("no chapter 'ex99'", "ex00", "ex01")),
]
