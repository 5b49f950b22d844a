"""Deterministic batches: the global batch of ``(seed, step)`` and the fixed validation batches;
a rank's rows are its contiguous slice of the global batch."""

from __future__ import annotations

import numpy as np
import torch

from .data_config import DataError


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
