"""Command-line pieces every ``rlrs`` command shares: each shared flag's one builder (name, default,
help), ``--set`` values, plan and grid lists, and what to train (a model size or the user's own
``--command``). Command modules import this; nothing
here imports a command module, so ``rlrs.cli`` can import them all plainly.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import os
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import ConfigError
from .engine import default_workers
from .executors import ClusterConfig, Executor, SlurmConfig, executor_names, load_cluster_config, make_executor
from .targets import CommandTarget, PresetTarget, Target
from .models import DEFAULT_SIZE


def default_of(fn: Callable[..., Any], name: str) -> Any:
    """The default of ``fn``'s parameter ``name``: CLI defaults are read from the function that
    owns them, never written a second time.

    >>> from rlrs.experiments.compare import compare
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


# --- the shared flags ----------------------------------------------------------------------------
#
# One builder per flag, so that a flag every command shares has one name, one default and one help
# text (tests/test_cli_consistency.py checks it). A flag's default is read from the API function or
# dataclass that owns it (``default_of``), never written here a second time; where a default is each
# command's own (``--seeds``, ``--steps``, ``--out``, ``--plan``), the command passes it in and the
# help ends in "(default: ...)" showing it.

HELP = {
    "--model": "the model to train: one of rlrs's model sizes, listed by `rlrs sizes`",
    "--command": "train with your own script instead of a model size: CMD runs once per run with RLRS_PLAN, "
                 "RLRS_RUN_DIR, RLRS_SEED and RLRS_STEPS (--steps) set; {plan} {run_dir} {seed} {steps} in CMD are "
                 "replaced; only plan.* --set keys apply. The script reports eval losses with rlrs.report(step, loss)",
    "--cwd": "with --command: the directory CMD runs in",
    "--config": "with --model: a .toml/.json run config (sections model, data, train, plan) applied to every run",
    "--set": "override a setting, e.g. plan.router.start=0.5 or train.eval_interval=0.05 (repeatable; it wins over "
             "--steps and --config)",
    "--steps": "training length in steps",
    "--workers": "runs at once; with --executor slurm: Slurm jobs at once, by default as many as Slurm schedules",
    "--seeds": "seeds per setting: each runs with seeds 0 to N-1",
    "--plan": "a named plan (paper-moe, paper-dense, uniform-moe, uniform-dense, blockwise-moe, ...; see "
              "rlrs.presets) or a .toml/.json plan file",
    "--plans": "comma-separated plans (named plans or plan files), the baseline first",
    "--out": "output directory",
    "--grid": "η_base values, e.g. 1e-3,2e-3,5e-3",
    "--extend": "values an η_base grid may grow by, per arm, while its best η_base sits at an edge (0: never)",
    "--widths": "d_model values, comma-separated",
    "--no-progress": "no progress bar",
}


def _help(flag: str, default: Any) -> str:
    """``HELP[flag]`` and the default it shows: every default is shown the same way."""
    return f"{HELP[flag]} (default: {default})".replace("%", "%%")


class Renamed(argparse.Action):
    """An old spelling of a flag, kept working for one release and hidden from ``--help``: it
    stores into the new flag's ``dest`` and, with ``note``, says the new name on stderr."""

    def __init__(self, option_strings, dest, new: str = "", note: bool = False, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new, self.note = new, note

    def __call__(self, parser, namespace, values, option_string=None):
        if self.note:
            print(f"rlrs: {option_string} is now {self.new} (the old name still works for now)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_renamed(p: argparse.ArgumentParser, old: str, new: str, dest: str, type: Callable | None = None,
                note: bool = False) -> None:
    """Accept ``old``, hidden from ``--help``, as the flag ``new`` (stored into ``dest``, read with
    ``type``); with ``note`` it says the new name on stderr."""
    p.add_argument(old, dest=dest, type=type, action=Renamed, new=new, note=note, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)


def add_model_arg(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--model SIZE`` (old spelling: ``--preset``, which says the new name). ``None``: the
    commands' default model size, ``rlrs.models.DEFAULT_SIZE``."""
    p.add_argument("--model", default=default, metavar="SIZE", help=_help("--model", default or DEFAULT_SIZE))
    add_renamed(p, "--preset", "--model", "model", note=True)


def add_set_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=HELP["--set"])


def add_steps_arg(p: argparse.ArgumentParser, default: int | None = None, shown: str = "the model size's own") -> None:
    """``--steps N`` (old spelling: ``--total-steps``); ``shown`` says what ``None`` means."""
    p.add_argument("--steps", type=int, default=default, metavar="N", help=_help("--steps", shown if default is None else default))
    add_renamed(p, "--total-steps", "--steps", "steps", type=int)


def add_target_args(p: argparse.ArgumentParser, commands: bool = True, steps: int | None = None,
                    steps_shown: str = "the model size's own") -> None:
    """What a command trains: ``--model`` (one of rlrs's model sizes) or, with ``commands``,
    ``--command`` (the user's script, in ``--cwd``), and ``--steps``, ``--config``, ``--set``.
    :func:`target_from_args` and :func:`sets_from_args` read them."""
    add_model_arg(p)
    if commands:
        p.add_argument("--command", default=None, metavar="CMD", help=HELP["--command"])
        add_renamed(p, "--target-command", "--command", "command")
        p.add_argument("--cwd", default=default_of(CommandTarget, "cwd"), help=_help("--cwd", "the current one"))
    add_steps_arg(p, steps, steps_shown)
    p.add_argument("--config", default=None, metavar="FILE", help=HELP["--config"])
    add_set_arg(p)


def add_workers_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help=_help("--workers", f"{default_workers()}: one per usable core, at most 4"))


def add_seeds_arg(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--seeds", type=int, default=default, metavar="N", help=_help("--seeds", default))


def add_plan_arg(p: argparse.ArgumentParser, default: str | None = None, shown: str | None = None,
                 required: bool = False) -> None:
    text = f"{HELP['--plan']} (required)" if required else _help("--plan", shown or default)
    p.add_argument("--plan", default=default, required=required, help=text)


def add_plans_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plans", default=None, help=_help("--plans", "the uniform baseline and the paper's plan for the "
                                                                  "model: uniform-moe,paper-moe for a MoE model, "
                                                                  "uniform-dense,paper-dense for a dense one and for "
                                                                  "--command"))


def add_out_arg(p: argparse.ArgumentParser, default: str | None = None, shown: str | None = None,
                required: bool = False) -> None:
    text = f"{HELP['--out']} (required)" if required else _help("--out", shown or default)
    p.add_argument("--out", default=default, required=required, metavar="DIR", help=text)


def add_grid_args(p: argparse.ArgumentParser, extend: int) -> None:
    """``--grid`` and ``--extend`` (``extend``: the API's default)."""
    p.add_argument("--grid", default=None, metavar="LR,LR,...",
                   help=_help("--grid", "values of the {1,2,5}x10^-n ladder around each plan's η_base"))
    p.add_argument("--extend", type=int, default=extend, metavar="N", help=_help("--extend", extend))


def add_widths_arg(p: argparse.ArgumentParser, default: Sequence[int] | None = None) -> None:
    """``--widths``: required, or ``default`` (the API's) shown as the list it is written as."""
    text = None if default is None else ",".join(map(str, default))
    p.add_argument("--widths", default=text, required=default is None, metavar="W,W,...",
                   help=f"{HELP['--widths']} (required)" if text is None else _help("--widths", text))


def add_no_progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help=HELP["--no-progress"])


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
    :func:`add_target_args` name; ``required``: no default model size, the user must name one."""
    if getattr(args, "command", None) is not None:
        if args.model is not None:
            raise ConfigError("--model and --command: choose one (one of rlrs's model sizes, or your own script)")
        if args.config is not None:
            raise ConfigError("--config: applies to --model runs; your --command script owns its config")
        return CommandTarget(args.command, args.steps, args.cwd)
    if args.model is None and required:
        raise ConfigError("--model or --command: name the model to train, e.g. --model tiny-dense (see `rlrs sizes`) "
                          "or --command 'python train.py'")
    return PresetTarget(args.model or DEFAULT_SIZE, args.config)


def sets_from_args(args) -> dict[str, Any]:
    """The ``--set`` values, with ``--steps`` as ``train.steps`` for a model size (a ``--set
    train.steps`` wins); a ``--command`` gets its steps as RLRS_STEPS instead."""
    sets = parse_sets(args.set)
    if args.steps is not None and getattr(args, "command", None) is None:
        return {"train.steps": args.steps, **sets}
    return sets


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
        parts += ["--command", args.command]
        if args.cwd != ".":
            parts += ["--cwd", args.cwd]
    elif getattr(args, "model", None) is not None:
        parts += ["--model", args.model]
    if getattr(args, "steps", None) is not None:
        parts += ["--steps", str(args.steps)]
    for s in getattr(args, "set", []):
        parts += ["--set", s]
    if getattr(args, "config", None):
        parts += ["--config", args.config]
    if getattr(args, "workers", None):
        parts += ["--workers", str(args.workers)]
    return shlex.join([*parts, *extra])
