"""``rlrs tune``: the command line over :func:`rlrs.tune.tune` and :func:`rlrs.tune.join`."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from .. import config as _config
from ..config import ConfigError
from ..engine import default_workers, stopped_by, stopped_status
from ..executors import using
from ..options import (add_executor_args, add_out_arg, add_plan_arg, add_seeds_arg, add_target_args, add_workers_arg,
                       check_workers, default_of, executor_from_args, parse_floats, parse_sets, target_from_args)
from ..targets import CommandTarget
from .driver import TuneResult, fmt_loss, join, tune
from .spec import Pruning, TuneSpec
from .samplers import CONFIRM, SAMPLERS, SPREAD, sampler_search
from .study import StudyOptions

# The defaults the help texts show, read from the dataclasses that own them.
STUDY = StudyOptions()
PRUNE = Pruning()

# --- command line -----------------------------------------------------------------------------------

# The flags that define a search (a --worker takes them from the study instead), with their defaults:
# None, or the TuneSpec field's.
_SPEC_ARGS = {
    **dict.fromkeys(("model", "command", "plan", "config", "budget", "steps", "params", "objective")),
    **{name: default_of(TuneSpec, name) for name in ("seeds", "search_seed", "min_improvement")},
}


def cmd_tune(args) -> int:
    try:
        # The objective trains on the executor the flags name (a local pool of --workers by default).
        with executor_from_args(args, Path(args.out) / "slurm") as ex, using(ex):
            return _cmd_tune(args)
    except KeyboardInterrupt as err:
        n = len(getattr(err, "runs", ()))  # engine.Interrupted: the runs Ctrl-C stopped
        stopped = f"{n} running run{'s' * (n != 1)} stopped and recorded as interrupted; " if n else ""
        print(f"rlrs tune: interrupted by {stopped_by(err)}; {stopped}finished trials are in the study: to continue, run the "
              "same command again (interrupted runs run again, resuming from their checkpoints where they save "
              "them)", file=sys.stderr)
        return stopped_status(err)


def _cmd_tune(args) -> int:
    optuna = _config.require("optuna", "tune")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_workers(args.workers)
    workers = args.workers or default_workers()
    study = {"storage": args.storage, "name": args.study_name, "poll_s": args.poll, "stale_s": args.stale_after}
    common = dict(study=StudyOptions(**{k: v for k, v in study.items() if v is not None}), workers=workers, log=print)
    if args.sampler != "local":
        if args.worker:
            raise ConfigError(f"--worker: joins a local search's study; --sampler {args.sampler} runs in one process "
                              "(use --workers N for parallel runs)")
        given = [f"--{k.replace('_', '-')}" for k in ("storage", "study_name", "poll", "stale_after")
                 if getattr(args, k) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: options of the local search's shared study; --sampler "
                              f"{args.sampler} keeps its trials in OUT/study.db (study rlrs-{args.sampler})")
        spec = _spec_from_args(args, budget_steps=args.budget_steps)
        confirm = CONFIRM if args.confirm is None else args.confirm
        res = sampler_search(spec, args.out, args.budget, args.sampler, budget_steps=args.budget_steps,
                             confirm=confirm, workers=workers)
        start = "stopped early" if res.start_loss is None else fmt_loss(res.start_loss)
        print(f"chosen eval loss {fmt_loss(res.best_loss)} (start {start}) after {res.evaluations} evaluations "
              f"({args.sampler}); {res.compute_steps} training steps")
        print(f"choice: {res.rule}")
        print(f"plan: {res.plan_path}   trials: {res.search_path}")
        return 0
    if args.confirm is not None:
        raise ConfigError(f"--confirm: an option of --sampler {'/'.join(SAMPLERS)}; the local search takes a move "
                          "only if it beats the current point (--min-improvement for seed noise)")
    if args.worker:
        # --command is allowed: it is compared with the study's (see join), never a new setting.
        given = [f"--{a.replace('_', '-')}" for a, default in _SPEC_ARGS.items()
                 if a != "command" and getattr(args, a) != default]
        given += ["--set"] * bool(args.set) + ["--prune"] * bool(args.prune) + ["--budget-steps"] * (
            args.budget_steps is not None)
        if given:
            raise ConfigError(
                f"--worker: {', '.join(given)} cannot be given: a worker takes the search settings "
                "from the study; give only --out, --storage, --study-name, --workers (and --command or "
                "--trust-study-command for a study of a command)"
            )
        result = join(args.out, **common, command=args.command, cwd=args.cwd, trust_command=args.trust_study_command)
    else:
        if args.trust_study_command:
            raise ConfigError("--trust-study-command: only with --worker (it accepts the command of the study a "
                              "worker joins)")
        spec = _spec_from_args(args)
        if args.budget_steps is not None and args.budget is None:
            raise ConfigError("--budget-steps: with the local search, also give --budget N (evaluations); the "
                              "search stops at whichever is spent first")
        result = tune(spec, args.out, args.budget, budget_steps=args.budget_steps, **common)
    _report(result)
    return 0 if math.isfinite(result.best_loss) else 1


def _spec_from_args(args, budget_steps: int | None = None) -> TuneSpec:
    if args.budget is None and budget_steps is None:
        raise ConfigError("--budget: how many points to evaluate at most, e.g. --budget 60"
                          + (" (or --budget-steps N training steps)" if args.sampler != "local" else ""))
    prune = None
    if args.prune or args.prune_at or args.prune_margin is not None:
        given = {"rungs": None if args.prune_at is None else tuple(parse_floats(args.prune_at, "prune-at")),
                 "margin": args.prune_margin}
        prune = Pruning(**{k: v for k, v in given.items() if v is not None})
    params = [p.strip() for p in args.params.split(",") if p.strip()] if args.params else None
    target = target_from_args(args)
    options = dict(params=params, seeds=args.seeds, search_seed=args.search_seed, prune=prune,
                   min_improvement=args.min_improvement)
    if isinstance(target, CommandTarget):
        if args.objective is not None:
            raise ConfigError("--objective: not with --command (your script is what is measured)")
        return TuneSpec.for_command(target.command, args.plan, parse_sets(args.set), target.steps, target.cwd, **options)
    steps = {} if args.steps is None else {"steps": args.steps}  # else TuneSpec.create's default
    return TuneSpec.create(target.preset, args.plan, parse_sets(args.set), target.config_file, **steps,
                           objective=args.objective, **options)


def _report(r: TuneResult) -> None:
    print(f"best eval loss {fmt_loss(r.best_loss)} (start {fmt_loss(r.start_loss)}) after {r.evaluations} "
          f"evaluations; stopped: {r.stopped}")
    changed = {k: (r.start[k], v) for k, v in r.best.items() if v != r.start[k]}
    for k, (a, b) in changed.items():
        print(f"  {k}: {a:.4g} -> {b:.4g}")
    sets = " ".join(f"--set {k}={v!r}" for k, v in r.best.items() if not k.startswith("plan.") and k in changed)
    if r.spec.config is not None:
        print(f"plan: {r.plan_path}   use: rlrs train --model {r.spec.config.preset} --plan {r.plan_path}"
              + (f" {sets}" if sets else ""))
    else:
        print(f"plan: {r.plan_path}   use: RLRS_PLAN={r.plan_path} in your script's environment, or "
              f"rlrs.script.plan({str(r.plan_path)!r})")
    if r.config_path:
        print(f"non-plan settings: {r.config_path} (or the --set flags above)")
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(r.trials.items()) if n)
    # Tokens only where they are known: a command reports them only if its script passes tokens=.
    tokens = f" ({r.compute_tokens} tokens)" if r.compute_tokens is not None else ""
    rerun = f", {r.rerun_steps} of them run again" if r.rerun_steps else ""
    print(f"compute: {r.compute_steps} training steps{tokens}{rerun}; trials: {states}")
    for note in r.notes:
        print(f"note: {note}")
    print(f"trajectory: {r.search_path}")


def add_commands(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="local search (paper appendix A.1) over η_base, every λ, weight decay and init scale",
        description=(
            "Tune a plan with the paper's local search; trials persist in an Optuna study, so a rerun "
            "resumes and --worker processes share one search. --plan is the start plan; each point's runs train "
            "with seeds 0 to --seeds - 1 and the objective is their mean final eval loss. Writes OUT/tuned.toml "
            "(a plan for --plan), OUT/tuned_config.json (model settings such as init_scale, when they moved), "
            "OUT/search.json, runs/ and study.db."
        ),
    )
    add_target_args(p, steps_shown=f"{default_of(TuneSpec.create, 'steps')} for a model size; none for --command, "
                                   "where --prune needs it")
    add_plan_arg(p, shown="the paper's plan for the model: paper-moe for a MoE model, else paper-dense")
    p.add_argument("--budget", type=int, default=None, help="most points evaluated, over all workers (a rerun with a larger one extends the search)")
    add_out_arg(p, required=True)
    add_seeds_arg(p, default_of(TuneSpec, "seeds"))
    add_workers_arg(p)
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///OUT/study.db; also "
                   "postgresql://user:password@host/db, run through psycopg 3 as postgresql+psycopg://, pip install "
                   "'rlrs[cluster]'; mysql+pymysql://...; journal:///path/file.log)")
    p.add_argument("--study-name", default=None, help=f"study name in the storage (default: {STUDY.name})")
    p.add_argument("--worker", action="store_true", help="join the search already in the study (settings come from it)")
    p.add_argument("--trust-study-command", action="store_true",
                   help="with --worker: run the command stored in the study without giving it as --command (whoever "
                        "can write to the study chooses what every worker runs)")
    p.add_argument("--sampler", default="local", choices=("local", *SAMPLERS),
                   help="the search: local (the paper's algorithm 2); Optuna's tpe / cmaes / gp (a Gaussian process), "
                        "each point trained to the end; or hyperband (many points trained briefly, the best third "
                        "continued from their checkpoints); all but local over the same parameters in log scale "
                        f"(start/{SPREAD:g} to start*{SPREAD:g}) (default: local)")
    p.add_argument("--budget-steps", type=int, default=None, metavar="N",
                   help="most training steps in all (every run's, restarts and --confirm included); the search "
                        "stops before work that would exceed it (the local search: with --budget)")
    p.add_argument("--confirm", type=int, default=None, metavar="K",
                   help=f"with --sampler: train the K best points again on --seeds new seeds and choose by the "
                        f"mean over all seeds, not the luckiest single run (default: {CONFIRM}; 0: the lowest "
                        "single evaluation)")
    p.add_argument("--prune", action="store_true", help="stop candidates early whose eval loss trails the current best")
    p.add_argument("--prune-at", default=None, metavar="FRACTIONS",
                   help=f"checkpoints for --prune as fractions of training (default: {','.join(map(str, PRUNE.rungs))})")
    p.add_argument("--prune-margin", type=float, default=None, help=f"relative margin for --prune (default: {PRUNE.margin})")
    p.add_argument("--min-improvement", type=float, default=default_of(TuneSpec, "min_improvement"), metavar="FRACTION",
                   help="relative gain a move needs to be taken, e.g. 0.002 to ignore seed noise "
                        f"(default: {default_of(TuneSpec, 'min_improvement'):g}, any gain)")
    p.add_argument("--search-seed", type=int, default=default_of(TuneSpec, "search_seed"),
                   help=f"seed of the order parameters are visited in (default: {default_of(TuneSpec, 'search_seed')})")
    p.add_argument("--params", default=None, help="comma-separated dotted keys to search (default: plan.base_lr, each component's start and end, plan.weight_decay, model.init_scale)")
    p.add_argument("--objective", default=None, metavar="MODULE:FUNCTION", help="a synthetic loss fn(point, progress) instead of training (to try the search)")
    p.add_argument("--poll", type=float, default=None, help=f"seconds between looks at other workers' claims (default: {STUDY.poll_s:g})")
    p.add_argument("--stale-after", type=float, default=None,
                   help=f"seconds: a claim without heartbeat for this long is taken over (default: {STUDY.stale_s:g})")
    add_executor_args(p)
    p.set_defaults(func=cmd_tune)
