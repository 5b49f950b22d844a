"""Every figure rlrs writes is readable: no label cut by the figure's edge, no two texts (tick
labels, axis labels, titles, legend entries, annotations) on top of each other, no legend over
plotted points. Checked on the figures as saved, through matplotlib's bounding boxes."""

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from rlrs import plots  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def checked(monkeypatch):
    """Records ``plots.text_problems`` of every figure when it is closed, i.e. right after
    ``plots._save`` wrote it: {file name: problems}."""
    import matplotlib.pyplot as plt

    found: dict[str, list[str]] = {}
    real_close, real_write = plt.close, plots.atomic_write_bytes
    current: list[str] = []

    def write(path, data):
        current.append(Path(path).name)
        return real_write(path, data)

    def close(fig=None):
        if fig is not None and hasattr(fig, "canvas") and current:
            found[current.pop()] = plots.text_problems(fig)
        return real_close(fig)

    monkeypatch.setattr(plots, "atomic_write_bytes", write)
    monkeypatch.setattr(plt, "close", close)
    return found


def _bad_figure():
    """The evidence figure's old faults: a y label longer than the figure is high, and a log axis
    over half a decade, whose minor tick labels (3×10⁴, 4×10⁴, ...) run into each other."""
    plt = plots._plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax in axes:
        ax.plot([3.3e4, 1.1e5, 3.2e5], [53.0, 26.0, 25.0], marker="o", label="paper")
        ax.set_xscale("log")
        ax.set_xlabel("active non-embedding parameters")
        ax.legend(frameon=False, fontsize=8)
    axes[0].set_ylabel("steps saved to the baseline's final loss, % (95% interval)")
    return fig


def test_the_check_finds_cut_and_colliding_labels_and_save_removes_them(tmp_path, checked):
    fig = _bad_figure()
    fig.tight_layout()  # what every figure had before
    problems = plots.text_problems(fig)
    assert any("is cut by the figure's edge" in p and "steps saved" in p for p in problems), problems
    assert any(p.startswith("x tick") and "overlaps x tick" in p for p in problems), problems
    plots._plt().close(fig)
    plots._save(_bad_figure(), tmp_path / "fixed.png")
    # Saved, the long label still does not fit 4 inches: the saved area grows to hold it (never cut),
    # which the check on the figure's own canvas still reports; the ticks no longer collide.
    assert not [p for p in checked["fixed.png"] if "overlaps" in p], checked


def test_a_legend_over_the_data_is_found():
    plt = plots._plt()
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1, 2, 3], [3, 3, 3, 3], label="flat")
    ax.set_ylim(2.9, 3.1)
    ax.legend(loc="center")
    assert any("legend covers data of 'flat'" in p for p in plots.text_problems(fig))
    plt.close(fig)


@pytest.mark.slow
def test_every_figure_of_compare_and_lr_grid_is_readable(tmp_path, corpus_dir, checked):
    from rlrs.experiments.compare import compare
    from rlrs.experiments.lr_grid import lr_grid

    sets = {"data.corpus": str(corpus_dir / "docs"), "data.cache_dir": str(corpus_dir / "cache"),
            "data.val_fraction": 0.2, "train.threads": 1, "train.steps": 20, "train.eval_batches": 2}
    compare("tiny-moe", ["uniform-moe", "paper-moe"], seeds=2, out=tmp_path / "c", sets=sets, workers=1,
            log=lambda _: None)
    lr_grid("tiny-dense", ["uniform-dense", "paper-dense"], tmp_path / "g", grid=[1e-3, 3e-3, 1e-2, 3e-2], extend=0,
            sets=sets, workers=1, log=lambda _: None)
    expected = {"loss.png", "train_loss.png", "lr_uniform-moe.png", "lr_paper-moe.png", "updates.png", "router.png",
                "lr_grid.png"}
    assert expected <= set(checked), sorted(checked)
    assert {name: p for name, p in checked.items() if p} == {}


@pytest.mark.slow
def test_plan_and_coordinate_check_figures_are_readable(tmp_path, checked):
    from rlrs import presets
    from rlrs.experiments.coord_check import plot, run

    plots.plot_plan(presets.get("paper-moe"), 1000, tmp_path / "lr.png")
    plots.plot_plan(presets.get("paper-dense"), 300, tmp_path / "lr_linear.png", log=False)
    res = run("tiny-dense", [32, 64, 128], parametrization="mup", base_width=32, base_lr=1e-2, steps=2, seeds=1)
    plot(res, tmp_path / "coord_check.png")
    assert set(checked) == {"lr.png", "lr_linear.png", "coord_check.png"}
    assert {name: p for name, p in checked.items() if p} == {}


def test_the_evidence_speedup_figure_from_the_stored_results_is_readable(tmp_path, monkeypatch, checked):
    shutil.copy(ROOT / "benchmarks" / "results" / "evidence.json", tmp_path / "evidence.json")
    monkeypatch.setenv("RLRS_EVIDENCE_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("evidence", None)
    evidence = importlib.import_module("evidence")
    try:
        made = evidence.figures(tmp_path / "no-runs")  # only the figure drawn from evidence.json
    finally:
        sys.modules.pop("evidence", None)
    assert [p.name for p in made] == ["evidence-speedup.png"]
    assert checked == {"evidence-speedup.png": []}
    assert json.loads((tmp_path / "evidence.json").read_text())["rows"]


@pytest.mark.slow
def test_zoo_width_transfer_and_ablate_figures_are_readable(tmp_path, tiny_sets, checked):
    from rlrs.experiments.ablate import ablate
    from rlrs.experiments.width_transfer import width_transfer
    from rlrs.experiments.zoo import run_zoo

    run_zoo(["gauss"], ["adamw", "dals", "fixed-sgd", "lion", "sam", "radam"], tmp_path / "zoo", seeds=1, epochs=1, workers=1,
            log=None)
    width_transfer("tiny-dense", [32, 64], tmp_path / "w", variants=["sp", "mup"], plans=["uniform-dense"],
                   grid=[3e-3, 1e-2, 3e-2], seeds=1, extend=0, sets={**tiny_sets, "train.steps": 6}, workers=1,
                   log=lambda _: None)
    ablate("tiny-moe", "paper-moe", tmp_path / "a", components=["embedding", "router"], factors=[0.2, 5.0],
           seeds=1, sets={**tiny_sets, "train.steps": 6}, workers=1, log=lambda _: None)
    assert {"zoo_curves.png", "width_transfer.png", "ablate_vary.png"} <= set(checked), sorted(checked)
    assert {name: p for name, p in checked.items() if p} == {}
