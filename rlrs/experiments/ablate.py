"""Which components matter: ablations of a plan (``rlrs ablate``; the paper's table 6 and figure 4).

    >>> from rlrs.experiments.ablate import ablate, load
    >>> a = ablate("micro-moe", "paper-moe", out="runs/ablate")                  # doctest: +SKIP
    >>> load("runs/ablate").leave_one_out[0].speedup_percent                     # doctest: +SKIP

Leave-one-out (the paper's table 6): each component in
turn is reset to 1 → 1, and the speed-up of the full plan over that ablated plan is reported
(a large number means the component's relative rates matter). Vary (figure 4): one component's
λ_start or λ_end is multiplied by each factor (1/5, 2/3, 3/2, 5), the others fixed; the final loss
of every variant goes into a bar chart with diverged runs marked.

:func:`run` trains and measures (an :class:`AblateResult`), :func:`save` writes ``ablate.json``,
:func:`load` reads it back, :func:`render` writes ``ablate.md`` and ``ablate_vary.png``;
:func:`ablate` is the three in one, as ``rlrs ablate`` does them.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import config as _config
from .. import files
from .. import presets as _presets
from .compare import compare
from ..components import component_names
from ..config import ConfigError
from ..analysis import speedup
from ..engine import Job, reason_line, run_all, run_dir
from ..targets import Target, as_target
from ..options import (add_executor_args, add_out_arg, add_plan_arg, add_seeds_arg, add_target_args, add_workers_arg,
                       check_workers, default_of, executor_from_args, parse_floats, sets_from_args, target_from_args)
from ..plan import ComponentPlan, Plan
from .transfer import write_plan

FACTORS = (1 / 5, 2 / 3, 3 / 2, 5.0)
ABLATIONS = ("both", "leave-one-out", "vary")


@dataclass(frozen=True)
class LeaveOneOut:
    """Table 6: the plan without one component's relative rates (reset to 1 → 1)."""

    component: str
    lambdas: tuple[float, ...]  # the plan's (start, end) for it
    speedup_percent: float | None  # of the full plan over the plan without it; None: none or not measurable
    text: str
    final_loss: float | None  # without it (mean over seeds)
    full_final_loss: float | None


@dataclass(frozen=True)
class Variant:
    """Figure 4: one component's λ_start or λ_end multiplied by ``factor`` (``base``: the plan)."""

    variant: str
    component: str | None
    which: str | None  # "start" or "end"
    factor: float
    losses: tuple[float | None, ...]  # final eval loss per seed; None where it did not finish
    statuses: tuple[str, ...]
    errors: tuple[str, ...]

    @property
    def diverged(self) -> bool:
        return any(v is None for v in self.losses)

    @property
    def final_loss(self) -> float | None:
        fin = [v for v in self.losses if v is not None]
        return sum(fin) / len(fin) if fin else None


@dataclass(frozen=True)
class AblateResult:
    """What :func:`run` found: ``ablate.json`` is ``rlrs.config.to_dict`` of it, and
    ``rlrs.config.from_dict(AblateResult, json.load(f))`` (:func:`load`) reads it back. An
    ablation that was not asked for (``kind``) is an empty tuple."""

    preset: str
    plan: str
    seeds: int
    leave_one_out: tuple[LeaveOneOut, ...]
    vary: tuple[Variant, ...]
    wall_s: float


def run(
    target: str | Target,
    plan: str,
    out: str | Path,
    *,
    kind: str = "both",
    components: Sequence[str] | None = None,
    factors: Sequence[float] = FACTORS,
    seeds: int = 1,
    sets: Mapping[str, Any] | None = None,
    workers: int | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
    executor=None,
) -> AblateResult:
    """Table 6 (``kind="leave-one-out"``), figure 4 (``kind="vary"``) or both, for ``plan``.
    Trains into ``out``: the ablated plans' files under ``out/plans``, leave-one-out as a
    :func:`~rlrs.experiments.compare.compare` of the full plan against each ablated one in
    ``out/leave-one-out`` (with compare's own report there), the varied plans' runs under
    ``out/runs``. :func:`save` and :func:`render` write ``ablate.json``, ``ablate.md`` and
    ``ablate_vary.png``, :func:`ablate` all three. ``executor`` runs the runs (see
    :func:`~rlrs.experiments.compare.compare`)."""
    if kind not in ABLATIONS:
        raise ConfigError(f"kind: {kind!r} is unknown; {_config.closest(kind, ABLATIONS)}")
    out = Path(out)
    target = as_target(target)
    preset = target.name
    base = _presets.resolve(plan)
    comps = list(component_names(target.components() if components is None else components))
    for f in factors:
        if not (isinstance(f, (int, float)) and math.isfinite(f) and f > 0):
            raise ConfigError(f"factors: {f!r} is not a positive number; e.g. 0.2,0.667,1.5,5")
    t0 = time.perf_counter()
    loo = (_leave_one_out(target, base, comps, out, seeds, sets, workers, log, progress, executor)
           if kind != "vary" else ())
    vary = (_vary(target, base, comps, factors, out, seeds, sets, workers, log, progress, executor)
            if kind != "leave-one-out" else ())
    return AblateResult(preset, plan, seeds, loo, vary, time.perf_counter() - t0)


def save(result: AblateResult, out: str | Path) -> Path:
    """Write ``out/ablate.json``."""
    path = Path(out) / "ablate.json"
    files.write_json(path, _config.to_dict(result))
    return path


def load(path: str | Path) -> AblateResult:
    """The :class:`AblateResult` in an ``ablate.json`` (or the directory holding it), files of
    earlier versions included (they also held each variant's ``diverged`` and ``final_loss``,
    which :class:`Variant` derives from its losses)."""
    def upgrade(data: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(data.get("vary"), list):
            return data
        return {**data, "vary": [{k: v for k, v in row.items() if k not in _DERIVED} if isinstance(row, dict)
                                 else row for row in data["vary"]]}

    return _config.load_typed(AblateResult, path, "ablate.json", "rlrs ablate", "ablation result", upgrade)


_DERIVED = ("diverged", "final_loss")  # what earlier ablate.json files held per variant beside its losses


def ablate(target: str | Target, plan: str, out: str | Path, **options) -> AblateResult:
    """What ``rlrs ablate`` does, in one call: :func:`run` (``options`` are its keywords), then
    :func:`save` and :func:`render` into ``out``."""
    result = run(target, plan, out, **options)
    save(result, out)
    render(result, out)
    options.get("log", print)(f"wrote {Path(out) / 'ablate.md'}")
    return result


def _finite(x) -> float | None:
    """A loss or percentage as the result keeps it: a plain float, ``None`` where there is none
    (JSON has no NaN, so a NaN kept here would not read back equal)."""
    return None if x is None or not math.isfinite(x) else float(x)


def _leave_one_out(target: Target, base: Plan, comps, out: Path, seeds, sets, workers, log, progress,
                   executor) -> tuple[LeaveOneOut, ...]:
    full = "full"
    plans = [write_plan(out / "plans" / f"{full}.toml", base)]
    for c in comps:
        plans.append(write_plan(out / "plans" / f"no-{c}.toml", dataclasses.replace(base, **{c: ComponentPlan(
            weight_decay=base.component(c).weight_decay)})))
    res = compare(target, plans, seeds=seeds, out=out / "leave-one-out", sets=sets, workers=workers, log=log,
                  progress=progress, executor=executor)
    rows = []
    whole = res.arms[full]
    for c in comps:
        without = res.arms[f"no-{c}"]
        lambdas = (float(base.component(c).start), float(base.component(c).end))
        if without.curve is not None and whole.curve is not None:
            # Table 6's direction: how much faster the full plan is than the plan without c.
            sp = speedup(without.curve.steps, without.curve.mean, whole.curve.steps, whole.curve.mean)
            rows.append(LeaveOneOut(c, lambdas, _finite(sp.percent), sp.describe(), _finite(without.final_loss.mean),
                                    _finite(whole.final_loss.mean)))
        else:
            rows.append(LeaveOneOut(c, lambdas, None, "not measurable: a run diverged or failed (see "
                                    "leave-one-out/report.md)", None, None))
    return tuple(rows)


def _vary(target: Target, base: Plan, comps, factors, out: Path, seeds, sets, workers, log, progress,
          executor) -> tuple[Variant, ...]:
    variants = [("base", None, None, 1.0, base)]
    for c in comps:
        cp = base.component(c)
        for which in ("start", "end"):
            for f in factors:
                variants.append((f"{c}.{which}×{f:.3g}", c, which, float(f),
                                 dataclasses.replace(base, **{c: dataclasses.replace(cp, **{which: getattr(cp, which) * f})})))
    jobs = []
    for name, *_, p in variants:
        for seed in range(seeds):
            spec = target.spec(p, seed, sets)
            jobs.append(Job(spec, run_dir(out / "runs", spec), label=f"{name} seed {seed}"))
    log(f"rlrs ablate: {len(variants)} variants × {seeds} seed(s) = {len(jobs)} runs -> {out / 'runs'}")
    outcomes = run_all(jobs, workers, log, progress=progress, executor=executor)
    rows = []
    for i, (name, c, which, f, _) in enumerate(variants):
        mine = outcomes[i * seeds:(i + 1) * seeds]
        rows.append(Variant(
            name, c, which, f,
            losses=tuple(_finite(o.final_eval_loss) if o.status == "finished" else None for o in mine),
            statuses=tuple(o.status for o in mine),
            errors=tuple(reason_line(o.status, o.error) for o in mine if o.error and o.error.strip()),
        ))
    return tuple(rows)


# --- report -------------------------------------------------------------------------------------


def render(result: AblateResult, out: str | Path) -> list[Path]:
    """Write ``ablate.md`` and, where the variants were trained, ``ablate_vary.png`` (figure 4)
    into ``out``, from ``result`` alone."""
    out = Path(out)
    md = out / "ablate.md"
    files.atomic_write_text(md, markdown(result))
    if not result.vary:
        return [md]
    return [md, plot_vary(result, out / "ablate_vary.png")]


def markdown(a: AblateResult) -> str:
    """``ablate.md``: table 6's rows and every variant's final loss."""
    lines = [f"# Ablations of {a.plan} on {a.preset} ({a.seeds} seed(s))", ""]
    if a.leave_one_out:
        lines += ["## Leave one component out (table 6)", "",
                  "Each row resets one component to 1 → 1; the speed-up is the full plan's over that ablated plan.",
                  "", "| Component | λ start → end | Final loss without it | Full plan | Speed-up of the full plan |",
                  "|---|---|---|---|---|"]
        for r in a.leave_one_out:
            sp = "no speed-up" if r.speedup_percent is None else f"{r.speedup_percent:+.1f}%"
            fl = "-" if r.final_loss is None else f"{r.final_loss:.4f}"
            ff = "-" if r.full_final_loss is None else f"{r.full_final_loss:.4f}"
            lines.append(f"| {r.component} | {r.lambdas[0]:g} → {r.lambdas[1]:g} | {fl} | {ff} | {sp} |")
        lines.append("")
    if a.vary:
        lines += ["## One λ varied (figure 4)", "", "![varied](ablate_vary.png)", "",
                  "| Variant | Final loss |", "|---|---|"]
        for v in a.vary:
            loss = "diverged" if v.final_loss is None else f"{v.final_loss:.4f}" + (" (some seeds diverged)" if v.diverged else "")
            lines.append(f"| {v.variant} | {loss} |")
    return "\n".join(lines) + "\n"


def plot_vary(a: AblateResult, path: str | Path) -> Path:
    """Figure 4: each variant's final loss as a bar (pale: λ_end varied; hatched, reaching above
    the others: diverged), the plan as given as a line."""
    from ..plots import COLORS, _plt, _save

    plt = _plt()
    rows = a.vary
    base = next(r for r in rows if r.component is None)
    others = [r for r in rows if r.component is not None]
    finite = [r.final_loss for r in rows if r.final_loss is not None]
    top = max(finite) if finite else 1.0
    bottom = min(finite) if finite else 0.0
    cap = top + 0.15 * (top - bottom + 1e-9)  # diverged bars reach above everything, hatched
    fig, ax = plt.subplots(figsize=(max(7, 0.28 * len(others) + 2), 4.2), dpi=120)
    for i, r in enumerate(others):
        h = cap if r.final_loss is None else r.final_loss
        ax.bar(i, h - bottom + 0.02, bottom=bottom - 0.02, color=COLORS[r.component],
               alpha=0.45 if r.which == "end" else 0.9, hatch="xx" if r.final_loss is None else None,
               edgecolor="k" if r.final_loss is None else "none")
    if base.final_loss is not None:
        ax.axhline(base.final_loss, color="green", lw=1.5, label=f"plan as given: {base.final_loss:.4f}")
    ax.set_xticks(range(len(others)))
    ax.set_xticklabels([r.variant for r in others], rotation=75, fontsize=7)
    ax.set_ylim(bottom - 0.03, cap + 0.02)
    ax.set_ylabel("final eval loss")
    ax.set_title(f"{a.preset}: one λ varied, others as {a.plan}  (hatched: diverged; pale: λ_end)", fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, Path(path))


# --- CLI ------------------------------------------------------------------------------------------


def add_commands(sub) -> None:
    """Register ``rlrs ablate``."""
    p = sub.add_parser("ablate", help="leave-one-out (table 6) and one-λ-varied (figure 4) ablations of a plan",
                       description="Train --plan with one component's λ left at 1 (leave-one-out) or multiplied by "
                                   "each of --factors (vary), per component. Writes ablate.md, ablate.json and runs/ "
                                   "into --out.")
    add_target_args(p)
    add_plan_arg(p, shown="the paper's plan for the model: paper-moe for a MoE model, else paper-dense")
    p.add_argument("--kind", default=default_of(run, "kind"), choices=ABLATIONS,
                   help=f"leave-one-out (table 6), vary (figure 4) or both (default: {default_of(run, 'kind')})")
    p.add_argument("--components", default=None, help="comma-separated components (default: all of the model's)")
    p.add_argument("--factors", default=None,
                   help=f"λ multipliers for --kind vary (default: {','.join(f'{f:.3g}' for f in FACTORS)})")
    add_seeds_arg(p, default_of(run, "seeds"))
    add_workers_arg(p)
    add_executor_args(p)
    add_out_arg(p, required=True)
    p.set_defaults(func=cmd_ablate)


def cmd_ablate(args) -> int:
    check_workers(args.workers)
    target = target_from_args(args)
    plan = args.plan or target.default_plans()[1]
    comps = [c.strip() for c in args.components.split(",")] if args.components else None
    factors = parse_floats(args.factors, "factors") or FACTORS
    out = Path(args.out)
    with executor_from_args(args, out / "slurm") as ex:
        res = run(target, plan, out, kind=args.kind, components=comps, factors=factors, seeds=args.seeds,
                  sets=sets_from_args(args), workers=args.workers, progress=sys.stderr.isatty(), executor=ex)
    save(res, out)
    render(res, out)
    print(f"wrote {out / 'ablate.md'}")
    print(markdown(res))
    return 0
