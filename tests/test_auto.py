"""rlrs auto: the two rules on synthetic measurements, the probe hook of RelativeLR, and the
command end to end on a tiny model size, a tiny script and a tiny Hugging Face model."""

import json
import math
import sys
from dataclasses import replace as dataclasses_replace
from pathlib import Path

import pytest
import torch

import rlrs
from rlrs import cli, presets
from rlrs.experiments import auto as auto_module
from rlrs.experiments.auto import (AutoResult, Choice, auto, fit_log_parabola, load, load_result, measured_ratios,
                                   markdown, render, save, scaled_plan, sensitivity_factors, update_size_factors)
from rlrs.config import ConfigError, from_dict
from rlrs.optim import MEASURE_ENV
from rlrs.plan import ComponentPlan
from rlrs.targets import CommandTarget

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "auto_train.py"


def _quiet(_line):
    pass


# --- update-size: the rule -------------------------------------------------------------------------


@pytest.mark.parametrize("start", ["uniform-moe", "paper-moe", "uniform-dense"])
@pytest.mark.parametrize("r", [3e-3, 0.1234567, 7.77e-5])
def test_equal_update_ratios_give_back_the_start_plan_exactly(start, r):
    plan = presets.get(start)
    comps = ["embedding", "unembedding", "attention", "feedforward", "router", "experts", "other"]
    choices = update_size_factors({c: r for c in comps})
    assert [c.factor for c in choices] == [1.0] * len(comps)
    derived, filled = scaled_plan(plan, choices)
    assert derived == plan
    assert [(c.start, c.end) for c in filled] == [(plan.component(c).start, plan.component(c).end) for c in comps]


def test_update_size_scales_each_component_to_the_hidden_layers_geometric_mean():
    # attention 1e-3, feedforward 4e-3: reference 2e-3.
    ratios = {"embedding": 1e-4, "unembedding": 4e-3, "attention": 1e-3, "feedforward": 4e-3, "router": 1e-1,
              "other": 1e-6}
    got = {c.component: c for c in update_size_factors(ratios, ["embedding", "unembedding", "attention"])}
    assert got["embedding"].factor == 16.0 and "clipped from 20" in got["embedding"].note
    assert got["unembedding"].factor == 0.5
    assert got["attention"].factor == 2.0 and got["feedforward"].factor == 0.5
    assert got["router"].factor == 1.0 and got["other"].factor == 1.0  # kept: no rule
    assert got["embedding"].ratio == 1e-4
    low = {c.component: c.factor for c in update_size_factors({"attention": 1e-3, "unembedding": 1.0})}
    assert low["unembedding"] == 1 / 16


def test_update_size_scales_the_whole_schedule_keeping_the_start_plans_end_ratio():
    start = presets.get("paper-moe")
    derived, filled = scaled_plan(start, update_size_factors({"attention": 1e-3, "experts": 1e-3, "unembedding": 4e-3}))
    un = start.unembedding
    assert derived.unembedding.start == pytest.approx(un.start / 4) and derived.unembedding.end == pytest.approx(un.end / 4)
    assert derived.base_lr == start.base_lr and derived.final_fraction == start.final_fraction
    assert derived.embedding == start.embedding  # not measured: unchanged
    const = start.__class__(attention=ComponentPlan(2.0, 1.0, "constant"))
    held, _ = scaled_plan(const, [Choice("attention", 3.0)])
    assert (held.attention.start, held.attention.end) == (6.0, 1.0)  # constant holds λ_start


@pytest.mark.parametrize("ratios, expected, words", [
    ({"attention": 1e-3, "feedforward": 1e-3}, ["embedding"], "measured none for embedding"),
    ({"attention": 1e-3, "embedding": math.nan}, [], "embedding's ‖ΔW‖/‖W‖ is nan"),
    ({"attention": 1e-3, "embedding": 0.0}, [], "embedding's ‖ΔW‖/‖W‖ is 0.0"),
    ({"embedding": 1e-3, "router": 1e-3}, [], "no hidden-layer component"),
])
def test_update_size_refuses_what_it_cannot_derive_from(ratios, expected, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        update_size_factors(ratios, expected)


# --- sensitivity: the rule on a synthetic loss -------------------------------------------------------


def _synthetic(best: dict[str, float], weight: dict[str, float]):
    """A separable loss with its minimum at λ_c = best[c]: Σ_c w_c (log λ_c - log best_c)²."""
    def loss(factors: dict[str, float]) -> float:
        return 3.0 + sum(w * (math.log(factors.get(c, 1.0)) - math.log(best[c])) ** 2 for c, w in weight.items())
    return loss


def _probe(loss, components):
    base = loss({})
    return base, {c: (loss({c: 0.25}), loss({c: 4.0})) for c in components}


def test_sensitivity_recovers_a_known_minimum_and_stops_at_the_probed_ends():
    best = {"embedding": 3.0, "unembedding": 0.3, "attention": 1.0, "feedforward": 1.7, "router": 40.0,
            "experts": 1 / 6}
    loss = _synthetic(best, {c: 0.01 * (i + 1) for i, c in enumerate(best)})
    base, losses = _probe(loss, best)
    got = {c.component: c for c in sensitivity_factors(base, losses)}
    for c in ("embedding", "unembedding", "attention", "feedforward"):
        assert got[c].factor == pytest.approx(best[c], rel=5e-3), c  # exact up to the 3 digits kept
        assert got[c].note == ""
    # Minima beyond what was probed (× 40, × 1/6) give the probed end, and say where the vertex was.
    assert got["router"].factor == 4.0 and got["router"].note.startswith("minimum beyond × 4 (at × 40)")
    assert got["experts"].factor == 0.25 and got["experts"].note.startswith("minimum beyond × 1/4 (at × 0.167)")
    assert got["embedding"].loss_low == losses["embedding"][0]
    derived, _ = scaled_plan(presets.get("uniform-moe"), list(got.values()))
    assert loss({c: derived.component(c).start for c in best}) < base


def test_sensitivity_of_a_flat_loss_gives_back_the_start_plan_exactly():
    start = presets.get("paper-dense")
    choices = sensitivity_factors(2.5, {c: (2.5, 2.5) for c in ("embedding", "attention", "feedforward")})
    assert [c.factor for c in choices] == [1.0, 1.0, 1.0]
    assert scaled_plan(start, choices)[0] == start


def test_sensitivity_not_convex_or_diverged_takes_the_best_measured():
    assert fit_log_parabola(3.0, 2.0, 2.5) == (1.26, "")  # convex: its vertex at log f = log(4) / 6
    f, note = fit_log_parabola(2.0, 2.5, 3.5)  # convex, its vertex at 1/8: beyond what was probed
    assert (f, note) == (0.25, "minimum beyond × 1/4 (at × 0.125): took × 1/4, the end of what was probed")
    f, note = fit_log_parabola(2.0, 3.0, 3.5)  # concave, lowest at 1/4
    assert (f, note) == (0.25, "not convex: best of the three")
    assert fit_log_parabola(2.0, 2.0, 2.0) == (1.0, "not convex: best of the three")  # a tie prefers 1
    f, note = fit_log_parabola(2.4, 2.5, None)
    assert (f, note) == (0.25, "× 4 diverged: best of the others")
    with pytest.raises(ConfigError, match="diverged at the start plan"):
        sensitivity_factors(math.nan, {"embedding": (1.0, 1.0)})


# --- the probe hook of RelativeLR ----------------------------------------------------------------------


def _train(steps=6):
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"embed": torch.nn.Embedding(16, 8), "mlp": torch.nn.Linear(8, 8),
                                 "attn": torch.nn.Linear(8, 8)})
    plan = presets.get("uniform-dense")
    groups = rlrs.param_groups(model, plan)
    opt = torch.optim.AdamW(groups)
    sched = rlrs.RelativeLR(opt, plan, steps)
    for step in range(steps):
        h = model["embed"](torch.arange(16) % (step + 3))
        (model["mlp"](h) + model["attn"](h)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    return [p.detach().clone() for p in model.parameters()], groups, sched


def test_relative_lr_measures_update_sizes_only_when_asked_and_trains_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("RLRS_RUN_DIR", str(tmp_path))
    plain, groups, sched = _train()
    assert sched._probe is None and len(groups) == 2  # merged as always (decayed or not)
    assert not (tmp_path / "metrics.jsonl").exists()
    monkeypatch.setenv(MEASURE_ENV, "2")
    measured, groups, sched = _train()
    assert all(torch.equal(a, b) for a, b in zip(plain, measured))  # per-component groups, the same LRs
    assert all(len(g["components"]) == 1 for g in groups)
    assert {g["components"][0] for g in groups} == {"embedding", "attention", "feedforward"}
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 3, 5]  # the update after every 2nd step
    assert {k for k in recs[0] if k.startswith("update_ratio/")} == {"update_ratio/embedding",
                                                                    "update_ratio/attention",
                                                                    "update_ratio/feedforward"}
    ratios = measured_ratios(tmp_path, after=0)
    assert set(ratios) == {"embedding", "attention", "feedforward"} and all(r > 0 for r in ratios.values())
    monkeypatch.setenv(MEASURE_ENV, "x")
    with pytest.raises(ConfigError, match=MEASURE_ENV):
        _train()


# --- end to end ---------------------------------------------------------------------------------------


def _preset_argv(corpus_dir, out, *extra):
    sets = {"data.corpus": str(corpus_dir / "docs"), "data.cache_dir": str(corpus_dir / "cache"),
            "data.val_fraction": 0.2, "train.threads": 1, "train.eval_batches": 2}
    argv = ["auto", "--model", "tiny-moe", "--steps", "100", "--out", str(out), "--workers", "1"]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    return argv + list(extra)


def test_auto_update_size_on_a_model_size(corpus_dir, tmp_path, capsys):
    out = tmp_path / "auto"
    assert cli.main(_preset_argv(corpus_dir, out)) == 0
    text = capsys.readouterr().out
    assert "probe cost: 5 training steps (1 run of 5 steps; 5 of them trained by this call)" in text
    assert "rlrs lr-grid --plans" in text and "kept (no rule for it)" in text
    res = load_result(out / "auto-update-size.json")
    assert isinstance(res, AutoResult) and res.method == "update-size" and res.cost_steps == 5
    plan = presets.resolve(res.plan_file)  # loadable by --plan / --plans
    assert plan == res.plan and plan.base_lr == presets.get("uniform-moe").base_lr
    # The plan is the rule applied to what the trainer logged over steps 2..5 (after the 1-step warmup).
    (run,) = (out / "runs").iterdir()
    ratios = measured_ratios(run, after=1, upto=5)
    assert set(ratios) >= {"embedding", "unembedding", "attention", "router", "experts"}
    assert scaled_plan(presets.get("uniform-moe"), update_size_factors(ratios))[0] == plan
    assert plan != presets.get("uniform-moe")
    # Again: the probe run is reused, nothing trains.
    assert cli.main(_preset_argv(corpus_dir, out)) == 0
    assert "0 of them trained by this call" in capsys.readouterr().out
    assert load_result(out / "auto-update-size.json").plan == plan


def test_auto_sensitivity_on_a_model_size(corpus_dir, tmp_path, capsys):
    out = tmp_path / "auto"
    assert cli.main(_preset_argv(corpus_dir, out, "--method", "sensitivity", "--probe-steps", "4")) == 0
    text = capsys.readouterr().out
    assert "probe cost: 44 training steps (11 runs of 4 steps" in text
    res = load_result(out / "auto-sensitivity.json")
    assert [c.component for c in res.choices] == ["embedding", "unembedding", "attention", "router", "experts"]
    assert all(c.loss_low is not None and c.loss_high is not None for c in res.choices)
    expect = sensitivity_factors(res.base_loss, {c.component: (c.loss_low, c.loss_high) for c in res.choices})
    assert scaled_plan(presets.get("uniform-moe"), expect)[0] == res.plan == presets.resolve(res.plan_file)
    assert from_dict(AutoResult, json.loads((out / "auto-sensitivity.json").read_text())) == res


def test_auto_refuses_a_probe_that_diverged(corpus_dir, tmp_path, capsys):
    argv = _preset_argv(corpus_dir, tmp_path / "auto", "--set", "plan.base_lr=1e4")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "the probe run diverged" in err and "lower η_base" in err


@pytest.fixture
def worktree_rlrs(monkeypatch):
    """Commands import this checkout's rlrs (the one under test), not an installed copy."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


def _command(mode):
    return f"{sys.executable} {SCRIPT} {mode}"


def test_auto_update_size_on_a_command_script(tmp_path, worktree_rlrs):
    res = auto(CommandTarget(_command("rlrs"), steps=40), "update-size", tmp_path / "auto", probe=0.25, workers=1,
               log=_quiet)
    assert [c.component for c in res.choices] == ["embedding", "unembedding", "attention", "feedforward", "other"]
    assert all(c.ratio > 0 for c in res.choices) and res.probe_steps == 10 and res.cost_steps >= 10
    assert presets.resolve(res.plan_file) == res.plan


def test_auto_sensitivity_on_a_command_script_finds_its_known_minimum(tmp_path, worktree_rlrs):
    # fake_train.py's loss is quadratic in log λ_start(embedding), lowest at 10, and ignores the rest;
    # from λ_start 5 the probes (1.25, 5, 20) bracket it: the vertex lies at × 2.
    fake = f"{sys.executable} {ROOT / 'tests' / 'scripts' / 'fake_train.py'} ok"
    res = auto(CommandTarget(fake, steps=100), "sensitivity", tmp_path / "auto", probe_steps=5, workers=2,
               sets={"plan.embedding.start": 5.0}, log=_quiet)
    assert res.runs == 9 and res.cost_steps == 45 and res.probe_steps == 5
    got = {c.component: c for c in res.choices}
    assert got["embedding"].factor == 2.0 and res.plan.embedding.start == 10.0
    assert all(got[c].factor == 1.0 for c in ("unembedding", "attention", "feedforward"))  # flat: kept


def test_auto_on_a_hugging_face_model(tmp_path, worktree_rlrs):
    pytest.importorskip("transformers")
    res = auto(CommandTarget(_command("hf"), steps=40), "update-size", tmp_path / "auto", probe=0.25, workers=1,
               log=_quiet)
    assert {c.component for c in res.choices} >= {"embedding", "unembedding", "attention", "feedforward"}
    assert all(c.ratio > 0 for c in res.choices)


def test_auto_names_the_fix_for_a_script_without_relative_lr_or_steps(tmp_path, worktree_rlrs):
    with pytest.raises(ConfigError, match=r"never reported update sizes.*rlrs\.RelativeLR"):
        auto(CommandTarget(_command("own-scheduler"), steps=40), out=tmp_path / "a", probe=0.25, workers=1, log=_quiet)
    with pytest.raises(ConfigError, match="--steps: rlrs auto sizes its probe"):
        auto(CommandTarget(_command("rlrs")), out=tmp_path / "b", workers=1, log=_quiet)
    with pytest.raises(ConfigError, match="the probe run diverged"):
        auto(CommandTarget(_command("nan"), steps=40), out=tmp_path / "c", probe=0.25, workers=1, log=_quiet)
    with pytest.raises(ConfigError, match="probe: the fraction"):
        auto("tiny-moe", probe=1.5, out=tmp_path / "d", log=_quiet)
    with pytest.raises(ConfigError, match="probe_steps: applies to --method sensitivity"):
        auto("tiny-moe", probe_steps=10, out=tmp_path / "f", log=_quiet)
    with pytest.raises(ConfigError, match="train.seed: rlrs auto sets it"):
        auto("tiny-moe", sets={"train.seed": 3}, out=tmp_path / "g", log=_quiet)
    with pytest.raises(ConfigError, match="method: 'sensitive' is unknown"):
        auto("tiny-moe", "sensitive", out=tmp_path / "e", log=_quiet)


def test_measured_ratios_take_the_median_after_the_warmup_and_refuse_nan_or_nothing(tmp_path):
    from rlrs.runlog import RunLog, TrainRecord

    with RunLog(tmp_path) as log:
        for step, att, emb in [(1, 9.0, 1.0), (2, 1.0, 2.0), (3, 3.0, math.nan), (4, 2.0, 4.0), (9, 7.0, 1.0)]:
            log.append(TrainRecord(step, 1.0, metrics={"update_ratio/attention": att, "update_ratio/embedding": emb}))
    ratios = measured_ratios(tmp_path, after=1, upto=4)  # steps 2..4: the warmup's and step 9 left out
    assert ratios["attention"] == 2.0 and math.isnan(ratios["embedding"])
    with pytest.raises(ConfigError, match=r"embedding's ‖ΔW‖/‖W‖ is nan"):
        update_size_factors(ratios)
    with pytest.raises(ConfigError, match="no measurement after the warmup"):
        measured_ratios(tmp_path, after=4, upto=8)
    (tmp_path / "empty").mkdir()
    assert measured_ratios(tmp_path / "empty", after=0) == {}  # measured nothing: the caller names the fix


# --- the experiment's shape: run, save, load, render ---------------------------------------------------


def test_run_writes_only_runs_and_save_load_render_round_trip(tmp_path, worktree_rlrs):
    fake = f"{sys.executable} {ROOT / 'tests' / 'scripts' / 'fake_train.py'} ok"
    out = tmp_path / "auto"
    res = auto_module.run(CommandTarget(fake, steps=100), "sensitivity", out, probe_steps=5, workers=2,
                          sets={"plan.embedding.start": 5.0}, log=_quiet)
    assert sorted(p.name for p in out.iterdir()) == ["runs"]  # the probes only
    assert res.plan_file == str(out / "auto-sensitivity.toml")
    record = save(res, out)
    assert record == out / "auto-sensitivity.json"
    assert load(record) == res and load(out) == res and load_result(record) == res
    assert presets.resolve(res.plan_file) == res.plan  # the plan file save wrote
    (md,) = render(res, out)
    assert md == out / "auto-sensitivity.md"
    text = md.read_text()
    assert text == markdown(load(record))
    assert "\n".join(res.lines()) in text and "embedding" in text and "rlrs lr-grid --plans" in text
    # The one call gives the same files again (the runs reused), with the same plan and table.
    again = auto(CommandTarget(fake, steps=100), "sensitivity", out, probe_steps=5, workers=2,
                 sets={"plan.embedding.start": 5.0}, log=_quiet)
    assert again.plan == res.plan and again.choices == res.choices and again.trained_steps == 0
    assert load(out) == again and md.read_text() == markdown(again)
    # Saved elsewhere, the record names the plan file written beside it.
    moved = load(save(res, tmp_path / "elsewhere"))
    assert moved.plan_file == str(tmp_path / "elsewhere" / "auto-sensitivity.toml")
    assert presets.resolve(moved.plan_file) == res.plan


# Written by rlrs auto before the result had the experiment shape (`rlrs auto --model ladder-xs-dense
# --method update-size`, its choices trimmed to two).
OLD_UPDATE_SIZE_JSON = """{
  "method": "update-size",
  "target": "ladder-xs-dense",
  "start_plan": "uniform-dense",
  "plan": {
    "base_lr": 0.01,
    "final_fraction": 0.06,
    "warmup": 0.01,
    "weight_decay": 0.1,
    "decay_1d": false,
    "independent_wd": false,
    "tied": null,
    "wsd_decay": 0.2,
    "lora_plus": null,
    "width_warmup": null,
    "width_warmup_m": 1.0,
    "depth_decay": null,
    "warmup_from": 0.0,
    "sgdr_first": 0.14285714285714285,
    "sgdr_mult": 2.0,
    "embedding": {
      "start": 1.31,
      "end": 1.31,
      "shape": "cosine",
      "weight_decay": null
    },
    "unembedding": {
      "start": 0.729,
      "end": 0.729,
      "shape": "cosine",
      "weight_decay": null
    },
    "attention": {
      "start": 1.08,
      "end": 1.08,
      "shape": "cosine",
      "weight_decay": null
    },
    "feedforward": {
      "start": 0.927,
      "end": 0.927,
      "shape": "cosine",
      "weight_decay": null
    },
    "router": {
      "start": 1.0,
      "end": 1.0,
      "shape": "cosine",
      "weight_decay": null
    },
    "experts": {
      "start": 1.0,
      "end": 1.0,
      "shape": "cosine",
      "weight_decay": null
    },
    "other": {
      "start": 1.0,
      "end": 1.0,
      "shape": "cosine",
      "weight_decay": null
    }
  },
  "plan_file": "PLAN_FILE",
  "horizon": 322,
  "probe_steps": 16,
  "runs": 1,
  "cost_steps": 16,
  "trained_steps": 16,
  "choices": [
    {
      "component": "embedding",
      "factor": 1.31,
      "start": 1.31,
      "end": 1.31,
      "ratio": 0.04720856465613919,
      "loss_low": null,
      "loss_high": null,
      "note": ""
    },
    {
      "component": "other",
      "factor": 1.0,
      "start": 1.0,
      "end": 1.0,
      "ratio": 0.004904487181926322,
      "loss_low": null,
      "loss_high": null,
      "note": "kept (no rule for it)"
    }
  ],
  "base_loss": null,
  "wall_s": 2.9986802599960356,
  "command": "rlrs auto --model ladder-xs-dense --workers 2 --method update-size --plan uniform-dense --probe 0.05"
}
"""


def test_an_auto_result_of_an_earlier_version_loads_and_saves_byte_identical(tmp_path):
    old = OLD_UPDATE_SIZE_JSON.replace("PLAN_FILE", str(tmp_path / "auto-update-size.toml"))
    (tmp_path / "auto-update-size.json").write_text(old)
    res = load(tmp_path)
    assert (res.method, res.cost_steps, res.runs, res.base_loss) == ("update-size", 16, 1, None)
    assert res.plan.embedding.start == 1.31 and res.plan.attention.start == 1.08
    assert [c.component for c in res.choices] == ["embedding", "other"] and res.choices[0].ratio == 0.04720856465613919
    assert "probe cost: 16 training steps (1 run of 16 steps" in markdown(res)
    assert save(res, tmp_path).read_text() == old  # the layout unchanged, every key benchmarks/ reads in it
    assert presets.resolve(res.plan_file) == res.plan
    moved = save(res, tmp_path / "again")
    assert load(moved) == dataclasses_replace(res, plan_file=str(tmp_path / "again" / "auto-update-size.toml"))


def test_auto_load_names_the_file_and_the_command_that_writes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no auto result here; run `rlrs auto --out DIR` first"):
        load(tmp_path)
    (tmp_path / "auto-update-size.json").write_text("{")
    with pytest.raises(ConfigError, match=r"auto-update-size.json: not an auto-update-size.json written by `rlrs auto`"):
        load(tmp_path)
    (tmp_path / "auto-update-size.json").write_text('{"method": "update-size", "cost": 3}')
    with pytest.raises(ConfigError, match=r"auto_result.cost: unknown key; did you mean 'cost_steps'"):
        load(tmp_path)
    (tmp_path / "auto-sensitivity.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds auto-sensitivity.json and auto-update-size.json; name the file"):
        load(tmp_path)
