"""Rules the whole course keeps: transformers is a test-only oracle, importing course_lib is
cheap, and the corpus everything is trained on stays byte for byte the same."""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import sys

from course_lib import corpus
from course_lib.paths import course_root

ROOT = course_root()


def imported_modules(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_course_lib_never_imports_transformers():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "course_lib").rglob("*.py")
                 if "transformers" in imported_modules(p.read_text(encoding="utf-8"))]
    assert not offenders, f"course_lib must not import transformers (test-only oracle): {offenders}"


def test_notebooks_never_import_transformers():
    offenders = []
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] != "code":
                continue
            code = "".join(cell["source"])
            code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
            if "transformers" in imported_modules(code):
                offenders.append(nb.name)
    assert not offenders, f"notebooks must not import transformers (6 s, and not the course's code): {offenders}"


def test_importing_course_lib_is_cheap_and_every_module_avoids_transformers():
    modules = sorted(
        "course_lib." + ".".join(p.relative_to(ROOT / "course_lib").with_suffix("").parts)
        for p in (ROOT / "course_lib").rglob("*.py") if p.name != "__init__.py" and "assets" not in p.parts)
    code = ("import sys, importlib\n"
            "import course_lib\n"
            "heavy = sorted(m for m in ('torch', 'tokenizers', 'huggingface_hub', 'matplotlib') if m in sys.modules)\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(heavy, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")[-2]
    assert out == "[] False", f"import course_lib loaded {out} (expected nothing heavy, and never transformers)"


def test_corpus_files_are_the_committed_bytes():
    for split, digest in corpus.SHA256.items():
        data = (corpus.corpus_dir() / f"{split}.txt").read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, (
            f"course_lib/assets/python-docs/{split}.txt changed; everything trained on it changes too. "
            "If that is intended, update corpus.SHA256 and retrain the course's assets.")


def test_corpus_split_is_disjoint_and_licensed():
    train, heldout = corpus.corpus_documents("train"), corpus.corpus_documents("heldout")
    assert (len(train), len(heldout)) == (67, 11)
    assert not set(train) & set(heldout)
    assert len(corpus.corpus_lines("heldout")) >= 1000  # enough lines for line-by-line tokenizer parity
    assert all(corpus.DOCUMENT_SEPARATOR not in line for line in corpus.corpus_lines("train"))
    licence = (corpus.corpus_dir() / "LICENSE.txt").read_text(encoding="utf-8")
    assert "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in licence


def test_unknown_split_is_a_clear_error():
    import pytest

    with pytest.raises(ValueError, match="unknown corpus split 'test'.*train, heldout"):
        corpus.corpus_text("test")
