"""rlrs width-transfer: variants, drift, the command on tiny widths."""

import dataclasses
import json
from pathlib import Path

import pytest

from rlrs.config import ConfigError
from rlrs.experiments.lr_grid import GridArm, GridPoint, GridRun
from rlrs.experiments.width_transfer import (VARIANTS, WidthPoint, WidthSeries, WidthTransferResult, ladder_position,
                                             load, markdown, render, save, variant_sets, width_transfer, zero_shot)

ROOT = Path(__file__).resolve().parents[1]


def test_each_variant_sets_what_it_names():
    want = {
        "sp": {},
        "sp-iwd": {"plan.independent_wd": True, "plan.weight_decay": 1e-4},
        "mup": {"model.parametrization": "mup", "model.base_width": 32},
        "mup-iwd": {"model.parametrization": "mup", "model.base_width": 32, "plan.independent_wd": True,
                    "plan.weight_decay": 1e-4},
        "sp-warmup": {"plan.independent_wd": True, "plan.weight_decay": 1e-4, "plan.width_warmup": "decay-away",
                      "plan.width_warmup_m": 4.0},
    }
    assert set(want) == set(VARIANTS)
    for v, extra in want.items():
        assert variant_sets(v, 128, 32, 1e-4) == {"model.d_model": 128, **extra}, v
    with pytest.raises(ConfigError, match="variants: 'mup-iwdd' is unknown; did you mean 'mup-iwd'"):
        variant_sets("mup-iwdd", 64, 32, 1e-4)


def test_drift_counts_ladder_steps_and_needs_interior_optima():
    assert [ladder_position(v) for v in (1e-3, 2e-3, 5e-3, 1e-2)] == [-9.0, -8.0, -7.0, -6.0]
    pts = [WidthPoint(32, 5e-3, True, 3.0, ()), WidthPoint(64, 2e-3, True, 2.9, ()), WidthPoint(128, 1e-3, True, 2.8, ())]
    assert WidthSeries("sp", "uniform", (), tuple(pts)).drift == 2.0
    pts[1] = WidthPoint(64, 2e-3, False, 2.9, ())  # at a grid edge: the optimum is not known
    assert WidthSeries("sp", "uniform", (), tuple(pts)).drift is None


def _arm(points: dict[float, dict[int, float | None]]) -> GridArm:
    """A width's grid: η_base -> seed -> final loss (None: that seed diverged)."""
    return GridArm.of([GridPoint.of(lr, [GridRun(seed, "finished" if v is not None else "diverged", v, None,
                                                 Path("runs") / "r", False, 1.0) for seed, v in seeds.items()])
                       for lr, seeds in sorted(points.items())])


def test_zero_shot_gap_is_paired_over_seeds_and_says_why_it_is_missing():
    base = _arm({1e-2: {0: 3.0, 1: 3.0}})
    same = _arm({1e-2: {0: 2.95, 1: 2.85}})
    lower = _arm({5e-3: {0: 2.75, 1: 2.85}, 1e-2: {0: 2.80, 1: 3.00}})
    blew_up = _arm({2e-3: {0: 2.7, 1: 2.7}, 1e-2: {0: 2.9, 1: None}})
    elsewhere = _arm({1e-3: {0: 2.7}, 2e-3: {0: 2.6}})
    zs = zero_shot([base, same, lower, blew_up, elsewhere], [16, 32, 48, 64, 128])
    assert [(z.width, z.base_lr, z.status) for z in zs] == [
        (32, 1e-2, "trained"), (48, 1e-2, "trained"), (64, 1e-2, "diverged"), (128, 1e-2, "not trained")]
    assert (zs[0].gap, zs[0].gap_sd, zs[0].seeds) == (0.0, 0.0, 2)  # the optima coincide
    # Paired by seed: differences 0.05 and 0.15, so the spread is that of (0.05, 0.15), not of the losses.
    assert zs[1].gap == pytest.approx(0.10) and zs[1].gap_sd == pytest.approx(0.0707107, rel=1e-5)
    assert zs[2].gap is None and zs[2].text == "diverged" and zs[3].text == "not trained"
    nothing = _arm({1e-2: {0: None}})
    assert zero_shot([nothing, same], [16, 32]) == ()


def test_width_transfer_on_tiny_widths_writes_results_and_reuses_its_runs(tmp_path, tiny_sets, monkeypatch):
    from rlrs import engine

    sets = {**tiny_sets, "train.steps": 6}
    kw = dict(variants=["sp", "mup-iwd"], plans=["uniform-dense"], grid=[3e-3, 3e-2], seeds=1, extend=0,
              sets=sets, workers=1, log=lambda s: None)
    res = width_transfer("tiny-dense", [32, 64], tmp_path, **kw)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert all(not p["interior"] for s in doc["series"] for p in s["points"])  # two grid values: both edges
    assert [(s["variant"], s["plan"]) for s in doc["series"]] == [("sp", "uniform-dense"), ("mup-iwd", "uniform-dense")]
    assert [p["width"] for p in doc["series"][0]["points"]] == [32, 64] and doc["base_width"] == 32
    assert (tmp_path / "report.md").exists() and (tmp_path / "width_transfer.png").stat().st_size > 0
    zero_shot = doc["series"][0]["zero_shot"]  # the base width's best η_base, tried at width 64
    assert [z["width"] for z in zero_shot] == [64] and zero_shot[0]["base_lr"] == doc["series"][0]["points"][0]["best_base_lr"]
    assert zero_shot[0]["status"] == "trained" and zero_shot[0]["gap"] >= 0 and zero_shot[0]["seeds"] == 1
    assert "Zero-shot" in (tmp_path / "report.md").read_text()
    # Every run was built as its variant says.
    cfgs = [json.loads(p.read_text()) for p in (tmp_path / "mup-iwd" / "w64" / "runs").glob("*/config.json")]
    assert cfgs and all(c["model"]["d_model"] == 64 and c["model"]["parametrization"] == "mup"
                        and c["model"]["base_width"] == 32 and c["plan"]["independent_wd"] for c in cfgs)
    sp_cfgs = [json.loads(p.read_text()) for p in (tmp_path / "sp" / "w32" / "runs").glob("*/config.json")]
    assert sp_cfgs and all(c["model"]["parametrization"] == "sp" and not c["plan"]["independent_wd"] for c in sp_cfgs)
    # A rerun trains nothing again.
    ran = []
    real = engine.Pool.run
    monkeypatch.setattr(engine.Pool, "run", lambda pool, jobs, on_done=None, progress=False:
                        ran.extend(jobs) or real(pool, jobs, on_done=on_done, progress=progress))
    again = width_transfer("tiny-dense", [32, 64], tmp_path, **kw)
    assert ran == []
    assert again == dataclasses.replace(res, wall_s=again.wall_s)
    # results.json is the typed result: it reads back equal, and renders the same report.
    assert load(tmp_path) == again
    assert render(load(tmp_path), tmp_path / "again")[0].read_text() == (tmp_path / "report.md").read_text()


def test_one_grid_value_is_no_interior_optimum(tmp_path, tiny_sets):
    res = width_transfer("tiny-dense", [32, 64], tmp_path, variants=["sp"], plans=["uniform-dense"], grid=[3e-3],
                         seeds=1, extend=0, sets={**tiny_sets, "train.steps": 6}, workers=1, log=lambda s: None)
    (series,) = res.series
    assert [p.best_base_lr for p in series.points] == [3e-3, 3e-3]  # "best" by default, not a located optimum
    assert not any(p.interior for p in series.points) and series.drift is None


@pytest.mark.parametrize("kwargs, message", [
    ({"widths": [32]}, "widths: at least two"),
    ({"widths": [32, 34]}, "widths: 34 .*n_heads"),
    ({"variants": ["sp", "mpu"]}, "variants: 'mpu' is unknown; did you mean 'mup'"),
    ({"sets": {"model.d_model": 64}}, "model.d_model: width-transfer sets it"),
])
def test_bad_input_is_refused_before_training(tmp_path, kwargs, message):
    args = {"widths": [32, 64], **kwargs}
    widths = args.pop("widths")
    with pytest.raises(ConfigError, match=message):
        width_transfer("tiny-dense", widths, tmp_path, **args)
    assert not (tmp_path / "sp").exists()


def test_a_plan_that_one_variant_cannot_use_is_refused_before_any_training(tmp_path):
    import dataclasses

    from rlrs import presets

    plan = dataclasses.replace(presets.get("uniform-dense"), attention=dataclasses.replace(
        presets.get("uniform-dense").attention, weight_decay=0.0))
    plan.save(tmp_path / "no_attention_decay.toml")
    with pytest.raises(ConfigError, match=r"widths: 32 \(sp-warmup, no_attention_decay\): .*attention has weight decay 0"):
        width_transfer("tiny-dense", [32, 64], tmp_path / "out", variants=["sp", "sp-warmup"],
                       plans=[str(tmp_path / "no_attention_decay.toml")], log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_command_is_refused_with_the_alternative(tmp_path, capsys):
    from rlrs.cli import main

    assert main(["width-transfer", "--model", "tiny-dense", "--widths", "32,64", "--command", "python x.py",
                 "--out", str(tmp_path)]) == 2
    assert "use `rlrs lr-grid --command` at each width" in capsys.readouterr().err


STORED = sorted((ROOT / "benchmarks" / "results" / "width").glob("*/results.json"))


@pytest.mark.parametrize("path", STORED, ids=lambda p: p.parent.name)
def test_a_stored_results_json_loads_and_renders_the_report_written_with_it(path, tmp_path):
    # Written before WidthTransferResult was a frozen dataclass: each series also held its
    # drift_steps, which the result now derives from the best values.
    data = json.loads(path.read_text())
    res = load(path)
    assert isinstance(res, WidthTransferResult)
    assert [s.drift for s in res.series] == [s["drift_steps"] for s in data["series"]]
    assert markdown(res) == (path.parent / "report.md").read_text()
    written = json.loads(save(res, tmp_path).read_text())
    assert written == {**data, "series": [{k: v for k, v in s.items() if k != "drift_steps"} for s in data["series"]]}
    assert load(tmp_path) == res


def test_a_results_json_from_before_the_zero_shot_gap_says_so(tmp_path):
    data = json.loads(STORED[0].read_text())
    for s in data["series"]:
        del s["zero_shot"]
    (tmp_path / "results.json").write_text(json.dumps(data))
    res = load(tmp_path)
    assert all(s.zero_shot is None for s in res.series)
    assert "| not recorded (an earlier rlrs wrote this result) |" in markdown(res)


def test_a_results_json_that_is_not_one_names_the_file_the_field_and_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run `rlrs width-transfer --out DIR` first"):
        load(tmp_path)
    data = json.loads(STORED[0].read_text())
    data["series"][0]["points"][1]["interior"] = "yes"
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"results.json: not a results.json written by `rlrs width-transfer`: "
                                          r"width_transfer_result\.series\[0\]\.points\[1\]\.interior: expected true"):
        load(tmp_path / "results.json")
