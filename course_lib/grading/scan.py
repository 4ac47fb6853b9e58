"""Reading a learner's file before running it: imports of the answer key, torch's private internals.

The grader reads the copy of the file it is about to import (so what it read is what runs)
and refuses, for every exercise in the file, code that:

* imports a ``course_lib`` module that the chapter does not allow (the course's own
  implementation is the answer key), or the course's ``solutions``, at any level of the file,
  including ``importlib.import_module("course_lib....")`` with a literal name;
* changes Python's import machinery (``sys.meta_path`` and friends), which the learner's
  process relies on;
* reaches into torch's private internals (``torch._C``, ``torch._VF``, ``torch.ops``,
  ``torch.native_*`` and any other underscore name of a torch module): those hold
  ready-made versions of what the exercises ask for, and no exercise needs them.

Dynamic spellings (a name built at run time) are caught in the learner's process instead,
by the import hook and switched-off functions of :mod:`course_lib.grading.child`.
"""

from __future__ import annotations

import ast
import dataclasses
import re

_MODULE_NAME = re.compile(r"^(course_lib|solutions)(\.[A-Za-z_][A-Za-z0-9_]*)+$")


# Python's import machinery, which the learner's process uses to keep the answer key out.
_IMPORT_MACHINERY = {"meta_path", "path_hooks", "path_importer_cache"}


@dataclasses.dataclass(frozen=True)
class Finding:
    kind: str  # "answer_key", "private" or "tamper"
    line: int
    what: str  # e.g. "course_lib.layers" or "torch._C._nn.gelu"


def _allowed(module: str, allow: set[str]) -> bool:
    return module in allow or (module == "course_lib" and bool(allow))


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


def _dotted(node: ast.AST) -> list[str] | None:
    """['torch', '_C', '_nn', 'gelu'] for torch._C._nn.gelu; None if not a plain name chain."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    return None


def _private_part(path: list[str]) -> bool:
    """A torch module path with a private step: torch._C, torch.ops, torch.native_layer_norm ..."""
    for part in path[1:]:
        if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
            return True
        if part == "ops" or part.startswith("native_"):
            return True
    return False


def scan_source(source: str, allow: tuple[str, ...] = (), refuse: tuple[str, ...] = ()) -> list[Finding]:
    """Every refused import or private torch access in ``source`` (empty when it does not parse:
    the import then fails with the learner's SyntaxError, reported as such)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    allowed = set(allow)
    findings: list[Finding] = []
    torch_names: dict[str, list[str]] = {}  # local name -> the torch module path it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in ("course_lib", "solutions") and not _allowed(alias.name, allowed):
                    findings.append(Finding("answer_key", node.lineno, alias.name))
                if top == "torch":
                    path = alias.name.split(".")
                    if _private_part(path):
                        findings.append(Finding("private", node.lineno, alias.name))
                    torch_names[alias.asname or "torch"] = path if alias.asname else ["torch"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = node.module.split(".")[0]
            if top in ("course_lib", "solutions"):
                for alias in node.names:
                    as_module = f"{node.module}.{alias.name}"
                    if not (_allowed(node.module, allowed) and node.module != "course_lib") \
                            and not (node.module == "course_lib" and as_module in allowed):
                        findings.append(Finding("answer_key", node.lineno,
                                                as_module if node.module == "course_lib" else node.module))
                    elif as_module in refuse:
                        findings.append(Finding("answer_key", node.lineno, as_module))
            if top == "torch":
                path = node.module.split(".")
                for alias in node.names:
                    full = path + [alias.name]
                    if _private_part(full):
                        findings.append(Finding("private", node.lineno, ".".join(full)))
                    else:
                        torch_names[alias.asname or alias.name] = full
    docstrings = _docstring_nodes(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in _IMPORT_MACHINERY:
            findings.append(Finding("tamper", node.lineno, f"sys.{node.attr}"))
        if isinstance(node, ast.Attribute):
            path = _dotted(node)
            if path and path[0] in torch_names:
                full = torch_names[path[0]] + path[1:]
                if _private_part(full) and not _private_part(full[:-1] if len(full) > 1 else full):
                    findings.append(Finding("private", node.lineno, ".".join(full)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            text = node.value.strip()
            if _MODULE_NAME.match(text) and (not _allowed(text, allowed) or text in refuse):
                findings.append(Finding("answer_key", node.lineno, text))
    unique = {(f.kind, f.line, f.what): f for f in findings}
    return sorted(unique.values(), key=lambda f: (f.line, f.what))


def describe(findings: list[Finding], filename: str, allow: tuple[str, ...] = ()) -> str:
    """The message every exercise of the file gets."""
    answer = [f for f in findings if f.kind == "answer_key"]
    private = [f for f in findings if f.kind == "private"]
    lines = []
    if answer:
        where = "; ".join(f"line {f.line}: {f.what}" for f in answer[:3])
        helpers = f" (you may import {', '.join(allow)})" if allow else ""
        lines.append(f"uses the course's own implementation ({where}): that is the answer key. Every exercise in "
                     f"{filename} scores 0 until it is gone; write the code yourself with torch, numpy and "
                     f"math{helpers}.")
    if private:
        where = "; ".join(f"line {f.line}: {f.what}" for f in private[:3])
        lines.append(f"uses torch's private internals ({where}): they hold ready-made versions of what the "
                     f"exercises ask for. Every exercise in {filename} scores 0 until they are gone; use public "
                     f"torch operations.")
    tamper = [f for f in findings if f.kind == "tamper"]
    if tamper:
        where = "; ".join(f"line {f.line}: {f.what}" for f in tamper[:3])
        lines.append(f"changes Python's import machinery ({where}), which the grader uses to keep the answer key "
                     f"out. Every exercise in {filename} scores 0 until that code is gone.")
    return "\n".join(lines)
