"""The token cache: a corpus tokenized once into ``train.bin`` and ``val.bin`` (memory-mapped),
published by renaming a finished directory and reused while its sources are unchanged."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .. import files
from .corpora import BUILTIN_CORPORA, FORMAT_VERSION, load_corpus, resolve_sources, source_hash
from .data_config import DataConfig, DataError, cache_root
from .tokenizers import Tokenizer, get_tokenizer

log = logging.getLogger(__name__)


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
    corpus_hash = source_hash(config, sources)
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
        files.publish_dir(tmp, final, lambda d: _read_manifest(d, corpus_hash, tok.name) is not None)
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
