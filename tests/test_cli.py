"""The inspect, plot-plan and demo commands, run as a user would."""

import subprocess
import sys

import pytest


def rlrs(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rlrs", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_inspect_preset_shows_components_counts_and_lrs():
    r = rlrs("inspect", "tiny-moe", "--plan", "paper-moe", "--steps", "1000", "--at", "0,1%,100%")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    router = [l for l in lines if l.startswith("router")][0]
    assert router.split()[:3] == ["router", "2", "256"]  # two layers, one 32x4 router matrix each
    assert "active_non_embedding" in r.stdout and "total_non_embedding" in r.stdout
    lr_router = [l for l in lines if l.startswith("router")][-1].split()
    # step 0: 0 (warmup); step 10 (1%): 3e-3 * 0.6; step 999: 3e-3 * 0.04 * 1.0
    assert lr_router[1:] == ["0", "0.0018", "1.200e-04"]


def test_inspect_shows_mup_width_factors_in_the_lrs():
    r = rlrs("inspect", "tiny-moe", "--plan", "paper-moe", "--steps", "1000", "--at", "1%",
             "--set", "model.parametrization=mup", "--set", "model.base_width=16")
    assert r.returncode == 0, r.stderr
    assert "m = d_model / base_width = 32 / 16 = 2" in r.stdout and "experts ×0.5" in r.stdout and "router ×1" in r.stdout
    lrs = {l.split()[0]: l.split()[1] for l in r.stdout.split("LR per component")[1].splitlines()[3:] if l.strip()}
    assert float(lrs["experts"]) == pytest.approx(3e-3 * 0.3 / 2) and float(lrs["router"]) == pytest.approx(3e-3 * 0.6)
    bad = rlrs("inspect", "tiny-moe", "--set", "train.steps=3")
    assert bad.returncode == 2 and "--set: only model.* settings" in bad.stderr


def test_docs_model_table_is_what_rlrs_sizes_prints():
    from pathlib import Path

    r = rlrs("sizes")
    assert r.returncode == 0, r.stderr
    models = (Path(__file__).parent.parent / "docs" / "models.md").read_text()
    assert r.stdout.strip() in models, "docs/models.md's Reference models table is stale: paste `rlrs sizes`"
    assert "| `small-moe` | 256 | 4 | 8 | 8 | 4.20M |" in r.stdout


def test_inspect_hf_config_reports_tied_weights(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json_string())
    r = rlrs("inspect", str(path), "--plan", "paper-dense")
    assert r.returncode == 0, r.stderr
    assert "lm_head.weight (unembedding) = transformer.wte.weight (embedding)" in r.stdout
    tied_row = next(l for l in r.stdout.splitlines() if l.startswith("embedding+unembedding (tied)"))
    assert tied_row.split()[2:4] == ["1", "1,024"]  # one 64 x 16 tensor
    assert "attention" in r.stdout and "feedforward" in r.stdout


def test_inspect_errors_are_clear(tmp_path):
    r = rlrs("inspect", "micro-mo")
    assert r.returncode == 2 and "did you mean 'micro-moe'" in r.stderr
    r = rlrs("inspect", "tiny-moe", "--at", "150%")
    assert r.returncode == 2 and "--at: '150%'" in r.stderr
    (tmp_path / "x.json").write_text("{}")
    r = rlrs("inspect", str(tmp_path / "x.json"))
    assert r.returncode == 2 and "no 'model_type'" in r.stderr


def test_plot_plan_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    plan = tmp_path / "mine.toml"
    plan.write_text("base_lr = 0.001\n[router]\nstart = 0.5\nend = 2.0\n")
    r = rlrs("plot-plan", "--plan", str(plan), "--steps", "500", "--out", str(tmp_path / "plots"))
    assert r.returncode == 0, r.stderr
    png = tmp_path / "plots" / "lr_mine.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.slow
def test_demo_prints_falling_losses_the_verdict_and_says_its_eta_is_untuned_off_its_setting(tmp_path, corpus_dir):
    pytest.importorskip("matplotlib")
    import json
    import re

    r = rlrs("demo", "--out", str(tmp_path / "demo"), "--steps", "30", "--workers", "1",
             "--set", f"data.corpus={corpus_dir / 'docs'}", "--set", f"data.cache_dir={corpus_dir / 'cache'}",
             "--set", "data.tokenizer=bytes", "--set", "model.d_model=32", "--set", "model.n_heads=2",
             "--set", "model.n_layers=1", "--set", "train.batch_size=4", "--set", "model.seq_len=32")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    # Progress: both arms' eval loss at every 10% of training, read from the runs' logs.
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+/30\s", line)]
    assert [row[0] for row in rows][:2] == ["0/30", "3/30"] and len(rows) >= 9, out
    uniform = [float(row[1]) for row in rows]
    assert uniform[-1] < uniform[0]  # it learns
    # Off the tuned setting (other steps, --set model.*): said plainly, in the output and the report.
    assert "η_base NOT tuned for this setting (30 steps; --set " in out
    report = (tmp_path / "demo" / "report.md").read_text()
    assert report.startswith("**rlrs demo**: one seed; η_base NOT tuned")
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert {a: e["base_lr"] for a, e in results["arms"].items()} == {"uniform-moe": 3e-3, "paper-moe": 3e-3}
    # The verdict is compare's, whatever it is: a speed-up only where one was measured.
    verdict = next(line for line in out.splitlines() if line.startswith("paper-moe: "))
    assert re.match(r"paper-moe: (speed-up [+-]|no measurable difference|no speed-up|no difference)", verdict), verdict
    assert "final eval loss" in out and "speed-up plot: " in out
    assert (tmp_path / "demo" / "loss.png").stat().st_size > 10_000


DEMO_SETS = {"data.tokenizer": "bytes", "model.d_model": 32, "model.n_heads": 2, "model.n_layers": 1,
             "train.batch_size": 4, "model.seq_len": 32}


@pytest.mark.slow
def test_demo_run_writes_only_runs_and_save_load_render_round_trip(tmp_path, corpus_dir):
    pytest.importorskip("matplotlib")
    import dataclasses

    from rlrs.experiments import compare, lr_grid
    from rlrs.experiments.demo import demo, grid_tuning, load, render, run, save

    quiet = dict(workers=1, log=lambda line: None)
    sets = {**DEMO_SETS, "data.corpus": str(corpus_dir / "docs"), "data.cache_dir": str(corpus_dir / "cache")}
    out = tmp_path / "demo"
    res = run(out, steps=20, sets=sets, progress=False, **quiet)
    assert sorted(p.name for p in out.iterdir()) == ["runs"]  # compare's runs, nothing else
    assert res.grid is None and not res.tuned and not res.tuning.grid and "NOT tuned" in res.tuning.note
    assert save(res, out) == out / "demo.json"
    assert load(out) == res and load(out / "demo.json") == res and compare.load(out) == res.compare
    assert not (out / "grid.json").exists()
    render(res, out)
    fresh = (out / "report.md").read_text()
    assert fresh.startswith(f"**rlrs demo**: one seed; {res.tuning.note}.\n\n# ")
    render(load(out), out)
    assert (out / "report.md").read_text() == fresh
    # The one call: the same runs (reused), the same files.
    again = demo(out, steps=20, sets=sets, progress=False, **quiet)
    assert again.compare.runs == tuple(dataclasses.replace(r, reused=True) for r in res.compare.runs)
    assert load(out) == again
    # A demo that tuned (--tune) keeps its grid in grid.json, lr-grid's own file, beside compare's.
    grid = lr_grid.run("ladder-xs-moe", ["uniform-moe", "paper-moe"], out, grid=[3e-3], extend=0,
                       sets={**sets, "train.steps": 20, "train.eval_interval": 0.02}, **quiet)
    tuned = dataclasses.replace(res, tuning=grid_tuning(grid), grid=grid)
    save(tuned, out)
    assert load(out) == tuned and lr_grid.load(out) == grid and tuned.tuning.grid
    assert [p.name for p in render(tuned, out)][:2] == ["lr_grid.png", "grid.md"]
    with pytest.raises(FileNotFoundError, match=r"no demo result here; run `rlrs demo --out"):
        load(tmp_path)


def test_demo_uses_its_tuned_eta_only_on_the_setting_it_was_tuned_on():
    from rlrs.experiments.demo import PRESET, TUNED, stored_tuning

    assert stored_tuning(PRESET, None, {}).base_lrs == TUNED and stored_tuning(PRESET, None, {}).tuned
    # Settings that change nothing the runs learn keep it; the preset's own length is its default.
    assert stored_tuning(PRESET, 327, {"train.threads": 2, "train.eval_interval": 0.01}).tuned
    for preset, steps, sets, why in ((PRESET, 100, {}, "100 steps"),
                                     ("micro-moe", None, {}, "preset micro-moe, tuned on ladder-xs-moe"),
                                     (PRESET, None, {"train.batch_size": 8}, "--set train.batch_size")):
        t = stored_tuning(preset, steps, sets)
        assert not t.tuned and t.base_lrs is None and why in t.note and "NOT tuned" in t.note, t


def test_plot_plan_draws_the_models_own_components_on_a_log_axis(tmp_path, monkeypatch):
    import rlrs.plots as plots
    from rlrs.cli import main

    drawn = {}
    real = plots.plot_plan

    def spy(plan, total, path, components=(), title=None, log=True):
        drawn.update(components=tuple(components), log=log)
        return real(plan, total, path, components=components, title=title, log=log)

    monkeypatch.setattr(plots, "plot_plan", spy)
    assert main(["plot-plan", "--plan", "paper-dense", "--model", "tiny-dense", "--steps", "200",
                 "--out", str(tmp_path)]) == 0
    assert drawn == {"components": ("embedding", "unembedding", "attention", "feedforward", "other"), "log": True}
    assert (tmp_path / "lr_paper-dense.png").stat().st_size > 10_000


def test_demo_tune_uses_the_grids_best_and_says_where_it_is_not_tuned():
    from types import SimpleNamespace

    from rlrs.experiments.demo import grid_tuning

    inside = SimpleNamespace(arms={"uniform-moe": 0, "paper-moe": 0}, best={"uniform-moe": 1e-2, "paper-moe": 2e-2},
                             edge={"uniform-moe": None, "paper-moe": None})
    t = grid_tuning(inside)
    assert t.tuned and t.base_lrs == {"uniform-moe": 1e-2, "paper-moe": 2e-2} and "uniform-moe 0.01, paper-moe 0.02" in t.note
    edge = SimpleNamespace(arms=inside.arms, best={"uniform-moe": 1e-2}, edge={"uniform-moe": "high", "paper-moe": None})
    t = grid_tuning(edge)
    assert not t.tuned and "paper-moe: every value diverged" in t.note and "uniform-moe: at the high edge" in t.note
