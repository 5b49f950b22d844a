"""A stand-in training script for the --command tests: no model, a loss from the plan's values.

    python fake_train.py MODE [STEPS [HOLDS]]
        MODE: ok | crash | nan | silent | kill | slow | restart | resume | early | tokens

The "loss" falls over the steps towards a floor set by how far η_base and the embedding's λ_start
are from an optimum, so the tuner and compare have something real to find.

``restart`` is a script that does not checkpoint: every start trains from step 0. ``resume``
saves a checkpoint (``ckpt.json``) into ``$RLRS_RUN_DIR`` before each report and continues from
it. Both append a line to ``$RLRS_RUN_DIR/starts`` per start and ``START STEP`` to
``$RLRS_RUN_DIR/trained`` per step reached, so a test can count what really ran. HOLDS
(comma-separated steps, one per start: ``4,10``) makes the k-th start of a run whose plan is not
paper-dense (a tuner's candidates, not its start point) wait to be stopped once it has reported
HOLDS[k-1]: a rung stop then never depends on timing. ``early`` reports step 0 and exits 0;
``tokens`` is ``ok`` that also reports tokens (1000 per step).
"""

import math
import os
import signal
import sys
import time

import rlrs

mode = sys.argv[1]
steps = rlrs.script.steps(int(sys.argv[2]) if len(sys.argv) > 2 else 20)
plan = rlrs.script.plan("paper-dense")
seed = rlrs.script.seed()
floor = 2.0 + (math.log(plan.base_lr / 6e-3)) ** 2 + 0.1 * (math.log(plan.embedding.start / 10.0)) ** 2 + 0.001 * seed
if mode == "crash":
    rlrs.report(0, 5.0)
    print("something broke in the data loader", file=sys.stderr)
    sys.exit(3)
if mode == "kill":
    rlrs.report(0, 5.0)
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "early":
    rlrs.report(0, 5.0)
    sys.exit(0)
if mode in ("restart", "resume"):
    run_dir = rlrs.script.run_dir()
    with open(run_dir / "starts", "a") as f:
        f.write(f"{os.getpid()}\n")
    start = len((run_dir / "starts").read_text().splitlines())
    holds = [int(h) for h in sys.argv[3].split(",")] if len(sys.argv) > 3 else []
    hold = holds[start - 1] if start <= len(holds) and plan != rlrs.presets.get("paper-dense") else None
    ckpt = run_dir / "ckpt.json"
    first = 0
    if mode == "resume" and ckpt.exists():
        first = int(ckpt.read_text()) + max(1, steps // 10)
    for step in range(first, steps + 1, max(1, steps // 10)):
        loss = floor + 3.0 * math.exp(-5.0 * step / steps)
        with open(run_dir / "trained", "a") as f:  # what it really ran, for the tests to count
            f.write(f"{start} {step}\n")
        if mode == "resume":  # the checkpoint of a step first, then its report
            ckpt.write_text(str(step))
        rlrs.report(step, loss)
        if hold is not None and step >= hold:
            signal.alarm(120)  # a safety net: if nobody stops it, SIGALRM ends it (a failed run)
            signal.pause()  # rlrs stops it here (SIGTERM to its process group)
    print(f"done {mode} seed {seed} start {start}")
    sys.exit(0)
for step in range(0, steps + 1, max(1, steps // 10)):
    if mode == "slow":
        time.sleep(0.2)
    loss = floor + 3.0 * math.exp(-5.0 * step / steps)
    if mode == "nan" and step >= steps // 2:
        loss = float("nan")
    if mode != "silent":
        rlrs.report(step, loss, tokens=1000 * step if mode == "tokens" else None)
print(f"done {mode} seed {seed} plan {os.environ.get('RLRS_PLAN')}")
