"""rlrs width-transfer (issue 14, part 4): variants, drift, the command on tiny widths."""

import json

import pytest

from rlrs.config import ConfigError
from rlrs.widths import VARIANTS, WidthPoint, WidthSeries, ladder_position, variant_sets, width_transfer


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
    pts = [WidthPoint(32, 5e-3, True, 3.0, {}), WidthPoint(64, 2e-3, True, 2.9, {}), WidthPoint(128, 1e-3, True, 2.8, {})]
    assert WidthSeries("sp", "uniform", pts).drift == 2.0
    pts[1] = WidthPoint(64, 2e-3, False, 2.9, {})  # at a grid edge: the optimum is not known
    assert WidthSeries("sp", "uniform", pts).drift is None


def test_width_transfer_on_tiny_widths_writes_results_and_reuses_its_runs(tmp_path, tiny_sets, monkeypatch):
    from rlrs import engine

    sets = {**tiny_sets, "train.steps": 6}
    kw = dict(variants=["sp", "mup-iwd"], plans=["uniform-dense"], grid=[3e-3, 3e-2], seeds=1, extend=0,
              sets=sets, workers=1, log=lambda s: None)
    res = width_transfer("tiny-dense", [32, 64], tmp_path, **kw)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [(s["variant"], s["plan"]) for s in doc["series"]] == [("sp", "uniform-dense"), ("mup-iwd", "uniform-dense")]
    assert [p["width"] for p in doc["series"][0]["points"]] == [32, 64] and doc["base_width"] == 32
    assert (tmp_path / "report.md").exists() and (tmp_path / "width_transfer.png").stat().st_size > 0
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
    assert [[p.best for p in s.points] for s in again.series] == [[p.best for p in s.points] for s in res.series]


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


def test_command_is_refused_with_the_alternative(tmp_path, capsys):
    from rlrs.cli import main

    assert main(["width-transfer", "--preset", "tiny-dense", "--widths", "32,64", "--command", "python x.py",
                 "--out", str(tmp_path)]) == 2
    assert "use `rlrs lr-grid --command` at each width" in capsys.readouterr().err
