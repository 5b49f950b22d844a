"""The training loop: learning, resume, non-finite policies, data parallel, reuse."""

import json
import os
import subprocess
import sys

import pytest
import torch

from rlrs.config import ConfigError
from rlrs.engine import PresetRun, RunLocked, execute, run_lock
from rlrs.runlog import read_metrics
from rlrs.train import NonFiniteLoss, Trainer, eval_steps, run_config, total_steps


def cfg_for(tiny_sets, preset="tiny-moe", plan="paper-moe", **extra):
    return run_config(preset, plan, sets={**tiny_sets, **extra})


def test_eval_steps_every_percent():
    assert eval_steps(1000, 0.01)[:4] == [0, 10, 20, 30] and eval_steps(1000, 0.01)[-1] == 1000
    assert len(eval_steps(1000, 0.01)) == 101
    assert eval_steps(7, 0.5) == [0, 4, 7]


def test_total_steps_from_token_budget():
    cfg = run_config("moe-34m", "paper-moe")
    # 20 tokens per active non-embedding parameter (33.6M) at 256 x 512 tokens per step
    assert total_steps(cfg) == -(-20 * 33_595_904 // (256 * 512))
    assert total_steps(run_config("tiny-moe", sets={"train.steps": 7})) == 7


def test_loss_falls_and_logs_are_complete(tmp_path, tiny_sets):
    cfg = cfg_for(tiny_sets, **{"train.steps": 60})
    result = Trainer(cfg, tmp_path / "run").run()
    assert result.status == "finished" and result.steps == 60
    recs = read_metrics(tmp_path / "run")
    evals = [r for r in recs if r["kind"] == "eval"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 60
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 1.0  # bytes start near ln(257) = 5.55
    train = [r for r in recs if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 61))
    for key in ("lr/router", "lr/experts", "grad_norm", "tokens_per_s", "moe/dropped_tokens", "moe/load_entropy"):
        assert key in train[-1], key
    assert train[0]["lr/router"] == 0.0  # warmup starts from 0
    load = train[-1]["moe/expert_load"]
    assert len(load) == 4 and abs(sum(load) - 1) < 1e-4 and abs(max(load) - train[-1]["moe/max_load"]) < 1e-6
    diag = [r for r in train if "update_ratio/router" in r]
    assert len(diag) == len(evals) - 1  # one diagnostic per 1% point
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["final_eval_loss"] == evals[-1]["eval_loss"]


def test_update_diagnostics_are_per_component_even_when_groups_merge(tmp_path, tiny_sets):
    # A uniform plan puts every decayed matrix in one param group; the diagnostics must still
    # measure each component's own tensors, not the merged group's.
    t = Trainer(cfg_for(tiny_sets, plan="uniform", **{"train.steps": 3}), tmp_path / "run")
    assert len({id(g) for g in t.groups if "router" in g["components"]}) == 1
    assert len([g for g in t.groups if "router" in g["components"] and "attention" in g["components"]]) == 1
    sizes = {c: sum(p.numel() for p in ps) for c, ps in t.components.items()}
    assert sum(sizes.values()) == sum(p.numel() for p in t.model.parameters())
    assert sizes["router"] == 2 * 32 * 4  # two layers of a 32 x 4 router: nothing else
    t.run()
    diag = [r for r in read_metrics(tmp_path / "run") if "update_ratio/router" in r][-1]
    ratios = [diag[f"update_ratio/{c}"] for c in ("embedding", "attention", "router", "experts")]
    assert len(set(ratios)) == len(ratios)


@pytest.mark.parametrize("preset", ["tiny-moe", "tiny-dense"])
def test_representation_change_and_its_alignment_decomposition_per_component(tmp_path, tiny_sets, preset):
    # Kosson et al.'s (arXiv 2510.19093) measurement: ‖ΔY‖/‖Y‖ = (α_ΔW / α_W) · ‖ΔW‖/‖W‖ per component, at the eval points.
    plan = "paper-moe" if preset == "tiny-moe" else "paper-dense"
    Trainer(cfg_for(tiny_sets, preset, plan, **{"train.steps": 8, "train.eval_interval": 0.25}), tmp_path / "run").run()
    diags = [r for r in read_metrics(tmp_path / "run") if any(k.startswith("rep_change/") for k in r)]
    assert [r["step"] for r in diags] == [2, 4, 6, 8]
    matrices = ["embedding", "unembedding", "attention"] + (["router", "experts"] if preset == "tiny-moe" else ["feedforward"])
    for r in diags:
        assert sorted(k.split("/")[1] for k in r if k.startswith("rep_change/")) == sorted(matrices)  # norms have no X
        for c in matrices:
            ratio, a_dw, a_w = r[f"rep_change/{c}"], r[f"align_update/{c}"], r[f"align_weight/{c}"]
            assert ratio == pytest.approx(a_dw / a_w * r[f"update_ratio/{c}"], rel=1e-9)
            assert 0 < a_w <= 1 + 1e-9 and 0 < a_dw <= 1 + 1e-9  # Cauchy-Schwarz: ‖W X‖ <= ‖W‖ ‖X‖
    # The run's logs as the reports and updates.png read them: the decomposition's ratio per component.
    from rlrs.analysis import read_run

    u = read_run(tmp_path / "run").updates
    at = {int(s): i for i, s in enumerate(u.steps)}
    for r in diags:
        for c in matrices:
            assert u.align_ratio[c][at[r["step"]]] == pytest.approx(r[f"align_update/{c}"] / r[f"align_weight/{c}"])


def test_same_data_seed_same_batches_whatever_the_plan(tmp_path, tiny_sets):
    a = Trainer(cfg_for(tiny_sets, plan="uniform"), tmp_path / "a")
    b = Trainer(cfg_for(tiny_sets, plan="paper-moe"), tmp_path / "b")
    import rlrs.data as data

    for step in (0, 7):
        xa, _ = data.get_batch(a.data.train, step, 8, 32, a.cfg.train.data_seed)
        xb, _ = data.get_batch(b.data.train, step, 8, 32, b.cfg.train.data_seed)
        assert torch.equal(xa, xb)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a.eval_set, b.eval_set))


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "rlrs", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def _sets(tiny_sets, **extra):
    out = []
    for k, v in {**tiny_sets, **extra}.items():
        out += ["--set", f"{k}={json.dumps(v) if isinstance(v, str) else v}"]
    return out


@pytest.mark.slow
def test_resume_in_a_fresh_process_is_bit_identical(tmp_path, tiny_sets):
    sets = _sets(tiny_sets, **{"train.steps": 30})
    full = _cli("train", "--model", "tiny-moe", "--plan", "paper-moe", "--out", str(tmp_path / "full"), "--no-progress", *sets)
    assert full.returncode == 0, full.stderr
    part = _cli("train", "--model", "tiny-moe", "--plan", "paper-moe", "--out", str(tmp_path / "part"), "--no-progress", "--stop-at", "13", *sets)
    assert part.returncode == 0, part.stderr
    assert json.loads((tmp_path / "part" / "summary.json").read_text())["status"] == "stopped"
    resumed = _cli("train", "--resume", "--out", str(tmp_path / "part"), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    strip = lambda recs: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in recs]
    assert strip(read_metrics(tmp_path / "part")) == strip(read_metrics(tmp_path / "full"))
    a = torch.load(tmp_path / "full" / "checkpoints" / "step_0000030.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "checkpoints" / "step_0000030.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for i in a["optimizer"]["state"]:
        for k in a["optimizer"]["state"][i]:
            assert torch.equal(a["optimizer"]["state"][i][k], b["optimizer"]["state"][i][k])


def test_resume_uses_newest_complete_checkpoint(tmp_path, tiny_sets):
    cfg = cfg_for(tiny_sets, **{"train.steps": 20, "train.checkpoint_interval": 0.25})
    Trainer(cfg, tmp_path / "r").run(stop_at=12)
    ckdir = tmp_path / "r" / "checkpoints"
    assert [p.name for p in sorted(ckdir.glob("step_*.pt"))] == ["step_0000010.pt", "step_0000012.pt"]
    # a crash during a save leaves a temp file (and maybe a cut metrics line): both are ignored
    (ckdir / ".step_0000015.pt.tmp").write_bytes(b"partial")
    with open(tmp_path / "r" / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 13, "lo')
    t = Trainer(cfg, tmp_path / "r", resume=True)
    assert t.step == 12
    assert t.run().status == "finished"
    steps = [r["step"] for r in read_metrics(tmp_path / "r") if r["kind"] == "train"]
    assert steps == list(range(1, 21))


def test_fresh_start_refuses_to_overwrite(tmp_path, tiny_sets):
    cfg = cfg_for(tiny_sets, **{"train.steps": 4})
    Trainer(cfg, tmp_path / "r").run()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(cfg, tmp_path / "r")
    with pytest.raises(ConfigError, match="differs"):
        Trainer(cfg_for(tiny_sets, **{"train.steps": 5}), tmp_path / "r", resume=True)


def _inject_nan(trainer, at_step):
    def hook(module, args, out):
        if trainer.step == at_step:
            out.loss = out.loss * float("nan")
        return out

    trainer.model.register_forward_hook(hook)


def test_nonfinite_abort_stops_before_the_update(tmp_path, tiny_sets):
    cfg = cfg_for(tiny_sets, **{"train.steps": 20, "train.checkpoint_interval": 0.25})
    ref = Trainer(cfg, tmp_path / "ref")
    ref.run(stop_at=7)
    t = Trainer(cfg, tmp_path / "nan")
    _inject_nan(t, 7)
    with pytest.raises(NonFiniteLoss, match=r"step 8: loss is nan; stopped before the update, so the parameters are those after step 7"):
        t.run()
    for (n, p), q in zip(t.model.named_parameters(), ref.model.parameters()):
        assert torch.equal(p, q), n
    ckpts = sorted((tmp_path / "nan" / "checkpoints").glob("*.pt"))
    assert [c.name for c in ckpts] == ["step_0000005.pt"]  # nothing written at or after the NaN
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert summary["status"] == "diverged"


def test_nonfinite_skip_leaves_state_unchanged_and_continues(tmp_path, tiny_sets):
    cfg = cfg_for(tiny_sets, **{"train.steps": 12, "train.nonfinite": "skip"})
    t = Trainer(cfg, tmp_path / "skip")
    _inject_nan(t, 5)
    t.run(stop_at=5)
    params = [p.detach().clone() for p in t.model.parameters()]
    opt_state = {k: {n: v.clone() for n, v in s.items()} for k, s in t.optimizer.state.items()}
    t.run(stop_at=6)  # the NaN step
    assert all(torch.equal(p, q) for p, q in zip(t.model.parameters(), params))
    for k, s in t.optimizer.state.items():
        for n, v in s.items():
            assert torch.equal(v, opt_state[k][n]), n  # moments and the step count unchanged
    result = t.run()
    assert result.status == "finished" and result.skipped_steps == 1
    assert not all(torch.equal(p, q) for p, q in zip(t.model.parameters(), params))
    recs = [r for r in read_metrics(tmp_path / "skip") if r["kind"] == "train"]
    assert recs[5]["skipped"] is True and "loss is nan" in recs[5]["reason"]


def test_the_engine_reuses_a_finished_run_and_refuses_another_spec(tmp_path, tiny_sets):
    cfg = cfg_for(tiny_sets, **{"train.steps": 6})
    first = execute(PresetRun(cfg), tmp_path / "r")
    assert first.status == "finished" and not first.reused and first.compute_steps == 6
    mtime = (tmp_path / "r" / "metrics.jsonl").stat().st_mtime_ns
    again = execute(PresetRun(cfg), tmp_path / "r")
    assert again.reused and again.final_eval_loss == first.final_eval_loss and again.eval_loss == first.eval_loss
    assert (tmp_path / "r" / "metrics.jsonl").stat().st_mtime_ns == mtime  # not re-run
    other = execute(PresetRun(cfg_for(tiny_sets, plan="uniform", **{"train.steps": 6})), tmp_path / "r")
    assert other.status == "failed" and "another spec" in other.error
    assert execute(PresetRun(cfg), tmp_path / "r").status == "finished"  # the refusal changed nothing


def test_resuming_a_finished_run_reports_it_and_changes_nothing(tmp_path, tiny_sets):
    from rlrs.cli import main

    cfg = cfg_for(tiny_sets, **{"train.steps": 6})
    Trainer(cfg, tmp_path / "r").run()
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    assert main(["train", "--resume", "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    after = {p.name: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == {k: v for k, v in before.items() if k != ".lock"}
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["final_eval_loss"] is not None


def test_a_start_that_died_before_its_first_checkpoint_is_restarted_cleanly(tmp_path, tiny_sets):
    cfg = cfg_for(tiny_sets, **{"train.steps": 6})
    Trainer(cfg, tmp_path / "r")  # wrote config.json and an empty log, then "died"
    (tmp_path / "r" / "metrics.jsonl").write_text('{"kind": "eval", "step": 0, "eval_loss": 9.9}\n')
    r = execute(PresetRun(cfg), tmp_path / "r")
    assert r.status == "finished" and r.eval_steps[0] == 0 and r.eval_loss[0] != 9.9
    clean = execute(PresetRun(cfg), tmp_path / "clean")
    assert r.eval_loss == clean.eval_loss


@pytest.mark.slow
def test_two_process_data_parallel_matches_one_process(tmp_path, tiny_sets):
    sets = _sets(tiny_sets, **{"train.steps": 8, "train.batch_size": 8})
    args = ["train", "--model", "tiny-dense", "--plan", "paper-dense", "--no-progress", *sets]
    one = _cli(*args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "rlrs", *args, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a = [r for r in read_metrics(tmp_path / "one")]
    b = [r for r in read_metrics(tmp_path / "two")]
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        key = "loss" if ra["kind"] == "train" else "eval_loss"
        assert abs(ra[key] - rb[key]) <= 1e-5 * abs(ra[key]), (ra["step"], ra[key], rb[key])
        assert {k: v for k, v in ra.items() if k.startswith("lr/")} == {k: v for k, v in rb.items() if k.startswith("lr/")}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "train.stpes=5"], "train.stpes: unknown key; did you mean 'steps'"),
        (["--set", "train.steps=abc"], "train.steps: expected an integer"),
        (["--set", "train.steps"], "write key=value"),
        (["--set", "plan.router.start=-1"], "plan.router.start: must be a finite number > 0"),
        (["--set", "train.nonfinite=skp"], "did you mean 'skip'"),
        (["--model", "micro-mo"], "did you mean 'micro-moe'"),
        (["--plan", "paper-dens"], "did you mean 'paper-dense'"),
        (["--set", "data.tokenizer=bpe-9"], "bpe-N needs N >= 257"),
    ],
)
def test_cli_rejects_bad_settings(tmp_path, args, message):
    r = _cli("train", "--out", str(tmp_path / "x"), *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_cli_config_file_is_strict(tmp_path):
    bad = tmp_path / "run.toml"
    bad.write_text("[train]\nsteps = 10\n[modle]\nd_model = 64\n")
    r = _cli("train", "--model", "tiny-moe", "--config", str(bad), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "modle: unknown key; did you mean 'model'" in r.stderr, r.stderr


def test_bf16_autocast_path_trains(tmp_path, tiny_sets):
    # CPU bf16 autocast exercises the same code path as CUDA's (attention and router stay fp32).
    cfg = cfg_for(tiny_sets, **{"train.steps": 30, "train.precision": "bf16"})
    t = Trainer(cfg, tmp_path / "bf16")
    assert t.autocast
    t.run()
    evals = [r for r in read_metrics(tmp_path / "bf16") if r["kind"] == "eval"]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.5


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.gpu
def test_cuda_bf16_fused_compiled_run_has_no_recompiles(tmp_path, tiny_sets):
    import torch._dynamo as dynamo

    cfg = cfg_for(tiny_sets, **{"train.steps": 20, "train.compile": True, "train.device": "cuda"})
    t = Trainer(cfg, tmp_path / "gpu")
    assert t.autocast and all(isinstance(g["lr"], torch.Tensor) for g in t.optimizer.param_groups)
    t.run(stop_at=5)  # first compile happens here
    dynamo.config.error_on_recompile = True  # LR changes must not recompile: they are in-place tensors
    try:
        result = t.run()
    finally:
        dynamo.config.error_on_recompile = False
    assert result.status == "finished" and result.final_eval_loss < 5.5


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, tiny_sets):
    from rlrs.cli import main

    cfg = cfg_for(tiny_sets, **{"train.steps": 4})
    with run_lock(tmp_path / "r", wait=False):
        with pytest.raises(RunLocked, match=f"process {os.getpid()}"):
            with run_lock(tmp_path / "r", wait=False):
                pass
        assert main(["train", "--model", "tiny-moe", "--out", str(tmp_path / "r"), "--no-progress",
                     *[f"--set={k}={v!r}" if isinstance(v, str) else f"--set={k}={v}" for k, v in tiny_sets.items()]]) == 2
    assert execute(PresetRun(cfg), tmp_path / "r").status == "finished"  # once released, it runs


def test_the_engine_waits_for_a_live_holder_instead_of_failing(tmp_path, tiny_sets):
    import threading
    import time

    cfg = cfg_for(tiny_sets, **{"train.steps": 4})
    held = run_lock(tmp_path / "r", wait=False).__enter__()  # held by this process, which is alive
    threading.Timer(1.5, held.__exit__, (None, None, None)).start()
    t0 = time.monotonic()
    r = execute(PresetRun(cfg), tmp_path / "r")
    assert time.monotonic() - t0 >= 1.4 and r.status == "finished"
