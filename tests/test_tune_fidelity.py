"""rlrs tune's cheaper searches: Hyperband whose promoted points resume their runs, the GP sampler,
the step budget, the choice by the mean over new seeds, and a warm start from any plan file."""

import dataclasses
import json
import math
import sys

import pytest

optuna = pytest.importorskip("optuna")

from rlrs.config import ConfigError  # noqa: E402
from rlrs.plan import Plan  # noqa: E402
from rlrs.search import point_key  # noqa: E402
from rlrs.tune import SyntheticObjective, TuneSpec  # noqa: E402
from rlrs.tune.samplers import ETA, hyperband_rungs, sampler_search, search_space, startup_trials  # noqa: E402

PARAMS = ["plan.base_lr", "plan.router.start", "plan.experts.end"]
OPT = {"plan.base_lr": 0.015, "plan.router.start": 0.4, "plan.experts.end": 1.6875}


def curve(point, progress):
    """A loss curve falling to 1 + a log-space quadratic with its minimum at OPT."""
    if point["plan.base_lr"] > 0.05:
        raise FloatingPointError("diverged: loss is nan")
    return 1.0 + sum(math.log(point[k] / v) ** 2 for k, v in OPT.items() if k in point) + (1.0 - progress)


class Recording(SyntheticObjective):
    """The synthetic objective, remembering every (point, stop, seeds) it was asked to train."""

    def __init__(self, total=90, fn=curve):
        super().__init__(fn, total, 1 / 9)
        self.calls: list[tuple[str, int, tuple[int, ...] | None]] = []

    def run(self, points, stop_at, seeds=None):
        for p in points:
            self.calls.append((point_key(p), self.total_steps if stop_at is None else stop_at,
                               None if seeds is None else tuple(seeds)))
        return super().run(points, stop_at, seeds)


def spec_for(params=PARAMS, **kw):
    return TuneSpec.create("tiny-moe", steps=90, params=params, objective=f"{__name__}:curve", **kw)


def quiet(_msg):
    pass


def test_hyperband_rungs_are_steps_of_the_full_run():
    assert hyperband_rungs(90, list(range(0, 91, 10))) == [10, 30, 90]
    assert hyperband_rungs(100, list(range(0, 101, 10))) == [10, 30, 100]  # 11.1 and 33.3 snapped down
    assert hyperband_rungs(100, [0, 50, 100]) == [100]  # no eval step early enough: full runs only
    assert ETA == 3


def test_hyperband_promotes_by_resuming_and_holds_the_step_budget(tmp_path):
    obj = Recording()
    r = sampler_search(spec_for(), tmp_path, None, "hyperband", budget_steps=700, confirm=1, objective=obj,
                       fail_loss=50.0, log=quiet)
    doc = json.loads((tmp_path / "search.json").read_text())
    # Bracket 0 (9 points to step 10, 3 to 30, 1 to 90) costs 90 + 60 + 60 = 210 steps; bracket 1
    # (5 points to 30, 1 to 90) 150 + 60; bracket 2 (3 points to 90) 270, but 700 - 90 set aside for
    # the re-evaluation leaves 190: it is shrunk to 2 points (180). Then not one more point fits.
    assert doc["hyperband"]["rungs"] == [10, 30, 90]
    assert r.evaluations == 9 + 5 + 2 == len(doc["trials"])
    assert r.compute_steps == 600 + 90 == doc["compute"]["steps"] <= 700
    assert doc["compute"]["confirm_steps"] == 90 and doc["budget"] == {"evaluations": None, "steps": 700}
    stopped = [t for t in r.trials if t.stopped_at is not None]
    assert sorted(t.stopped_at for t in stopped) == [10] * 6 + [30] * 2 + [30] * 4
    # A promoted point continues the same run: its stops rise, and it costs its last stop, not their sum.
    stops: dict[str, list[int]] = {}
    for key, stop, seeds in obj.calls:
        if seeds is None:
            stops.setdefault(key, []).append(stop)
    for t in r.trials:
        seen = stops[point_key(t.point)]
        assert seen == sorted(seen) and t.steps == seen[-1] == (t.stopped_at or 90)
    # Every stopped point lost to a promoted one of its bracket at its rung.
    ts = {t.number: t for t in optuna.load_study(study_name="rlrs-hyperband",
                                                 storage=f"sqlite:///{tmp_path / 'study.db'}").get_trials()}
    assert any(t.error for t in stopped)  # a point past base_lr 0.05 fails: it is stopped, never promoted
    for t in (t for t in stopped if t.loss is not None):
        same = [u for u in ts.values() if u.user_attrs["bracket"] == ts[t.number].user_attrs["bracket"]]
        better = [u for u in same if u.number != t.number and t.stopped_at in u.intermediate_values
                  and u.user_attrs.get("stopped_at", 10**9) > t.stopped_at]
        assert better and all(u.intermediate_values[t.stopped_at] <= t.loss for u in better)
    assert r.trials[0].point == dict(spec_for().start())  # the start point is the first trial
    assert r.best_loss == min(t.loss for t in r.trials if t.stopped_at is None and t.loss is not None)


class Reporting(Recording):
    """As a --command script's objective: it reports at steps of its own choosing (``every``), which
    rlrs learns only from a run (``eval_at`` is empty, as a command's is)."""

    def __init__(self, every: int, total=90):
        super().__init__(total)
        self.reports, self.eval_at = list(range(0, total + 1, every)), []

    def run(self, points, stop_at, seeds=None):
        self.eval_at = self.reports
        try:
            return super().run(points, stop_at, seeds)
        finally:
            self.eval_at = []


def test_hyperband_on_a_command_sets_its_rungs_where_the_script_reports(tmp_path):
    obj, lines = Reporting(every=10), []
    r = sampler_search(spec_for(), tmp_path, None, "hyperband", budget_steps=700, confirm=1, objective=obj,
                       fail_loss=50.0, log=lines.append)
    doc = json.loads((tmp_path / "search.json").read_text())
    # The start point first, trained to the end (90 steps): its reports at 0, 10, ..., 90 give the
    # rungs 10, 30, 90. Then bracket 0 (210 steps) and bracket 1 (210); 700 - 90 set aside - 90 -
    # 420 leaves 100: one point of bracket 2 (90). Each bracket stops points at its rungs.
    assert obj.calls[0] == (point_key(dict(spec_for().start())), 90, None)
    assert r.trials[0].point == dict(spec_for().start()) and r.trials[0].stopped_at is None
    assert doc["hyperband"]["rungs"] == [10, 30, 90]
    assert "hyperband: rungs at steps 10, 30, 90 (where the script reports)" in lines
    assert sorted(t.stopped_at for t in r.trials if t.stopped_at is not None) == [10] * 6 + [30] * 2 + [30] * 4
    assert r.evaluations == 1 + 9 + 5 + 1 and r.compute_steps == 90 + 210 + 210 + 90 + 90 <= 700
    # A rerun with a larger budget reads the rungs from the study: the start point is not trained again.
    obj2 = Reporting(every=10)
    sampler_search(spec_for(), tmp_path, None, "hyperband", budget_steps=1000, confirm=1, objective=obj2,
                   fail_loss=50.0, log=quiet)
    assert obj2.calls and obj2.calls[0][1] == 10  # straight to a bracket's first rung


def test_hyperband_on_a_command_that_reports_only_late_says_it_is_not_hyperband(tmp_path):
    lines = []
    r = sampler_search(spec_for(), tmp_path, None, "hyperband", budget_steps=700, confirm=1, objective=Reporting(45),
                       fail_loss=50.0, log=lines.append)
    assert json.loads((tmp_path / "search.json").read_text())["hyperband"]["rungs"] == [90]
    assert any("every point is trained to the end: this is TPE with full runs, not Hyperband" in s for s in lines)
    assert all(t.stopped_at is None for t in r.trials) and r.compute_steps <= 700


def test_a_sampler_on_a_command_of_unknown_length_names_steps(tmp_path):
    spec = TuneSpec.for_command("true", "paper-dense", params=["plan.base_lr"])
    with pytest.raises(ConfigError, match=r"--steps: a --command run of unknown length; give --steps N .*Hyperband"):
        sampler_search(spec, tmp_path / "hb", None, "hyperband", budget_steps=900)
    with pytest.raises(ConfigError, match=r"--steps: .* which --budget-steps counts steps with"):
        sampler_search(spec, tmp_path / "gp", None, "gp", budget_steps=900)


def test_gp_sampler_searches_log_lambda_from_the_start_point(tmp_path, monkeypatch):
    asked = []
    real = optuna.samplers.GPSampler.sample_relative
    monkeypatch.setattr(optuna.samplers.GPSampler, "sample_relative",
                        lambda self, *a: asked.append(1) or real(self, *a))
    spec = spec_for()
    r = sampler_search(spec, tmp_path, 12, "gp", confirm=2, fail_loss=50.0, log=quiet)
    space = search_space(spec)
    assert r.evaluations == 12 and r.trials[0].point == dict(spec.start())
    for t in r.trials:
        assert all(space[k][0] <= v <= space[k][1] for k, v in t.point.items())
    assert r.best_loss < r.start_loss
    assert r.compute_steps == 12 * 90 + 2 * 90  # the re-evaluation's steps are counted
    assert len(asked) == 11  # every trial after the start point asked the GP


def test_the_choice_is_the_best_mean_over_new_seeds_not_the_luckiest_run(tmp_path):
    lucky = {"plan.base_lr": 0.003}

    class Noisy(SyntheticObjective):
        """Seed 0 of the start point is lucky (3 below its loss); every other seed is not."""

        def run(self, points, stop_at, seeds=None):
            out = super().run(points, stop_at, seeds)
            for p, part in zip(points, out):
                if seeds is None and math.isclose(p["plan.base_lr"], lucky["plan.base_lr"]):
                    part.curve = {s: v - 3.0 for s, v in part.curve.items()}
            return out

    spec = spec_for(params=["plan.base_lr"])
    assert dict(spec.start()) == lucky
    r0 = sampler_search(spec, tmp_path / "single", 8, "tpe", confirm=0, objective=Noisy(curve, 90),
                        fail_loss=50.0, log=quiet)
    assert r0.best == lucky and r0.confirmations == []  # the lowest single run: the lucky one
    r = sampler_search(spec, tmp_path / "mean", 8, "tpe", confirm=3, objective=Noisy(curve, 90),
                       fail_loss=50.0, log=quiet)
    assert [c.number for c in r.confirmations][0] == 0  # the lucky start is re-evaluated first ...
    assert r.best != lucky  # ... and loses on the mean
    honest = {c.number: c for c in r.confirmations}[0]
    assert honest.loss == pytest.approx(honest.search_loss + 1.5) and honest.seeds == 2
    assert r.best_loss == min(c.loss for c in r.confirmations)
    doc = json.loads((tmp_path / "mean" / "search.json").read_text())
    assert "mean eval loss over 2 seeds" in doc["choice"]["rule"] and len(doc["choice"]["confirmed"]) == 3
    assert Plan.load(tmp_path / "mean" / "tuned.toml").base_lr == pytest.approx(r.best["plan.base_lr"])


def test_a_rerun_with_a_larger_budget_does_not_re_evaluate_again(tmp_path):
    spec = spec_for(params=PARAMS[:2])
    first = Recording()
    sampler_search(spec, tmp_path, 5, "tpe", confirm=2, objective=first, fail_loss=50.0, log=quiet)
    assert sum(s is not None for _, _, s in first.calls) == 2
    again = Recording()
    r = sampler_search(spec, tmp_path, 5, "tpe", confirm=2, objective=again, fail_loss=50.0, log=quiet)
    assert again.calls == [] and r.compute_steps == 5 * 90 + 2 * 90  # read back, neither trained nor lost


def test_budgets_are_checked_with_the_fix(tmp_path):
    spec = spec_for()
    with pytest.raises(ConfigError, match=r"budget: give --budget N \(evaluations\), --budget-steps N"):
        sampler_search(spec, tmp_path / "a", None, "gp")
    with pytest.raises(ConfigError, match=r"budget_steps: 200 steps do not cover .* give at least --budget-steps 360"):
        sampler_search(spec, tmp_path / "b", None, "hyperband", budget_steps=200, confirm=3)
    with pytest.raises(ConfigError, match=r"confirm: an integer >= 0, got -1"):
        sampler_search(spec, tmp_path / "c", 4, "tpe", confirm=-1)
    with pytest.raises(ConfigError, match="sampler: 'hyperbands' is unknown; did you mean 'hyperband'"):
        sampler_search(spec, tmp_path / "d", 4, "hyperbands")


def test_a_tpe_step_budget_stops_before_exceeding(tmp_path):
    r = sampler_search(spec_for(), tmp_path, None, "tpe", budget_steps=1000, confirm=2, objective=Recording(),
                       fail_loss=50.0, log=quiet)
    assert r.evaluations == (1000 - 2 * 90) // 90 and r.compute_steps <= 1000


@pytest.mark.parametrize("sampler", ["gp", "hyperband"])
def test_a_search_starts_from_any_plan_file(tmp_path, sampler):
    from rlrs import presets

    start = presets.get("paper-moe")
    import dataclasses

    plan = dataclasses.replace(start, base_lr=0.01)
    plan.save(tmp_path / "auto.toml")
    spec = TuneSpec.create("tiny-moe", str(tmp_path / "auto.toml"), steps=90, params=PARAMS,
                           objective=f"{__name__}:curve")
    r = sampler_search(spec, tmp_path / "out", None, sampler, budget_steps=600, confirm=1, objective=Recording(),
                       fail_loss=50.0, log=quiet)
    assert r.trials[0].point["plan.base_lr"] == pytest.approx(0.01)
    assert search_space(spec)["plan.base_lr"] == pytest.approx((0.01 / 25, 0.01 * 25))


def test_a_killed_hyperband_reruns_its_bracket_on_the_same_points(tmp_path):
    class Killed(Recording):
        def run(self, points, stop_at, seeds=None):
            if stop_at == 30:
                raise KeyboardInterrupt
            return super().run(points, stop_at, seeds)

    spec = spec_for()
    with pytest.raises(KeyboardInterrupt):
        sampler_search(spec, tmp_path, None, "hyperband", budget_steps=300, confirm=1, objective=Killed(),
                       fail_loss=50.0, log=quiet)
    study = optuna.load_study(study_name="rlrs-hyperband", storage=f"sqlite:///{tmp_path / 'study.db'}")
    left = {point_key(t.params) for t in study.get_trials() if t.state.name == "RUNNING"}
    assert len(left) == 9
    lines = []
    obj = Recording()
    r = sampler_search(spec, tmp_path, None, "hyperband", budget_steps=300, confirm=1, objective=obj,
                       fail_loss=50.0, log=lines.append)
    assert any("bracket 0 was left unfinished" in s for s in lines)
    assert {point_key(t.point) for t in r.trials} == left and r.evaluations == 9
    assert r.compute_steps == 210 + 90
    study = optuna.load_study(study_name="rlrs-hyperband", storage=f"sqlite:///{tmp_path / 'study.db'}")
    dropped = [t for t in study.get_trials() if t.state.name == "FAIL"]
    assert len(dropped) == 9 and all(t.user_attrs["abandoned"] == "interrupted: its bracket runs again" for t in dropped)


def test_the_local_search_holds_a_step_budget_and_refuses_confirm(tmp_path, capsys):
    from rlrs.cli import main

    args = ["tune", "--model", "tiny-moe", "--steps", "90", "--params", ",".join(PARAMS), "--budget", "40",
            "--objective", f"{__name__}:curve", "--workers", "1", "--poll", "0.05", "--out", str(tmp_path)]
    assert main([*args, "--confirm", "2"]) == 2
    assert "--confirm: an option of --sampler" in capsys.readouterr().err
    assert main([*args, "--budget-steps", "50"]) == 2
    assert "budget_steps: 50 steps do not cover one point trained to the end (90)" in capsys.readouterr().err
    assert main([*args, "--budget-steps", "700"]) == 0
    doc = json.loads((tmp_path / "search.json").read_text())
    # 7 runs of 90 steps fit in 700; the 40 evaluations would not.
    assert doc["stopped"] == "budget" and doc["compute"]["steps"] == 630
    assert doc["budget"] == {"evaluations": 40, "steps": 700}
    assert main(["tune", "--worker", "--out", str(tmp_path), "--budget-steps", "900"]) == 2
    assert "--budget-steps" in capsys.readouterr().err


def test_hyperband_on_real_training_resumes_promoted_runs(tmp_path, tiny_sets, capsys):
    """tiny-moe, 9 steps, rungs at steps 1, 3 and 9: one bracket of 9 points within the budget."""
    from rlrs.cli import main
    from rlrs.engine import run_dir
    from rlrs.runlog import read_log
    from rlrs.tune import TrainingObjective

    class Watched(TrainingObjective):
        """Training, with a look at each run's log after every call: a run that resumed kept its
        lines and appended to it; one that started over wrote them again (its log is removed), and
        its lines differ at least in their measured ``tokens_per_s``."""

        logs: dict = {}

        def run(self, points, stop_at, seeds=None):
            parts = super().run(points, stop_at, seeds)
            for p in points if seeds is None else ():  # the search's own runs, not the re-evaluation
                log = run_dir(self.runs_dir, self.spec.run_spec(p, 0)) / "metrics.jsonl"
                self.logs.setdefault(log, []).append([json.loads(line) for line in log.read_text().splitlines()])
            return parts

    sets = {**tiny_sets, "train.eval_batches": 1, "train.eval_interval": 1 / 9}
    spec = TuneSpec.create("tiny-moe", sets=sets, steps=9, params=["plan.base_lr", "plan.router.start"])
    obj = Watched(spec, tmp_path / "api" / "runs")
    try:
        r = sampler_search(spec, tmp_path / "api", None, "hyperband", budget_steps=30, confirm=1, objective=obj,
                           log=quiet)
    finally:
        obj.close()
    promoted = [seen for seen in obj.logs.values() if len(seen) > 1]
    assert len(promoted) == 3  # the 3 points continued to step 3 (one of them then to 9)
    for seen in promoted:
        for before, after in zip(seen, seen[1:]):
            assert after[:len(before)] == before and len(after) > len(before)
    assert r.compute_steps == 30 and r.rerun_steps == 0

    out = tmp_path / "hb"
    args = ["tune", "--model", "tiny-moe", "--steps", "9", "--params", "plan.base_lr,plan.router.start",
            "--budget-steps", "30", "--confirm", "1", "--sampler", "hyperband", "--workers", "1", "--out", str(out),
            *[f"--set={k}={json.dumps(v)}" for k, v in sets.items()]]
    assert main(args) == 0, capsys.readouterr()
    doc = json.loads((out / "search.json").read_text())
    assert doc["hyperband"]["rungs"] == [1, 3, 9]
    # 9 points to step 1, 3 continued to 3, 1 to 9: 9 + 6 + 6 = 21 steps, and 9 to re-evaluate it.
    assert doc["compute"] == {"steps": 30, "rerun_steps": 0, "confirm_steps": 9}
    assert len(doc["trials"]) == 9 and [t["stopped_at"] for t in doc["trials"]].count(None) == 1
    for t in doc["trials"]:
        run = run_dir(out / "runs", spec.run_spec(t["point"], 0))
        # Each step trained once: a promoted run continued from its checkpoint at the rung.
        assert [r.step for r in read_log(run).train] == list(range(1, (t["stopped_at"] or 9) + 1))
        assert not (run / "checkpoints").exists()  # recorded: nothing will resume it
    assert Plan.load(out / "tuned.toml").base_lr == pytest.approx(doc["best"]["plan.base_lr"])
    assert "choice: the lowest mean eval loss over 2 seeds" in capsys.readouterr().out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


@pytest.mark.parametrize("sampler", ["tpe", "hyperband"])
def test_a_sampler_on_a_command_tells_a_failed_point_the_highest_finished_loss(tmp_path, sampler):
    # A --command run has no vocabulary, so no chance-level loss: a failed point is told the
    # highest loss any point finished with (it used to refuse --command outright).
    mod = tmp_path / "mods"
    mod.mkdir()
    (mod / "cmdsynth.py").write_text(
        "import math\n"
        "def curve(point, progress):\n"
        "    if point['plan.base_lr'] > 0.004:\n"
        "        raise FloatingPointError('diverged')\n"
        "    return 1.0 + math.log(point['plan.base_lr'] / 0.003) ** 2 + (1.0 - progress)\n")
    sys.path.insert(0, str(mod))
    try:
        spec = dataclasses.replace(
            TuneSpec.for_command("true", "paper-dense", steps=90, params=["plan.base_lr", "plan.embedding.start"]),
            objective="cmdsynth:curve")
        r = sampler_search(spec, tmp_path / "out", 20, sampler, confirm=0, log=lambda s: None)
    finally:
        sys.path.remove(str(mod))
    finished = [t.loss for t in r.trials if t.loss is not None and t.stopped_at is None]
    failed = [t for t in r.trials if t.error]
    assert failed, "half the log box (paper-dense: 0.002 / 25 to 0.002 x 25) lies past 0.004: some point must fail"
    study = optuna.load_study(study_name=f"rlrs-{sampler}", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if "error" in t.user_attrs:
            assert math.isfinite(t.value) and t.value <= max(finished) and t.value >= min(finished)


def test_a_small_budget_leaves_optunas_random_start_up_so_the_model_proposes(tmp_path):
    # With Optuna's 10 random start-up points, a GP or TPE search of 10 evaluations or fewer was a
    # random search: both samplers draw their start-up points from RandomSampler(seed), so they
    # asked the same points. Now the start-up is a third of the budget and the model proposes after.
    spec = spec_for()
    gp = sampler_search(spec, tmp_path / "gp", 9, "gp", confirm=0, fail_loss=50.0, log=quiet)
    tpe = sampler_search(spec, tmp_path / "tpe", 9, "tpe", confirm=0, fail_loss=50.0, log=quiet)
    assert [t.point for t in gp.trials[:3]] == [t.point for t in tpe.trials[:3]]  # the shared random start-up
    assert all(a.point != b.point for a, b in zip(gp.trials[3:], tpe.trials[3:]))  # then each model's own
    assert [startup_trials(n) for n in (9, 30, 100, 2)] == [3, 10, 10, 2]
