"""Chapter 11 in the browser: ``python -m course_lib serve-web`` and the page in ``serving/web/``.

The server is started as a learner starts it (a subprocess, a free port, the models exported into
a temporary folder); headless Chromium (the system's, driven by ``playwright-core`` from npm: no
browser download) opens the page, fills the inputs and reads what the page computed from its DOM
(``data-`` attributes holding JSON). Checked against Python on the same exported files: the
similarity heatmap within 1e-4 of the course's PyTorch MiniLM, the generated tokens identical to
``ort_generate_ids`` and PyTorch's ``generate_ids``, streamed into the page one token at a time.

Skipped only when ``node`` or Chromium is not installed (``make serving`` installs Debian's
chromium when it can). When both are there but ``npm ci`` was not run, the tests fail and say so.
Set ``COURSE_SERVING_RECORD=<folder>`` to keep the browser run's JSON and a screenshot there.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from course_lib import serve_web
from course_lib.serve_web import find_chromium, find_node, require_node_modules, serving_dir

NODE = find_node()
CHROMIUM = find_chromium()
if NODE is None:
    pytest.skip("node (Node.js >= 18) is not installed, so onnxruntime-web and playwright-core cannot be installed "
                "or run: install it (apt-get install nodejs npm), then run `make serving`", allow_module_level=True)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (no /usr/bin/chromium, no $CHROMIUM): `make serving` installs "
                             "Debian's chromium when run as root (apt-get install chromium)")

from course_lib import encode_batch, load_model, load_tokenizer  # noqa: E402
from course_lib.assets import asset_path  # noqa: E402
from course_lib.generation import generate_ids  # noqa: E402
from course_lib.models.encoder import sentence_embeddings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
             "A man is riding a horse.", "Ünïcödé naïve café — 日本語 👍"]
# (prompt, new tokens, stop at the end-of-text token)
PROMPTS = [("<|endoftext|>", 48, False), ("def main():\n    return", 24, True),
           ("Unicode: naïve café — 日本語", 16, True), ("The for statement", 40, True)]  # the last one is in the screenshot


def _require(folder: str, package: str) -> Path:
    try:
        return require_node_modules(folder, package)
    except FileNotFoundError as err:
        pytest.fail(f"{err}. (node is installed, so this is a failed setup, not a reason to skip)")


@pytest.fixture(scope="module")
def web_packages():
    version = subprocess.run([NODE, "--version"], capture_output=True, text=True).stdout.strip()  # "v20.20.2"
    if int(version.lstrip("v").split(".")[0]) < 20:
        pytest.fail(f"node {version} is too old for playwright-core, which needs Node.js >= 20: upgrade Node.js")
    return _require("web", "onnxruntime-web"), _require("web", "playwright-core")


@pytest.fixture(scope="module")
def models_dir(web_packages, tmp_path_factory):
    """The two models exported the way serve-web does it (ensure_models), into an empty folder."""
    folder = tmp_path_factory.mktemp("serve-web-models")
    lines = []
    paths = serve_web.ensure_models(folder, log=lines.append)
    assert len(lines) == 2 and all(line.startswith("exporting") for line in lines)
    assert {p.name for p in paths.values()} == set(serve_web.MODEL_FILES.values())
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(models_dir):
    """``python -m course_lib serve-web --port P --models DIR`` in a subprocess; its URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "course_lib", "serve-web", "--port", str(port), "--models",
                             str(models_dir)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()  # printed once listening (nothing to export: the folder has both)
        if "serving the chapter 11 page on" not in line:
            proc.kill()
            pytest.fail(f"serve-web did not start: {line}{proc.stdout.read()}")
        assert f"http://127.0.0.1:{port}/" in line
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get(url: str):
    """(status, headers (case-insensitive), body)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, b""


# --------------------------------------------------------------------------------------
# The server: what it serves, with which MIME type, and what it refuses

def test_server_serves_page_wasm_modules_and_models_with_their_mime_types(server):
    status, headers, body = get(server)
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"/web/app.mjs" in body
    status, headers, body = get(server + "ort/ort-wasm-simd-threaded.wasm")
    assert status == 200 and headers["Content-Type"] == "application/wasm" and body[:4] == b"\0asm"
    for path in ("ort/ort.wasm.min.mjs", "web/app.mjs", "js/tokenizer.mjs", "js/models.mjs"):
        status, headers, _ = get(server + path)
        assert status == 200 and headers["Content-Type"] == "text/javascript", path
    status, headers, body = get(server + "config.json")
    assert status == 200 and json.loads(body)["models"] == {r: f"/models/{n}" for r, n in serve_web.MODEL_FILES.items()}
    status, headers, body = get(server + "models/tiny-gpt2.onnx.json")
    assert status == 200 and json.loads(body)["task"] == "causal-lm" and headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize("path", ["web/node_modules/onnxruntime-web/package.json", "js/../../course_lib/serve_web.py",
                                  "models/%2e%2e/%2e%2e/etc/passwd", "js/", "nothing.html", "course_lib/__init__.py"])
def test_server_refuses_everything_else(server, path):
    assert get(server + path)[0] == 404


def test_ensure_models_keeps_an_existing_export(models_dir):
    before = {p: p.stat().st_mtime_ns for p in models_dir.iterdir()}
    lines = []
    serve_web.ensure_models(models_dir, log=lines.append)
    assert lines == [] and {p: p.stat().st_mtime_ns for p in models_dir.iterdir()} == before


def test_serve_web_command_line_errors():
    result = subprocess.run([sys.executable, "-m", "course_lib", "serve-web", "--port", "70000"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--port must be 0..65535" in result.stderr
    result = subprocess.run([sys.executable, "-m", "course_lib", "serve-web", "--bogus"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unrecognized arguments: --bogus" in result.stderr


# --------------------------------------------------------------------------------------
# The page in headless Chromium, against Python on the same files

@pytest.fixture(scope="module")
def browser_run(server, tmp_path_factory):
    record = os.environ.get("COURSE_SERVING_RECORD")
    shot = Path(record) / "serve_web.png" if record else tmp_path_factory.mktemp("shot") / "page.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    prompts = [{"prompt": p, "maxNewTokens": n, "stopAtEos": stop} for p, n, stop in PROMPTS]
    tasks = {"sentences": SENTENCES, "prompts": prompts}
    result = subprocess.run([NODE, "test/drive.mjs", server, json.dumps(tasks), "--chromium", CHROMIUM,
                             "--screenshot", str(shot)], cwd=serving_dir() / "web", capture_output=True, text=True,
                            timeout=240)
    assert result.stdout.strip(), f"drive.mjs printed nothing (exit {result.returncode}):\n{result.stderr}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0 and "error" not in report, f"{report.get('error')}\n{result.stderr}"
    if record:
        (Path(record) / "serve_web.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    report["screenshot"] = shot
    return report


@needs_chromium
def test_page_says_when_the_models_are_missing(web_packages, tmp_path):
    """A server with an empty models folder: the page reports the 404 and names serve-web, it does not hang."""
    server = serve_web.serve_in_thread(tmp_path)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        result = subprocess.run([NODE, "test/drive.mjs", url, "{}", "--chromium", CHROMIUM, "--timeout-ms", "60000"],
                                cwd=serving_dir() / "web", capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 1 and report["ready"] == "error"
    assert "HTTP 404" in report["status"] and "serve-web" in report["status"]
    assert "did not load its models" in report["error"]


@needs_chromium
def test_page_loads_both_models_without_errors(browser_run):
    assert browser_run["ready"] == "1", browser_run["status"]
    assert browser_run["ortVersion"] == json.loads(
        (serving_dir() / "web" / "node_modules" / "onnxruntime-web" / "package.json").read_text())["version"]
    assert browser_run["pageErrors"] == [] and browser_run["failedRequests"] == [] and browser_run["console"] == []
    assert browser_run["screenshot"].stat().st_size > 10_000


@needs_chromium
def test_page_similarities_equal_python(browser_run):
    folder = asset_path("all-MiniLM-L6-v2")
    model, tok = load_model(folder), load_tokenizer(folder)
    embed = browser_run["embed"]
    assert embed["error"] is None
    assert embed["ids"] == encode_batch(tok, SENTENCES, max_length=256, padding=False, return_tensors=None)["input_ids"]
    with torch.no_grad():
        emb = sentence_embeddings(model, tok, SENTENCES).double().numpy()
    sims = np.array(embed["similarities"])
    assert sims.shape == (len(SENTENCES), len(SENTENCES)) and embed["cells"] == len(SENTENCES) ** 2
    assert np.abs(sims - emb @ emb.T).max() <= 1e-4
    assert embed["timings"]["ms"] > 0


@needs_chromium
def test_page_generates_python_tokens_streamed(browser_run, models_dir):
    from course_lib.export import OnnxCausalLM, ort_generate_ids

    model, tok = load_model("tiny-gpt2"), load_tokenizer("tiny-gpt2")
    runner = OnnxCausalLM(models_dir / serve_web.MODEL_FILES["decoder"], threads=1)
    assert len(browser_run["generate"]) == len(PROMPTS)
    for (prompt, n, stop), run in zip(PROMPTS, browser_run["generate"]):
        assert run["error"] is None, run["error"]
        prompt_ids = tok.encode(prompt).ids
        assert run["promptIds"] == prompt_ids
        ids = torch.tensor([prompt_ids])
        eos = None if stop else []  # None: the model's end-of-text id; []: never stop early
        assert run["ids"] == ort_generate_ids(runner, ids, n, eos_token_id=eos)[0].tolist(), prompt
        with torch.no_grad():
            assert run["ids"] == generate_ids(model, ids, n, eos_token_id=eos)[0].tolist(), prompt
        new = run["newIds"]
        assert run["ids"] == prompt_ids + new and 1 <= len(new) <= n
        assert stop or len(new) == n
        assert run["spanIds"] == new  # one span per token, in order
        # streamed: the page's DOM held 1, 2, ..., N token spans, each after its own change
        assert set(range(1, len(new) + 1)) <= set(run["tokenCounts"]), run["tokenCounts"]
        assert run["text"] == tok.decode(run["ids"])
        assert run["shownText"] == prompt + tok.decode(new)
        assert run["timings"]["newTokens"] == len(new) and run["timings"]["tokensPerSecond"] > 0
