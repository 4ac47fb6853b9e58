"""Workshop tool: pre-fetch models into a folder you can copy to laptops without network.

    python -m course_lib.download MODEL [MODEL ...] [--to DIR] [--revision REV]

Online, on one machine (the instructor's): downloads each model's config, tokenizer and
weights (safetensors, or ``pytorch_model.bin`` for repositories that have no safetensors)
into ``DIR/hub`` in the Hugging Face cache layout, with progress bars. Copy ``DIR`` to
each laptop (USB stick, shared drive) and set ``HF_HOME=DIR`` there: ``load_model`` and
``load_tokenizer`` then find every model offline (``HF_HUB_OFFLINE=1`` makes sure nothing
tries the network). Files already present are not downloaded again.

Without ``--to``, models go into this machine's own cache (``$HF_HOME``, by default
``~/.cache/huggingface``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from course_lib import hub

# The models the course's notebooks can use online (chapters 04-08).
COURSE_MODELS = ["gpt2", "distilgpt2", "roberta-base", "distilroberta-base", "bert-base-uncased",
                 "sentence-transformers/all-MiniLM-L6-v2"]


def download(model: str, cache_dir: Path, revision: str | None = None) -> Path:
    """Fetch ``model`` into ``cache_dir`` (a Hub cache folder); returns its snapshot folder."""
    if hub.is_offline():
        raise hub.HubError("HF_HUB_OFFLINE is set: downloading needs the network. Unset it "
                           "(`unset HF_HUB_OFFLINE`) on a machine that is online")
    folder = hub.fetch_snapshot(model, revision, hub.DEFAULT_FILES, cache_dir, local_files_only=False)
    from course_lib.checkpoint import BIN_FILES, CheckpointError, weight_files

    try:
        weight_files(folder)
    except CheckpointError:  # an older repository: pytorch_model.bin only
        folder = hub.fetch_snapshot(model, revision, hub.CONFIG_FILES + BIN_FILES, cache_dir, local_files_only=False)
        weight_files(folder)
    return folder


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.download",
                                     description="Pre-fetch models for offline use (see the README, 'Workshops').")
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
    cache_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for model in models:
        print(f"==> {model}", flush=True)
        try:
            folder = download(model, cache_dir, args.revision)
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
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
