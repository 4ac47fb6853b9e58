"""Workshop tool: pre-fetch models into a folder you can copy to laptops without network.

    python -m course_lib.download MODEL [MODEL ...] [--all] [--to DIR] [--revision REV]

Online, on one machine (the instructor's): downloads each model's config and generation config, tokenizer
(with an instruct model's chat template, ``chat_template.jinja`` where the repository has one; or an image
model's ``preprocessor_config.json``) and weights (safetensors, or ``pytorch_model.bin`` for
repositories that have no safetensors) into ``DIR/hub`` in the Hugging Face cache layout, with progress bars. Copy ``DIR`` to
each laptop (USB stick, shared drive) and set ``HF_HOME=DIR`` there: ``load_model`` and
``load_tokenizer`` then find every model offline (``HF_HUB_OFFLINE=1`` makes sure nothing
tries the network). Files already present are not downloaded again.

Without ``--to``, models go into this machine's own cache (``$HF_HOME``, by default
``~/.cache/huggingface``).

Downloading needs the network: on a machine without it (or with ``HF_HUB_OFFLINE`` set) each
model fails with ``NeedsNetworkError`` and the tool says what to do instead: run it on a
machine that is online, copy the folder here and point ``HF_HOME`` at the copy.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from course_lib import hub

# The models the course's notebooks can use online (chapters 04-10; microsoft/resnet-50: chapter 10's
# classify_image, with its preprocessor_config.json; the SmolLM2 and Qwen2.5 pairs: chapter 09's modern
# decoders, a base model for plain text and its -Instruct model with a chat template). Those four publish
# bfloat16 weights: SmolLM2-135M(-Instruct) 269 MB each (135M parameters x 2 bytes), Qwen2.5-0.5B(-Instruct)
# 988 MB each (494M x 2), so they add about 2.5 GB to --all.
COURSE_MODELS = ["gpt2", "distilgpt2", "roberta-base", "distilroberta-base", "bert-base-uncased",
                 "sentence-transformers/all-MiniLM-L6-v2", "microsoft/resnet-50",
                 "HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M-Instruct",
                 "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct"]


class NeedsNetworkError(hub.HubError):
    """Downloading needs the network and this machine has none (or ``HF_HUB_OFFLINE`` is set).

    ``reason``: one line, what went wrong; ``str(err)`` adds what to do (``offline_fix``).
    """

    def __init__(self, model: str, reason: str, revision: str | None = None, to: str | None = None):
        self.model, self.reason = model, reason
        super().__init__(f"cannot download {model!r}: {reason}. {offline_fix([model], revision, to)}")


def offline_fix(models: list[str], revision: str | None = None, to: str | None = None) -> str:
    """What to do when this machine cannot download: the README's 'Workshops' steps, for these models."""
    folder = (Path(to).expanduser().resolve().name if to else "") or "course-models"
    rev = f" --revision {revision}" if revision else ""
    return (f"On a machine that has network, in the course folder, run\n"
            f"    python -m course_lib.download {' '.join(models)}{rev} --to {folder}\n"
            f"then copy {folder}/ to this machine (USB stick, shared drive) and here set\n"
            f"    export HF_HOME=/path/to/{folder}     # Windows: set HF_HOME=C:\\path\\to\\{folder}\n"
            f"    export HF_HUB_OFFLINE=1\n"
            f"load_model({models[0]!r}) then reads the copy (README: 'Workshops and offline use').")


def _is_network_failure(err: hub.HubError) -> bool:
    """The Hub could not be reached at all (as opposed to: no such model, gated, no weights...)."""
    if isinstance(err, hub.ModelNotCachedError):  # huggingface_hub: no connection and nothing cached
        return True
    cause = err.__cause__
    return isinstance(cause, (ConnectionError, TimeoutError)) or any(
        word in type(cause).__name__ for word in ("Connect", "Timeout", "NetworkError"))  # httpx's, requests'


def download(model: str, cache_dir: Path, revision: str | None = None, to: str | None = None) -> Path:
    """Fetch ``model`` into ``cache_dir`` (a Hub cache folder); returns its snapshot folder.

    Raises ``NeedsNetworkError`` when ``HF_HUB_OFFLINE`` is set or the Hub cannot be reached
    (``to``: the folder the user asked for, named in the advice), ``HubError`` when the Hub
    refuses the model, ``CheckpointError`` when the repository has no weights.
    """
    if hub.is_offline():
        raise NeedsNetworkError(model, "HF_HUB_OFFLINE is set, and downloading needs the network. If this "
                                       "machine is online, `unset HF_HUB_OFFLINE` (Windows: "
                                       "`set HF_HUB_OFFLINE=`) and run the command again", revision, to)
    try:
        folder = hub.fetch_snapshot(model, revision, hub.DEFAULT_FILES, cache_dir, local_files_only=False)
    except hub.HubError as err:
        if not _is_network_failure(err):
            raise
        cause = err.__cause__  # huggingface_hub's own "no connection" message is long: named for other causes only
        detail = ("" if isinstance(err, hub.ModelNotCachedError) or cause is None
                  else f" ({type(cause).__name__}: {cause})")
        raise NeedsNetworkError(model, f"could not fetch model {model!r}: the Hugging Face Hub could not be "
                                       f"reached from this machine (no network?){detail}, and downloading needs the network",
                                revision, to) from err
    from course_lib.checkpoint import BIN_FILES, CheckpointError, weight_files

    try:
        weight_files(folder)
    except CheckpointError:  # an older repository: pytorch_model.bin only
        folder = hub.fetch_snapshot(model, revision, hub.CONFIG_FILES + BIN_FILES, cache_dir, local_files_only=False)
        weight_files(folder)
    return folder


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.download",
                                     description="Pre-fetch models for offline use (see the README, 'Workshops').",
                                     epilog="Needs the network. For laptops without it: run this on a machine "
                                            "that has it, with --to DIR; copy DIR to each laptop and there set "
                                            "HF_HOME=/path/to/DIR and HF_HUB_OFFLINE=1.")
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help=f"Hub model ids (default with --all: {' '.join(COURSE_MODELS)})")
    parser.add_argument("--all", action="store_true", help="every model the course's notebooks can use")
    parser.add_argument("--to", metavar="DIR", help="folder to fill (set HF_HOME=DIR on the laptops); "
                                                    "default: this machine's Hub cache")
    parser.add_argument("--revision", help="a branch, tag or commit (default: main)")
    args = parser.parse_args(argv)
    models = list(dict.fromkeys(args.models + (COURSE_MODELS if args.all else [])))
    if not models:
        parser.error("name at least one model (e.g. gpt2 roberta-base) or pass --all")
    home = Path(args.to).expanduser().resolve() if args.to else None
    cache_dir = home / "hub" if home else hub.hub_cache_dir()
    if not hub.is_offline():  # offline, every model fails: leave no empty folder behind
        cache_dir.mkdir(parents=True, exist_ok=True)
    failed, no_network = [], []
    for model in models:
        print(f"==> {model}", flush=True)
        try:
            folder = download(model, cache_dir, args.revision, args.to)
        except NeedsNetworkError as err:  # the same advice for every model: printed once, below
            print(f"    FAILED: {err.reason}", file=sys.stderr, flush=True)
            failed.append(model)
            no_network.append(model)
            continue
        except (hub.HubError, OSError, ValueError) as err:  # ValueError: CheckpointError, no weights in the repo
            print(f"    FAILED: {err}", file=sys.stderr, flush=True)
            failed.append(model)
            continue
        files = sorted(p.name for p in folder.iterdir())
        print(f"    {folder} ({', '.join(files)})", flush=True)
    print(f"\n{len(models) - len(failed)} of {len(models)} models in {cache_dir} "
          f"({folder_size(cache_dir) / 1e6:.0f} MB in all).")
    if home and not failed:
        print(f"Copy {home} to each laptop, then there:\n"
              f"    export HF_HOME=/path/to/{home.name}   # Windows: set HF_HOME=...\n"
              f"    export HF_HUB_OFFLINE=1\n"
              f"    make lab")
    if failed:
        print(f"failed: {' '.join(failed)}", file=sys.stderr)
    if no_network:
        print(f"\n{offline_fix(no_network, args.revision, args.to)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
