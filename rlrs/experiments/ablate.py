"""Which components matter: ablations of a plan (``rlrs ablate``; the paper's table 6 and figure 4).

    >>> from rlrs.experiments.ablate import ablate
    >>> a = ablate("micro-moe", "paper-moe", out="runs/ablate")                  # doctest: +SKIP

Leave-one-out (the paper's table 6): each component in
turn is reset to 1 → 1, and the speed-up of the full plan over that ablated plan is reported
(a large number means the component's relative rates matter). Vary (figure 4): one component's
λ_start or λ_end is multiplied by each factor (1/5, 2/3, 3/2, 5), the others fixed; the final loss
of every variant goes into a bar chart with diverged runs marked.
"""

from __future__ import annotations

import dataclasses
import math
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
    lambdas: tuple[float, float]  # the plan's (start, end) for it
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


@dataclass
class AblateResult:
    """What :func:`ablate` found; ``to_dict()`` is what ``ablate.json`` holds."""

    out: Path
    preset: str
    plan: str
    seeds: int
    leave_one_out: list[LeaveOneOut]
    vary: list[Variant]
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "plan": self.plan, "seeds": self.seeds,
                "leave_one_out": [dataclasses.asdict(r) for r in self.leave_one_out],
                "vary": [{**dataclasses.asdict(v), "diverged": v.diverged, "final_loss": v.final_loss} for v in self.vary],
                "wall_s": self.wall_s}


def ablate(
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
    executor=None,
) -> AblateResult:
    """Table 6 (``kind="leave-one-out"``), figure 4 (``kind="vary"``) or both, for ``plan``;
    ``executor`` runs the runs (see :func:`transfer`)."""
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
    loo = _leave_one_out(target, base, comps, out, seeds, sets, workers, log, executor) if kind != "vary" else []
    vary = (_vary(target, base, comps, factors, out, seeds, sets, workers, log, executor) if kind != "leave-one-out"
            else [])
    result = AblateResult(out, preset, plan, seeds, loo, vary, time.perf_counter() - t0)
    files.write_json(out / "ablate.json", result.to_dict())
    files.atomic_write_text(out / "ablate.md", _ablate_md(result))
    if vary:
        _plot_vary(vary, out / "ablate_vary.png", f"{preset}: one λ varied, others as {plan}")
    log(f"wrote {out / 'ablate.md'}")
    return result


def _leave_one_out(target: Target, base: Plan, comps, out: Path, seeds, sets, workers, log,
                   executor=None) -> list[LeaveOneOut]:
    full = "full"
    plans = [write_plan(out / "plans" / f"{full}.toml", base)]
    for c in comps:
        plans.append(write_plan(out / "plans" / f"no-{c}.toml", dataclasses.replace(base, **{c: ComponentPlan(
            weight_decay=base.component(c).weight_decay)})))
    res = compare(target, plans, seeds=seeds, out=out / "leave-one-out", sets=sets, workers=workers, log=log,
                  executor=executor)
    rows = []
    whole = res.arms[full]
    for c in comps:
        without = res.arms[f"no-{c}"]
        lambdas = (base.component(c).start, base.component(c).end)
        if without.curve is not None and whole.curve is not None:
            # Table 6's direction: how much faster the full plan is than the plan without c.
            sp = speedup(without.curve.steps, without.curve.mean, whole.curve.steps, whole.curve.mean)
            rows.append(LeaveOneOut(c, lambdas, sp.percent, sp.describe(), without.final_loss.mean,
                                    whole.final_loss.mean))
        else:
            rows.append(LeaveOneOut(c, lambdas, None, "not measurable: a run diverged or failed (see "
                                    "leave-one-out/report.md)", None, None))
    return rows


def _vary(target: Target, base: Plan, comps, factors, out: Path, seeds, sets, workers, log,
          executor=None) -> list[Variant]:
    variants = [("base", None, None, 1.0, base)]
    for c in comps:
        cp = base.component(c)
        for which in ("start", "end"):
            for f in factors:
                variants.append((f"{c}.{which}×{f:.3g}", c, which, f,
                                 dataclasses.replace(base, **{c: dataclasses.replace(cp, **{which: getattr(cp, which) * f})})))
    jobs = []
    for name, *_, p in variants:
        for seed in range(seeds):
            spec = target.spec(p, seed, sets)
            jobs.append(Job(spec, run_dir(out / "runs", spec), label=f"{name} seed {seed}"))
    log(f"rlrs ablate: {len(variants)} variants × {seeds} seed(s) = {len(jobs)} runs -> {out / 'runs'}")
    outcomes = run_all(jobs, workers, log, executor=executor)
    rows = []
    for i, (name, c, which, f, _) in enumerate(variants):
        mine = outcomes[i * seeds:(i + 1) * seeds]
        rows.append(Variant(
            name, c, which, f,
            losses=tuple(o.final_eval_loss if o.status == "finished" else None for o in mine),
            statuses=tuple(o.status for o in mine),
            errors=tuple(reason_line(o.status, o.error) for o in mine if o.error and o.error.strip()),
        ))
    return rows


def _ablate_md(a: AblateResult) -> str:
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


def _plot_vary(rows: Sequence[Variant], path: Path, title: str) -> Path:
    from ..plots import COLORS, _plt, _save

    plt = _plt()
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
    ax.set_title(title + "  (hatched: diverged; pale: λ_end)", fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


# --- CLI ------------------------------------------------------------------------------------------


def add_commands(sub) -> None:
    """Register ``rlrs ablate``."""
    p = sub.add_parser("ablate", help="leave-one-out (table 6) and one-λ-varied (figure 4) ablations of a plan",
                       description="Train --plan with one component's λ left at 1 (leave-one-out) or multiplied by "
                                   "each of --factors (vary), per component. Writes ablate.md, ablate.json and runs/ "
                                   "into --out.")
    add_target_args(p)
    add_plan_arg(p, shown="the paper's plan for the model: paper-moe for a MoE model, else paper-dense")
    p.add_argument("--kind", default=default_of(ablate, "kind"), choices=ABLATIONS,
                   help=f"leave-one-out (table 6), vary (figure 4) or both (default: {default_of(ablate, 'kind')})")
    p.add_argument("--components", default=None, help="comma-separated components (default: all of the model's)")
    p.add_argument("--factors", default=None,
                   help=f"λ multipliers for --kind vary (default: {','.join(f'{f:.3g}' for f in FACTORS)})")
    add_seeds_arg(p, default_of(ablate, "seeds"))
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
    with executor_from_args(args, Path(args.out) / "slurm") as ex:
        ablate(target, plan, args.out, kind=args.kind, components=comps, factors=factors, seeds=args.seeds,
               sets=sets_from_args(args), workers=args.workers, executor=ex)
    print((Path(args.out) / "ablate.md").read_text())
    return 0
