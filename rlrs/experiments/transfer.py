"""Reuse a small model's relative rates on a larger one (algorithm 1 of the paper; ``rlrs transfer``).

    >>> from rlrs.experiments.transfer import transfer
    >>> t = transfer("runs/tune/tuned.toml", "moe-34m", out="runs/transfer")     # doctest: +SKIP

**Transfer** keeps every λ of the plan and retunes only η_base on the larger model: it runs
``lr-grid`` for the baseline and the relative arm on the {1, 2, 5}×10⁻ⁿ grid, then ``compare``
with each arm at its best η_base, and writes ``transfer.md``: a table 2 style row per arm
(η_base, tokens, speed-up). The default baseline is the plan itself with every λ set to 1 (same
λ_base, warmup, weight decay and shapes), so the arms differ only in the relative rates.
Ablations of a plan are :mod:`rlrs.experiments.ablate`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import config as _config
from .. import files
from .. import presets as _presets
from .arms import arm_name
from .compare import CompareResult, compare
from .lr_grid import lr_grid
from ..components import COMPONENTS
from ..config import ConfigError
from ..engine import read_result
from ..targets import PresetTarget, Target, as_target
from ..models import count_params
from ..options import (add_executor_args, add_grid_args, add_out_arg, add_plan_arg, add_seeds_arg, add_target_args,
                       add_workers_arg, check_workers, default_of, executor_from_args, parse_grid, sets_from_args,
                       target_from_args)
from ..plan import Plan
from ..train import total_steps

def uniform_like(plan: Plan) -> Plan:
    """``plan`` with every λ at 1: the baseline that differs from it only in the relative rates."""
    return dataclasses.replace(plan, **{c: dataclasses.replace(plan.component(c), start=1.0, end=1.0) for c in COMPONENTS})


def write_plan(path: Path, plan: Plan) -> str:
    plan.save(path)
    return str(path)


# --- transfer -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferRow:
    """One arm on the larger model, as a row of the paper's table 2."""

    type: str  # the larger model: a preset, or "command"
    lr_type: str  # "baseline" or "relative"
    arm: str
    base_lr: float  # the η_base its grid found
    grid_edge: str | None  # "low"/"high": the best η_base sat at that edge of the grid
    train_tokens: int | None  # None: a command that did not report tokens
    final_loss: float | None  # mean over seeds; None: every run diverged or failed
    speedup_percent: float | None  # relative arm only; None: no speed-up
    speedup_text: str | None


@dataclass(frozen=True)
class TransferResult:
    """What :func:`run` found: ``transfer.json`` is ``rlrs.config.to_dict`` of it, and
    ``rlrs.config.from_dict(TransferResult, json.load(f))`` (:func:`load`) reads it back. The grid
    and the comparison it ran are in ``grid.json`` and ``results.json`` beside it
    (:func:`rlrs.experiments.lr_grid.load`, :func:`rlrs.experiments.compare.load`)."""

    preset: str
    plan: str
    lambdas: dict[str, tuple[float, ...]]  # the source plan's (start, end) per component, kept
    params: dict[str, int] | None  # the larger preset's parameter counts; None for a command
    steps: int
    table: tuple[TransferRow, ...]  # one row per arm, the baseline first

    @property
    def best_lrs(self) -> dict[str, float]:
        return {r.arm: r.base_lr for r in self.table}


def run(
    plan: str | Path,
    target: str | Target,
    out: str | Path,
    *,
    baseline: str | None = None,
    grid: Sequence[float] | None = None,
    grid_seeds: int = 1,
    extend: int = 3,
    seeds: int = 3,
    sets: Mapping[str, Any] | None = None,
    workers: int | None = None,
    log: Callable[[str], None] = print,
    executor=None,
) -> TransferResult:
    """Algorithm 1: the plan's λ values on ``target`` (a larger preset, or the larger model's own
    command), η_base retuned for both arms, then compared. ``executor`` (:mod:`rlrs.executors`)
    runs the runs instead of a local pool of ``workers``.

    The two steps are whole commands sharing ``out``: ``lr-grid`` (:func:`~rlrs.experiments.lr_grid.lr_grid`)
    writes ``grid.json``, ``grid.md`` and its figure there, ``compare``
    (:func:`~rlrs.experiments.compare.compare`) ``results.json``, ``report.md`` and its figures, and
    the default baseline's plan goes to ``out/plans/uniform.toml``; :func:`save` and :func:`render`
    write transfer's own ``transfer.json`` and ``transfer.md``, :func:`transfer` all of it."""
    out = Path(out)
    target = as_target(target)
    preset = target.name
    rel = _presets.resolve(str(plan))
    if baseline is None:
        baseline = write_plan(out / "plans" / "uniform.toml", uniform_like(rel))
    plans = [baseline, str(plan)]
    log(f"rlrs transfer: λ from {arm_name(str(plan))} onto {preset}; η_base searched for both arms")
    # One --out for the grid and the compare: compare reuses the grid's seed-0 runs.
    grid_result = lr_grid(target, plans, out, grid=grid, seeds=grid_seeds, sets=sets, workers=workers, extend=extend,
                          log=log, executor=executor)
    missing = [arm_name(p) for p in plans if arm_name(p) not in grid_result.best]
    if missing:
        raise ConfigError(f"every η_base of the grid diverged for {', '.join(missing)}; try a lower --grid")
    res = compare(target, plans, seeds=seeds, out=out, sets=sets, base_lrs=grid_result.best, workers=workers, log=log,
                  executor=executor)
    if isinstance(target, PresetTarget):
        cfg = target.spec(rel, 0, sets).cfg
        steps = total_steps(cfg)
        tokens: int | None = steps * cfg.train.batch_size * (cfg.train.seq_len or cfg.model.seq_len)
        params = count_params(cfg.model)
    else:  # the script's own length and tokens, as its runs reported them
        done = [r for r in res.runs if r.status == "finished"]
        steps = target.steps or max((r.total_steps for r in done), default=0)
        tokens, params = _reported_tokens(res), None
    rows = []
    for name, arm in res.arms.items():
        relative = name != res.baseline
        sp = res.speedups[name].speedup if relative else None
        rows.append(TransferRow(
            type=preset, lr_type="relative" if relative else "baseline", arm=name,
            base_lr=grid_result.best[name], grid_edge=grid_result.edge.get(name), train_tokens=tokens,
            final_loss=None if arm.final_loss is None else arm.final_loss.mean,
            speedup_percent=None if sp is None else sp.percent,
            speedup_text=res.speedups[name].text if relative else None,
        ))
    return TransferResult(preset, str(plan), _lambdas(rel), params, steps, tuple(rows))


def save(result: TransferResult, out: str | Path) -> Path:
    """Write ``out/transfer.json``."""
    path = Path(out) / "transfer.json"
    files.write_json(path, _config.to_dict(result))
    return path


def load(path: str | Path) -> TransferResult:
    """The :class:`TransferResult` in a ``transfer`` ``transfer.json`` (or the directory holding it)."""
    return _config.load_typed(TransferResult, path, "transfer.json", "rlrs transfer", "transfer result")


def render(result: TransferResult, out: str | Path) -> list[Path]:
    """Write ``transfer.md`` (the table 2 style rows) into ``out``."""
    path = Path(out) / "transfer.md"
    files.atomic_write_text(path, markdown(result))
    return [path]


def transfer(plan: str | Path, target: str | Target, out: str | Path, **options) -> TransferResult:
    """What ``rlrs transfer`` does, in one call: :func:`run` (``options`` are its keywords), then
    :func:`save` and :func:`render` into ``out``."""
    result = run(plan, target, out, **options)
    save(result, out)
    render(result, out)
    options.get("log", print)(f"wrote {Path(out) / 'transfer.md'}")
    return result


def _reported_tokens(res: CompareResult) -> int | None:
    counts = [r.tokens for info in res.runs if (r := read_result(info.out)) is not None and r.tokens]
    return max(counts) if counts else None


def _lambdas(plan: Plan) -> dict[str, tuple[float, float]]:
    return {c: (plan.component(c).start, plan.component(c).end) for c in COMPONENTS}


def _fmt_tokens(n: int | None) -> str:
    if n is None:
        return "not reported"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def markdown(t: TransferResult) -> str:
    """``transfer.md``: a table 2 style row per arm and the λ kept from the source plan."""
    p = t.params
    size = (f"{p['active_non_embedding'] / 1e6:.2f}M active non-embedding parameters ({p['total'] / 1e6:.2f}M in total), "
            if p else "")
    lines = [
        f"# Transfer of {t.plan} to {t.preset}",
        "",
        f"{t.preset}: {size}{t.steps} steps. The λ values are kept; η_base is "
        "searched for each arm on the {1, 2, 5}×10⁻ⁿ grid (`grid.md`), then each arm trains at its best "
        "η_base (`report.md`).",
        "",
        "| Type | LR type | Base LR | Train tokens | Final loss | Speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for row in t.table:
        sp = "-" if row.lr_type == "baseline" else (
            "no speed-up" if row.speedup_percent is None else f"{row.speedup_percent:+.1f}%")
        edge = f" (grid {row.grid_edge} edge)" if row.grid_edge else ""
        loss = "diverged" if row.final_loss is None else f"{row.final_loss:.4f}"
        lines.append(f"| {row.type} | {row.lr_type} ({row.arm}) | {row.base_lr:g}{edge} | "
                     f"{_fmt_tokens(row.train_tokens)} | {loss} | {sp} |")
    lines += ["", "λ (start → end) kept from the source plan:", ""]
    lines += [f"- {c}: {s:g} → {e:g}" for c, (s, e) in t.lambdas.items()]
    return "\n".join(lines) + "\n"


# --- CLI ------------------------------------------------------------------------------------------


def add_commands(sub) -> None:
    """Register ``rlrs transfer``."""
    p = sub.add_parser("transfer", help="reuse a plan's λ on a larger model: η_base grid for both arms, then compare",
                       description="Algorithm 1 of the paper: keep every λ of --plan (the small model's plan, e.g. a "
                                   "tuned.toml), search η_base on the larger model (--model or --command, required) "
                                   "for the plan and its baseline, then compare them over paired seeds. Writes "
                                   "grid.json, report.md, transfer.md and runs/ into --out.")
    add_plan_arg(p, required=True)
    add_target_args(p)
    p.add_argument("--baseline", default=None, help="baseline plan (default: the plan with every λ = 1)")
    add_grid_args(p, default_of(run, "extend"))
    p.add_argument("--grid-seeds", type=int, default=default_of(run, "grid_seeds"), metavar="N",
                   help=f"seeds per η_base grid point (default: {default_of(run, 'grid_seeds')})")
    add_seeds_arg(p, default_of(run, "seeds"))
    add_workers_arg(p)
    add_executor_args(p)
    add_out_arg(p, required=True)
    p.set_defaults(func=cmd_transfer)


def cmd_transfer(args) -> int:
    check_workers(args.workers)
    target = target_from_args(args, required=True)
    out = Path(args.out)
    with executor_from_args(args, out / "slurm") as ex:
        res = run(args.plan, target, out, baseline=args.baseline, grid=parse_grid(args.grid) if args.grid else None,
                  grid_seeds=args.grid_seeds, extend=args.extend, seeds=args.seeds, sets=sets_from_args(args),
                  workers=args.workers, executor=ex)
    save(res, out)
    render(res, out)
    print(f"wrote {out / 'transfer.md'}")
    print(markdown(res))
    return 0
