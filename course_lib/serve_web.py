"""Chapter 11: the course's models in the browser — ``python -m course_lib serve-web``.

    python -m course_lib serve-web [--port 8011] [--models DIR] [--host 127.0.0.1]

exports all-MiniLM-L6-v2 and the course's tiny GPT-2 to ONNX into ``DIR`` (default
``~/.cache/course_lib/serve-web``) unless they are there already, then serves the static page
``serving/web/index.html`` on localhost with Python's ``http.server``. The page runs both models
with ``onnxruntime-web`` (WebAssembly, one thread): type sentences ->
a cosine-similarity heatmap; type a prompt -> tokens streamed as they are generated. Nothing
leaves the machine: the page, the tokenizers (``serving/js/``), onnxruntime-web's ``.wasm`` files
(from ``serving/web/node_modules``, installed by ``npm ci``, no CDN) and the models all come from
this server.

What the server maps (everything else is 404):

    /                 -> serving/web/index.html
    /web/<file>       -> serving/web/<file>            (the page's own files; not its node_modules)
    /js/<file>        -> serving/js/<file>             (the tokenizers and the ONNX loops, shared with Node)
    /ort/<file>       -> serving/web/node_modules/onnxruntime-web/dist/<file>
    /models/<file>    -> DIR/<file>                    (minilm.onnx, tiny-gpt2.onnx, their sidecars, tokenizers)
    /config.json      -> where the page finds the two models

The helpers here (``serving_dir``, ``find_node``, ``find_chromium``, ``require_node_modules``) are
also what the tests use to say why they cannot run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import threading
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["MODEL_FILES", "DEFAULT_PORT", "serving_dir", "default_models_dir", "find_node", "find_chromium",
           "require_node_modules", "ensure_models", "make_server", "add_arguments", "run", "serve_in_thread"]

DEFAULT_PORT = 8011
# what the page loads, by role: the exported file names in the models folder
MODEL_FILES = {"encoder": "minilm.onnx", "decoder": "tiny-gpt2.onnx"}
_SOURCES = {"encoder": "all-MiniLM-L6-v2", "decoder": "tiny-gpt2"}  # course assets (offline)
NODE_SETUP = "run `make serving` at the top of the course (npm ci in serving/node and serving/web)"
MIME_TYPES = {".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript",
              ".json": "application/json", ".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
              ".onnx": "application/octet-stream", ".map": "application/json", ".svg": "image/svg+xml"}


def serving_dir() -> Path:
    """The course's ``serving/`` folder (``course_lib.paths.course_root``); a clear error when it is absent."""
    from course_lib.paths import course_root

    try:
        folder = course_root() / "serving"
    except FileNotFoundError as err:
        raise FileNotFoundError(f"serve-web needs the course folder, with serving/ in it: {err}") from None
    if not (folder / "web" / "index.html").is_file():
        raise FileNotFoundError(f"{folder} is missing or incomplete: serve-web runs from a checkout of the course "
                                f"(git clone), where serving/ sits beside course_lib/; a pip-installed course_lib "
                                f"does not carry it")
    return folder


def default_models_dir() -> Path:
    """``$XDG_CACHE_HOME/course_lib/serve-web``, or ``~/.cache/course_lib/serve-web``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "course_lib" / "serve-web"


def find_node() -> str | None:
    """The ``node`` executable (Node.js 18 or newer), or None."""
    return shutil.which("node")


def find_chromium() -> str | None:
    """A Chromium for the browser test: ``$CHROMIUM`` if set, else the system's (Debian's package), or None."""
    candidates = [os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                  shutil.which("chromium-browser")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def require_node_modules(folder: str, package: str) -> Path:
    """``serving/<folder>/node_modules/<package>``, or a FileNotFoundError that says how to install it."""
    path = serving_dir() / folder / "node_modules" / package
    if not (path / "package.json").is_file():
        raise FileNotFoundError(f"{path} is missing: the npm package {package!r} is not installed; {NODE_SETUP} "
                                f"(or `npm ci` in serving/{folder})")
    return path


def _export_ready(path: Path) -> bool:
    """The file, its sidecar (the format this course_lib writes) and its tokenizer are all there."""
    from course_lib.export.onnx_export import SIDECAR_FORMAT

    sidecar = path.with_name(path.name + ".json")
    if not (path.is_file() and sidecar.is_file()):
        return False
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("format") == SIDECAR_FORMAT and bool(meta.get("tokenizer")) and \
        (path.parent / meta["tokenizer"]).is_file()


def ensure_models(models_dir: str | os.PathLike, *, force: bool = False, log=print) -> dict[str, Path]:
    """Export MiniLM and the tiny GPT-2 (with their tokenizers) into ``models_dir`` unless already there.

    Returns ``{"encoder": path, "decoder": path}``. ``force``: export again even if present.
    """
    from course_lib.assets import asset_path
    from course_lib.export.onnx_export import to_onnx
    from course_lib.loading import load_model

    models_dir = Path(models_dir).expanduser()
    models_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, name in MODEL_FILES.items():
        path = models_dir / name
        if force or not _export_ready(path):
            source = asset_path(_SOURCES[role])
            log(f"exporting {_SOURCES[role]} -> {path} ...")
            task = "causal-lm" if role == "decoder" else "base"
            to_onnx(load_model(source, task=task), path, tokenizer=source / "tokenizer.json")
        paths[role] = path
    return paths


class _Handler(SimpleHTTPRequestHandler):
    """Static files from a few fixed folders (see the module docstring), with the right MIME types."""

    server_version = "course_lib-serve-web"
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}

    def __init__(self, *args, routes: dict[str, Path], verbose: bool = False, **kwargs):
        self.routes, self.verbose = routes, verbose
        super().__init__(*args, directory=str(routes["/web/"]), **kwargs)

    def translate_path(self, path: str) -> str:
        """URL path -> file path inside one route's folder; "" (-> 404) for anything outside them."""
        path = unquote(urlsplit(path).path)
        if path in ("/", "/index.html"):
            return str(self.routes["/web/"] / "index.html")
        for prefix, folder in self.routes.items():
            if path.startswith(prefix):
                target = (folder / path[len(prefix):]).resolve()
                if target != folder and folder in target.parents and target.is_file():
                    if prefix == "/web/" and "node_modules" in target.relative_to(folder).parts:
                        return ""  # the page's dependencies are served under /ort/ only
                    return str(target)
                return ""
        return ""

    def send_head(self):
        if self.path.split("?")[0] == "/config.json":
            return self._send_config()
        if not self.translate_path(self.path):
            self.send_error(HTTPStatus.NOT_FOUND, "not served by serve-web")
            return None
        return super().send_head()

    def _send_config(self):
        import io

        body = json.dumps({"models": {role: f"/models/{name}" for role, name in MODEL_FILES.items()},
                           "ort": "/ort/"}).encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)

    def end_headers(self):
        self.send_header("Cache-Control", "no-cache")  # a re-export must reach the page
        super().end_headers()

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if self.verbose:
            super().log_message(format, *args)


def make_server(models_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                verbose: bool = False) -> ThreadingHTTPServer:
    """The HTTP server (not yet serving: call ``serve_forever``); ``port=0`` picks a free port."""
    root = serving_dir()
    routes = {"/web/": root / "web", "/js/": root / "js",
              "/ort/": require_node_modules("web", "onnxruntime-web") / "dist",
              "/models/": Path(models_dir).expanduser().resolve()}
    routes = {prefix: folder.resolve() for prefix, folder in routes.items()}
    handler = functools.partial(_Handler, routes=routes, verbose=verbose)
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as err:
        raise OSError(f"cannot listen on {host}:{port} ({err.strerror}): pick another port with --port "
                      f"(0 = any free port)") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 = any free port")
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    parser.add_argument("--models", default=None, metavar="DIR",
                        help=f"where the exported models live (exported there if missing; default "
                             f"{default_models_dir()})")
    parser.add_argument("--re-export", action="store_true", help="export the models again even if present")
    parser.add_argument("--verbose", action="store_true", help="log every request")


def run(args: argparse.Namespace) -> int:
    """``serve-web``: export what is missing, then serve until Ctrl-C."""
    models_dir = Path(args.models) if args.models else default_models_dir()
    if not 0 <= args.port <= 65535:
        print(f"error: --port must be 0..65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        serving_dir()
        require_node_modules("web", "onnxruntime-web")
        ensure_models(models_dir, force=args.re_export, log=lambda line: print(line, flush=True))
        server = make_server(models_dir, args.host, args.port, verbose=args.verbose)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    print(f"serving the chapter 11 page on http://{host}:{port}/ (models from {models_dir}); Ctrl-C stops",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


def serve_in_thread(models_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 0):
    """Start ``make_server`` in a daemon thread (notebooks, tests): returns the server; ``.shutdown()`` stops it."""
    server = make_server(models_dir, host, port)
    threading.Thread(target=server.serve_forever, daemon=True, name="serve-web").start()
    return server
