"""``python -m course_lib``: the course's command line.

    python -m course_lib generate "The for statement" --max-new-tokens 40
    python -m course_lib generate gpt2 "Hello, my name is" --top-k 40 --seed 0

``generate [MODEL] PROMPT`` streams the generated text as it comes. MODEL is a Hub id, a
folder or a course asset; it defaults to the course's own tiny GPT-2 (``tiny-gpt2``),
which works offline. Other tools: ``python -m course_lib.doctor``, ``.grade``,
``.download``, ``.convert``, ``.handout``, ``.train_tiny``.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_MODEL = "tiny-gpt2"


def _generate(args: argparse.Namespace) -> int:
    import torch

    from course_lib.fused import fuse
    from course_lib.generation import generate, print_piece
    from course_lib.loading import load_model
    from course_lib.tokenizer_loading import load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    model = fuse(load_model(args.model, task="causal-lm", device=args.device))
    tokenizer = load_tokenizer(args.model)
    print(args.prompt, end="", flush=True)
    generate(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
             top_k=args.top_k, top_p=args.top_p, seed=args.seed, stream=print_piece)
    print()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib", description="Transformers from scratch: tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = commands.add_parser("generate", help="generate text from a prompt, streamed as it comes",
                              description="Generate text with a causal language model (greedy unless a "
                                          "sampling option is given).")
    gen.add_argument("words", nargs="+", metavar="[MODEL] PROMPT",
                     help=f"an optional model (Hub id, folder or course asset; default {DEFAULT_MODEL}), "
                          f"then the prompt (quote it)")
    gen.add_argument("--max-new-tokens", type=int, default=50, metavar="N")
    gen.add_argument("--temperature", type=float, default=1.0, help="> 1 flatter, < 1 sharper, 0 greedy")
    gen.add_argument("--top-k", type=int, default=None, metavar="K", help="sample among the K best tokens")
    gen.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling, 0 < P <= 1")
    gen.add_argument("--seed", type=int, default=None, help="make a sample repeatable (implies sampling)")
    gen.add_argument("--device", default=None, help="cpu, cuda, mps (default: cpu)")
    gen.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    args = parser.parse_args(argv)
    if len(args.words) > 2:
        parser.error(f"expected [MODEL] PROMPT, got {len(args.words)} words: quote the prompt, "
                     f"e.g. python -m course_lib generate \"The for statement\"")
    args.model, args.prompt = (DEFAULT_MODEL, *args.words) if len(args.words) == 1 else args.words
    try:
        return _generate(args)
    except (OSError, ValueError, NotImplementedError) as err:  # HubError, CheckpointError, bad options
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
