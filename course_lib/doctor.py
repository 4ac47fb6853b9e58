"""Check that this machine is ready for the course: ``python -m course_lib.doctor``.

Prints one line per requirement, ``[OK]``, ``[WARN]``, ``[FAIL]`` or ``[INFO]``, and exits
non-zero only when something the course needs is broken (a ``[FAIL]``). Paste the output
into a bug report. Being offline is not a failure: the course runs without a network.

Notebooks start with :func:`quick_check`, a short version.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import re
import sys
from pathlib import Path

MIN_PYTHON = (3, 10)

# distribution name -> why the course needs it; "required" ones FAIL when missing
REQUIRED = {
    "numpy": "arrays under the teaching tensor",
    "torch": "every model in the course",
    "safetensors": "reading and writing checkpoints",
    "tokenizers": "the reference tokenizers",
    "regex": "GPT-2's pre-tokenizer pattern",
    "huggingface_hub": "the Hub cache and downloads",
    "matplotlib": "plots in the notebooks",
    "tqdm": "progress bars",
    "ipywidgets": "progress bars in notebooks",
    "pillow": "decoding images (chapter 10)",
    "jinja2": "chat templates of instruct models (chapter 09)",
}
LAB = {"jupyterlab": "the notebook app", "ipykernel": "the Python kernel for notebooks",
       "scikit-image": "the photos chapter 10 reads (and the image-preprocessing tests)"}
TESTS = {"pytest": "tests", "nbval": "notebook tests", "hypothesis": "property tests",
         "transformers": "reference outputs in tests (never imported by course_lib)",
         "onnx": "writing ONNX graphs (chapter 11)", "onnxruntime": "running them outside PyTorch (chapter 11)",
         "gguf": "llama.cpp's file format, the reference for the GGUF writer (chapter 11)"}

OK, WARN, FAIL, INFO = "[OK]  ", "[WARN]", "[FAIL]", "[INFO]"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path | None = None) -> dict[str, str]:
    """``{normalised name: version}`` from the course's constraints.txt (empty if not found)."""
    if path is None:
        try:
            from course_lib.paths import course_root

            path = course_root() / "constraints.txt"
        except FileNotFoundError:
            return {}
    if not path.exists():
        return {}
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_normalise(name)] = version.strip()
    return pins


def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _same_version(installed: str, pinned: str) -> bool:
    return installed.split("+", 1)[0] == pinned.split("+", 1)[0]


def check_python() -> tuple[str, str]:
    version = platform.python_version()
    if sys.version_info[:2] < MIN_PYTHON:
        return FAIL, f"Python {version}: the course needs {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer"
    return OK, f"Python {version} ({sys.executable})"


def check_packages(pins: dict[str, str]) -> list[tuple[str, str]]:
    lines = []
    for group, missing_status in ((REQUIRED, FAIL), (LAB, WARN), (TESTS, INFO)):
        for dist, why in group.items():
            have, pinned = _installed(dist), pins.get(_normalise(dist))
            if have is None:
                fix = "run `make setup`" if group is not TESTS else "only needed to run the tests (`make test` installs it)"
                lines.append((missing_status, f"{dist} is not installed ({why}): {fix}"))
            elif pinned and not _same_version(have, pinned):
                lines.append((WARN, f"{dist} {have}, but the course is pinned to {pinned}: outputs may differ "
                                    "from the notebooks; `make setup` installs the pinned set"))
            else:
                lines.append((OK, f"{dist} {have}" + (" (pinned)" if pinned else "")))
    return lines


def check_torch_devices() -> list[tuple[str, str]]:
    try:
        import torch
    except Exception as err:  # a broken torch install shows up as ImportError or OSError
        return [(FAIL, f"torch does not import: {err}")]
    lines = []
    try:
        x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        assert torch.equal(x @ x.T, torch.tensor([[5.0, 14.0], [14.0, 50.0]]))
        lines.append((OK, f"CPU: torch {torch.__version__.split('+')[0]} computes correctly ({torch.get_num_threads()} threads)"))
    except Exception as err:
        lines.append((FAIL, f"CPU: a small matmul failed or was wrong: {err}"))
    if torch.cuda.is_available():
        try:
            y = torch.ones(4, 4, device="cuda") @ torch.ones(4, 4, device="cuda")
            assert float(y.sum()) == 64.0
            lines.append((OK, f"CUDA: {torch.cuda.get_device_name(0)} (optional; the course runs on CPU)"))
        except Exception as err:
            lines.append((WARN, f"CUDA is reported available but a test matmul failed: {err}; use the CPU"))
    else:
        lines.append((INFO, "CUDA: not available (optional; the course runs on CPU)"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        lines.append((INFO, "MPS (Apple GPU): available (optional; results can differ slightly from CPU)"))
    else:
        lines.append((INFO, "MPS (Apple GPU): not available (optional)"))
    return lines


def check_assets() -> list[tuple[str, str]]:
    from course_lib.assets import ASSETS, asset_path

    lines = []
    for name, asset in ASSETS.items():
        try:
            asset_path(name)
            lines.append((OK, f"offline asset {name}: {asset.what}"))
        except FileNotFoundError as err:
            lines.append((FAIL, str(err)))
    return lines


def check_course_files() -> list[tuple[str, str]]:
    from course_lib.paths import course_root

    try:
        root = course_root()
    except FileNotFoundError as err:
        return [(WARN, str(err))]
    notebooks = sorted(p.name for p in (root / "notebooks").glob("*.ipynb"))
    status = OK if notebooks else WARN
    lines = [(status, f"course folder {root}: {len(notebooks)} notebooks")]
    lines.append((INFO, "solutions/ present (instructor copy)" if (root / "solutions").is_dir()
                  else "no solutions/ (learner hand-out)"))
    return lines


def check_kernel() -> list[tuple[str, str]]:
    try:
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError:
        return [(WARN, "jupyter_client is not installed, so JupyterLab cannot run notebooks: run `make setup`")]
    try:
        specs = KernelSpecManager().get_all_specs()
    except Exception as err:
        return [(WARN, f"could not list Jupyter kernels: {err}")]
    if "python3" not in specs:
        return [(WARN, "no 'python3' Jupyter kernel: run `python -m ipykernel install --sys-prefix`")]
    argv = specs["python3"]["spec"].get("argv", [])
    exe = argv[0] if argv else "?"
    same = exe in ("python", "python3", "{sys.executable}") or Path(exe).resolve() == Path(sys.executable).resolve()
    if not same and not exe.startswith("python"):
        return [(WARN, f"the 'python3' kernel runs {exe}, not this Python ({sys.executable}): "
                       "start JupyterLab with `make lab` so notebooks see course_lib")]
    return [(OK, "Jupyter kernel 'python3' uses this Python")]


def check_hub(timeout: float = 3.0) -> list[tuple[str, str]]:
    cache = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    lines = [(INFO, f"Hugging Face cache: {cache}" + (" (HF_HOME)" if os.environ.get("HF_HOME") else ""))]
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        lines.append((INFO, "Hub: offline mode (HF_HUB_OFFLINE is set), not contacted; cached models still load"))
        return lines
    import urllib.request

    try:
        urllib.request.urlopen("https://huggingface.co/api/models/gpt2", timeout=timeout).close()
        lines.append((INFO, "Hub: reachable (models can be downloaded)"))
    except Exception as err:
        reason = getattr(err, "reason", err)
        lines.append((INFO, f"Hub: not reachable ({reason}); fine: the course works offline, "
                            "and cells that need the Hub say so and skip"))
    return lines


def run(hub: bool = True) -> int:
    """Print the full report; return the number of failures."""
    pins = read_pins()
    sections = [
        ("Python", [check_python()]),
        ("Packages" + (" (against constraints.txt)" if pins else ""), check_packages(pins)),
        ("Devices", check_torch_devices()),
        ("Offline assets", check_assets()),
        ("Course", check_course_files() + check_kernel()),
    ]
    if hub:
        sections.append(("Network", check_hub()))
    failures = 0
    print(f"course_lib doctor — {platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores")
    for title, lines in sections:
        print(f"\n{title}")
        for status, text in lines:
            failures += status == FAIL
            print(f"  {status} {text}")
    print("\n" + ("All good: the course is ready." if failures == 0 else
                  f"{failures} problem(s) marked [FAIL]: fix them (each line says how), then run this again."))
    return failures


def quick_check() -> None:
    """A short environment check for the first cell of each notebook."""
    import torch

    print(f"Python {platform.python_version()}, torch {torch.__version__.split('+')[0]}, "
          f"numpy {importlib.import_module('numpy').__version__}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + \
              (["mps"] if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else [])
    print(f"devices: {', '.join(devices)}; the course defaults to the CPU")
    problems = [text for status, text in check_packages(read_pins()) + check_assets() if status == FAIL]
    for text in problems:
        print(f"[FAIL] {text}")
    print("[OK] ready" if not problems else "Fix the [FAIL] lines, e.g. with `make setup` (details: python -m course_lib.doctor)")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m course_lib.doctor", description=__doc__.split("\n")[0])
    parser.add_argument("--no-network", action="store_true", help="do not try to reach the Hugging Face Hub")
    args = parser.parse_args(argv)
    return 1 if run(hub=not args.no_network) else 0


if __name__ == "__main__":
    sys.exit(main())
