"""transfer and ablate produce their reports on a tiny preset."""

import json

import pytest

from rlrs import presets
from rlrs.config import ConfigError
from rlrs.plan import Plan
from rlrs.experiments.ablate import AblateResult, ablate, load, markdown, render, save
from rlrs.experiments.compare import load as compare_load
from rlrs.experiments.transfer import load as transfer_load, render as transfer_render, save as transfer_save
from rlrs.experiments.transfer import transfer, uniform_like


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
    assert transfer_load(tmp_path / "t") == r and transfer_load(transfer_save(r, tmp_path / "again")) == r
    assert transfer_render(transfer_load(tmp_path / "t"), tmp_path / "again") == [tmp_path / "again" / "transfer.md"]
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
    # ablate.json is the typed result: it reads back equal, and renders the same report.
    back = load(tmp_path / "a")
    assert isinstance(back, AblateResult) and back == r
    assert render(back, tmp_path / "again")[0].read_text() == md


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
    res = transfer_load(tmp_path)
    assert res.best_lrs == {"uniform": 0.003, "tuned": 0.001} and res.lambdas["router"] == (0.6, 1.0)
    transfer_save(res, tmp_path / "back")
    assert json.loads((tmp_path / "back" / "transfer.json").read_text()) == data
    md = transfer_render(res, tmp_path)[0].read_text()
    assert "| tiny-moe | relative (tuned) | 0.001 | 1,536 | 5.0000 | +20.0% |" in md
    assert "| tiny-moe | baseline (uniform) | 0.003 (grid high edge) |" in md
    data["table"][0]["base_lr"] = "high"
    (tmp_path / "transfer.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"transfer.json.*transfer_result\.table\[0\]\.base_lr: expected a number"):
        transfer_load(tmp_path)


def test_ablate_rejects_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'router'"):
        ablate("tiny-moe", "paper-moe", tmp_path, components=["routr"])
    with pytest.raises(ConfigError, match="kind"):
        ablate("tiny-moe", "paper-moe", tmp_path, kind="all")


# ablate.json as versions before AblateResult was a frozen dataclass wrote it: each variant also
# held its derived ``diverged`` and ``final_loss``.
OLD_ABLATE_JSON = {
    "preset": "tiny-moe", "plan": "paper-moe", "seeds": 2,
    "leave_one_out": [
        {"component": "embedding", "lambdas": [1.0, 1.0], "speedup_percent": None, "text": "not measurable",
         "final_loss": None, "full_final_loss": None},
        {"component": "router", "lambdas": [0.6, 1.0], "speedup_percent": 12.5, "text": "speed-up +12.5%",
         "final_loss": 3.61, "full_final_loss": 3.55}],
    "vary": [
        {"variant": "base", "component": None, "which": None, "factor": 1.0, "losses": [3.5, 3.52],
         "statuses": ["finished", "finished"], "errors": [], "diverged": False, "final_loss": 3.51},
        {"variant": "router.start\u00d70.2", "component": "router", "which": "start", "factor": 0.2,
         "losses": [None, 3.6], "statuses": ["diverged", "finished"], "errors": ["diverged: loss nan at step 3"],
         "diverged": True, "final_loss": 3.6}],
    "wall_s": 12.0}


def test_an_ablate_json_of_an_earlier_version_loads_and_renders_the_same_report(tmp_path):
    (tmp_path / "ablate.json").write_text(json.dumps(OLD_ABLATE_JSON))
    a = load(tmp_path)
    assert [r.lambdas for r in a.leave_one_out] == [(1.0, 1.0), (0.6, 1.0)]
    assert [(v.diverged, v.final_loss) for v in a.vary] == [(False, pytest.approx(3.51)), (True, 3.6)]
    # The report that version wrote for it, line for line.
    assert markdown(a).splitlines()[8:] == [
        "| embedding | 1 → 1 | - | - | no speed-up |", "| router | 0.6 → 1 | 3.6100 | 3.5500 | +12.5% |", "",
        "## One λ varied (figure 4)", "", "![varied](ablate_vary.png)", "", "| Variant | Final loss |", "|---|---|",
        "| base | 3.5100 |", "| router.start×0.2 | 3.6000 (some seeds diverged) |"]
    # Written back, it has every key but the two derived ones, and reads back equal.
    saved = json.loads(save(a, tmp_path / "new").read_text())
    assert saved == {**OLD_ABLATE_JSON, "vary": [{k: v for k, v in row.items() if k not in ("diverged", "final_loss")}
                                                 for row in OLD_ABLATE_JSON["vary"]]}
    assert load(tmp_path / "new") == a


def test_an_ablate_json_that_is_not_one_names_the_file_the_field_and_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no ablation result here; run `rlrs ablate --out DIR` first"):
        load(tmp_path)
    bad = {**OLD_ABLATE_JSON, "leave_one_out": [{**OLD_ABLATE_JSON["leave_one_out"][0], "final_loss": "low"}]}
    (tmp_path / "ablate.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=r"ablate.json: not an ablate.json written by `rlrs ablate`: "
                                          r"ablate_result\.leave_one_out\[0\]\.final_loss: expected a number"):
        load(tmp_path / "ablate.json")
    (tmp_path / "ablate.json").write_text("{")
    with pytest.raises(ConfigError, match=r"ablate.json: not an ablate.json written by `rlrs ablate`; invalid JSON"):
        load(tmp_path)
