"""A stand-in training script for the --command tests: no model, a loss from the plan's values.

    python fake_train.py MODE [STEPS]     MODE: ok | crash | nan | silent | kill | slow

The "loss" falls over the steps towards a floor set by how far η_base and the embedding's λ_start
are from an optimum, so the tuner and compare have something real to find.
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
for step in range(0, steps + 1, max(1, steps // 10)):
    if mode == "slow":
        time.sleep(0.2)
    loss = floor + 3.0 * math.exp(-5.0 * step / steps)
    if mode == "nan" and step >= steps // 2:
        loss = float("nan")
    if mode != "silent":
        rlrs.report(step, loss)
print(f"done {mode} seed {seed} plan {os.environ.get('RLRS_PLAN')}")
