"""compare and lr-grid: seed pairing, run reuse and resume, divergence, reports, the CLI."""

import json
import re
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rlrs.cli import main
from rlrs.analysis import RunLogs, UpdateCurves, detect_spikes
from rlrs.experiments.arms import RunInfo, arm_name, grid_around
from rlrs.experiments.compare import compare, summarize
from rlrs.experiments import compare as compare_module
from rlrs.experiments.lr_grid import GridArm, GridPoint, GridResult, GridRun, load, load_grid, save
from rlrs.options import parse_grid, parse_plans
from rlrs.plan import Plan
from rlrs.config import ConfigError
from rlrs.runlog import read_metrics

STEPS = 20


def _sets(corpus_dir, **extra):
    return {
        "data.corpus": str(corpus_dir / "docs"),
        "data.cache_dir": str(corpus_dir / "cache"),
        "data.val_fraction": 0.2,
        "train.threads": 1,
        "train.steps": STEPS,
        "train.eval_batches": 2,
        **extra,
    }


def _quiet(_line):
    pass


@pytest.fixture(scope="module")
def moe_compare(corpus_dir, tmp_path_factory):
    """One finished compare on tiny-moe (2 plans × 2 seeds), shared read-only; copy it to mutate."""
    out = tmp_path_factory.mktemp("moe_compare")
    res = compare("tiny-moe", ["uniform-moe", "paper-moe"], seeds=2, out=out, sets=_sets(corpus_dir), workers=1, log=_quiet)
    return res


def _out(res) -> Path:
    """The ``out`` a compare trained into: its runs live in ``out/runs``."""
    return res.runs[0].out.parent.parent


class _Spy:
    """Wraps the engine's Pool.run and records which jobs it was given to run."""

    def __init__(self, real):
        self.real, self.jobs = real, []

    def __call__(self, pool, jobs, on_done=None, progress=False):
        self.jobs.extend(jobs)
        return self.real(pool, jobs, on_done=on_done, progress=progress)


@pytest.fixture
def spy(monkeypatch):
    from rlrs import engine

    s = _Spy(engine.Pool.run)
    monkeypatch.setattr(engine.Pool, "run", lambda pool, jobs, on_done=None, progress=False: s(pool, jobs, on_done, progress))
    return s


def _mtimes(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


# --- pure pieces ----------------------------------------------------------------------------------


def test_spike_detection_finds_the_known_spike():
    rng = np.random.default_rng(0)
    steps = np.arange(1, 301)
    loss = 5.0 * np.exp(-steps / 80) + 3.0 + rng.normal(0, 0.01, steps.size)
    assert detect_spikes(steps, loss) == []  # a falling, noisy curve has none
    loss[150:153] += [0.6, 0.9, 0.4]  # steps 151-153
    loss[220] = np.nan  # a skipped step is ignored, not a spike
    spikes = detect_spikes(steps, loss)
    assert len(spikes) == 1
    s = spikes[0]
    assert (s.start, s.end, s.peak_step) == (151, 153, 152)
    assert s.peak_loss == loss[151] and s.rise == pytest.approx(loss[151] / s.reference - 1) and s.rise > 0.2


def test_grid_and_plan_parsers():
    assert grid_around(3e-3) == [5e-4, 1e-3, 2e-3, 5e-3, 1e-2]
    assert grid_around(1e-3, n=3) == [5e-4, 1e-3, 2e-3]
    for n in range(1, 16):  # every allowed size, centred on any value: n distinct ladder values
        for base in (1e-5, 3e-3, 0.7):
            g = grid_around(base, n)
            assert len(g) == len(set(g)) == n and g == sorted(g)
    with pytest.raises(ConfigError, match="points: .* 1 to 15"):
        grid_around(1e-3, 16)
    assert parse_grid("5e-3, 1e-3,2e-3") == [1e-3, 2e-3, 5e-3]
    with pytest.raises(ConfigError, match="--grid: 'abc' is not a number"):
        parse_grid("1e-3,abc")
    with pytest.raises(ConfigError, match="not a learning rate > 0"):
        parse_grid("1e-3,-2e-3")
    assert parse_plans("uniform, plans/mine.toml") == ["uniform", "plans/mine.toml"]
    assert arm_name("plans/mine.toml") == "mine"
    with pytest.raises(ConfigError, match="--plans"):
        parse_plans("uniform,,paper-moe")


def _logs(losses):
    steps = np.arange(0, 11) * 10
    loss = np.asarray(losses, float)
    empty = np.zeros(0)
    return RunLogs(steps, loss, steps[1:], loss[1:], steps[1:], loss[1:], ["attention"],
                   UpdateCurves(empty, {"attention": empty}, {"attention": empty}), None)


def test_summary_uses_finished_seeds_and_says_so():
    base = [np.linspace(6, 3.7, 11), np.linspace(6, 3.7, 11) + 0.02]
    rel = [[6, 5, 4.5, 4.2, 4, 3.9, 3.8, 3.7, 3.6, 3.55, 3.5], None]  # relative seed 1 diverged
    runs, logs = [], {}
    for arm, curves in (("uniform", base), ("paper", rel)):
        for seed, c in enumerate(curves):
            out = Path(f"/nowhere/{arm}{seed}")
            status = "finished" if c is not None else "diverged"
            runs.append(RunInfo(arm, seed, out, status, None if c is not None else "step 3: loss is nan"))
            logs[out] = _logs(c if c is not None else [6.0, 9.0])
    summary = summarize({"uniform": Plan(), "paper": Plan(base_lr=2e-3)}, runs, logs)
    paper, diff = summary.speedups["paper"], summary.differences["paper"]
    sp = paper.speedup
    # target: the baseline's mean final loss 3.71; paper's one finished seed first gets there at step 70
    assert sp.target_loss == pytest.approx(3.71) and sp.t_relative == 70
    assert diff.n == 1 and diff.mean == pytest.approx(3.5 - 3.7) and diff.seeds == (0,)
    assert "fewer seeds: 2 of 2 baseline, 1 of 2 paper" in paper.text
    assert [(r.seed, r.status, r.error) for r in summary.arms["paper"].not_finished] == [(1, "diverged", "step 3: loss is nan")]
    assert [p.measured for p in paper.per_seed] == [True, False]
    assert summary.arms["uniform"].final_loss.n == 2 and summary.arms["uniform"].final_loss.mean == pytest.approx(3.71)


# --- compare on a tiny preset ---------------------------------------------------------------------


def test_compare_pairs_seeds_across_arms(moe_compare):
    by = {(r.arm, r.seed): r for r in moe_compare.runs}
    assert len(by) == 4 and all(r.status == "finished" for r in by.values())
    first = {}
    for (arm, seed), r in by.items():
        cfg = json.loads((r.out / "config.json").read_text())
        assert cfg["train"]["seed"] == seed and cfg["train"]["data_seed"] == seed
        recs = read_metrics(r.out)
        first_eval = next(x["eval_loss"] for x in recs if x["kind"] == "eval")
        first_train = next(x["loss"] for x in recs if x["kind"] == "train")
        first[arm, seed] = (first_eval, first_train)
    # seed i of every arm: same initial weights and the same first batch, whatever the plan
    for seed in (0, 1):
        assert first["uniform-moe", seed] == first["paper-moe", seed]
    assert first["uniform-moe", 0][1] != first["uniform-moe", 1][1]


def test_compare_writes_results_report_and_plots(moe_compare):
    out = _out(moe_compare)
    for name in ("results.json", "report.md", "loss.png", "train_loss.png", "updates.png", "router.png",
                 "lr_uniform-moe.png", "lr_paper-moe.png"):
        assert (out / name).stat().st_size > 0, name
    def no_nan(name):
        raise AssertionError(f"results.json holds {name}: not strict JSON")

    res = json.loads((out / "results.json").read_text(), parse_constant=no_nan)
    assert res["baseline"] == "uniform-moe" and res["seeds"] == 2 and res["metric"] == "eval"
    sp = res["speedups"]["paper-moe"]
    assert sp["t_base"] == STEPS and sp["target_loss"] == pytest.approx(res["arms"]["uniform-moe"]["final_loss"]["mean"])
    assert sp["text"] == moe_compare.lines()[0]
    iv = sp["interval"]  # 2 paired seeds: a bootstrap interval of the speed-up
    assert iv["level"] == 0.95 and iv["resamples"] == 2000
    if sp["percent"] is not None and iv["low"] is not None:
        assert iv["low"] <= sp["percent"] <= iv["high"]
    assert len(res["arms"]["paper-moe"]["curve"]["steps"]) == STEPS + 1  # step 0 and every 1% (= 1 step here)
    assert set(res["arms"]["paper-moe"]["updates"]["update_ratio"]) == {"embedding", "unembedding", "attention", "router", "experts", "other"}
    health = res["runs"][0]["router"]
    assert 0 < health["load_entropy_final"] <= 1 and health["verdict"]
    assert res["differences"]["paper-moe"]["n"] == 2
    md = (out / "report.md").read_text()
    for text in ("| arm | η_base |", "speed-up = (T_base / T_relative − 1) × 100%", "Worked example", "![loss curves](loss.png)",
                 "MoE router health", "Loss spikes", "lr_paper-moe.png", "seed i of every arm uses data seed i"):
        assert text in md, text


def test_a_saved_compare_loads_back_equal_and_renders_the_same_report(moe_compare, tmp_path):
    out = _out(moe_compare)
    assert compare_module.load(out) == moe_compare  # what compare() wrote
    again = compare_module.load(compare_module.save(moe_compare, tmp_path / "saved"))
    assert again == moe_compare and isinstance(again.runs[0].out, Path) and again.runs[0].curve.steps[0] == 0
    files = compare_module.render(again, tmp_path / "saved")
    assert {p.name for p in files} == {"loss.png", "train_loss.png", "lr_uniform-moe.png", "lr_paper-moe.png",
                                       "updates.png", "router.png", "report.md"}
    assert (tmp_path / "saved" / "report.md").read_text() == (out / "report.md").read_text()


STORED_RESULTS = sorted(p for p in (Path(__file__).resolve().parents[1] / "benchmarks" / "results").rglob("results.json")
                        if "speedups" in json.loads(p.read_text()))


@pytest.mark.parametrize("path", STORED_RESULTS, ids=lambda p: str(p.parent.name))
def test_a_stored_results_json_loads_as_a_typed_result_and_writes_back_the_same(path, tmp_path):
    # results.json files written before CompareResult was a frozen dataclass load through config.from_dict.
    data = json.loads(path.read_text())
    res = compare_module.load(path)
    assert res.baseline == data["baseline"] and list(res.speedups) == list(data["speedups"])
    assert res.speedups[next(iter(data["speedups"]))].text == next(iter(data["speedups"].values()))["text"]
    compare_module.save(res, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == data


def test_a_results_json_with_a_wrong_field_names_the_field_and_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `rlrs compare --out DIR` first"):
        compare_module.load(tmp_path)
    assert STORED_RESULTS, "benchmarks/results holds no compare results.json to start from"
    data = json.loads(STORED_RESULTS[0].read_text())
    arm = next(iter(data["speedups"]))
    data["speedups"][arm]["verdict"] = 3
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=rf"results.json.*compare_result\.speedups\.{re.escape(arm)}\.verdict: "
                                          "expected a string"):
        compare_module.load(tmp_path)


def test_rerun_reuses_every_run(moe_compare, tmp_path, corpus_dir, spy):
    out = tmp_path / "c"
    shutil.copytree(_out(moe_compare), out)
    runs = out / "runs"
    before = _mtimes(runs)
    res = compare("tiny-moe", ["uniform-moe", "paper-moe"], seeds=2, out=out, sets=_sets(corpus_dir), workers=1, log=_quiet)
    assert spy.jobs == [] and all(r.reused for r in res.runs)
    assert _mtimes(runs) == before and len(list(runs.iterdir())) == 4
    assert res.speedups["paper-moe"].text == moe_compare.lines()[0]


def test_interrupted_compare_resumes_only_the_unfinished_run(moe_compare, tmp_path, corpus_dir, spy):
    out = tmp_path / "c"
    shutil.copytree(_out(moe_compare), out)
    victim = next(r for r in moe_compare.runs if (r.arm, r.seed) == ("paper-moe", 1)).out
    victim = out / "runs" / victim.name
    final_before = json.loads((victim / "summary.json").read_text())["final_eval_loss"]
    # What a kill at step 19 leaves: no summary or engine record, the newest checkpoint at 18, the
    # log a bit further.
    (victim / "summary.json").unlink()
    (victim / "result.json").unlink()
    ckpts = sorted((victim / "checkpoints").glob("step_*.pt"))
    assert ckpts[-1].name == f"step_{STEPS:07d}.pt"
    ckpts[-1].unlink()
    lines = (victim / "metrics.jsonl").read_text().splitlines()
    (victim / "metrics.jsonl").write_text("\n".join(lines[:-3]) + '\n{"kind": "train", "st')
    others = {p: (p / "summary.json").stat().st_mtime_ns for p in (out / "runs").iterdir() if p != victim}
    res = compare("tiny-moe", ["uniform-moe", "paper-moe"], seeds=2, out=out, sets=_sets(corpus_dir), workers=1, log=_quiet)
    assert [j.out for j in spy.jobs] == [victim]  # only the interrupted run trains again
    assert {p: (p / "summary.json").stat().st_mtime_ns for p in others} == others
    resumed = next(r for r in res.runs if (r.arm, r.seed) == ("paper-moe", 1))
    assert resumed.status == "finished" and not resumed.reused
    assert resumed.final_eval_loss == final_before  # resumed from step 18, bit-identical on CPU
    assert [r["step"] for r in read_metrics(victim) if r["kind"] == "train"] == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_killed_compare_resumes_without_redoing_finished_runs(tmp_path, corpus_dir, spy):
    out = tmp_path / "c"
    sets = _sets(corpus_dir, **{"train.steps": 40})
    argv = [sys.executable, "-m", "rlrs", "compare", "--model", "tiny-dense", "--plans", "uniform-dense,paper-dense",
            "--seeds", "2", "--workers", "2", "--out", str(out)]
    for k, v in sets.items():
        argv += ["--set", f"{k}={json.dumps(v) if isinstance(v, str) else v}"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("runs/*/result.json")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and its worker processes, mid-training
        proc.wait()
    finished = {p.parent: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")}
    assert finished and not (out / "report.md").exists()
    res = compare("tiny-dense", ["uniform-dense", "paper-dense"], seeds=2, out=out, sets=sets, workers=1, log=_quiet)
    assert all(r.status == "finished" for r in res.runs), [(r.status, r.error) for r in res.runs]
    assert {p: (p / "result.json").stat().st_mtime_ns for p in finished} == finished
    assert not {j.out for j in spy.jobs} & set(finished) and len(spy.jobs) == 4 - len(finished)
    assert {r.out for r in res.runs if r.reused} == set(finished)


def test_metric_train(moe_compare, tmp_path, corpus_dir, spy):
    out = tmp_path / "c"
    shutil.copytree(_out(moe_compare), out)
    res = compare("tiny-moe", ["uniform-moe", "paper-moe"], seeds=2, out=out, sets=_sets(corpus_dir), workers=1,
                  metric="train", log=_quiet)
    assert spy.jobs == []
    assert res.metric == "train" and res.arms["uniform-moe"].curve.steps[0] == 1  # no train loss at step 0
    base_final = [x.final_loss for x in res.runs_of("uniform-moe")]
    assert base_final == [x.final_train_1pct for x in res.runs_of("uniform-moe")]
    assert res.speedups["paper-moe"].target_loss == pytest.approx(np.mean(base_final))
    assert "final train loss" in res.speedups["paper-moe"].text
    saved = json.loads((out / "results.json").read_text())
    assert saved["metric"] == "train" and saved["speedups"]["paper-moe"]["text"] == res.speedups["paper-moe"].text
    assert "loss: **train loss" in (out / "report.md").read_text()
    with pytest.raises(ConfigError, match="metric: 'evall' is unknown; did you mean 'eval'"):
        compare("tiny-moe", ["uniform-moe", "paper-moe"], out=out, sets=_sets(corpus_dir), metric="evall")


def test_diverged_run_is_recorded_and_reported(tmp_path, corpus_dir, spy):
    out = tmp_path / "c"
    kw = dict(seeds=1, out=out, sets=_sets(corpus_dir, **{"train.steps": 10}), workers=1, log=_quiet,
              base_lrs={"paper-dense": 1e3})
    res = compare("tiny-dense", ["uniform-dense", "paper-dense"], **kw)
    bad = next(r for r in res.runs if r.arm == "paper-dense")
    assert bad.status == "diverged" and "nan" in bad.error and res.speedups["paper-dense"].speedup is None
    data = json.loads((out / "results.json").read_text())
    # Earlier versions left out the keys of what was not measured; such a file reads back the same.
    assert data["arms"]["paper-dense"]["curve"] is None and data["speedups"]["paper-dense"]["low"] is None
    earlier = json.loads(json.dumps(data))
    for key in ("curve", "final_loss"):
        del earlier["arms"]["paper-dense"][key]
    for key in ("low", "high"):
        del earlier["speedups"]["paper-dense"][key]
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    assert compare_module.load(tmp_path / "earlier.json") == compare_module.load(out) == res
    run = next(r for r in data["runs"] if r["arm"] == "paper-dense")
    assert run["status"] == "diverged" and run["error"] == bad.error and run["final_loss"] is None
    assert data["arms"]["paper-dense"]["base_lr"] == 1e3 and data["arms"]["paper-dense"]["seeds_finished"] == []
    assert data["speedups"]["paper-dense"]["text"] == "paper-dense: not measured: every run of paper-dense diverged or failed"
    md = (out / "report.md").read_text()
    assert "not measured: every run of paper-dense diverged or failed" in md and "**diverged**" in md and "Lower plan.base_lr" in md
    # a rerun keeps the divergence (and its message) without training it again
    spy.jobs.clear()
    again = compare("tiny-dense", ["uniform-dense", "paper-dense"], **kw)
    assert spy.jobs == []
    assert next(r for r in again.runs if r.arm == "paper-dense").error == bad.error


def test_lr_grid_then_compare_with_its_best(tmp_path, corpus_dir, capsys, spy):
    out = tmp_path / "bench"
    sets = []
    for k, v in _sets(corpus_dir, **{"train.steps": 12}).items():
        sets += ["--set", f"{k}={json.dumps(v) if isinstance(v, str) else v}"]
    common = ["--model", "tiny-dense", "--plans", "uniform-dense,paper-dense", "--out", str(out), "--workers", "1", *sets]
    assert main(["lr-grid", "--grid", "1e-3,1e-2", "--extend", "0", *common]) == 0
    text = capsys.readouterr().out
    grid = json.loads((out / "grid.json").read_text())
    for arm in ("uniform-dense", "paper-dense"):
        pts = grid["arms"][arm]["points"]
        best = min(pts, key=lambda p: p["mean"])["base_lr"]
        assert grid["best"][arm] == best == load_grid(out / "grid.json")[arm]
        assert grid["arms"][arm]["edge"] == ("high" if best == 1e-2 else "low")
        assert f"{arm}: best η_base {best:g}" in text and "edge of the grid" in text
    assert (out / "lr_grid.png").stat().st_size > 0 and "At the" in (out / "grid.md").read_text()
    # compare on the same --out with one seed: every run is one of the grid's; nothing trains
    spy.jobs.clear()
    assert main(["compare", "--seeds", "1", "--base-lrs-from", str(out / "grid.json"), *common]) == 0
    assert spy.jobs == []
    res = json.loads((out / "results.json").read_text())
    assert {a: e["base_lr"] for a, e in res["arms"].items()} == grid["best"]
    assert res["command"].startswith("rlrs compare --model tiny-dense") and "--base-lrs-from" in res["command"]
    for r in res["runs"]:
        assert json.loads((Path(r["out"]) / "config.json").read_text())["plan"]["base_lr"] == grid["best"][r["arm"]]


def test_lr_grid_grows_past_an_edge_until_the_best_is_inside(tmp_path, corpus_dir, spy):
    from rlrs.experiments.lr_grid import lr_grid

    messages = []
    res = lr_grid("tiny-dense", ["uniform-dense"], tmp_path / "g", grid=[1e-5, 2e-5], extend=2,
                  sets=_sets(corpus_dir, **{"train.steps": 8}), workers=1, log=messages.append)
    arm = res.arms["uniform-dense"]
    values = [p.base_lr for p in arm.points]
    # Tiny LRs: the best sits at the high end, so the grid grows upward along the ladder, twice.
    assert values == [1e-5, 2e-5, 5e-5, 1e-4]
    assert sum("adding" in m for m in messages) == 2 and len(spy.jobs) == 4  # each run trained once
    assert arm.best == 1e-4 and arm.edge == "high"  # still rising after the allowed growth: said so
    assert json.loads((tmp_path / "g" / "grid.json").read_text())["arms"]["uniform-dense"]["edge"] == "high"


def test_lr_grid_default_grid_has_points_values_around_each_plans_own_base_lr(tmp_path, corpus_dir, spy):
    from rlrs.experiments.lr_grid import lr_grid

    res = lr_grid("tiny-dense", ["uniform-dense", "blockwise-dense"], tmp_path / "g", points=3, extend=0,
                  sets=_sets(corpus_dir, **{"train.steps": 4}), workers=1, log=_quiet)
    # uniform-dense's η_base is 2e-3, blockwise-dense's 5e-4: each arm gets its own three ladder values.
    assert [p.base_lr for p in res.arms["uniform-dense"].points] == [1e-3, 2e-3, 5e-3]
    assert [p.base_lr for p in res.arms["blockwise-dense"].points] == [2e-4, 5e-4, 1e-3]
    assert len(spy.jobs) == 6
    with pytest.raises(ConfigError, match="points: how many ladder values"):
        lr_grid("tiny-dense", ["uniform-dense"], tmp_path / "h", points=0)


def test_lr_grid_include_adds_a_value_to_one_arms_grid(tmp_path, corpus_dir, spy):
    from rlrs.experiments.lr_grid import lr_grid

    res = lr_grid("tiny-dense", ["uniform-dense", "paper-dense"], tmp_path / "g", grid=[1e-3], extend=0,
                  include={"paper-dense": 5e-2}, sets=_sets(corpus_dir, **{"train.steps": 4}), workers=1, log=_quiet)
    assert [p.base_lr for p in res.arms["uniform-dense"].points] == [1e-3]
    assert [p.base_lr for p in res.arms["paper-dense"].points] == [1e-3, 5e-2]
    assert len(spy.jobs) == 3
    with pytest.raises(ConfigError, match="include: 'paper-dnese' is not an arm of this grid; did you mean 'paper-dense'"):
        lr_grid("tiny-dense", ["uniform-dense", "paper-dense"], tmp_path / "h", include={"paper-dnese": 1e-2})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "--plans", "uniform-dense,paper-dnese"], "did you mean 'paper-dense'"),
        (["compare", "--plans", "uniform-dense"], "plans: 2 needed"),
        (["compare", "--plans", "uniform-dense,uniform-dense"], "appears twice"),
        (["compare", "--seeds", "0"], "--seeds: at least 1, got 0"),
        (["compare", "--set", "train.seed=3"], "train.seed: compare and lr-grid set it themselves"),
        (["compare", "--base-lrs-from", "/nowhere/grid.json"], "run `rlrs lr-grid --out DIR` first"),
        (["lr-grid", "--grid", "1e-3,abc"], "--grid: 'abc' is not a number"),
        (["lr-grid", "--grid", "0"], "--grid: '0' is not a learning rate > 0"),
        (["lr-grid", "--workers", "0"], "--workers: at least 1"),
    ],
)
def test_cli_bad_input_exits_2(argv, message, tmp_path, capsys, spy):
    code = main([*argv, "--model", "tiny-dense", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith(f"rlrs {argv[0]}: error:")
    assert spy.jobs == [] and not (tmp_path / "o").exists()


def _one_arm_grid(path: Path, arm: str, base_lr: float) -> None:
    run = GridRun(0, "finished", 3.5, None, path.parent / "runs" / "a", False, 1.0)
    arms = {arm: GridArm.of([GridPoint.of(base_lr, [run])])}
    save(GridResult("tiny-dense", {"preset": "tiny-dense", "config_file": None}, 1, "eval", {arm: arm}, arms,
                    {arm: base_lr}, "rlrs lr-grid", 1.0), path.parent)


def test_base_lrs_from_a_grid_without_the_arm(tmp_path, capsys):
    grid = tmp_path / "grid.json"
    _one_arm_grid(grid, "uniform-dense", 1e-3)
    code = main(["compare", "--model", "tiny-dense", "--plans", "uniform-dense,paper-dense", "--out", str(tmp_path / "o"),
                 "--base-lrs-from", str(grid)])
    assert code == 2 and "no η_base for paper-dense (it has: uniform-dense)" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_runs_use_the_cores_they_are_pinned_to():
    # Two commands pinned to one core each must not start two threads each and fight over the cores.
    code = ("import os; from rlrs.engine import usable_cores; "
            "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); print(usable_cores())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1"
    from rlrs.engine import usable_cores

    assert usable_cores() == len(os.sched_getaffinity(0))


# --- identical arms: no speed-up from nothing --------------------------------------------------------


def _plan_files(tmp_path, preset, **changes):
    """The preset saved as arm_a.toml, and as arm_b.toml with ``changes`` (component: ComponentPlan)."""
    import dataclasses

    from rlrs.presets import get

    a, b = tmp_path / "arm_a.toml", tmp_path / "arm_b.toml"
    get(preset).save(a)
    dataclasses.replace(get(preset), **changes).save(b)
    return [str(a), str(b)]


def test_arms_that_train_identically_measure_no_speed_up_and_are_flagged(tmp_path, corpus_dir):
    # Two plans that differ only for a router a dense model does not have: every run trains the
    # same. Any schedule: a constant LR plateaus, which is where the old rule's bias showed.
    from rlrs.plan import ComponentPlan

    plans = _plan_files(tmp_path, "uniform-dense", router=ComponentPlan(start=2.0))
    res = compare("tiny-dense", plans, seeds=2, out=tmp_path / "c", workers=1, log=_quiet,
                  sets=_sets(corpus_dir, **{"plan.attention.shape": "constant", "plan.attention.end": 1.0}))
    arm = res.speedups["arm_b"]
    assert arm.identical and arm.verdict == "identical" and arm.speedup.percent == 0.0
    assert arm.interval.low == arm.interval.high == 0.0
    assert "no difference: every seed trained exactly as the baseline's did" in arm.text
    data = json.loads((tmp_path / "c" / "results.json").read_text())["speedups"]["arm_b"]
    assert data["verdict"] == "identical" and data["percent"] == 0.0


NOISY_PLATEAU = (
    "import math, random, rlrs; seed = rlrs.script.seed(); rng = random.Random(seed); "
    "[rlrs.report(s, 3.0 + 2.0 * math.exp(-s / 5) + rng.gauss(0, 0.02)) for s in range(0, 101, 5)]"
)


def test_identical_arms_on_a_noisy_plateaued_command_measure_no_speed_up(tmp_path):
    # A script's own, noisy eval on a curve that has flattened: the baseline touches its final loss
    # long before its last step. This script ignores its plan, so both arms train alike: measured
    # with one rule for both arms, the second gains nothing (the old reading gave it a speed-up).
    from rlrs.targets import CommandTarget

    target = CommandTarget(f"{sys.executable} -c \"{NOISY_PLATEAU}\"")
    res = compare(target, ["uniform-dense", "paper-dense"], seeds=3, out=tmp_path / "c", workers=2, log=_quiet)
    arm = res.speedups["paper-dense"]
    assert arm.speedup.percent == 0.0 and arm.identical
    assert arm.interval.low == arm.interval.high == 0.0
    assert "identical runs" in (tmp_path / "c" / "report.md").read_text()


def test_the_same_plan_under_two_names_is_said_to_share_its_runs(tmp_path):
    from rlrs.targets import CommandTarget

    plans = _plan_files(tmp_path, "paper-dense")
    target = CommandTarget(f"{sys.executable} -c \"{NOISY_PLATEAU}\"")
    res = compare(target, plans, seeds=2, out=tmp_path / "c", workers=2, log=_quiet)
    arm = res.speedups["arm_b"]
    assert arm.verdict == "same plan" and {r.out for r in res.runs_of("arm_b")} == {r.out for r in res.runs}
    assert "its runs are the baseline's runs (not trained again)" in arm.text


def test_a_real_difference_within_one_interval_is_no_measurable_difference():
    steps = np.arange(0, 101, 10)
    base = np.linspace(5.0, 3.0, 11)
    rel = base.copy()
    rel[-1] -= 0.001  # a hair lower at the last eval only: the arms cannot be told apart
    runs, logs = [], {}
    for arm, curve in (("base", base), ("rel", rel)):
        out = Path(f"/nonexistent/{arm}")
        runs.append(RunInfo(arm=arm, seed=0, out=out, status="finished", steps=100, total_steps=100))
        logs[out] = RunLogs(steps, curve, np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0, dtype=np.int64),
                            np.zeros(0), [], UpdateCurves(np.zeros(0, dtype=np.int64), {}, {}), None)
    rel = summarize({"base": Plan(), "rel": Plan(base_lr=2e-3)}, runs, logs).speedups["rel"]
    assert rel.verdict == "no measurable difference"
    assert "no measurable difference (one measuring interval allows either sign)" in rel.text


def test_arms_that_do_not_start_from_the_same_weights_are_said_not_to_be_paired(tmp_path):
    # A script that does not seed its model from rlrs.script.seed(): seed i of each arm starts
    # elsewhere (here: the plan moves the initial loss), so "paired" numbers would pair nothing.
    from rlrs.targets import CommandTarget

    script = ("import rlrs; p = rlrs.script.plan(); start = 5.0 + p.embedding.start / 100; "
              "[rlrs.report(s, start - s / 10) for s in range(11)]")
    res = compare(CommandTarget(f"{sys.executable} -c \"{script}\""), ["uniform-dense", "paper-dense"], seeds=1,
                  out=tmp_path / "c", log=_quiet)
    arm = res.speedups["paper-dense"]
    assert arm.unpaired_seeds == (0,) and "Not paired: seed 0 of paper-dense" in arm.text
    same = ("import rlrs; p = rlrs.script.plan(); [rlrs.report(s, 5.0 - s / 10 * p.embedding.start) "
            "for s in range(11)]")
    res = compare(CommandTarget(f"{sys.executable} -c \"{same}\""), ["uniform-dense", "paper-dense"], seeds=1,
                  out=tmp_path / "d", log=_quiet)
    arm = res.speedups["paper-dense"]
    assert arm.unpaired_seeds == () and "Not paired" not in arm.text


STORED_GRIDS = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "results").rglob("grid.json"))


@pytest.mark.parametrize("path", STORED_GRIDS, ids=lambda p: str(p.parent.name))
def test_a_stored_grid_json_loads_as_a_typed_result_and_writes_back_the_same(path, tmp_path):
    # grid.json files written before GridResult was a frozen dataclass load through config.from_dict.
    data = json.loads(path.read_text())
    res = load(path)
    assert isinstance(res.arms[next(iter(data["arms"]))].points[0].runs[0].out, Path)
    assert res.best == {a: v for a, v in data["best"].items()} and load_grid(path) == res.best
    save(res, tmp_path)
    assert json.loads((tmp_path / "grid.json").read_text()) == data


def test_a_grid_json_with_a_wrong_field_names_the_field_and_the_file(tmp_path):
    assert STORED_GRIDS, "benchmarks/results holds no grid.json to start from"
    data = json.loads(STORED_GRIDS[0].read_text())
    arm = next(iter(data["arms"]))
    data["arms"][arm]["points"][0]["mean"] = "low"
    (tmp_path / "grid.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=rf"grid.json.*grid_result\.arms\.{re.escape(arm)}\.points\[0\]\.mean: "
                                          "expected a number"):
        load(tmp_path)
