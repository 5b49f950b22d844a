"""Width transfer: does η_base's optimum stay put as the model widens? (Kosson et al. 2025,
arXiv 2510.19093; the RLRS paper's appendix D.1)

    $ rlrs width-transfer --model ladder-s-dense --widths 48,96,192 --variants sp,mup-iwd --out runs/wt

or from Python::

    >>> from rlrs.experiments.width_transfer import VARIANTS, variant_sets
    >>> sorted(VARIANTS)
    ['mup', 'mup-iwd', 'sp', 'sp-iwd', 'sp-warmup']
    >>> variant_sets("mup-iwd", width=96, base_width=48, iwd=1e-4)["model.parametrization"]
    'mup'

For every variant and width, ``lr-grid`` trains each plan (default: the uniform baseline and the
paper's plan for the preset's type) on the {1, 2, 5}×10⁻ⁿ grid, growing it until the best η_base
is inside, with ``--seeds`` seeds per point; every larger width also trains the base width's best
η_base. The preset is rebuilt at ``d_model = width`` with its
number of heads kept (what muP here assumes); the smallest width is muP's base width. Variants:

- ``sp``: standard parametrization, AdamW's decay coupled to the LR (PyTorch's);
- ``sp-iwd``: SP with independent weight decay (``plan.independent_wd``, ``--iwd`` per step);
- ``mup``: muP (``model.parametrization = "mup"``), coupled decay;
- ``mup-iwd``: muP with independent decay (Kosson et al.: the combination whose optimum transfers);
- ``sp-warmup``: SP with independent decay and Kosson et al.'s warmup replacement of muP
  (``plan.width_warmup = "decay-away"``, m = width / base width).

Everything runs on the run engine under ``OUT/<variant>/w<width>/``, so a rerun reuses finished
runs and resumes interrupted ones. ``results.json`` (:func:`save`; :func:`load` reads it back
as a :class:`WidthTransferResult`) holds each (variant, plan, width)'s grid losses, best η_base
and whether it is interior, and per (variant, plan) the zero-shot gap (the final loss that the
base width's best η_base gives away at each larger width against that width's own best, paired
over seeds: the paper's open question is whether this is zero); the drift of the optimum across
widths in steps of the ladder follows from the best values (:attr:`WidthSeries.drift`).
:func:`render` writes ``report.md``, the tables, and ``width_transfer.png``, the final loss
against η_base per width (Kosson et al.'s figure), the base width's optimum marked;
:func:`width_transfer` is :func:`run`, :func:`save` and :func:`render` in one, as the command.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import config as _config
from .. import files
from ..analysis import paired_difference
from .arms import arm_name
from .lr_grid import GridArm, GridPoint, GridResult, lr_grid
from ..config import ConfigError
from ..targets import PresetTarget
from ..models import get_size
from ..options import (add_executor_args, add_grid_args, add_out_arg, add_plans_arg, add_seeds_arg, add_target_args,
                       add_widths_arg, add_workers_arg, check_workers, default_of, executor_from_args, parse_grid,
                       parse_widths, sets_from_args, target_from_args)
from ..presets import default_plans

VARIANTS = ("sp", "sp-iwd", "mup", "mup-iwd", "sp-warmup")
RESERVED = ("model.d_model", "model.parametrization", "model.base_width", "plan.independent_wd",
            "plan.width_warmup", "plan.width_warmup_m")


def variant_sets(variant: str, width: int, base_width: int, iwd: float) -> dict[str, Any]:
    """The settings a variant adds to a run at ``width``."""
    if variant not in VARIANTS:
        raise ConfigError(f"variants: {variant!r} is unknown; {_config.closest(variant, VARIANTS)}")
    sets: dict[str, Any] = {"model.d_model": width}
    if variant.startswith("mup"):
        sets.update({"model.parametrization": "mup", "model.base_width": base_width})
    if variant.endswith("iwd") or variant == "sp-warmup":
        sets.update({"plan.independent_wd": True, "plan.weight_decay": iwd})
    if variant == "sp-warmup":
        sets.update({"plan.width_warmup": "decay-away", "plan.width_warmup_m": width / base_width})
    return sets


def ladder_position(value: float) -> float:
    """Index of ``value`` on the {1, 2, 5}×10⁻ⁿ ladder (1e-3 → -9, 2e-3 → -8, 5e-3 → -7, 1e-2 → -6):
    differences are grid steps.

        >>> ladder_position(2e-3) - ladder_position(5e-4)
        2.0
    """
    exp = math.floor(math.log10(value) + 1e-9)
    mantissa = value / 10**exp
    step = min(range(3), key=lambda i: abs(math.log(mantissa / (1, 2, 5)[i])))
    return float(3 * exp + step)


@dataclass(frozen=True)
class GridLoss:
    """One η_base of a width's grid: the mean final loss over seeds (``None``: a seed diverged or failed)."""

    base_lr: float
    loss: float | None


@dataclass(frozen=True)
class WidthPoint:
    """One width's η_base grid for one variant and plan: its best η_base (``None``: no value
    where every seed finished), whether that best is interior (a grid value on each side), and
    every value's loss."""

    width: int
    best_base_lr: float | None
    interior: bool
    best_loss: float | None
    losses: tuple[GridLoss, ...]  # by η_base, ascending

    @classmethod
    def of(cls, width: int, arm: GridArm) -> WidthPoint:
        # Interior needs a point on each side: one grid value alone has no edge but says nothing
        # of where the optimum lies. A point counts only when every seed finished (as for the
        # best): the base η_base losing a seed at a larger width is a failed transfer.
        interior = arm.best is not None and arm.edge is None and len(arm.points) >= 3
        return cls(width, arm.best, interior, arm.best_loss,
                   tuple(GridLoss(p.base_lr, p.mean if p.status == "finished" else None)
                         for p in sorted(arm.points, key=lambda p: p.base_lr)))


@dataclass(frozen=True)
class ZeroShot:
    """The base width's best η_base used at a larger width, against that width's own best: the
    final loss at ``base_lr`` minus at that width's best, paired over ``seeds`` seeds (``gap``
    its mean, ``gap_sd`` its spread; ``None`` and 0 seeds unless ``status`` is ``trained``)."""

    width: int
    base_lr: float  # the base width's best η_base
    status: str  # "trained", "diverged" (a seed diverged or failed there) or "not trained" (off its grid)
    gap: float | None
    gap_sd: float | None
    seeds: int

    @property
    def text(self) -> str:
        if self.gap is None:
            return self.status
        return f"{self.gap:+.4f} ± {self.gap_sd:.4f}" if self.seeds > 1 else f"{self.gap:+.4f}"


def _seed_losses(p: GridPoint) -> dict[int, float]:
    return {r.seed: r.final_eval_loss for r in p.runs if r.finished}


def zero_shot(arms: Sequence[GridArm], widths: Sequence[int]) -> tuple[ZeroShot, ...]:
    """At each width above the base (the first), what training at the base width's best η_base
    costs in final loss against that width's best (0 where they coincide), paired over the seeds
    that finished at both (seeds share their data order); empty when the base width has no best.

        >>> from rlrs.experiments.lr_grid import GridArm, GridPoint, GridRun
        >>> def point(lr, *losses):
        ...     return GridPoint.of(lr, [GridRun(s, "finished", v, None, Path("r"), False, 0.0)
        ...                              for s, v in enumerate(losses)])
        >>> base = GridArm.of([point(1e-2, 3.0, 3.1)])
        >>> wide = GridArm.of([point(5e-3, 2.8, 2.8), point(1e-2, 2.9, 2.86)])
        >>> [z.text for z in zero_shot([base, wide], [16, 64])]
        ['+0.0800 ± 0.0283']
    """
    eta = arms[0].best
    if eta is None:
        return ()
    out = []
    for width, a in zip(widths[1:], arms[1:]):
        at = {p.base_lr: p for p in a.points}
        if eta not in at:
            out.append(ZeroShot(width, eta, "not trained", None, None, 0))
            continue
        here, best = _seed_losses(at[eta]), _seed_losses(at[a.best]) if a.best is not None else {}
        seeds = sorted(here.keys() & best.keys())
        if at[eta].status != "finished" or not seeds:
            out.append(ZeroShot(width, eta, "diverged", None, None, 0))
            continue
        d = paired_difference([best[s] for s in seeds], [here[s] for s in seeds])
        out.append(ZeroShot(width, eta, "trained", d.mean, d.std, d.n))
    return tuple(out)


@dataclass(frozen=True)
class WidthSeries:
    """One variant and plan across the widths. ``zero_shot`` is ``None`` in a file written before
    rlrs measured the zero-shot gap."""

    variant: str
    plan: str
    zero_shot: tuple[ZeroShot, ...] | None
    points: tuple[WidthPoint, ...]

    @property
    def drift(self) -> float | None:
        """How far the best η_base moves across widths, in ladder steps (max − min); ``None``
        unless every width has an interior optimum."""
        bests = [p.best_base_lr for p in self.points]
        if any(b is None for b in bests) or not all(p.interior for p in self.points):
            return None
        pos = [ladder_position(b) for b in bests]
        return max(pos) - min(pos)


@dataclass(frozen=True)
class WidthTransferResult:
    """What :func:`run` found: ``results.json`` is ``rlrs.config.to_dict`` of it, and
    ``rlrs.config.from_dict(WidthTransferResult, json.load(f))`` (:func:`load`) reads it back."""

    preset: str
    widths: tuple[int, ...]
    base_width: int
    seeds: int
    series: tuple[WidthSeries, ...]
    wall_s: float


def run(
    preset: str,
    widths: Sequence[int],
    out: str | Path,
    *,
    variants: Sequence[str] = ("sp", "mup-iwd"),
    plans: Sequence[str] | None = None,
    grid: Sequence[float] | None = None,
    seeds: int = 2,
    iwd: float = 1e-4,
    extend: int = 3,
    sets: Mapping[str, Any] | None = None,
    workers: int | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
    executor=None,
) -> WidthTransferResult:
    """The η_base grid at every width for every variant and plan; see the module docstring.
    Each (variant, width) is an ``lr-grid`` (:func:`~rlrs.experiments.lr_grid.lr_grid`) into
    ``out/<variant>/w<width>``, which writes its runs and its own ``grid.json`` and ``grid.md``
    there; :func:`save` and :func:`render` write ``results.json``, ``report.md`` and
    ``width_transfer.png`` into ``out``, :func:`width_transfer` all three. ``executor``
    (:mod:`rlrs.executors`) runs the runs instead of a local pool of ``workers``."""
    t0 = time.perf_counter()
    widths = sorted({int(w) for w in widths})
    if len(widths) < 2:
        raise ConfigError(f"widths: at least two, got {list(widths)}; e.g. 64,128,256,512")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"variants: {unknown[0]!r} is unknown; {_config.closest(unknown[0], VARIANTS)}")
    sets = dict(sets or {})
    clash = [k for k in RESERVED if k in sets]
    if clash:
        raise ConfigError(f"{clash[0]}: width-transfer sets it per width and variant; choose them with "
                          "--widths and --variants")
    base_cfg = get_size(preset)
    base_width = widths[0]
    plans = list(plans or default_plans(base_cfg.is_moe))
    # Fail before any training on a width the preset's heads cannot split, or a plan that a
    # variant cannot use (e.g. a hidden component without decay under sp-warmup).
    for w in widths:
        for v in variants:
            for p in plans:
                try:
                    PresetTarget(preset).spec(p, 0, {**sets, **variant_sets(v, w, base_width, iwd)})
                except ConfigError as err:
                    raise ConfigError(f"widths: {w} ({v}, {arm_name(p)}): {err}") from None
    out = Path(out)
    coupled = [v for v in variants if "plan.independent_wd" not in variant_sets(v, base_width, base_width, iwd)]
    log(f"rlrs width-transfer: {preset} at widths {', '.join(map(str, widths))} (base {base_width}), variants "
        f"{', '.join(variants)}, plans {', '.join(arm_name(p) for p in plans)}, {seeds} seed(s) per point -> {out}")
    log(f"weight decay: independent {iwd:g} per step (--iwd) for {', '.join(v for v in variants if v not in coupled) or 'none'}; "
        f"coupled, the plans' own (--set plan.weight_decay=...), for {', '.join(coupled) or 'none'}")
    series = []
    for v in variants:
        grids: dict[int, GridResult] = {}
        for w in widths:
            log(f"== {v}, width {w}")
            # Every larger width also trains the base width's optimum: the zero-shot gap needs its loss.
            base_best = {} if w == base_width else {a: g.best for a, g in grids[base_width].arms.items()
                                                    if g.best is not None}
            grids[w] = lr_grid(preset, plans, out / v / f"w{w}", grid=grid, seeds=seeds, extend=extend,
                               sets={**sets, **variant_sets(v, w, base_width, iwd)}, workers=workers,
                               include=base_best, log=log, progress=progress, executor=executor)
        for p in plans:
            arms = [grids[w].arms[arm_name(p)] for w in widths]
            series.append(WidthSeries(v, arm_name(p), zero_shot(arms, widths),
                                      tuple(WidthPoint.of(w, a) for w, a in zip(widths, arms))))
    return WidthTransferResult(preset, tuple(widths), base_width, seeds, tuple(series), time.perf_counter() - t0)


def save(result: WidthTransferResult, out: str | Path) -> Path:
    """Write ``out/results.json``."""
    path = Path(out) / "results.json"
    files.write_json(path, _config.to_dict(result))
    return path


def load(path: str | Path) -> WidthTransferResult:
    """The :class:`WidthTransferResult` in a width-transfer ``results.json`` (or the directory
    holding it), files of earlier versions included: they also held each series' ``drift_steps``
    (:attr:`WidthSeries.drift` derives it from the points), and the first ones no zero-shot gap."""
    def upgrade(data: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(data.get("series"), list):
            return data
        return {**data, "series": [_current_series(s) if isinstance(s, dict) else s for s in data["series"]]}

    return _config.load_typed(WidthTransferResult, path, "results.json", "rlrs width-transfer",
                              "width-transfer result", upgrade)


def _current_series(s: dict[str, Any]) -> dict[str, Any]:
    """A series as this version writes it, from one an earlier version wrote."""
    s = {k: v for k, v in s.items() if k != "drift_steps"}
    return s if "zero_shot" in s else {**s, "zero_shot": None}


def width_transfer(preset: str, widths: Sequence[int], out: str | Path, **options) -> WidthTransferResult:
    """What ``rlrs width-transfer`` does, in one call: :func:`run` (``options`` are its keywords),
    then :func:`save` and :func:`render` into ``out``."""
    result = run(preset, widths, out, **options)
    save(result, out)
    render(result, out)
    options.get("log", print)(f"wrote {Path(out) / 'report.md'}")
    return result


# --- report -------------------------------------------------------------------------------------------


def render(result: WidthTransferResult, out: str | Path) -> list[Path]:
    """Write ``report.md`` and ``width_transfer.png`` into ``out``, from ``result`` alone."""
    out = Path(out)
    md = out / "report.md"
    files.atomic_write_text(md, markdown(result))
    return [md, plot(result, out / "width_transfer.png")]


def markdown(r: WidthTransferResult) -> str:
    """``report.md``: the best η_base per width and its drift, then the zero-shot gaps."""
    lines = [f"# rlrs width-transfer: {r.preset}", "",
             f"Widths {', '.join(map(str, r.widths))} (muP base width {r.base_width}), {r.seeds} seed(s) per "
             "grid point. Best η_base per width (an edge value means the optimum may lie beyond the grid); "
             "drift: how many {1, 2, 5} ladder steps the best η_base moves across widths.", "",
             "| variant | plan | " + " | ".join(f"w{w}" for w in r.widths) + " | drift (steps) |",
             "|---|---|" + "---|" * len(r.widths) + "---|"]
    for s in r.series:
        cells = [("diverged" if p.best_base_lr is None else f"{p.best_base_lr:g}" + ("" if p.interior else " (edge)"))
                 for p in s.points]
        drift = "-" if s.drift is None else f"{s.drift:g}"
        lines.append(f"| {s.variant} | {s.plan} | " + " | ".join(cells) + f" | {drift} |")
    lines += ["", "Zero-shot: the final loss that the base width's best η_base gives away at each larger width "
              "against that width's own best (mean ± sd of the paired difference over seeds; +0 where the "
              "optima coincide).", "",
              "| variant | plan | base η_base | " + " | ".join(f"w{w}" for w in r.widths[1:]) + " |",
              "|---|---|---|" + "---|" * (len(r.widths) - 1)]
    for s in r.series:
        if s.zero_shot is None:
            lines.append(f"| {s.variant} | {s.plan} | not recorded (an earlier rlrs wrote this result) | "
                         + " | ".join(["-"] * (len(r.widths) - 1)) + " |")
            continue
        zs = s.zero_shot
        eta = "diverged" if not zs else f"{zs[0].base_lr:g}"
        cells = [z.text for z in zs] or ["-"] * (len(r.widths) - 1)
        lines.append(f"| {s.variant} | {s.plan} | {eta} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n![final loss against η_base per width](width_transfer.png)\n"


def plot(r: WidthTransferResult, path: str | Path) -> Path:
    """Kosson et al.'s figure: per variant and plan, the final loss against η_base at each width,
    each width's best circled, a value where a seed diverged as ×, the base width's best (the
    zero-shot choice) as a dotted line."""
    from ..plots import _plt, _save

    plt = _plt()
    fig, axes = plt.subplots(1, len(r.series), figsize=(4 * len(r.series), 3.6), squeeze=False)
    for ax, s in zip(axes[0], r.series):
        for p in s.points:
            pts = sorted((q.base_lr, q.loss) for q in p.losses if q.loss is not None)
            if pts:
                line, = ax.plot(*zip(*pts), marker="o", label=f"width {p.width}")
                if p.best_base_lr is not None:
                    ax.scatter([p.best_base_lr], [p.best_loss], s=80, facecolors="none", edgecolors=line.get_color())
                lost = [q.base_lr for q in p.losses if q.loss is None]  # a seed diverged: × above the curve
                if lost:
                    ax.scatter(lost, [max(v for _, v in pts)] * len(lost), marker="x", color=line.get_color())
        if s.points[0].best_base_lr is not None:  # the zero-shot choice: the base width's optimum
            ax.axvline(s.points[0].best_base_lr, color="0.6", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())  # minor labels overlap on a short log range
        ax.set_xlabel("η_base")
        ax.set_title(f"{s.variant}, {s.plan}" + ("" if s.drift is None else f" (drift {s.drift:g})"), fontsize=9)
        ax.legend(frameon=False, fontsize=7)
    axes[0][0].set_ylabel("final eval loss")
    return _save(fig, Path(path))


# --- command line -----------------------------------------------------------------------------------


def add_commands(sub) -> None:
    """Register ``rlrs width-transfer``."""
    p = sub.add_parser("width-transfer", help="η_base grid x widths x variants (sp, mup, independent decay, warmup)",
                       description="For each variant and width, search η_base for each plan and report how far the "
                                   "optimum moves as the model widens (Kosson et al. 2025, arXiv 2510.19093; the RLRS paper's appendix D.1). --model is the model "
                                   "size whose d_model is varied (its heads are kept; required); the smallest of "
                                   "--widths is muP's base width. Writes results.json, report.md, "
                                   "width_transfer.png and runs/ into --out.")
    add_target_args(p)
    add_widths_arg(p)
    p.add_argument("--variants", default=",".join(default_of(run, "variants")),
                   help=f"from {', '.join(VARIANTS)} (default: {','.join(default_of(run, 'variants'))})")
    add_plans_arg(p)
    add_grid_args(p, default_of(run, "extend"))
    add_seeds_arg(p, default_of(run, "seeds"))
    p.add_argument("--iwd", type=float, default=default_of(run, "iwd"),
                   help="independent weight decay per step for the *-iwd and sp-warmup variants, which replaces "
                        "the plans' weight_decay there (default: %(default)g); sp and mup keep the plans' coupled "
                        "decay, set with --set plan.weight_decay=...")
    add_workers_arg(p)
    add_executor_args(p)
    add_out_arg(p, required=True)
    p.set_defaults(func=cmd_width_transfer)


def cmd_width_transfer(args) -> int:
    if args.command is not None:
        raise ConfigError("--command: width-transfer rebuilds the model at each width and parametrization, which "
                          "a script owns; use `rlrs lr-grid --command` at each width instead")
    if args.config is not None:
        raise ConfigError("--config: width-transfer rebuilds the model size at each width; give settings with --set "
                          "instead")
    check_workers(args.workers)
    model = target_from_args(args, required=True).name
    plans = [p.strip() for p in args.plans.split(",") if p.strip()] if args.plans else None
    out = Path(args.out)
    with executor_from_args(args, out / "slurm") as ex:
        res = run(model, parse_widths(args.widths), out,
                  variants=[v.strip() for v in args.variants.split(",") if v.strip()], plans=plans,
                  grid=parse_grid(args.grid) if args.grid else None, seeds=args.seeds, iwd=args.iwd,
                  extend=args.extend, sets=sets_from_args(args), workers=args.workers,
                  progress=sys.stderr.isatty(), executor=ex)
    save(res, out)
    render(res, out)
    print(f"wrote {out / 'report.md'}")
    print(markdown(res))
    return 0
