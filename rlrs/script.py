"""What a training script needs to be driven by ``rlrs compare/lr-grid/tune/transfer/ablate --command``.

rlrs starts your command once per run with the run's plan, directory and seed in its environment;
the script builds its optimizer from that plan and reports its eval losses::

    import rlrs

    plan = rlrs.script.plan("paper-dense")          # $RLRS_PLAN when rlrs runs it, else this preset
    torch.manual_seed(rlrs.script.seed())           # $RLRS_SEED (paired seeds across arms)
    steps = rlrs.script.steps(2000)                 # $RLRS_STEPS when the tool gives --steps
    opt = torch.optim.AdamW(rlrs.param_groups(model, plan))
    sched = rlrs.RelativeLR(opt, plan, steps)
    for step in range(steps):
        ...
        if step % 20 == 0 or step == steps - 1:
            rlrs.report(step + 1, eval_loss)        # completed steps, held-out loss

The same script runs unchanged outside rlrs: ``report`` then does nothing and the helpers return
their defaults. Under ``torchrun`` only rank 0 writes. ``{plan}``, ``{run_dir}``, ``{seed}`` and
``{steps}`` in the command are replaced too, for scripts that take arguments instead.

The run must report its last step: with ``--steps N`` (``$RLRS_STEPS``), a script that exits 0
with its last report short of step N ended early, and its run is failed ("reported up to step 0
of 10: the script ended early"), not finished.

**Resuming.** rlrs restarts a command whose run was interrupted (a kill, a crash, ``--prune``
stopping it at a rung). A script that saves checkpoints into :func:`run_dir` and loads the newest
one at start-up resumes instead of starting over (``examples/nanogpt.py --checkpoint-every``); its
reports then continue from the resumed step (reports from an earlier attempt at or after that step
are replaced, so either way the curve is one consistent run). A script that does not resume starts
over from step 0 each time: every step it runs again is compute, and ``rlrs tune`` counts it
(``search.json``: ``compute.steps``, of them ``compute.rerun_steps``) and names the runs that
started over, with this fix.

**Checkpoint, then report.** rlrs may stop a run as soon as it reads a report (``--prune`` at a
rung), so at a step where the script both saves a checkpoint and evaluates, save first and call
``report`` after: a script that reports first can be stopped before its save, loses that
checkpoint, and redoes those steps from the one before. A script killed between the save and
the report resumes past a step it never reported, so on resuming at an eval step, report it again
(rlrs keeps a step's latest report)::

    start = load_checkpoint(...) if resuming else 0
    if start % eval_every == 0:
        rlrs.report(start, evaluate())                                                 # step 0, or where it resumed
    for step in range(start, steps):
        ...
        if done % checkpoint_every == 0:
            save_checkpoint(rlrs.script.run_dir() / "ckpt.pt", model, opt, sched, done)   # first
        if done % eval_every == 0 or done == steps:
            rlrs.report(done, evaluate())                                                  # then

**Ending a torchrun job.** A gloo process group's worker threads free a finished collective's
tensors after it returns and need the GIL for it; one that asks for it while Python is already
shutting down aborts the process ("terminate called without an active exception", SIGABRT), so a
run that reported everything fails. No barrier prevents it. End such a script with
:func:`end_distributed`, which leaves without Python's shutdown.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

from .plan import Plan
from .runlog import EvalRecord, RunLog


def run_dir() -> Path | None:
    """The run directory rlrs gave this run (``$RLRS_RUN_DIR``), or ``None`` outside rlrs."""
    d = os.environ.get("RLRS_RUN_DIR")
    return Path(d) if d else None


def plan(default: str | Plan | None = None) -> Plan:
    """The plan of this run: ``$RLRS_PLAN`` when rlrs runs the script, else ``default`` (a preset
    name, a plan file or a :class:`Plan`; ``None``: the paper's dense plan)."""
    from . import presets

    path = os.environ.get("RLRS_PLAN")
    if path:
        return Plan.load(path)
    if default is None:
        default = presets.default_plans(moe=False)[1]
    return default if isinstance(default, Plan) else presets.resolve(default)


def seed(default: int = 0) -> int:
    """The seed of this run (``$RLRS_SEED``): seed ``i`` of every arm should start from the same
    weights and see the same data, so use it for both."""
    return _int_env("RLRS_SEED", default)


def steps(default: int) -> int:
    """The run's length in steps: ``$RLRS_STEPS`` when the tool was given ``--steps``, else ``default``."""
    return _int_env("RLRS_STEPS", default)


def _int_env(name: str, default: int) -> int:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"${name}={text!r} is not an integer") from None


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def report(step: int, loss: float, *, tokens: int | None = None) -> None:
    """Record the held-out (eval) loss after ``step`` completed optimizer steps.

    Call it at the script's eval points, including step 0 if you evaluate there and the last step,
    and after saving the checkpoint of that step, if there is one (rlrs may stop the run right after
    a report). rlrs reads these reports for the speed-up, the tuner and pruning; a NaN or infinite
    loss makes the run a diverged one (rlrs stops it). ``tokens``: the tokens trained so far; give
    it and ``rlrs tune`` counts compute in tokens too (without it, in steps only). Outside rlrs, or
    on a rank other than 0, it does nothing.
    """
    out = run_dir()
    if out is None or _rank() != 0:
        return
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"rlrs.report: step must be an int >= 0 (completed steps), got {step!r}")
    value = float(loss)
    rec = EvalRecord(step, value if math.isfinite(value) else None, None if math.isfinite(value) else repr(value),
                     None if tokens is None else int(tokens), time.time())
    with RunLog(out) as log:
        log.append(rec)


def end_distributed(code: int = 0) -> None:
    """End a ``torchrun`` process: a barrier, destroy the process group, flush, and ``os._exit(code)``.

        rlrs.report(steps, evaluate())
        rlrs.script.end_distributed()    # the last line of main(); nothing after it runs

    ``os._exit`` skips the interpreter's shutdown, the only place where gloo's worker threads, still
    freeing the last collective's tensors, can abort the process (see the module docstring; DDP keeps
    the group's threads alive past ``destroy_process_group``). Files the script closed are complete;
    ``atexit`` handlers do not run. Without a process group it only flushes and exits.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # every rank is done with every collective before any leaves
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
