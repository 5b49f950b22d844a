"""transfer and ablate produce their reports on a tiny preset."""

import json

import pytest

from rlrs import presets
from rlrs.config import ConfigError
from rlrs.plan import Plan
from rlrs.experiments.ablate import ablate
from rlrs.experiments.compare import load as compare_load
from rlrs.experiments.transfer import load, render, save, transfer, uniform_like


def test_uniform_like_changes_only_the_lambdas():
    plan = presets.get("paper-moe")
    u = uniform_like(plan)
    assert all(u.component(c).start == u.component(c).end == 1.0 for c in ("router", "experts", "embedding"))
    assert (u.base_lr, u.final_fraction, u.weight_decay, u.warmup) == (plan.base_lr, plan.final_fraction, plan.weight_decay, plan.warmup)


@pytest.mark.slow
def test_transfer_writes_a_table_2_report(tmp_path, tiny_sets):
    plan = presets.get("paper-moe")
    src = plan.save(tmp_path / "tuned.toml")
    sets = {**tiny_sets, "train.steps": 12}
    r = transfer(src, "tiny-moe", tmp_path / "t", grid=[1e-3, 3e-3], extend=0, seeds=1, sets=sets, workers=1,
                 log=lambda s: None)
    assert set(r.best_lrs) == {"uniform", "tuned"} and all(v in (1e-3, 3e-3) for v in r.best_lrs.values())
    md = (tmp_path / "t" / "transfer.md").read_text()
    assert "| tiny-moe | baseline (uniform) |" in md and "| tiny-moe | relative (tuned) |" in md
    data = json.loads((tmp_path / "t" / "transfer.json").read_text())
    assert data["lambdas"]["router"] == [0.6, 1.0]  # the source plan's λ are kept
    rel = next(row for row in data["table"] if row["lr_type"] == "relative")
    assert rel["base_lr"] == r.best_lrs["tuned"] == next(row.base_lr for row in r.table if row.lr_type == "relative")
    # transfer.json reads back into the same result, which renders the same transfer.md
    assert load(tmp_path / "t") == r and load(save(r, tmp_path / "again")) == r
    assert render(load(tmp_path / "t"), tmp_path / "again") == [tmp_path / "again" / "transfer.md"]
    assert (tmp_path / "again" / "transfer.md").read_text() == md
    assert compare_load(tmp_path / "t").baseline == "uniform"
    # the relative arm trained with the source λ and the grid's η_base
    used = Plan.load(tmp_path / "t" / "plans" / "uniform.toml")
    assert used.router.start == 1.0 and used.final_fraction == plan.final_fraction
    for name in ("grid.json", "results.json", "report.md", "loss.png"):
        assert (tmp_path / "t" / name).exists(), name


@pytest.mark.slow
def test_ablate_leave_one_out_and_vary(tmp_path, tiny_sets):
    sets = {**tiny_sets, "train.steps": 10}
    r = ablate("tiny-moe", "paper-moe", tmp_path / "a", components=["embedding", "router"], factors=[0.2, 5.0],
               seeds=1, sets=sets, workers=1, log=lambda s: None)
    assert [row.component for row in r.leave_one_out] == ["embedding", "router"]
    assert all(row.final_loss is not None for row in r.leave_one_out)
    names = [row.variant for row in r.vary]
    assert names[0] == "base" and "embedding.start×0.2" in names and "router.end×5" in names and len(names) == 9
    saved = json.loads((tmp_path / "a" / "ablate.json").read_text())
    assert [v["variant"] for v in saved["vary"]] == names and saved["leave_one_out"][1]["lambdas"] == [0.6, 1.0]
    md = (tmp_path / "a" / "ablate.md").read_text()
    assert "Leave one component out" in md and "| router | 0.6 → 1 |" in md
    assert (tmp_path / "a" / "ablate_vary.png").stat().st_size > 10_000


def test_a_transfer_json_of_an_earlier_version_loads(tmp_path):
    # transfer.json as the version before TransferResult was a frozen dataclass wrote it.
    data = {"preset": "tiny-moe", "plan": "tuned.toml",
            "lambdas": {"embedding": [5.0, 1.0], "router": [0.6, 1.0]},
            "params": {"total": 1000, "active_non_embedding": 300}, "steps": 12,
            "table": [{"type": "tiny-moe", "lr_type": "baseline", "arm": "uniform", "base_lr": 0.003, "grid_edge": "high",
                       "train_tokens": 1536, "final_loss": 5.1, "speedup_percent": None, "speedup_text": None},
                      {"type": "tiny-moe", "lr_type": "relative", "arm": "tuned", "base_lr": 0.001, "grid_edge": None,
                       "train_tokens": 1536, "final_loss": 5.0, "speedup_percent": 20.0,
                       "speedup_text": "tuned: speed-up +20.0%: ..."}]}
    (tmp_path / "transfer.json").write_text(json.dumps(data))
    res = load(tmp_path)
    assert res.best_lrs == {"uniform": 0.003, "tuned": 0.001} and res.lambdas["router"] == (0.6, 1.0)
    save(res, tmp_path / "back")
    assert json.loads((tmp_path / "back" / "transfer.json").read_text()) == data
    md = render(res, tmp_path)[0].read_text()
    assert "| tiny-moe | relative (tuned) | 0.001 | 1,536 | 5.0000 | +20.0% |" in md
    assert "| tiny-moe | baseline (uniform) | 0.003 (grid high edge) |" in md
    data["table"][0]["base_lr"] = "high"
    (tmp_path / "transfer.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"transfer.json.*transfer_result\.table\[0\]\.base_lr: expected a number"):
        load(tmp_path)


def test_ablate_rejects_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'router'"):
        ablate("tiny-moe", "paper-moe", tmp_path, components=["routr"])
    with pytest.raises(ConfigError, match="kind"):
        ablate("tiny-moe", "paper-moe", tmp_path, kind="all")
