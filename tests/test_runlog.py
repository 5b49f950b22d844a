"""The run log (``metrics.jsonl``): typed records, one writer, one reader that skips and names
damaged lines, the follower of a running command, and the engine's use of them."""

import json
import math
import shlex
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlrs.engine import CommandRun, execute, read_result
from rlrs import presets
from rlrs.runlog import (EvalCurve, EvalRecord, EventRecord, LogFollower, RunLog, TrainRecord, read_log,
                         read_metrics)

# Lines that are not records, each with what the reader must say about it.
BAD_LINES = {
    "garbage": (b"this is not json", "damaged record"),
    "not-an-object": (b"[1, 2, 3]", "not a JSON object but list"),
    "no-step": (b'{"kind": "eval", "eval_loss": 1.0}', "no step"),
    "step-text": (b'{"kind": "eval", "step": "ten", "eval_loss": 1.0}', "step 'ten' is not a whole number"),
    "loss-text": (b'{"kind": "eval", "step": 3, "eval_loss": "low"}', "eval_loss 'low' is not a number"),
    "step-overflow": (b'{"kind": "eval", "step": 1e999, "eval_loss": 1.0}', "step inf is not a whole number"),
    "step-negative": (b'{"kind": "eval", "step": -2, "eval_loss": 1.0}', "step -2 is not a whole number"),
    "step-bool": (b'{"kind": "eval", "step": true, "eval_loss": 1.0}', "step True is not a whole number"),
    "not-utf8": (b'{"kind": "eval", "step": 3, "eval_loss": 1.0, "x": "\xff\xfe"}', "not UTF-8"),
}


def _report(step: int, loss: float) -> bytes:
    return json.dumps({"kind": "eval", "step": step, "eval_loss": loss}).encode()


@pytest.mark.parametrize("name", list(BAD_LINES))
def test_a_damaged_line_is_skipped_and_named_and_the_rows_around_it_stay(tmp_path, name):
    bad, why = BAD_LINES[name]
    lines = [_report(s, 5.0 - s) for s in range(3)] + [bad] + [_report(s, 5.0 - s) for s in range(3, 6)]
    (tmp_path / "metrics.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    got = read_log(tmp_path)
    assert got.eval_curve() == (list(range(6)), [5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    assert [(p.line, why in p.why) for p in got.problems] == [(4, True)], got.problems
    assert got.warnings()[0].startswith(f"{tmp_path / 'metrics.jsonl'}:4: ")
    with pytest.raises(ValueError, match="metrics.jsonl:4: "):
        read_metrics(tmp_path)  # the strict form for comparing logs: never a silent loss


def test_a_last_line_without_its_newline_is_one_being_written_not_a_problem(tmp_path):
    (tmp_path / "metrics.jsonl").write_bytes(_report(0, 5.0) + b"\n" + b'{"kind": "eval", "st')
    got = read_log(tmp_path)
    assert got.eval_curve() == ([0], [5.0]) and got.problems == []


def test_records_round_trip_through_the_writer_in_the_format_on_disk(tmp_path):
    recs = [TrainRecord(1, 4.5, tokens=64, lr={"embedding": 1e-3}, metrics={"grad_norm": 0.5, "moe/expert_load": (0.25, 0.75)}),
            TrainRecord(2, tokens=128, skipped=True, reason="loss is nan"),
            EvalRecord(2, None, nonfinite="inf", tokens=128, time=1.0, metrics={"accuracy": 0.5}),
            EventRecord("event", 2, {"event": "diverged"}), EventRecord("note-from-the-future", None, {"x": [1]})]
    with RunLog(tmp_path) as log:
        for r in recs:
            log.append(r)
    on_disk = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert on_disk[0] == {"kind": "train", "step": 1, "tokens": 64, "lr/embedding": 1e-3, "loss": 4.5, "grad_norm": 0.5,
                          "moe/expert_load": [0.25, 0.75]}
    assert on_disk[2] == {"kind": "eval", "step": 2, "tokens": 128, "eval_loss": None, "nonfinite": "inf", "time": 1.0,
                          "accuracy": 0.5}
    got = read_log(tmp_path)
    assert got.records == recs and got.problems == []
    assert got.trained_steps() == 2 and math.isnan(got.eval_curve()[1][0])


def test_the_follower_reads_only_whole_new_lines_and_names_damaged_ones_with_their_line(tmp_path):
    follow = LogFollower(tmp_path)
    assert follow.poll() == []  # no log yet
    log = tmp_path / "metrics.jsonl"
    log.write_bytes(_report(0, 5.0) + b"\n[1]\n" + b'{"kind": "eval", "step": 2, "eval')
    assert follow.poll() == [EvalRecord(0, 5.0)] and [p.line for p in follow.problems] == [2]
    with log.open("ab") as f:
        f.write(b'_loss": 4.0}\n')
    assert follow.poll() == [EvalRecord(2, 4.0)]
    log.write_bytes(_report(0, 6.0) + b"\n")  # replaced by a shorter file: read from its start
    assert follow.poll() == [EvalRecord(0, 6.0)] and follow.restarted and follow.problems == []


def test_a_report_at_an_earlier_step_replaces_the_curve_from_there_on():
    c = EvalCurve().extend([EvalRecord(s, 5.0 - s) for s in (0, 2, 4)] + [EvalRecord(2, 9.0)])
    assert c.points() == ([0, 2], [5.0, 9.0])
    assert EvalCurve("accuracy").extend([EvalRecord(1, 2.0, metrics={"accuracy": 0.5})]).points() == ([1], [0.5])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40),
                          st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
                                       lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
                                           st.sampled_from(["kind", "step", "eval_loss", "loss", "tokens", "lr/x",
                                                            "time", "nonfinite", "skipped", "reason", "x"]),
                                           kids, max_size=5),
                                       max_leaves=8).map(lambda v: json.dumps(v).encode())), max_size=8))
def test_the_reader_never_raises_on_any_bytes(tmp_path_factory, lines):
    d = tmp_path_factory.mktemp("fuzz")
    (d / "metrics.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    got = read_log(d)
    for r in got.records:
        assert isinstance(r, (TrainRecord, EvalRecord, EventRecord))
        assert r.step is None or (isinstance(r.step, int) and r.step >= 0)
    got.eval_curve(), got.trained_steps(), got.last_step()
    assert LogFollower(d).poll() == got.records


# --- through the engine -------------------------------------------------------------------------------


def _script(tmp_path, bad: bytes, at: int) -> str:
    """A script that reports steps 0..5 through rlrs.report and writes ``bad`` into its log
    after ``at`` reports: the engine must skip that line, keep every report and finish the run."""
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(f"""
        import os, rlrs
        log = os.path.join(os.environ["RLRS_RUN_DIR"], "metrics.jsonl")
        for s in range(6):
            if s == {at}:
                with open(log, "ab") as f:
                    f.write({bad!r} + b"\\n")
            rlrs.report(s, 5.0 - s)
        if {at} >= 6:
            with open(log, "ab") as f:
                f.write({bad!r} + b"\\n")
    """))
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(path))}"


@pytest.mark.parametrize("name", list(BAD_LINES))
def test_a_command_whose_log_has_a_damaged_line_still_finishes_with_every_report(tmp_path, name):
    bad, why = BAD_LINES[name]
    spec = CommandRun(_script(tmp_path, bad, at=3), presets.get("paper-dense"), steps=5, cwd=str(tmp_path))
    out = tmp_path / "run"
    r = execute(spec, out)
    assert r.status == "finished", r.error
    assert r.eval_steps == list(range(6)) and r.final_eval_loss == 0.0
    assert len(r.notes) == 1 and "metrics.jsonl:4: " in r.notes[0] and why in r.notes[0]
    assert "damaged log line skipped" in r.headline()
    assert read_result(out).notes == r.notes  # recorded in result.json


def test_garbage_after_six_good_reports_leaves_a_finished_run_finished(tmp_path):
    spec = CommandRun(_script(tmp_path, b"\x00garbage{", at=6), presets.get("paper-dense"), steps=5, cwd=str(tmp_path))
    r = execute(spec, tmp_path / "run")
    assert r.status == "finished" and r.eval_steps == list(range(6)), r.error
    assert "metrics.jsonl:7: damaged record" in r.notes[0]
