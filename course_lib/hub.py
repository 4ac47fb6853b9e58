"""Where a model's files come from: a local folder, a course offline asset, or the Hugging Face Hub.

``resolve_source(src)`` turns whatever the learner typed into a folder on disk:

- a local folder (``"./my-model"``, ``Path(...)``)  -> that folder;
- the name of a course offline asset (``"all-MiniLM-L6-v2"``) -> the installed copy;
- a Hub model id (``"gpt2"``, ``"sentence-transformers/all-MiniLM-L6-v2"``) -> a snapshot
  folder in the Hub cache (``$HF_HOME/hub/models--org--name/snapshots/<commit>/``),
  downloaded first when the machine is online.

Offline first: ``HF_HUB_OFFLINE=1`` means "never touch the network, use the cache"; the
Hub id of an offline asset resolves to the asset when the cache does not hold it. Every
failure ends in a ``HubError`` whose message names the model and the fix.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

# What a model folder needs, as patterns for `snapshot_download(allow_patterns=...)`.
CONFIG_FILES = ["config.json", "generation_config.json"]
# chat_template.jinja / .json: newer repositories keep an instruct model's chat template there instead of in
# tokenizer_config.json (course_lib.chat_template). Patterns that match nothing are simply skipped.
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json"]
# Only the safetensors weights by default: many repos ship the same weights in several
# formats (gpt2: safetensors, .bin, TF, Flax, ONNX...) and downloading all of them wastes
# gigabytes. The weights loader asks for other formats itself.
WEIGHT_FILES = ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
# An image model's preprocessing (resize, crop, rescale, normalise: course_lib.image_processing); a text
# model's repository simply has none. Small, and classify_image needs it beside config.json.
PREPROCESSOR_FILES = ["preprocessor_config.json"]
DEFAULT_FILES = CONFIG_FILES + TOKENIZER_FILES + PREPROCESSOR_FILES + WEIGHT_FILES

# Hub ids that a course offline asset provides (used when the Hub cache does not hold them).
HUB_ID_TO_ASSET = {"sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2"}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")  # "name" or "org/name"


class HubError(OSError):
    """A model could not be found locally or fetched from the Hub; the message says what to do."""


class ModelNotCachedError(HubError, FileNotFoundError):
    """The Hub could not be used (offline or unreachable) and the cache does not hold the model."""


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read now, not at import."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in ("1", "true", "yes", "on")


def hub_cache_dir() -> Path:
    """The Hub cache folder, computed from the environment now.

    ``huggingface_hub`` reads these variables once, when it is first imported; a notebook
    or test that sets ``HF_HOME`` later would otherwise still use the old folder.
    Same order as ``huggingface_hub``: ``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``,
    ``$HF_HOME/hub``, ``$XDG_CACHE_HOME/huggingface/hub``, ``~/.cache/huggingface/hub``.
    """
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def _looks_local(src: str) -> bool:
    """A string the learner surely meant as a path, not a Hub id."""
    return (src.startswith((".", "/", "~")) or "\\" in src or src.count("/") > 1
            or (os.sep != "/" and os.sep in src) or not _HUB_ID.match(src))


def resolve_source(src: str | os.PathLike, revision: str | None = None,
                   filenames: list[str] | None = None) -> Path:
    """The local folder holding the files of ``src`` (see the module docstring for what ``src`` may be).

    ``revision``: a Hub branch, tag or commit (default: ``main``); ignored for local folders.
    ``filenames``: file names or glob patterns to fetch from the Hub (default ``DEFAULT_FILES``).
    Raises ``FileNotFoundError`` for a missing local path and ``HubError`` (or its subclass
    ``ModelNotCachedError``) when the Hub cannot provide the model.
    """
    if isinstance(src, os.PathLike):
        return _local_folder(Path(src))
    if not isinstance(src, str) or not src.strip():
        raise TypeError(f"a model source must be a folder path or a Hub model id, got {src!r}")
    path = Path(src).expanduser()
    if path.exists():
        return _local_folder(path)
    if os.path.lexists(path):  # a symbolic link that leads nowhere: say so, not "not on the Hub"
        raise FileNotFoundError(_broken_link(path))

    from course_lib.assets import ASSETS, asset_path

    if src in ASSETS:
        return asset_path(src)
    if _looks_local(src):
        raise FileNotFoundError(f"no folder {src!r} (looked in {path.resolve()}): check the path; "
                                "a Hub model id looks like 'gpt2' or 'org/name'")

    cache_dir = hub_cache_dir()
    patterns = list(filenames) if filenames else DEFAULT_FILES
    asset = HUB_ID_TO_ASSET.get(src) if revision in (None, "main") else None
    if asset is not None:
        # Offline first: a copy in the Hub cache wins (it is what the learner downloaded);
        # otherwise the installed asset, without asking the network.
        try:
            return fetch_snapshot(src, revision, patterns, cache_dir, local_files_only=True)
        except HubError:
            pass
        try:
            return asset_path(asset)
        except FileNotFoundError:
            pass  # asset not installed: fall through to the Hub
    return fetch_snapshot(src, revision, patterns, cache_dir, local_files_only=is_offline())


def cached_snapshot(repo_id: str, revision: str | None = None,
                    required: tuple[str | tuple[str, ...], ...] = ("config.json",)) -> Path | None:
    """The folder of ``repo_id`` in the Hub cache if it holds every file in ``required``, else None.

    Never touches the network: for notebook cells that run a Hub model only when its files are
    already here (``python -m course_lib.download MODEL`` put them there), and print that command
    otherwise. A name in ``required`` may be a tuple of alternatives: ``("model.safetensors",
    "model.safetensors.index.json")``.
    """
    try:
        folder = fetch_snapshot(repo_id, revision, DEFAULT_FILES, hub_cache_dir(), local_files_only=True)
    except HubError:
        return None
    for names in required:
        if not any((folder / name).is_file() for name in ((names,) if isinstance(names, str) else names)):
            return None
    return folder


def _broken_link(path: Path) -> str:
    """Why the symbolic link ``path`` leads to no folder: a loop, or a target that does not exist."""
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop this way
        return _loop_message(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return _loop_message(path)
    return (f"{str(path)!r} is a symbolic link to {os.readlink(path)!r}, which does not exist: point the link at "
            f"the model folder (ln -sfn FOLDER {path}) or pass the folder itself")


def _loop_message(path: Path) -> str:
    return (f"{str(path)!r} is a symbolic link loop (it leads back to itself: {path} -> {os.readlink(path)} -> ...), "
            f"so there is no folder there; remove it (rm {path}) and link or pass the real model folder")


def _local_folder(path: Path) -> Path:
    path = path.expanduser()
    if os.path.lexists(path) and not path.exists():
        raise FileNotFoundError(_broken_link(path))
    if not path.exists():
        raise FileNotFoundError(f"no folder {str(path)!r} (looked in {path.resolve()}): check the path")
    if not path.is_dir():
        raise NotADirectoryError(f"{str(path)!r} is a file; pass the folder that holds config.json and the "
                                 f"tokenizer/weight files (here: {str(path.parent)!r})")
    return path


def _prefetch_hint(repo_id: str, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return (f"on a machine with network, run `python -m course_lib.download {repo_id}{rev} --to DIR` and copy DIR "
            f"here, or run `hf download {repo_id}{rev}` (older huggingface_hub: `huggingface-cli download "
            f"{repo_id}{rev}`) and copy its cache folder here; then point HF_HOME at the copy (the folder that "
            f"holds hub/). Or download the files into a folder and pass that folder instead of the model id")


def fetch_snapshot(repo_id: str, revision: str | None, patterns: list[str], cache_dir: Path,
              local_files_only: bool) -> Path:
    """``huggingface_hub.snapshot_download`` with every failure turned into a ``HubError`` that names the fix."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (GatedRepoError, HFValidationError, HfHubHTTPError,
                                       LocalEntryNotFoundError, OfflineModeIsEnabled,
                                       RepositoryNotFoundError, RevisionNotFoundError)

    what = f"model {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                   cache_dir=str(cache_dir), local_files_only=local_files_only)
    except GatedRepoError as err:
        raise HubError(f"{what} is gated on the Hub: accept its license on https://huggingface.co/{repo_id} "
                       f"and log in (`hf auth login`, or set HF_TOKEN) — or use a non-gated model") from err
    except RepositoryNotFoundError as err:
        raise HubError(f"{what} does not exist on the Hugging Face Hub (or it is private): check the spelling "
                       f"(e.g. 'gpt2', 'roberta-base', 'sentence-transformers/all-MiniLM-L6-v2'); a local "
                       f"folder of that name does not exist either") from err
    except RevisionNotFoundError as err:
        raise HubError(f"{what}: the revision {revision!r} does not exist; use a branch, tag or commit "
                       f"listed on https://huggingface.co/{repo_id}/commits/main") from err
    except HFValidationError as err:
        raise HubError(f"{repo_id!r} is neither a local folder, nor a course asset, nor a valid Hub model id "
                       f"({err})") from err
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        if local_files_only:
            reason = ("the Hub is switched off (HF_HUB_OFFLINE is set: this machine is treated as having "
                      "no network)")
        else:
            reason = "the Hugging Face Hub could not be reached (no network?)"
        raise ModelNotCachedError(
            f"cannot load {what}: {reason}, and the Hub cache {cache_dir} does not hold it. "
            f"To fix it, {_prefetch_hint(repo_id, revision)}." + (" If you are online, unset HF_HUB_OFFLINE."
                                                                  if local_files_only else "")) from err
    except HfHubHTTPError as err:
        raise HubError(f"the Hub refused {what}: {err}. Check the model id, your token (HF_TOKEN) and "
                       f"network; or {_prefetch_hint(repo_id, revision)}") from err
    except Exception as err:  # connection errors of the HTTP client, disk errors, ...
        raise HubError(f"could not fetch {what} from the Hub ({type(err).__name__}: {err}). "
                       f"Check the network, or set HF_HUB_OFFLINE=1 to use the cache only; "
                       f"to work offline, {_prefetch_hint(repo_id, revision)}") from err
    return Path(folder)
