"""The course corpus: English prose and code from the Python documentation.

CPython ships the text of its documentation's "topics" (the pages ``help("assert")``
shows) in the module ``pydoc_data.topics``. The course freezes one copy of it (Python
3.11.7, PSF License — see ``course_lib/assets/python-docs/LICENSE.txt``) so every machine
sees the same bytes, whatever Python it runs.

The split is fixed: of the distinct topics in sorted order, every 7th is held out (a topic
that appears under two names is kept once, so no text is in both splits). Chapter 03 trains a BPE on ``train`` and measures it on
``heldout``; chapter 06's tiny GPT-2 is trained on ``train`` and its perplexity is measured
on ``heldout``.

Documents are separated by a line holding only ``<|endoftext|>``, GPT-2's separator.

A second, larger corpus, ``"python-stdlib"`` (chapter 09), adds the standard library's docstrings
and explanatory comments to those topics: 11.9x the training tokens, split by module family so that
its held-out perplexity measures generalisation, not memory. Every reader takes ``corpus=`` (default
``"python-docs"``, so existing calls are unchanged): ``corpus_text("train", corpus="python-stdlib")``.
See ``build_stdlib_corpus`` for the rules and ``course_lib/assets/python-stdlib/README.md``.
"""

from __future__ import annotations

from pathlib import Path

DOCUMENT_SEPARATOR = "<|endoftext|>"
SPLITS = ("train", "heldout")
CORPORA = ("python-docs", "python-stdlib")
HELDOUT_EVERY = 7  # topics i with i % 7 == 6 (sorted by name) are held out
# The committed files' SHA-256: models and tokenizers trained on the corpus are only
# reproducible from these exact bytes (tests check them; update after `build_corpus`).
SHA256 = {
    "train": "7cd0b79a3c1f360da54403a867b9c88a399d88ab4e1d79bbed89a6f04f4bdd0f",
    "heldout": "d9731ade0e1c047bf577523a77d4d29a58a543ad006f27ec495854fad0807592",
}


def corpus_dir(corpus: str = "python-docs") -> Path:
    """The asset folder of ``corpus`` (one of ``CORPORA``)."""
    from course_lib.assets import asset_path

    _check_corpus(corpus)
    return asset_path(corpus)


def _check_corpus(corpus: str) -> None:
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; use one of {', '.join(CORPORA)}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r}; use one of {', '.join(SPLITS)}")


def corpus_text(split: str = "train", corpus: str = "python-docs") -> str:
    """The whole split as one string (documents separated by ``<|endoftext|>`` lines).

    ``corpus``: ``"python-docs"`` (the default, chapters 03-08) or ``"python-stdlib"`` (chapter 09;
    read from its gzip'd files and checked against ``STDLIB_SHA256`` on every first read).
    """
    _check_split(split)
    if corpus == STDLIB_CORPUS:
        return stdlib_corpus_text(split)
    return (corpus_dir(corpus) / f"{split}.txt").read_text(encoding="utf-8")


def corpus_documents(split: str = "train", corpus: str = "python-docs") -> list[str]:
    """The split's documents (one Python documentation topic, or one module's docstrings, each),
    without separators."""
    text = corpus_text(split, corpus)
    docs = text.split(f"\n{DOCUMENT_SEPARATOR}\n")
    return [d.strip("\n") for d in docs if d.strip()]


def corpus_lines(split: str = "train", corpus: str = "python-docs") -> list[str]:
    """The split's non-blank lines, trailing whitespace removed, separators dropped."""
    return [line.rstrip() for line in corpus_text(split, corpus).splitlines()
            if line.strip() and line.strip() != DOCUMENT_SEPARATOR]


def build_corpus(dest: Path | None = None) -> dict[str, int]:
    """Maintainers: write ``train.txt`` and ``heldout.txt`` from this Python's ``pydoc_data``.

    The committed copy was made with Python 3.11.7; another Python gives other text, so
    re-running this changes the corpus (and everything trained on it). Returns the number
    of characters written per split.
    """
    import pydoc_data.topics

    dest = Path(dest) if dest is not None else Path(__file__).resolve().parent / "assets" / "python-docs"
    dest.mkdir(parents=True, exist_ok=True)
    topics = pydoc_data.topics.topics
    texts = []
    for name in sorted(topics):
        text = "\n".join(line.rstrip() for line in topics[name].strip("\n").splitlines())
        if text not in texts:  # a few topics appear under two names: keep one, or it leaks into both splits
            texts.append(text)
    splits: dict[str, list[str]] = {"train": [], "heldout": []}
    for i, text in enumerate(texts):
        splits["heldout" if i % HELDOUT_EVERY == HELDOUT_EVERY - 1 else "train"].append(text)
    sizes = {}
    for split, docs in splits.items():
        body = f"\n{DOCUMENT_SEPARATOR}\n".join(docs) + "\n"
        (dest / f"{split}.txt").write_text(body, encoding="utf-8")
        sizes[split] = len(body)
    return sizes


# ---------------------------------------------------------------------------- python-stdlib (chapter 09)
#
# The course's second corpus: today's pydoc topics plus the standard library's docstrings and
# explanatory comments, read from the files this Python ships (PSF License). Built once by a maintainer
# (`python -m course_lib.corpus --stdlib`), committed gzip'd, pinned by SHA-256; readers never rebuild.

STDLIB_CORPUS = "python-stdlib"
STDLIB_FILES = {split: f"{split}.txt.gz" for split in SPLITS}
STDLIB_MANIFEST = "manifest.json"
# The Python that built the committed files (other versions ship other docstrings).
STDLIB_BUILT_WITH = {"python": "3.11.7", "platform": "linux-x86_64"}
# SHA-256 of each split's text (UTF-8, after gunzip) and of the manifest: every model trained on the
# corpus is reproducible only from these exact bytes. Update after `build_stdlib_corpus`, then retrain.
STDLIB_SHA256 = {
    "train": "1e807fcf5757667af5274e98517f49b10439eb05ba3621d901f2b0999be66281",
    "heldout": "b11232133841169b0c7278ae4c00017abb1cd815c6d09d63bad634f694dbfb5a",
    "manifest": "dc23d17f6ef8d88c6c09c59be3a8dd92da577c4545e04f2b115082e92c31298b",
}
# The split unit is a module FAMILY: a top-level module or package with everything under it
# (email, email.mime, email.mime.text, ...), its private helpers and C accelerators (_json, _pydecimal,
# _decimal -> json, decimal). A family is held out when the first 8 hex digits of
# SHA-256("python-stdlib:<family>") are 0 modulo STDLIB_HELDOUT_MODULUS: a rule that needs no list of
# all families, so a family keeps its side whatever else a Python version adds or removes.
STDLIB_HELDOUT_MODULUS = 8
# A run of full-line comments joins the corpus when it has at least this many words.
STDLIB_COMMENT_MIN_WORDS = 12
# Families whose name the rule "strip leading underscores and a `py`/`py_` prefix" does not reach.
STDLIB_FAMILY_ALIASES = {
    "aix_support": "sysconfig", "osx_support": "sysconfig", "bootsubprocess": "subprocess",
    "posixsubprocess": "subprocess", "collections_abc": "collections", "compat_pickle": "pickle",
    "compression": "gzip", "elementtree": "xml", "pyexpat": "xml", "markupbase": "html", "sre": "re",
    "thread": "threading", "threading_local": "threading", "weakrefset": "weakref", "posix": "os",
    "curses_panel": "curses", "gdbm": "dbm", "blake2": "hashlib", "md5": "hashlib", "sha1": "hashlib",
    "sha256": "hashlib", "sha512": "hashlib", "sha3": "hashlib", "lsprof": "cProfile", "sitebuiltins": "site",
    "strptime": "time", "ctypes_test": "ctypes", "multibytecodec": "codecs", "codecs_cn": "codecs",
    "codecs_hk": "codecs", "codecs_iso2022": "codecs", "codecs_jp": "codecs", "codecs_kr": "codecs",
    "codecs_tw": "codecs",
}
# Never read: tests, the GUI demos/IDE (tkinter, idlelib, turtledemo; turtle stays: it is a documented
# module whose docstrings are prose), pydoc_data (its text is the python-docs part), jokes, installed
# third-party packages, build configuration, and C modules that are tests or touch the terminal.
STDLIB_SKIP_TOP = frozenset({"test", "turtledemo", "pydoc_data", "antigravity", "this",
                             "site-packages", "lib-dynload", "__phello__", "__hello__", "_tkinter", "readline",
                             "xxsubtype", "xxlimited", "xxlimited_35", "_xxsubinterpreters", "_xxtestfuzz",
                             "_ctypes_test", "_testbuffer", "_testcapi", "_testclinic", "_testimportmultiple",
                             "_testinternalcapi", "_testmultiphase", "_imp", "_sysconfigdata"})


class CorpusIntegrityError(ValueError):
    """A corpus file is not the one the course pins (changed, truncated or not gzip)."""


def stdlib_family(module: str) -> str:
    """The split unit of a dotted module name: ``"email.mime.text" -> "email"``, ``"_pydecimal" -> "decimal"``,
    ``"_json" -> "json"``, ``"_collections_abc" -> "collections"``."""
    top = module.split(".")[0]
    name = top.strip("_")
    if top.startswith("_") and name.startswith("py_"):
        name = name[3:]
    elif top.startswith("_") and name.startswith("py"):
        name = name[2:]
    return STDLIB_FAMILY_ALIASES.get(name, name) or top


def stdlib_split_of(module: str) -> str:
    """``"heldout"`` or ``"train"``: the fixed side of ``module``'s family (see ``STDLIB_HELDOUT_MODULUS``)."""
    import hashlib

    digest = hashlib.sha256(f"{STDLIB_CORPUS}:{stdlib_family(module)}".encode()).hexdigest()
    return "heldout" if int(digest[:8], 16) % STDLIB_HELDOUT_MODULUS == 0 else "train"


def read_corpus_file(path: str | Path, sha256: str | None) -> str:
    """The text of one gzip'd corpus file, after checking it.

    ``path``: a ``.txt.gz`` file; ``sha256``: the SHA-256 its decompressed UTF-8 bytes must have
    (``None`` skips the check). Raises ``FileNotFoundError`` for a missing file and
    ``CorpusIntegrityError`` for a file that is not gzip, is truncated, is not UTF-8 or has other
    bytes than pinned — each naming the file and the fix.
    """
    import gzip
    import hashlib
    import zlib

    path = Path(path)
    fix = ("Fix: restore the committed file (git checkout -- course_lib/assets/python-stdlib/, or reinstall the "
           "course: pip install -e .); maintainers who rebuilt it on purpose update corpus.STDLIB_SHA256")
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} is missing. {fix}")
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as err:
        raise CorpusIntegrityError(f"{path} is not a complete gzip file ({type(err).__name__}: {err}). {fix}") from None
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise CorpusIntegrityError(f"{path}: its text has SHA-256 {digest} ({len(data):,} bytes), expected "
                                       f"{sha256}: the file was changed, so models trained on the corpus would "
                                       f"not be reproducible. {fix}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusIntegrityError(f"{path} is not UTF-8 text ({err}). {fix}") from None


_STDLIB_CACHE: dict[str, str] = {}


def stdlib_corpus_text(split: str = "train") -> str:
    """The ``python-stdlib`` split as one string (documents separated by ``<|endoftext|>`` lines),
    read once per process from ``<split>.txt.gz`` and checked against ``STDLIB_SHA256``."""
    _check_split(split)
    if split not in _STDLIB_CACHE:
        _STDLIB_CACHE[split] = read_corpus_file(corpus_dir(STDLIB_CORPUS) / STDLIB_FILES[split], STDLIB_SHA256[split])
    return _STDLIB_CACHE[split]


def stdlib_manifest() -> dict:
    """The build record of ``python-stdlib`` (checked against ``STDLIB_SHA256["manifest"]``): the Python
    that built it, the rules, counts, and per split one entry per document in file order:
    ``{"name", "family", "kind": "topic" | "python" | "extension", "sha256"}``."""
    import hashlib
    import json

    path = corpus_dir(STDLIB_CORPUS) / STDLIB_MANIFEST
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != STDLIB_SHA256["manifest"]:
        raise CorpusIntegrityError(f"{path}: SHA-256 {digest}, expected {STDLIB_SHA256['manifest']}; restore it "
                                   f"(git checkout -- course_lib/assets/python-stdlib/)")
    return json.loads(data)


# ---- building (maintainers only)

def _clean_docstring(node_or_doc) -> str | None:
    """A docstring as the corpus stores it: ``inspect.cleandoc``'d, trailing spaces removed; None when
    empty or when it holds the document separator."""
    import ast
    import inspect

    doc = node_or_doc
    if isinstance(node_or_doc, ast.AST):
        doc = ast.get_docstring(node_or_doc, clean=False)
    if not isinstance(doc, str):
        return None
    doc = "\n".join(line.rstrip() for line in inspect.cleandoc(doc).strip().splitlines())
    doc = doc.replace("\r", "").replace("\x0c", "")
    if not doc.strip() or DOCUMENT_SEPARATOR in doc:
        return None
    return doc


def _normalised(text: str) -> str:
    return " ".join(text.split())


class _Blocks:
    """One module's document under construction: blocks ``header\\n\\n    indented text``, each docstring
    (or comment paragraph) kept only the first time its whitespace-normalised text is seen in the corpus."""

    def __init__(self, seen: set[str]):
        self.seen, self.blocks, self.dropped = seen, [], 0

    def add(self, header: str, doc: str | None) -> None:
        if doc is None:
            return
        key = _normalised(doc)
        if key in self.seen:
            self.dropped += 1
            return
        self.seen.add(key)
        if "\n" in header or len(header) > 300:  # a signature with a huge default: keep the name only
            header = header.split("(")[0]
        body = "\n".join(f"    {line}" if line else "" for line in doc.splitlines())
        self.blocks.append(f"{header}\n\n{body}")

    def text(self) -> str:
        return "\n\n".join(self.blocks)


def _python_module_blocks(name: str, source: bytes, blocks: _Blocks) -> None:
    """Module, class and function docstrings of one source file, in source order, read with ``ast``
    (nothing is imported or run). Nested classes and functions are visited too."""
    import ast

    tree = ast.parse(source)
    blocks.add(f"module {name}", _clean_docstring(tree))

    def visit(body, prefix):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                kind = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
                blocks.add(f"{kind} {prefix}{node.name}({ast.unparse(node.args)})", _clean_docstring(node))
                visit(node.body, f"{prefix}{node.name}.<locals>.")  # helpers defined inside, as __qualname__ names them
            elif isinstance(node, ast.ClassDef):
                bases = ", ".join(ast.unparse(b) for b in [*node.bases, *node.keywords])
                blocks.add(f"class {prefix}{node.name}" + (f"({bases})" if bases else ""), _clean_docstring(node))
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.If, ast.Try)):  # definitions under `if sys.platform ...` / `try: import`
                visit(node.body, prefix)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body, prefix)
                visit(node.orelse, prefix)

    visit(tree.body, f"{name}.")


def _python_comment_block(name: str, source: bytes, blocks: _Blocks) -> None:
    """The module's explanatory comments as one block ``comments in NAME``: runs of consecutive
    full-line ``#`` comments joined into paragraphs, kept when they hold at least
    ``STDLIB_COMMENT_MIN_WORDS`` words (shorter ones are mostly labels or commented-out code), each
    paragraph deduplicated like a docstring."""
    import io
    import tokenize

    runs: list[list[str]] = []
    last_line = -2
    try:
        for tok in tokenize.tokenize(io.BytesIO(source).readline):
            if tok.type == tokenize.COMMENT and tok.line.lstrip().startswith("#"):
                text = tok.string.lstrip("#").rstrip()
                text = text[1:] if text.startswith(" ") else text
                if tok.start[0] == last_line + 1 and runs:
                    runs[-1].append(text)
                else:
                    runs.append([text])
                last_line = tok.start[0]
    except (tokenize.TokenError, SyntaxError):
        return
    paragraphs = []
    for run in runs:
        text = "\n".join(line.rstrip() for line in run).strip("\n")
        words = text.split()
        if (len(words) < STDLIB_COMMENT_MIN_WORDS or text.startswith("!") or "-*-" in text
                or DOCUMENT_SEPARATOR in text):
            continue
        key = _normalised(text)
        if key in blocks.seen:
            blocks.dropped += 1
            continue
        blocks.seen.add(key)
        paragraphs.append(text)
    if paragraphs:
        blocks.blocks.append(f"comments in {name}\n\n" + "\n\n".join(
            "\n".join(f"    {line}" if line else "" for line in p.splitlines()) for p in paragraphs))


def _extension_module_entries(name: str) -> list[tuple[str, str | None]]:
    """``(header, docstring)`` of a module written in C (``builtins``, ``math``, ``_json``, ...):
    importing one only loads its shared library. Only objects the module defines itself
    (``__module__``), attributes sorted by name. Run it in a fresh interpreter
    (``_extension_entries_in_fresh_python``): a running program (pytest, Jupyter) replaces hooks
    such as ``sys.unraisablehook``, which would change what is read."""
    import importlib
    import inspect

    module = importlib.import_module(name)
    entries: list[tuple[str, str | None]] = [(f"module {name}", _clean_docstring(module.__doc__))]

    def signature(obj) -> str:
        try:
            return str(inspect.signature(obj))
        except Exception:  # noqa: BLE001 - C signatures can name constants the module lacks here (_curses)
            return "(...)"

    def visit(owner, prefix, depth):
        for attr in sorted(vars(owner)):
            obj = vars(owner)[attr]
            if attr.startswith("_") and not (attr.startswith("__") and attr.endswith("__")):
                continue
            if isinstance(obj, type):
                if depth or getattr(obj, "__module__", None) != name:
                    continue
                bases = ", ".join(b.__name__ for b in obj.__bases__)
                entries.append((f"class {prefix}{attr}({bases})", _clean_docstring(obj.__doc__)))
                visit(obj, f"{prefix}{attr}.", depth + 1)
            elif callable(obj) or inspect.ismethoddescriptor(obj) or inspect.isdatadescriptor(obj):
                if depth == 0 and getattr(obj, "__module__", name) not in (name, None):
                    continue
                doc = getattr(obj, "__doc__", None)
                if depth and hasattr(object, attr) and doc == getattr(object, attr).__doc__:
                    continue  # the generic slot wrappers ("Return self==value.") repeat on every class
                header = f"def {prefix}{attr}{signature(obj)}" if callable(obj) else f"attribute {prefix}{attr}"
                entries.append((header, _clean_docstring(doc)))

    visit(module, f"{name}.", 0)
    return entries


def _extension_entries_in_fresh_python(names: list[str]) -> dict[str, list[tuple[str, str | None]] | None]:
    """``_extension_module_entries`` of each module, read by a new ``python -I`` (no environment
    variables, no user site) so that the result depends only on the Python installation; ``None``
    for a module that does not import."""
    import json
    import subprocess
    import sys

    code = ("import json, sys\n"
            f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
            "from course_lib.corpus import _extension_module_entries\n"
            "out = {}\n"
            "for name in sys.argv[1:]:\n"
            "    try:\n"
            "        out[name] = _extension_module_entries(name)\n"
            "    except ImportError:\n"
            "        out[name] = None\n"
            "json.dump(out, sys.stdout)\n")
    result = subprocess.run([sys.executable, "-I", "-W", "ignore", "-c", code, *names],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"reading the C modules' docstrings failed:\n{result.stderr[-2000:]}")
    return {name: None if v is None else [tuple(e) for e in v] for name, v in json.loads(result.stdout).items()}


def _stdlib_sources(stdlib: Path) -> list[tuple[str, str, Path | None]]:
    """``(module, kind, path)`` for every module the corpus reads, sorted by module name: ``python``
    files under ``stdlib`` (``kind="python"``) and C modules (built in, or in ``lib-dynload``)."""
    import sys

    found: dict[str, tuple[str, Path | None]] = {}
    for path in stdlib.rglob("*.py"):
        parts = list(path.relative_to(stdlib).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if (not parts or parts[0] in STDLIB_SKIP_TOP or parts[0].startswith(("config-", "_sysconfigdata"))
                or any(p in ("test", "tests", "__pycache__", "__main__") or p.startswith("test_") or p.endswith("_test")
                       for p in parts)
                or any(not p.isidentifier() for p in parts)):
            continue
        found[".".join(parts)] = ("python", path)
    c_modules = set(sys.builtin_module_names) | {p.name.split(".")[0] for p in (stdlib / "lib-dynload").glob("*.so")}
    for name in c_modules:
        if name not in STDLIB_SKIP_TOP and not name.startswith("_test") and name not in found:
            found[name] = ("extension", None)
    return sorted((name, kind, path) for name, (kind, path) in found.items())


def build_stdlib_corpus(dest: Path | None = None) -> dict:
    """Maintainers: write ``python-stdlib``'s ``train.txt.gz``, ``heldout.txt.gz`` and ``manifest.json``.

    Documents, in this order, each a unit of the split:

    1. the ``python-docs`` topics, verbatim, each in the split it has there (so chapter 06's held-out
       topics stay unseen by anything trained on either corpus);
    2. one document per standard-library module, sorted by dotted name: blocks ``module NAME``,
       ``class NAME.C(bases)``, ``def NAME.f(signature)``, ``attribute NAME.C.a`` (C data descriptors),
       then ``comments in NAME`` (``_python_comment_block``), each followed by a blank line and the text
       indented by four spaces. Python files are read with ``ast`` (nothing runs); C modules
       are imported (their docstrings exist only in the shared library).

    Deduplication: a docstring whose whitespace-normalised text already appeared earlier (in any
    module) is dropped with its header, so a text never sits in both splits; a module left empty is
    dropped, and so is a document equal (exactly or after whitespace normalisation) to an earlier one.
    Split: by module family (``stdlib_family``, ``stdlib_split_of``). Written with this Python: another
    version gives other text, which is why the result is committed and pinned, never rebuilt on use.
    Returns the manifest.
    """
    import gzip
    import hashlib
    import json
    import platform
    import sys
    import sysconfig

    dest = Path(dest) if dest is not None else Path(__file__).resolve().parent / "assets" / STDLIB_CORPUS
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    docs_seen: set[str] = set()
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    entries: dict[str, list[dict]] = {s: [] for s in SPLITS}
    dropped = {"duplicate_docstrings": 0, "duplicate_documents": 0, "unparsable": [], "unimportable": []}

    def keep(split: str, name: str, family: str, kind: str, text: str) -> None:
        key = _normalised(text)
        if key in docs_seen:
            dropped["duplicate_documents"] += 1
            return
        docs_seen.add(key)
        splits[split].append(text)
        entries[split].append({"name": name, "family": family, "kind": kind,
                               "sha256": hashlib.sha256(text.encode()).hexdigest()})

    for split in SPLITS:
        for i, doc in enumerate(corpus_documents(split)):
            keep(split, f"python-docs/{split}/{i}", f"python-docs/{split}", "topic", doc)
    sources = _stdlib_sources(stdlib)
    extension = _extension_entries_in_fresh_python([name for name, kind, _ in sources if kind == "extension"])
    for name, kind, path in sources:
        blocks = _Blocks(seen)
        if kind == "python":
            source = path.read_bytes()
            try:
                _python_module_blocks(name, source, blocks)
            except SyntaxError:
                dropped["unparsable"].append(name)
                continue
            _python_comment_block(name, source, blocks)
        elif extension[name] is None:
            dropped["unimportable"].append(name)
            continue
        else:
            for header, doc in extension[name]:
                blocks.add(header, doc)
        dropped["duplicate_docstrings"] += blocks.dropped
        if blocks.blocks:
            keep(stdlib_split_of(name), name, stdlib_family(name), kind, blocks.text())

    dest.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        body = (f"\n{DOCUMENT_SEPARATOR}\n".join(splits[split]) + "\n").encode("utf-8")
        (dest / STDLIB_FILES[split]).write_bytes(gzip.compress(body, compresslevel=9, mtime=0))
        counts[split] = {"documents": len(splits[split]), "characters": len(body.decode("utf-8")),
                         "utf8_bytes": len(body), "gzip_bytes": (dest / STDLIB_FILES[split]).stat().st_size,
                         "families": len({e["family"] for e in entries[split]}),
                         "sha256": hashlib.sha256(body).hexdigest()}
    manifest = {
        "corpus": STDLIB_CORPUS,
        "built_with": {"python": platform.python_version(), "implementation": sys.implementation.name,
                       "platform": sysconfig.get_platform()},
        "rules": {"split_unit": "module family (course_lib.corpus.stdlib_family)",
                  "heldout": f"int(sha256('{STDLIB_CORPUS}:' + family)[:8], 16) % {STDLIB_HELDOUT_MODULUS} == 0; "
                             "python-docs topics keep their python-docs split",
                  "dedup": "docstrings by whitespace-normalised text (first in module order kept); documents "
                           "exact and whitespace-normalised",
                  "separator": f"\\n{DOCUMENT_SEPARATOR}\\n"},
        "counts": counts, "dropped": dropped, "documents": entries,
    }
    (dest / STDLIB_MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m course_lib.corpus",
                                     description="Maintainers: rebuild a course corpus from this Python.")
    parser.add_argument("--stdlib", action="store_true",
                        help="build python-stdlib (chapter 09) instead of python-docs (chapters 03-08)")
    parser.add_argument("--dest", type=Path, default=None, help="output folder (default: the course's asset)")
    args = parser.parse_args(argv)
    if args.stdlib:
        manifest = build_stdlib_corpus(args.dest)
        print({split: manifest["counts"][split] for split in SPLITS})
    else:
        print(build_corpus(args.dest))


if __name__ == "__main__":
    _main()
