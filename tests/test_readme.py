"""What a newcomer pastes from the README works, offline.

- Every ```python block runs, on its own, in a fresh namespace, in an empty working folder
  (files it writes land there), with ``HF_HUB_OFFLINE=1`` and an empty ``HF_HOME``: a block
  may use only what the course installs. A block that needs the Hub has the line
  ``<!-- needs-network -->`` right above it (invisible on GitHub): it is skipped here, and
  a test checks that it really needs the network (offline it fails with
  ``ModelNotCachedError`` rather than some other error).
- Shell blocks are not run, but every ``python -m course_lib...`` command the README names is
  a real tool, with only the ``--options`` it has, and every ``make`` target exists.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NEEDS_NETWORK = "<!-- needs-network -->"
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\w*)\s*$")


def code_blocks(text: str) -> list[dict]:
    """Fenced blocks: {"lang", "line" (1-based, of the opening fence), "code", "marker" (the
    non-blank line above the fence), "heading" (the section it is in)}."""
    blocks, lines, heading, i = [], text.splitlines(), "", 0
    while i < len(lines):
        if lines[i].startswith("#"):
            heading = lines[i].lstrip("#").strip()
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent = len(opening["indent"])
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"README.md line {i + 1}: a code block that never closes")
        above = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        code = "\n".join(line[indent:] for line in lines[i + 1:end])
        blocks.append({"lang": opening["lang"], "line": i + 1, "code": code, "marker": above, "heading": heading})
        i = end + 1
    return blocks


def python_blocks(text: str) -> list[dict]:
    return [block for block in code_blocks(text) if block["lang"] == "python"]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def block_ids(blocks: list[dict]) -> list[str]:
    """"the-library-1", "the-library-2", ...: the section's name and the block's number in it."""
    ids, counts = [], {}
    for block in blocks:
        slug = re.sub(r"[^a-z0-9]+", "-", block["heading"].lower()).strip("-") or "top"
        counts[slug] = counts.get(slug, 0) + 1
        ids.append(f"{slug}-{counts[slug]}")
    return ids


@pytest.fixture
def offline_folder(tmp_path, monkeypatch):
    """An empty working folder, offline, with an empty Hub cache."""
    import huggingface_hub  # noqa: F401  (imported first: it reads the environment once)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def run_block(block: dict) -> tuple[dict, str]:
    """Execute a block as a fresh script; returns its namespace and what it printed."""
    code = compile(block["code"], f"README.md, block at line {block['line']}", "exec")
    namespace, out = {"__name__": "__main__"}, io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, namespace)
    return namespace, out.getvalue()


def test_the_readme_has_python_to_try():
    runnable = [b for b in BLOCKS if b["marker"] != NEEDS_NETWORK]
    assert len(runnable) >= 2, "README.md lost its Python examples (or they are all marked needs-network)"
    assert any("lm.generate(" in b["code"] for b in runnable), "the library example lost its batched generation"


@pytest.mark.parametrize("block", BLOCKS, ids=block_ids(BLOCKS))
def test_python_block_runs_offline(block, offline_folder):
    if block["marker"] == NEEDS_NETWORK:
        from course_lib.hub import ModelNotCachedError

        with pytest.raises(ModelNotCachedError):  # ... and it does: offline it stops at the Hub
            run_block(block)
        pytest.skip("marked <!-- needs-network -->: it fails offline as it should; not run further")
    namespace, printed = run_block(block)
    if "lm.generate(" in block["code"]:
        library_block_did_what_it_says(namespace, printed, offline_folder)


def library_block_did_what_it_says(namespace: dict, printed: str, folder: Path) -> None:
    """The library example's results are what its comments promise (shapes, files, text)."""
    assert tuple(namespace["hidden"].shape[::2]) == (2, 384)
    assert (folder / "my-model" / "config.json").is_file() and (folder / "my-model" / "model.safetensors").is_file()
    prompts, ids = namespace["prompts"], namespace["ids"]
    assert prompts["attention_mask"][:, -1].all()  # left-padded: every prompt ends with a real token
    assert ids.shape == (2, prompts["input_ids"].shape[1] + 20)
    assert namespace["texts"][1].endswith(namespace["tok"].decode(ids[1, -20:].tolist()))
    assert namespace["text"].startswith("The for statement") and printed  # the streamed sample


# ------------------------------------------------------------------ the extractor itself

def test_blocks_markers_and_indented_fences():
    text = ("# A\n\n```python\nx = 1\n```\n\n## B\n\n<!-- needs-network -->\n```python\ny = load('gpt2')\n```\n"
            "\n3. a list item:\n\n   ```bash\n   make lab\n   ```\n")
    blocks = code_blocks(text)
    assert [(b["lang"], b["heading"], b["code"]) for b in blocks] == [
        ("python", "A", "x = 1"), ("python", "B", "y = load('gpt2')"), ("bash", "B", "make lab")]
    assert [b["marker"] == NEEDS_NETWORK for b in blocks] == [False, True, False]
    with pytest.raises(ValueError, match="never closes"):
        code_blocks("```python\nx = 1\n")


def test_a_failing_block_fails(offline_folder):
    with pytest.raises(NameError, match="batch_ids"):  # what the README once said: nothing built the batch
        run_block({"code": "from course_lib import load_model\nlm = load_model('tiny-gpt2')\n"
                           "ids = lm.generate(batch_ids, 20, attention_mask=batch_mask)", "line": 1})


# ------------------------------------------------------------------ commands

COMMAND = re.compile(r"python -m (course_lib(?:\.\w+)?)\b(.*)")


def shell_snippets(text: str) -> list[str]:
    """Every line of the shell blocks (a `` # comment`` cut off) and every inline `code span`
    (one span may wrap over two lines of the README)."""
    snippets = []
    for block in code_blocks(text):
        if block["lang"] in ("bash", "sh", "shell", ""):
            snippets += [line.split(" #")[0] for line in block["code"].splitlines()]
    prose = re.sub(r"^ *```.*?^ *```", "", text, flags=re.S | re.M)
    snippets += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    return snippets


def readme_commands(text: str) -> list[tuple[str, list[str]]]:
    """(module, the --options written after it) for every ``python -m course_lib...`` the README shows."""
    found = []
    for snippet in shell_snippets(text):
        for match in COMMAND.finditer(snippet):
            found.append((match[1], re.findall(r"(?<![\w-])--[a-z][\w-]*", match[2])))
    return found


def tool_options(module: str, capsys) -> set[str]:
    """The options a tool's ``--help`` lists (``python -m course_lib``: its ``generate`` command's)."""
    import importlib

    tool = importlib.import_module(module if module != "course_lib" else "course_lib.__main__")
    assert hasattr(tool, "main"), f"the README names `python -m {module}`, which has no main()"
    argv = ["generate", "--help"] if module == "course_lib" else ["--help"]
    with pytest.raises(SystemExit) as done:
        tool.main(argv)
    assert done.value.code == 0
    return set(re.findall(r"(?<![\w-])--[a-z][\w-]*", capsys.readouterr().out))


def test_every_course_command_in_the_readme_exists_with_its_options(capsys):
    commands = readme_commands(README.read_text(encoding="utf-8"))
    modules = {module for module, _ in commands}
    assert {"course_lib", "course_lib.download", "course_lib.grade", "course_lib.convert"} <= modules
    for module in sorted(modules):
        options = tool_options(module, capsys)
        for named, used in commands:
            if named == module:
                unknown = [option for option in used if option not in options]
                assert not unknown, f"README: `python -m {module}` has no option {unknown} (--help: {sorted(options)})"


def test_every_make_target_in_the_readme_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    named = set(re.findall(r"`make ([\w-]+)", README.read_text(encoding="utf-8")))
    named |= set(re.findall(r"^make ([\w-]+)", README.read_text(encoding="utf-8"), re.M))
    assert {"lab", "test"} <= named
    assert not named - targets, f"README names make targets the Makefile lacks: {sorted(named - targets)}"


def test_every_script_the_readme_names_exists():
    text = README.read_text(encoding="utf-8")
    scripts = set(re.findall(r"(?:python|bash) ((?:bench|tests|\.ci)/[\w./]+)", text))
    scripts |= set(re.findall(r"`(bench/\w+\.py)`", text))
    missing = [s for s in sorted(scripts) if not (ROOT / s).is_file()]
    assert not missing, f"README names scripts that do not exist: {missing}"


def test_every_exercise_the_readme_names_exists():
    from course_lib.grading import registry

    named = set(re.findall(r"\b(ex\d\d)\.(\w+)", README.read_text(encoding="utf-8")))
    assert named, "the README's grading section names no exercise any more?"
    for chapter, function in sorted(named):
        functions = {ex.function for ex in registry.load_chapter(chapter)}
        assert function in functions, f"README names {chapter}.{function}, which {chapter} does not have"


def test_speed_tables_are_the_benchmarks_results():
    """The README's speed tables are what bench/readme_tables.py writes from bench/results/*.json, not typed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "bench" / "readme_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    results = sorted(p.name for p in (ROOT / "bench" / "results").glob("*.json"))
    assert {"scaling.json"} <= set(results) and any(r.startswith("decode-") for r in results) and \
        any(r.startswith("quantization-") for r in results), results
    rendered = tables.render()
    assert tables.readme_block(README.read_text(encoding="utf-8")) == rendered, \
        "README.md's speed tables differ from bench/results: run .venv/bin/python bench/readme_tables.py --write"
    for run in tables.load_runs("*.json"):  # every result names its machine and date
        assert {"cpu", "threads", "torch", "date"} <= set(run["machine"])
