"""Command-line pieces every ``rlrs`` command shares: ``--set`` values, plan and grid lists, and
what to train (a preset or the user's own ``--command``). Command modules import this; nothing
here imports a command module, so ``rlrs.cli`` can import them all plainly.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import os
import tomllib
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import ConfigError
from .engine import default_workers
from .executors import ClusterConfig, Executor, SlurmConfig, executor_names, load_cluster_config, make_executor
from .targets import CommandTarget, PresetTarget, Target
from .models import DEFAULT_PRESET


def default_of(fn: Callable[..., Any], name: str) -> Any:
    """The default of ``fn``'s parameter ``name``: CLI defaults are read from the function that
    owns them, never written a second time.

    >>> from rlrs.compare import compare
    >>> default_of(compare, "seeds")
    3
    """
    return inspect.signature(fn).parameters[name].default


def _value(text: str) -> Any:
    # TOML syntax for values (numbers, true/false, "strings", [lists]); a bare word is a string.
    try:
        parsed = tomllib.loads(f"v = {text}")
    except (tomllib.TOMLDecodeError, RecursionError):
        return text
    return parsed["v"] if list(parsed) == ["v"] else text


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``["train.steps=100", "plan.router.start=0.5"]`` to ``{"train.steps": 100, ...}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: write key=value, e.g. --set train.steps=100")
        if "\n" in item or "\r" in item:
            raise ConfigError(f"--set {key.strip()}: the value spans several lines; give one value on one line")
        out[key.strip()] = _value(value.strip())
    return out


def parse_plans(text: str) -> list[str]:
    """``"uniform,paper-moe"`` → ``["uniform", "paper-moe"]``."""
    plans = [p.strip() for p in text.split(",")]
    if not plans or any(not p for p in plans):
        raise ConfigError(f"--plans {text!r}: give comma-separated plans, e.g. --plans uniform-moe,paper-moe")
    return plans


# Each list flag's own example value, so an error shows a value that flag takes.
LIST_EXAMPLES = {
    "grid": "1e-3,2e-3,5e-3",  # learning rates
    "widths": "32,64,128,256",  # d_model values
    "factors": "0.2,0.667,1.5,5",  # λ multipliers (rlrs ablate --kind vary)
    "prune-at": "0.25,0.5,0.75",  # fractions of training
}


def parse_floats(text: str | None, name: str, positive: bool = True, what: str = "number",
                 example: str | None = None) -> list[float] | None:
    """``"1e-3,2e-3"`` → ``[0.001, 0.002]``; every value a finite number (> 0 with ``positive``).
    Errors show ``example`` (default: ``LIST_EXAMPLES[name]``) as the value to write.

    >>> parse_floats("32,x", "widths")
    Traceback (most recent call last):
    ...
    rlrs.config.ConfigError: --widths: 'x' is not a number; write e.g. --widths 32,64,128,256
    """
    if text is None:
        return None
    example = example or LIST_EXAMPLES.get(name, "1,2,3")
    values = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            v = float(part)
        except ValueError:
            raise ConfigError(f"--{name}: {part.strip()!r} is not a number; write e.g. --{name} {example}") from None
        if not math.isfinite(v) or (positive and v <= 0):
            raise ConfigError(f"--{name}: {part.strip()!r} is not a {what}{' > 0' if positive else ''}; "
                              f"write e.g. --{name} {example}")
        values.append(v)
    if not values:
        raise ConfigError(f"--{name}: give at least one number, e.g. --{name} {example}")
    return values


def parse_widths(text: str) -> list[int]:
    """``"32,64,128"`` → ``[32, 64, 128]``: model widths (d_model), whole numbers > 0."""
    widths = parse_floats(text, "widths", what="width (d_model)")
    if any(w != int(w) for w in widths):
        raise ConfigError(f"--widths: whole numbers (d_model values), got {text!r}; write e.g. --widths "
                          f"{LIST_EXAMPLES['widths']}")
    return [int(w) for w in widths]


def parse_grid(text: str) -> list[float]:
    """``"1e-3,2e-3,5e-3"`` → ``[0.001, 0.002, 0.005]``; every value a learning rate > 0."""
    return sorted(set(parse_floats(text, "grid", what="learning rate")))


def add_set_arg(p: argparse.ArgumentParser, what: str = "every run") -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a setting of {what}, e.g. train.steps=500 or plan.router.start=0.5 (repeatable; "
                        "with --command only plan.* keys)")


def add_target_args(p: argparse.ArgumentParser, command_flag: str = "--command", what: str = "") -> None:
    """``--preset`` / ``--command`` (what trains; the command flag may be renamed, e.g.
    ``--target-command``), ``--steps``, ``--cwd``, ``--config``, ``--set``."""
    p.add_argument("--preset", default=None, help=f"rlrs reference model to train{what} (default: {DEFAULT_PRESET}); see `rlrs presets`")
    p.add_argument(command_flag, dest="command", default=None, metavar="CMD",
                   help=f"train{what} with your own script instead of a preset: CMD runs once per run with RLRS_PLAN, "
                        "RLRS_RUN_DIR, RLRS_SEED (and RLRS_STEPS) set; {plan} {run_dir} {seed} {steps} in CMD are "
                        "replaced. The script reports eval losses with rlrs.report(step, loss)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"with {command_flag}: the run length in steps, passed as RLRS_STEPS / {{steps}} (needed for --prune)")
    p.add_argument("--cwd", default=".", help=f"with {command_flag}: the directory CMD runs in (default: the current one)")
    p.add_argument("--config", default=None, help="with --preset: a .toml/.json run config applied to every run")
    p.set_defaults(command_flag=command_flag)
    add_set_arg(p)


def add_workers_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=None, help=f"runs at once (default: {default_workers()}: one per usable core, "
                                                             "at most 4; with --executor slurm: Slurm jobs at once, default: "
                                                             "as many as Slurm schedules)")


# --slurm-* flags: (flag, SlurmConfig field, type, metavar, help). Defaults are the field defaults.
_SLURM = SlurmConfig()
_SLURM_FLAGS = (
    ("--slurm-partition", "partition", str, "NAME", "partition of the jobs (default: the cluster's default)"),
    ("--slurm-gpus", "gpus", int, "N", f"GPUs per run (default: {_SLURM.gpus})"),
    ("--slurm-cpus", "cpus", int, "N", f"CPU cores per run, its threads (default: {_SLURM.cpus})"),
    ("--slurm-mem-gb", "mem_gb", float, "GB", "memory per run (default: the cluster's default)"),
    ("--slurm-time-min", "time_min", int, "MIN", f"time limit of each job in minutes (default: {_SLURM.time_min})"),
    ("--slurm-account", "account", str, "NAME", "account charged (default: your default account)"),
    ("--slurm-timeout-requeues", "timeout_requeues", int, "N",
     f"times a job whose time limit runs out is requeued to resume (default: {_SLURM.timeout_requeues})"),
    ("--slurm-poll-s", "poll_s", float, "S",
     f"seconds between looks at the queue for jobs Slurm ended (default: {_SLURM.poll_s:g})"),
)


def add_executor_args(p: argparse.ArgumentParser) -> None:
    """``--executor``, ``--cluster-config`` and the ``--slurm-*`` resources of each run's job."""
    g = p.add_argument_group("where runs execute")
    g.add_argument("--executor", default=None, choices=executor_names(),
                   help="local: a pool of --workers processes on this machine (default); slurm: one Slurm job per "
                        "run (a job array per batch), at most --workers at once. With slurm, --out must be on a file "
                        "system the nodes share: the jobs write their runs and logs (OUT/slurm) there")
    g.add_argument("--cluster-config", default=None, metavar="FILE",
                   help="a TOML file: executor = \"slurm\" and a [slurm] table of partition, gpus, cpus, mem_gb, "
                        "time_min, account, options, timeout_requeues, poll_s; flags override it")
    for flag, _, tp, metavar, text in _SLURM_FLAGS:
        g.add_argument(flag, type=tp, default=None, metavar=metavar, help=text)
    g.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a further sbatch option of each job, e.g. constraint=a100 or qos=high (repeatable)")


def executor_from_args(args, log_dir: str | Path | None = None) -> Executor:
    """The executor the flags of :func:`add_executor_args` name (``--workers``: runs at once),
    keeping a cluster's job logs in ``log_dir`` (the experiment's ``OUT/slurm``). Close it after use
    (``with executor_from_args(args, out / "slurm") as ex: ...``)."""
    check_workers(getattr(args, "workers", None))
    cfg = load_cluster_config(args.cluster_config) if args.cluster_config else ClusterConfig()
    name = args.executor or cfg.executor
    given = {field: getattr(args, flag[2:].replace("-", "_")) for flag, field, *_ in _SLURM_FLAGS}
    given = {k: v for k, v in given.items() if v is not None}
    if args.slurm_option:
        given["options"] = (*cfg.slurm.options, *args.slurm_option)
    if given and name != "slurm":
        flag = next(f for f, field, *_ in _SLURM_FLAGS if field in given) if set(given) - {"options"} else "--slurm-option"
        raise ConfigError(f"{flag}: applies to Slurm jobs; add --executor slurm (or executor = \"slurm\" in --cluster-config)")
    try:
        slurm = dataclasses.replace(cfg.slurm, **given)
    except ConfigError as err:
        field, _, rest = str(err).partition(": ")
        flag = next((f for f, fd, *_ in _SLURM_FLAGS if fd == field), "--slurm-option" if field == "options" else field)
        raise ConfigError(f"{flag}: {rest}") from None
    return make_executor(ClusterConfig(name, slurm), getattr(args, "workers", None), log_dir)


def target_from_args(args, required: bool = False) -> Target:
    """The :class:`~rlrs.targets.PresetTarget` or :class:`~rlrs.targets.CommandTarget` the flags of
    :func:`add_target_args` name; ``required``: no default preset, the user must name one."""
    flag = args.command_flag
    if args.command is not None:
        if args.preset is not None:
            raise ConfigError(f"--preset and {flag}: choose one (a reference model, or your own script)")
        if args.config is not None:
            raise ConfigError(f"--config: applies to --preset runs; your {flag} script owns its config")
        return CommandTarget(args.command, args.steps, args.cwd)
    if args.steps is not None:
        raise ConfigError(f"--steps: applies to {flag}; for a preset use --set train.steps=N")
    if args.preset is None and required:
        raise ConfigError(f"--preset or {flag}: name the model to train")
    return PresetTarget(args.preset or DEFAULT_PRESET, args.config)


def check_out(path: str | Path, flag: str = "--out") -> Path:
    """Refuse, before anything trains, an output directory that cannot be created or written: a
    file in its place (``--out /dev/null``), a file on its path, no permission, a read-only disk.
    Creates nothing.

    >>> check_out("/dev/null")
    Traceback (most recent call last):
    ...
    rlrs.config.ConfigError: --out /dev/null: a file of that name exists, not a directory; give a directory (it is created if missing), e.g. --out runs/NAME
    """
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise ConfigError(f"{flag} {path}: a file of that name exists, not a directory; give a directory (it is "
                              f"created if missing), e.g. {flag} runs/NAME")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {path}: no permission to write in it (or its disk is read-only); choose "
                              "another directory, or fix its permissions")
        return p
    parent = p.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: a part of the path is a file ({parent}), not a directory, so it "
                          f"cannot be created; choose another path, e.g. {flag} runs/NAME")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot be created: no permission to write in {parent} (or its disk is "
                          "read-only); choose another path, or fix the permissions")
    return p


def check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers: at least 1, got {workers}")


def command_line(name: str, args, extra: Sequence[str]) -> str:
    """The ``rlrs`` command line that reproduces ``args`` (recorded in results files)."""
    import shlex

    parts = ["rlrs", name]
    if getattr(args, "command", None) is not None:
        parts += [getattr(args, "command_flag", "--command"), args.command] + (["--steps", str(args.steps)] if args.steps is not None else [])
        if args.cwd != ".":
            parts += ["--cwd", args.cwd]
    elif getattr(args, "preset", None) is not None:
        parts += ["--preset", args.preset]
    for s in getattr(args, "set", []):
        parts += ["--set", s]
    if getattr(args, "config", None):
        parts += ["--config", args.config]
    if getattr(args, "workers", None):
        parts += ["--workers", str(args.workers)]
    return shlex.join([*parts, *extra])
