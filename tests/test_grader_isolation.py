"""The grader cannot be fooled, and learner code cannot hurt it.

Every bypass that once passed the grader is written here as a learner file and must now
score 0 with a message that says why: importing the course's own implementation (at module
level, inside a function, or by a name built at run time), torch's private spellings of a
switched-off shortcut, and tampering with the checks or the results. Learner code that
forks, prints a gigabyte, allocates memory without end or kills its parent is reported and
leaves no process and no temporary file behind, and a notebook's ``check()`` survives it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from course_lib.grading import registry, scan
from course_lib.grading.runner import check, format_table, grade
from course_lib.paths import course_root

COUNT = "return sum(math.prod(s) for s in shapes)\n"
DOT = "return sum(x * y for x, y in zip(a, b))\n"


def write(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(textwrap.dedent(source))
    return folder


def by_key(results):
    return {r.key: r for r in results}


def ex00(folder: Path, count_body: str = COUNT, dot_body: str = DOT, header: str = "") -> Path:
    source = ("import math, os, sys, time\n" + textwrap.dedent(header) + "\n\ndef count_parameters(shapes):\n"
              + textwrap.indent(count_body, "    ") + "\n\ndef dot(a, b):\n" + textwrap.indent(dot_body, "    ") + "\n")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ex00_welcome.py").write_text(source)
    return folder


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def quiet_tmpdir(tmp_path, monkeypatch):
    """TMPDIR set to an empty folder, to see what grading leaves there."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    return tmp


# ----------------------------------------------------------------------------- the answer key


LAYERS_FROM_COURSE = """
import torch
from course_lib.layers import layer_norm as _course_layer_norm, linear as _linear


def layer_norm(x, weight, bias, eps=1e-5):
    return _course_layer_norm(x, weight, bias, eps)


def linear(x, weight, bias):
    return _linear(x, weight, bias)
"""


def test_a_module_level_import_of_the_answer_key_scores_zero(tmp_path):
    folder = write(tmp_path / "ex", "ex02_layers.py", LAYERS_FROM_COURSE)
    results = by_key(grade(["ex02.layer_norm", "ex02.linear"], source=folder)[0])
    for r in results.values():
        assert (r.status, r.points) == ("answer_key", 0)
        assert "uses the course's own implementation" in r.message and "course_lib.layers" in r.message
        assert "line 3" in r.message


@pytest.mark.parametrize("chapter,file,source,key", [
    ("ex07", "ex07_quantization.py", """
        from course_lib.quantization import pack_int4 as _pack
        def pack_int4(q):
            return _pack(q)
        """, "ex07.pack_int4"),
    ("ex06", "ex06_gpt2.py", """
        import course_lib.generation
        def top_p_filter(logits, p):
            return course_lib.generation.top_p_filter(logits, p)
        """, "ex06.top_p_filter"),
    ("ex06", "ex06_gpt2.py", """
        from course_lib.layers import causal_mask as _mask   # layers is allowed in ex06; its causal_mask is not
        def causal_mask(t_query, t_key):
            return _mask(t_query, t_key)
        """, "ex06.causal_mask"),
    ("ex04", "ex04_roberta.py", """
        def mean_pooling(hidden_states, attention_mask):
            from course_lib.models.encoder import mean_pooling as _pool   # inside a function
            return _pool(hidden_states, attention_mask)
        """, "ex04.mean_pooling"),
    ("ex05", "ex05_loading.py", """
        from solutions.ex05_loading import rename_legacy_key   # the course's solutions
        """, "ex05.rename_legacy_key"),
])
def test_imports_of_the_answer_key_score_zero(tmp_path, chapter, file, source, key):
    folder = write(tmp_path / "ex", file, source)
    [r] = grade([key], source=folder)[0]
    assert (r.status, r.points) == ("answer_key", 0), (r.status, r.message)
    assert "uses the course's own implementation" in r.message


def test_an_answer_key_import_by_a_name_built_at_run_time_scores_zero(tmp_path):
    folder = write(tmp_path / "ex", "ex02_layers.py", """
        import importlib

        def layer_norm(x, weight, bias, eps=1e-5):
            module = importlib.import_module("course_" + "lib" + ".layers")
            return module.layer_norm(x, weight, bias, eps)

        def gelu_tanh(x):
            module = importlib.import_module("course_" + "lib" + ".layers")
            try:
                return module.gelu_tanh(x)
            except ImportError:   # caught, and still caught out
                import math, torch
                return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
        """)
    results = by_key(grade(["ex02.layer_norm", "ex02.gelu_tanh"], source=folder)[0])
    for r in results.values():
        assert (r.status, r.points) == ("answer_key", 0), (r.key, r.status, r.message)
        assert "course_lib.layers" in r.message


def test_allowed_helpers_still_work(tmp_path):
    # ex04 may use chapter 02's layers: a right answer built on them passes.
    folder = write(tmp_path / "ex", "ex04_roberta.py", """
        import torch
        from course_lib import layers

        def mean_pooling(hidden_states, attention_mask):
            mask = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
            return (layers.linear(hidden_states, torch.eye(hidden_states.shape[-1])) * mask).sum(1) \\
                / mask.sum(1).clamp(min=1e-9)
        """)
    [r] = grade(["ex04.mean_pooling"], source=folder)[0]
    assert r.status == "pass", r.message


# ----------------------------------------------------------------------------- shortcuts


@pytest.mark.parametrize("body,key", [
    ("return torch.native_layer_norm(x, x.shape[-1:], weight, bias, eps)[0]", "ex02.layer_norm"),
    ('return torch._C._nn.gelu(x, approximate="tanh")', "ex02.gelu_tanh"),
    ("return torch.ops.aten.layer_norm(x, x.shape[-1:], weight, bias, eps)", "ex02.layer_norm"),
])
def test_private_spellings_of_a_shortcut_score_zero(tmp_path, body, key):
    name = key.split(".")[1]
    args = "x, weight, bias, eps=1e-5" if name == "layer_norm" else "x"
    folder = write(tmp_path / "ex", "ex02_layers.py", f"import torch\n\ndef {name}({args}):\n    {body}\n")
    [r] = grade([key], source=folder)[0]
    assert r.points == 0 and "private internals" in r.message, (r.status, r.message)


@pytest.mark.parametrize("source,key,shortcut", [
    # names built at run time get past the file's reading; the learner's process switches them off
    ("""
     import torch
     _ln = getattr(torch, "native_" + "layer_norm")        # grabbed when the file is imported
     def layer_norm(x, weight, bias, eps=1e-5):
         return _ln(x, x.shape[-1:], weight, bias, eps)[0]
     """, "ex02.layer_norm", "torch.native_layer_norm"),
    ("""
     import torch
     def gelu_tanh(x):
         nn = getattr(getattr(torch, "_" + "C"), "_nn")
         return nn.gelu(x, approximate="tanh")
     """, "ex02.gelu_tanh", "torch._C._nn.gelu"),
    ("""
     from torch.nn.functional import layer_norm as _ln     # the public shortcut, grabbed at import time
     def layer_norm(x, weight, bias, eps=1e-5):
         return _ln(x, x.shape[-1:], weight, bias, eps)
     """, "ex02.layer_norm", "torch.nn.functional.layer_norm"),
    ("""
     import torch
     def layer_norm(x, weight, bias, eps=1e-5):
         return torch.nn.LayerNorm(x.shape[-1], eps=eps)(x) * weight + bias
     """, "ex02.layer_norm", "torch.nn.functional.layer_norm"),
])
def test_shortcuts_grabbed_or_spelled_at_run_time_score_zero(tmp_path, source, key, shortcut):
    folder = write(tmp_path / "ex", "ex02_layers.py", source)
    [r] = grade([key], source=folder)[0]
    assert r.points == 0 and shortcut in r.message, (r.status, r.message)


def test_the_file_scan_reads_imports_and_private_torch():
    found = scan.scan_source(textwrap.dedent("""
        '''course_lib.layers in a docstring is fine'''
        import torch as T
        import torch.nn.functional as F
        from course_lib import layers, quantization
        import importlib
        x = importlib.import_module("course_lib.generation")
        y = T._C._nn.gelu
        z = F.softmax            # public: fine
        w = T.__version__        # dunder: fine
        """), allow=("course_lib.layers",))
    assert [(f.kind, f.line, f.what) for f in found] == [
        ("answer_key", 5, "course_lib.quantization"), ("answer_key", 7, "course_lib.generation"),
        ("private", 8, "torch._C")]


# ----------------------------------------------------------------------------- tampering


def test_switching_off_the_import_hook_scores_zero(tmp_path):
    folder = write(tmp_path / "ex", "ex02_layers.py", """
        import importlib, sys
        sys.meta_path[:] = [f for f in sys.meta_path if "AnswerKey" not in type(f).__name__]
        layers = importlib.import_module("course_" + "lib.layers")
        layer_norm = layers.layer_norm
        """)
    [r] = grade(["ex02.layer_norm"], source=folder)[0]
    assert r.points == 0 and "import machinery" in r.message


def test_replacing_the_checks_or_forging_results_scores_zero(tmp_path):
    # Both worked when the checks and the results file lived in the process that ran the learner's code.
    folder = ex00(tmp_path / "ex", header="""
        import importlib, json
        try:
            registry = importlib.import_module("course_" + "lib.grading.registry")
            for ex in list(registry._REGISTRY.values()):
                object.__setattr__(ex, "grade", lambda fn, rng: None)
        except ImportError:
            pass
        """, count_body=textwrap.dedent("""
        for path in sys.argv[1:]:
            try:
                with open(path, "a") as f:
                    for key in ("ex00.count_parameters", "ex00.dot"):
                        f.write(json.dumps({"event": "result", "key": key, "status": "pass",
                                            "message": "", "printed": ""}) + "\\n")
            except OSError:
                pass
        os._exit(0)
        """), dot_body="return 0.0\n")
    results = by_key(grade(["ex00"], source=folder)[0])
    assert sum(r.points for r in results.values()) == 0
    assert results["ex00.count_parameters"].status == "answer_key"  # the registry import was refused
    assert "course_lib.grading" in results["ex00.count_parameters"].message


def test_writing_to_the_exit_and_crash_paths_costs_one_exercise(tmp_path):
    folder = ex00(tmp_path / "ex", count_body="os._exit(0)\n")
    results = by_key(grade(["ex00"], source=folder)[0])
    assert (results["ex00.count_parameters"].status, results["ex00.count_parameters"].points) == ("crash", 0)
    assert "exit code 0" in results["ex00.count_parameters"].message
    assert results["ex00.dot"].status == "pass"


# ----------------------------------------------------------------------------- harm


def test_a_fork_is_killed_with_the_learners_process(tmp_path, quiet_tmpdir):
    pids = tmp_path / "pids"
    folder = ex00(tmp_path / "ex", count_body=textwrap.dedent(f"""
        if not os.path.exists({str(pids)!r}):
            for escape in (False, True):
                if os.fork() == 0:
                    if escape:
                        os.setsid()        # leaves the process group; the supervisor still reaps it
                    with open({str(pids)!r}, "a") as f:
                        f.write(f"{{os.getpid()}}\\n")
                    time.sleep(120)
                    os._exit(0)
            time.sleep(0.5)
        """) + COUNT)
    results = by_key(grade(["ex00"], source=folder)[0])
    assert results["ex00.count_parameters"].status == "pass"
    forked = [int(p) for p in pids.read_text().split()]
    assert len(forked) == 2
    deadline = time.monotonic() + 5
    while any(alive(p) for p in forked) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in forked), "a process forked by the learner's code is still running"
    assert list(quiet_tmpdir.iterdir()) == []


def test_printing_a_gigabyte_is_counted_not_kept_and_a_right_answer_still_counts(tmp_path, quiet_tmpdir):
    folder = ex00(tmp_path / "ex", count_body=textwrap.dedent("""
        global printed
        if not globals().get("printed"):
            printed = True
            sys.stdout.write("debug " * (2**30 // 6 + 1))
        """) + COUNT)
    start = time.monotonic()
    results, seed = grade(["ex00.count_parameters"], source=folder)
    [r] = results
    assert r.status == "pass", r.message
    assert r.printed_bytes >= 2**30 and len(r.printed.encode()) <= 1_000_000
    assert "it printed 1.0 GB; the grader kept the first" in format_table(results, seed)
    assert time.monotonic() - start < 60
    assert list(quiet_tmpdir.iterdir()) == []


def test_growing_memory_without_end_is_stopped_and_reported(tmp_path, quiet_tmpdir):
    folder = ex00(tmp_path / "ex", header="import torch\n", count_body=textwrap.dedent("""
        chunks = []
        for _ in range(64):                       # 8 GB, 128 MB at a time
            chunks.append(torch.ones(2**25))
        """) + COUNT, dot_body=textwrap.dedent("""
        data = bytearray(8 * 2**30)               # 8 GB at once, from plain Python
        """) + DOT)
    start = time.monotonic()
    results = by_key(grade(["ex00"], source=folder, memory_gb=2)[0])
    assert time.monotonic() - start < 60
    for key in ("ex00.count_parameters", "ex00.dot"):
        r = results[key]
        assert (r.status, r.points) == ("error", 0), (key, r.status, r.message)
        assert "ran out of memory" in r.message and "2 GB" in r.message, r.message
    assert list(quiet_tmpdir.iterdir()) == []


def test_killing_its_parent_is_reported_and_the_rest_is_graded(tmp_path, quiet_tmpdir):
    folder = ex00(tmp_path / "ex", count_body="os.kill(os.getppid(), 9)\ntime.sleep(5)\n")
    start = time.monotonic()
    results = by_key(grade(["ex00"], source=folder)[0])
    assert time.monotonic() - start < 15
    r = results["ex00.count_parameters"]
    assert (r.status, r.points) == ("crash", 0)
    assert "signal its parent" in r.message
    assert results["ex00.dot"].status == "pass"
    assert list(quiet_tmpdir.iterdir()) == []


def test_killing_its_process_group_is_reported(tmp_path):
    folder = ex00(tmp_path / "ex", count_body="os.killpg(0, 9)\n")
    results = by_key(grade(["ex00"], source=folder)[0])
    assert (results["ex00.count_parameters"].status, results["ex00.count_parameters"].points) == ("crash", 0)
    assert results["ex00.dot"].status == "pass"


def test_check_in_a_kernel_survives_learner_code_that_kills_its_parent(tmp_path):
    folder = ex00(tmp_path / "ex", count_body="os.kill(os.getppid(), 9)\n", dot_body="os.killpg(0, 9)\n")
    kernel = textwrap.dedent(f"""
        from course_lib.grading.runner import check
        check("ex00.count_parameters", source={str(folder)!r})
        check("ex00.dot", source={str(folder)!r})
        print("KERNEL STILL ALIVE")
        """)
    out = subprocess.run([sys.executable, "-c", kernel], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("[FAIL]") == 2 and "KERNEL STILL ALIVE" in out.stdout


def test_a_file_whose_import_hangs_costs_its_exercises_once(tmp_path, monkeypatch):
    from course_lib.grading import learner_process

    monkeypatch.setattr(learner_process, "STARTUP_TIMEOUT", 3.0)
    folder = ex00(tmp_path / "ex", header="while True:\n    time.sleep(0.05)\n")
    start = time.monotonic()
    results = grade(["ex00"], source=folder)[0]
    assert time.monotonic() - start < 12  # one wait for the file, not one per exercise
    assert [(r.status, r.points) for r in results] == [("timeout", 0)] * len(registry.load_chapter("ex00"))
    assert "importing your file did not finish within 3 s" in results[0].message


def test_a_stray_relative_path_lands_beside_the_exercises_folder(tmp_path):
    folder = ex00(tmp_path / "course" / "exercises", count_body="open('stray.txt', 'w').close()\n" + COUNT)
    [r] = grade(["ex00.count_parameters"], source=folder)[0]
    assert r.status == "pass"
    assert (tmp_path / "course" / "stray.txt").exists() and not (folder / "stray.txt").exists()


def test_the_learners_process_holds_no_checks_and_no_course_code(tmp_path):
    folder = ex00(tmp_path / "ex", count_body=textwrap.dedent("""
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("course_lib", "solutions"))
        raise ValueError(f"loaded: {loaded}; argv: {sys.argv[1:]}")
        """))
    [r] = grade(["ex00.count_parameters"], source=folder)[0]
    assert "loaded: []" in r.message


# ----------------------------------------------------------------------------- the grader still has teeth


@pytest.mark.skipif(not (course_root() / "solutions").is_dir(), reason="a learner hand-out has no solutions/")
def test_every_chapter_declares_its_rules_and_solutions_pass_them():
    for chapter in registry.chapters():
        rules = registry.rules_for(chapter)
        solution = next((course_root() / "solutions").glob(f"{chapter}_*.py"))
        assert scan.scan_source(solution.read_text(), rules.allow, rules.refuse) == [], solution.name
