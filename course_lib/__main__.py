"""``python -m course_lib``: the course's command line.

    python -m course_lib generate "The for statement" --max-new-tokens 40
    python -m course_lib generate gpt2 "Hello, my name is" --top-k 40 --seed 0

``generate [MODEL] PROMPT`` streams the generated text as it comes. MODEL is a Hub id, a
folder or a course asset; it defaults to the course's own tiny GPT-2 (``tiny-gpt2``),
which works offline. ``serve-web [--port P] [--models DIR]`` serves chapter 11's page:
the exported models running in the browser (``course_lib.serve_web``). Other tools:
``python -m course_lib.doctor``, ``.grade``, ``.download``, ``.convert``, ``.handout``, ``.train_tiny``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_MODEL = "tiny-gpt2"


def _load(model_name: str, device: str | None):
    """The model (``load_model``'s default: the fastest path) and its tokenizer."""
    from course_lib.loading import load_model
    from course_lib.tokenizer_loading import load_tokenizer

    return load_model(model_name, task="causal-lm", device=device), load_tokenizer(model_name)


def _generate(args: argparse.Namespace, model, tokenizer) -> None:
    from course_lib.generation import generate, print_piece

    print(args.prompt, end="", flush=True)
    generate(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
             top_k=args.top_k, top_p=args.top_p, seed=args.seed, stream=print_piece)
    print()


def _error_line(err: BaseException) -> str:
    """One line for the user: the message of an error we expect, with the type of any other."""
    expected = isinstance(err, (OSError, ValueError, TypeError, NotImplementedError))  # HubError, CheckpointError
    return f"error: {err}" if expected else f"error: {type(err).__name__}: {err}"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


GENERATE_USAGE = ("python -m course_lib generate [-h] [--max-new-tokens N] [--temperature T] [--top-k K] "
                  "[--top-p P] [--seed SEED] [--device DEVICE] [--threads N] [MODEL] PROMPT")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib", description="Transformers from scratch: tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = commands.add_parser("generate", help="generate text from a prompt, streamed as it comes",
                              usage=GENERATE_USAGE,
                              description="Generate text with a causal language model (greedy unless a "
                                          "sampling option is given). One prompt per call: quote it.")
    gen.add_argument("words", nargs="+", metavar="[MODEL] PROMPT",
                     help=f"an optional model (Hub id, folder or course asset; default {DEFAULT_MODEL}), "
                          f"then the prompt (quote it)")
    gen.add_argument("--max-new-tokens", type=int, default=50, metavar="N")
    gen.add_argument("--temperature", type=float, default=1.0, metavar="T", help="> 1 flatter, < 1 sharper, 0 greedy")
    gen.add_argument("--top-k", type=int, default=None, metavar="K", help="sample among the K best tokens")
    gen.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling, 0 < P <= 1")
    gen.add_argument("--seed", type=int, default=None, help="make a sample repeatable (implies sampling)")
    gen.add_argument("--device", default=None, help="cpu, cuda, mps (default: cpu)")
    gen.add_argument("--threads", type=_positive_int, default=None, metavar="N", help="CPU threads for torch")
    from course_lib import serve_web

    web = commands.add_parser("serve-web", help="serve chapter 11's page: the models in the browser (WebAssembly)",
                              description="Export all-MiniLM-L6-v2 and the tiny GPT-2 to ONNX (if missing) and serve "
                                          "the page that runs them with onnxruntime-web on localhost.")
    serve_web.add_arguments(web)
    args, extra = parser.parse_known_args(argv)
    if args.command == "serve-web":
        if extra:
            web.error(f"unrecognized arguments: {' '.join(extra)}")
        return serve_web.run(args)
    options = [word for word in extra if word.startswith("-")]
    if options:
        parser.error(f"unrecognized arguments: {' '.join(options)}")
    words = args.words + extra  # a word after an option ("MODEL --seed 1 PROMPT") comes back as extra
    if len(words) > 2:
        gen.error(f"expected [MODEL] PROMPT, got {len(words)} words: one prompt per call, quoted if it has "
                  f"spaces, e.g. python -m course_lib generate \"The for statement\"")
    model_given = len(words) == 2
    args.model, args.prompt = words if model_given else (DEFAULT_MODEL, *words)
    try:
        from course_lib.generation import check_generation_args

        check_generation_args(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        try:
            model, tokenizer = _load(args.model, args.device)
        except (OSError, ValueError) as err:
            hint = (f" (if {args.model!r} was meant as the start of the prompt, quote the whole prompt: "
                    f"python -m course_lib generate \"{args.model} {args.prompt}\")") \
                if model_given and not Path(args.model).exists() else ""
            print(f"error: {err}{hint}", file=sys.stderr)
            return 1
        _generate(args, model, tokenizer)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - a command line prints one line, never a traceback
        print(_error_line(err), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
