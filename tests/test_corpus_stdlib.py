"""Chapter 09's corpus python-stdlib: the committed bytes are the pinned ones, the split is by module
family (no module, no family, no text on both sides), it is at least 10x python-docs' training tokens,
the default corpus is unchanged, the reader fails clearly on a missing or damaged file, and rebuilding
on the Python that built it gives the same text."""

from __future__ import annotations

import gzip
import hashlib
import json
import platform
import re
import shutil
import sysconfig

import pytest

from course_lib import assets, corpus
from course_lib.corpus import (
    DOCUMENT_SEPARATOR,
    STDLIB_SHA256,
    CorpusIntegrityError,
    corpus_documents,
    corpus_lines,
    corpus_text,
    read_corpus_file,
    stdlib_family,
    stdlib_manifest,
    stdlib_split_of,
)

STDLIB = "python-stdlib"
HEADER = re.compile(r"^(module|class|def|async def|attribute|comments in) \S")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def folder():
    return corpus.corpus_dir(STDLIB)


@pytest.fixture(scope="module")
def manifest():
    return stdlib_manifest()


@pytest.fixture(scope="module")
def docs():
    return {split: corpus_documents(split, corpus=STDLIB) for split in corpus.SPLITS}


def blocks(doc: str) -> list[tuple[str, str]]:
    """(header, body) of each block of a module document: a header is a line without indentation."""
    out: list[tuple[str, list[str]]] = []
    for line in doc.split("\n"):
        if line and not line.startswith(" "):
            out.append((line, []))
        else:
            out[-1][1].append(line)
    return [(header, "\n".join(body).strip("\n")) for header, body in out]


# ---------------------------------------------------------------------------- pins

def test_committed_files_have_the_pinned_bytes(folder):
    for split in corpus.SPLITS:
        text = gzip.decompress((folder / f"{split}.txt.gz").read_bytes())
        assert sha256(text) == STDLIB_SHA256[split], (
            f"course_lib/assets/python-stdlib/{split}.txt.gz changed; everything trained on it changes too. "
            "If intended, update corpus.STDLIB_SHA256 and retrain.")
    assert sha256((folder / "manifest.json").read_bytes()) == STDLIB_SHA256["manifest"]


def test_manifest_records_the_build_and_matches_the_files(folder, manifest):
    assert manifest["built_with"]["python"] == corpus.STDLIB_BUILT_WITH["python"]
    assert manifest["built_with"]["platform"] == corpus.STDLIB_BUILT_WITH["platform"]
    for split in corpus.SPLITS:
        text = corpus_text(split, corpus=STDLIB)
        counts = manifest["counts"][split]
        assert counts["sha256"] == STDLIB_SHA256[split]
        assert counts["characters"] == len(text) and counts["utf8_bytes"] == len(text.encode())
        assert counts["gzip_bytes"] == (folder / f"{split}.txt.gz").stat().st_size
    licence = (folder / "LICENSE.txt").read_text(encoding="utf-8")
    assert "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in licence
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert "3.11.7" in readme and "python -m course_lib.corpus --stdlib" in readme


def test_every_document_is_the_one_the_manifest_names(docs, manifest):
    for split in corpus.SPLITS:
        entries = manifest["documents"][split]
        assert len(docs[split]) == len(entries) == manifest["counts"][split]["documents"]
        for doc, entry in zip(docs[split], entries):
            assert sha256(doc.encode()) == entry["sha256"], f"{split}: {entry['name']}"
            if entry["kind"] != "topic":  # a module's document starts with a block about that module
                first = doc.split("\n", 1)[0]
                name = first.split(" ")[-1] if first.startswith(("module ", "comments in ", "attribute ")) else \
                    first.split(" ", 2 if first.startswith("async def") else 1)[-1]
                assert name == entry["name"] or name.startswith(entry["name"] + "."), (first, entry["name"])


# ---------------------------------------------------------------------------- the split

def test_split_is_by_module_family_and_follows_the_rule(manifest):
    sides = {split: manifest["documents"][split] for split in corpus.SPLITS}
    names = {split: [e["name"] for e in sides[split]] for split in corpus.SPLITS}
    families = {split: {e["family"] for e in sides[split]} for split in corpus.SPLITS}
    for split in corpus.SPLITS:
        assert len(names[split]) == len(set(names[split])), "a module appears twice"
    assert not set(names["train"]) & set(names["heldout"]), "a module is on both sides"
    assert not families["train"] & families["heldout"], "a module family is on both sides"
    for split, entries in sides.items():
        for e in entries:
            if e["kind"] == "topic":
                assert e["family"] == f"python-docs/{split}"
            else:
                assert e["family"] == stdlib_family(e["name"])
                assert stdlib_split_of(e["name"]) == split, f"{e['name']} is in {split} against the rule"
    # a real held-out set: several families, about a tenth of the text
    stdlib_heldout = families["heldout"] - {"python-docs/heldout"}
    assert len(stdlib_heldout) >= 10
    share = manifest["counts"]["heldout"]["characters"] / sum(c["characters"] for c in manifest["counts"].values())
    assert 0.05 < share < 0.25


def test_family_rule_groups_packages_helpers_and_accelerators():
    assert stdlib_family("email.mime.text") == stdlib_family("email") == "email"
    assert stdlib_family("_pydecimal") == stdlib_family("_decimal") == stdlib_family("decimal") == "decimal"
    assert stdlib_family("_json") == "json" and stdlib_family("_pyio") == "io" and stdlib_family("_py_abc") == "abc"
    assert stdlib_family("_collections_abc") == "collections" and stdlib_family("pyexpat") == "xml"
    assert stdlib_family("__future__") == "future" and stdlib_family("pydoc") == "pydoc"
    assert stdlib_split_of("email.mime.text") == stdlib_split_of("email.utils")
    assert stdlib_split_of("_json") == stdlib_split_of("json")
    # the rule itself, recomputed here: held out iff the family's salted hash is 0 mod 8
    for module in ("json", "typing", "os.path", "builtins", "asyncio.tasks"):
        family = stdlib_family(module)
        expected = int(sha256(f"python-stdlib:{family}".encode())[:8], 16) % corpus.STDLIB_HELDOUT_MODULUS == 0
        assert (stdlib_split_of(module) == "heldout") == expected


def test_python_docs_topics_keep_their_split(docs, manifest):
    for split in corpus.SPLITS:
        topics = [d for d, e in zip(docs[split], manifest["documents"][split]) if e["kind"] == "topic"]
        assert topics == corpus_documents(split)  # the python-docs documents, verbatim, in order


# ---------------------------------------------------------------------------- deduplication

def test_no_duplicate_document_within_or_across_splits(docs):
    every = docs["train"] + docs["heldout"]
    assert len(set(every)) == len(every)
    assert len({" ".join(d.split()) for d in every}) == len(every)
    assert not set(docs["train"]) & set(docs["heldout"])


def test_module_documents_are_blocks_with_unique_docstrings(docs, manifest):
    seen: dict[str, str] = {}
    n_blocks = 0
    for split in corpus.SPLITS:
        for doc, entry in zip(docs[split], manifest["documents"][split]):
            if entry["kind"] == "topic":
                continue
            for line in doc.split("\n"):
                assert line == "" or line.startswith("    ") or HEADER.match(line), (entry["name"], line)
            for header, body in blocks(doc):
                assert body, f"{entry['name']}: block {header!r} has no text"
                key = " ".join(body.split())
                assert key not in seen, f"{header!r} repeats the text of {seen[key]!r}"
                seen[key] = header
                n_blocks += 1
    assert n_blocks > 5000
    headers = set(seen.values())
    assert "def json.dumps(obj, *, skipkeys=False, ensure_ascii=True, check_circular=True, allow_nan=True, " \
           "cls=None, indent=None, separators=None, default=None, sort_keys=False, **kw)" in headers
    assert "def math.sqrt(x, /)" in headers  # a C module, read by importing it
    assert any(h.startswith("comments in ") for h in headers)


def test_separator_only_between_documents():
    for split in corpus.SPLITS:
        text = corpus_text(split, corpus=STDLIB)
        assert text.endswith("\n") and not text.startswith("\n")
        assert all(DOCUMENT_SEPARATOR not in line for line in corpus_lines(split, corpus=STDLIB))
        assert text.count(f"\n{DOCUMENT_SEPARATOR}\n") == len(corpus_documents(split, corpus=STDLIB)) - 1


# ---------------------------------------------------------------------------- size

def test_at_least_ten_times_the_training_tokens_of_python_docs(docs):
    from course_lib import load_tokenizer

    tok = load_tokenizer("tiny-gpt2")
    before = len(tok.encode(corpus_text("train")).ids)
    after = len(tok.encode(corpus_text("train", corpus=STDLIB)).ids)
    heldout = len(tok.encode(corpus_text("heldout", corpus=STDLIB)).ids)
    print(f"python-docs train: {before:,} tokens; python-stdlib train: {after:,} tokens ({after / before:.2f}x), "
          f"heldout: {heldout:,} tokens")
    assert after >= 10 * before
    assert heldout >= 5 * len(tok.encode(corpus_text("heldout")).ids)


def test_shipped_size_is_reasonable_for_git(folder):
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    assert total < 3_000_000, f"python-stdlib is {total:,} bytes in git"
    assert len(corpus_text("train", corpus=STDLIB)) > 3_000_000  # so it is gzip'd


# ---------------------------------------------------------------------------- the default is unchanged

def test_default_corpus_is_still_python_docs():
    for split in corpus.SPLITS:
        text = corpus_text(split)
        assert text == corpus_text(split, corpus="python-docs")
        assert sha256(text.encode()) == corpus.SHA256[split]
    assert corpus.corpus_dir().name == "python-docs"


# ---------------------------------------------------------------------------- errors

def test_unknown_corpus_or_split_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown corpus 'python-wiki'.*python-docs, python-stdlib"):
        corpus_text("train", corpus="python-wiki")
    with pytest.raises(ValueError, match="unknown corpus split 'test'.*train, heldout"):
        corpus_text("test", corpus=STDLIB)


def test_reader_errors_name_the_file_and_the_fix(tmp_path, folder):
    good = folder / "heldout.txt.gz"
    missing = tmp_path / "missing.txt.gz"
    with pytest.raises(FileNotFoundError, match="missing.txt.gz is missing.*git checkout"):
        read_corpus_file(missing, STDLIB_SHA256["heldout"])
    truncated = tmp_path / "truncated.txt.gz"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CorpusIntegrityError, match="truncated.txt.gz is not a complete gzip file.*git checkout"):
        read_corpus_file(truncated, STDLIB_SHA256["heldout"])
    plain = tmp_path / "plain.txt.gz"
    plain.write_text("not gzip at all\n")
    with pytest.raises(CorpusIntegrityError, match="not a complete gzip file"):
        read_corpus_file(plain, None)
    changed = tmp_path / "changed.txt.gz"
    changed.write_bytes(gzip.compress(gzip.decompress(good.read_bytes()).replace(b"Return", b"Returns", 1)))
    with pytest.raises(CorpusIntegrityError, match=f"changed.txt.gz: its text has SHA-256 .*expected "
                                                   f"{STDLIB_SHA256['heldout']}.*STDLIB_SHA256"):
        read_corpus_file(changed, STDLIB_SHA256["heldout"])
    assert "Returns" in read_corpus_file(changed, None)  # sha256=None reads a copy on purpose
    latin = tmp_path / "latin.txt.gz"
    latin.write_bytes(gzip.compress("café".encode("latin-1")))
    with pytest.raises(CorpusIntegrityError, match="not UTF-8"):
        read_corpus_file(latin, None)
    assert read_corpus_file(good, STDLIB_SHA256["heldout"]) == corpus_text("heldout", corpus=STDLIB)


def test_damaged_or_incomplete_asset_fails_through_the_public_reader(tmp_path, folder, monkeypatch):
    copy = tmp_path / STDLIB
    shutil.copytree(folder, copy)
    monkeypatch.setattr(assets, "HERE", tmp_path)
    monkeypatch.setattr(corpus, "_STDLIB_CACHE", {})
    (copy / "train.txt.gz").write_bytes(b"\x1f\x8b" + b"\0" * 20)
    with pytest.raises(CorpusIntegrityError, match="train.txt.gz is not a complete gzip file"):
        corpus_text("train", corpus=STDLIB)
    (copy / "manifest.json").write_text(json.dumps({"corpus": STDLIB}))
    with pytest.raises(CorpusIntegrityError, match="manifest.json: SHA-256"):
        stdlib_manifest()
    (copy / "heldout.txt.gz").unlink()
    with pytest.raises(FileNotFoundError, match="python-stdlib.*lacks heldout.txt.gz.*python -m course_lib.corpus"):
        corpus_text("heldout", corpus=STDLIB)


# ---------------------------------------------------------------------------- rebuilding

@pytest.mark.skipif(platform.python_version() != corpus.STDLIB_BUILT_WITH["python"]
                    or sysconfig.get_platform() != corpus.STDLIB_BUILT_WITH["platform"],
                    reason="python-stdlib was built with CPython 3.11.7 on linux-x86_64; other Pythons ship "
                           "other docstrings")
def test_rebuilding_on_the_same_python_gives_the_same_corpus(tmp_path, folder):
    built = corpus.build_stdlib_corpus(tmp_path)
    for split in corpus.SPLITS:
        assert sha256(gzip.decompress((tmp_path / f"{split}.txt.gz").read_bytes())) == STDLIB_SHA256[split]
    committed = json.loads((folder / "manifest.json").read_text())
    for split in corpus.SPLITS:  # gzip's byte count may differ with another zlib; the text may not
        for c in (built["counts"][split], committed["counts"][split]):
            c.pop("gzip_bytes")
    assert built == committed
