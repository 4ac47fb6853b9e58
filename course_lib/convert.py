"""Turn a ``pytorch_model.bin`` checkpoint into ``model.safetensors`` with today's key names.

    python -m course_lib.convert SRC DST [--overwrite]

SRC: a model folder (``pytorch_model.bin`` or a sharded ``pytorch_model.bin.index.json``)
or a single ``.bin`` file. DST: a new folder; it receives ``model.safetensors`` and, when
SRC is a folder, every non-weight file (config, tokenizer). The ``.bin`` is read with
``weights_only=True``, so a file that tries to run code is refused, not executed. A DST that
holds another checkpoint is refused unless ``--overwrite`` (which removes that checkpoint's
other weights, index and tokenizer files); DST is written all at once, so an interrupted
conversion leaves it as it was.
"""

from __future__ import annotations

import argparse
import sys

from course_lib.checkpoint import CheckpointError, convert_checkpoint


def plain(text: str) -> str:
    """A docstring's text for a terminal: RST's ``literal`` markup becomes plain text."""
    return text.replace("``", "")


def main(argv: list[str] | None = None) -> int:
    intro, usage, *details = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(prog="python -m course_lib.convert", description=plain(intro),
                                     epilog=plain(" ".join(" ".join(details).split())))
    parser.add_argument("src", help="model folder or .bin file")
    parser.add_argument("dst", help="folder to write model.safetensors (and copies of config/tokenizer) into")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a checkpoint DST already holds (its other weight, index and tokenizer files "
                             "are removed; other files are kept)")
    args = parser.parse_args(argv)
    try:
        result = convert_checkpoint(args.src, args.dst, overwrite=args.overwrite)
    except (CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {result['path']}: {result['tensors']} tensors, {result['bytes'] / 1e6:.1f} MB "
          f"(every tensor read back and compared)")
    if result["renamed"]:
        print(f"renamed {len(result['renamed'])} keys, e.g. " +
              ", ".join(f"{a} -> {b}" for a, b in list(result["renamed"].items())[:2]))
    for item in result["dropped"]:
        print(f"dropped {item}")
    if result["copied"]:
        print(f"copied {', '.join(result['copied'])}")
    if result["removed"]:
        print(f"removed the old checkpoint's {', '.join(result['removed'])} (--overwrite)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
