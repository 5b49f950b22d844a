"""rlrs tune on a real PostgreSQL server (the ``postgres_url`` fixture: a fresh database per test):
a lead and workers in separate processes sharing one study, and a connection lost mid-search (its
backends terminated, the database refusing connections) that the search survives or stops on
clearly, keeping every finished trial."""

import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
psycopg = pytest.importorskip("psycopg")

from rlrs.cli import main  # noqa: E402
from rlrs.tune import StudyOptions, SyntheticObjective, TuneSpec, tune  # noqa: E402
from rlrs.tune import study as study_mod  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ["plan.base_lr", "plan.router.start"]

# A training script whose runs of candidates (not the start point) wait at a gate until the test
# opens it: the test opens it once three runs wait, which only three processes can do at once
# (each trains one run at a time), so the lead and both workers evaluate some trials, by design.
GATED = '''
import math, os, sys, time
from pathlib import Path
import rlrs

gate = Path(sys.argv[1])
steps = rlrs.script.steps(4)
plan = rlrs.script.plan("paper-dense")
if plan != rlrs.presets.get("paper-dense"):
    (gate / "waiting" / rlrs.script.run_dir().name).touch()
    deadline = time.monotonic() + 300
    while not (gate / "open").exists():
        if time.monotonic() > deadline:
            sys.exit("the gate never opened")
        time.sleep(0.05)
floor = 2.0 + math.log(plan.base_lr / 6e-3) ** 2 + 0.1 * math.log(plan.embedding.start / 10.0) ** 2
for step in range(0, steps + 1, 2):
    rlrs.report(step, floor + math.exp(-step / steps))
'''


def _admin():
    return psycopg.connect(os.environ["RLRS_TEST_POSTGRES"], autocommit=True)


def _db(url: str) -> str:
    return url.rsplit("/", 1)[1]


def _outage(url: str, refuse: bool) -> int:
    """Terminate every connection to the test database (waiting until they are gone); with
    ``refuse`` it also refuses new ones until :func:`_restore`. Returns how many it ended."""
    with _admin() as conn:
        if refuse:
            conn.execute(f"ALTER DATABASE {_db(url)} ALLOW_CONNECTIONS false")
        return conn.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) FROM pg_stat_activity "
                            "WHERE datname = %s AND pid <> pg_backend_pid()", (_db(url),)).fetchone()[0]


def _restore(url: str) -> None:
    with _admin() as conn:
        conn.execute(f"ALTER DATABASE {_db(url)} ALLOW_CONNECTIONS true")


def _trials(url: str):
    return optuna.load_study(study_name="rlrs-tune", storage=url.replace("postgresql://", "postgresql+psycopg://")
                             ).get_trials(deepcopy=False)


def _counted(ts):
    return [t for t in ts if "abandoned" not in t.user_attrs]


def _wait(cond, what: str, procs=(), timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        dead = [p for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            outs = "\n".join(p.communicate()[0] if p.poll() is not None else "(running)" for p in procs)
            pytest.fail(f"waiting for {what}: {'a process ended' if dead else 'timed out'}\n{outs}")
        time.sleep(0.05)


def _has_search(url: str) -> bool:
    try:
        with psycopg.connect(url) as conn:
            return bool(conn.execute("SELECT 1 FROM study_user_attributes WHERE key = 'spec'").fetchone())
    except psycopg.Error:  # the lead has not created the tables yet
        return False


def test_a_lead_and_two_workers_share_one_postgresql_study_on_a_command(tmp_path, postgres_url):
    (tmp_path / "gate" / "waiting").mkdir(parents=True)
    script = tmp_path / "gated.py"
    script.write_text(GATED)
    cmd = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {shlex.quote(str(tmp_path / 'gate'))}"
    out = tmp_path / "shared"  # one --out for all, as on a shared filesystem
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    common = ["--storage", postgres_url, "--out", str(out), "--workers", "1", "--poll", "0.1"]

    def rlrs_tune(*args):
        return subprocess.Popen([sys.executable, "-m", "rlrs", "tune", *args, *common], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    procs = [rlrs_tune("--command", cmd, "--plan", "paper-dense", "--steps", "4", "--budget", "6",
                       "--params", "plan.base_lr,plan.embedding.start")]
    try:
        _wait(lambda: _has_search(postgres_url), "the lead to store its search", procs)
        procs += [rlrs_tune("--worker", "--command", cmd) for _ in range(2)]
        _wait(lambda: len(list((tmp_path / "gate" / "waiting").iterdir())) >= 3, "three runs at the gate", procs)
        (tmp_path / "gate" / "open").touch()
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:  # a failed wait: nothing of this test outlives it
        (tmp_path / "gate" / "open").touch()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(outs)

    ts = _counted(_trials(postgres_url))
    keys = [t.user_attrs["key"] for t in ts]
    assert len(keys) == len(set(keys)) == 6  # the budget exactly, no point twice
    assert all(t.state.name == "COMPLETE" for t in ts)
    assert {t.user_attrs["owner"]["pid"] for t in ts} == {p.pid for p in procs}  # each evaluated some
    doc = json.loads((out / "search.json").read_text())
    assert doc["study"] == {"storage": postgres_url.replace(":rlrs@", ":***@"), "name": "rlrs-tune"}
    assert set(doc) == {"study", "spec", "start", "start_loss", "best", "best_loss", "stopped", "compute", "notes", "budget",
                        "steps"}
    assert doc["compute"]["trials"]["COMPLETE"] == 6 and doc["stopped"] == "budget"
    assert "rlrs:rlrs@" not in "".join(outs)  # the password is never printed


def _objective(calls, at=None, then=None):
    """A synthetic loss that records each finished point in ``calls``; at the ``at``-th it calls ``then``."""
    def fn(point, progress):
        if progress == 1.0:
            calls.append(dict(point))
            if len(calls) == at:
                then()
        return 1.0 + sum(math.log(point[k] / 0.01) ** 2 for k in point) + (1.0 - progress)

    return SyntheticObjective(fn, 100)


def _spec():
    return TuneSpec.create("tiny-moe", steps=100, params=PARAMS)


def test_terminated_connections_mid_search_are_replaced_and_the_search_finishes(tmp_path, postgres_url):
    url = postgres_url.replace("postgresql://", "postgresql+psycopg://")  # the reconnect alone, not the URL mapping
    ended = []
    calls = []
    r = tune(_spec(), tmp_path, 7, study=StudyOptions(storage=url, poll_s=0.05),
             objective=_objective(calls, at=3, then=lambda: ended.append(_outage(url, refuse=False))))
    assert ended[0] >= 1  # the search's connections were really ended
    assert r.evaluations == 7 and len(calls) == 7
    ts = _counted(_trials(url))
    assert len(ts) == 7 and all(t.state.name == "COMPLETE" for t in ts)


def test_a_database_back_after_a_retry_continues_the_search(tmp_path, postgres_url, monkeypatch):
    waits = []

    def pause(seconds):  # the search waits to retry: now the database takes connections again
        waits.append(seconds)
        _restore(postgres_url)

    monkeypatch.setattr(study_mod, "_pause", pause)
    calls = []
    r = tune(_spec(), tmp_path, 7, study=StudyOptions(storage=postgres_url, poll_s=0.05),
             objective=_objective(calls, at=3, then=lambda: _outage(postgres_url, refuse=True)))
    assert waits  # a storage call failed and was retried
    assert r.evaluations == 7 and len(calls) == 7  # no point evaluated twice
    ts = _counted(_trials(postgres_url))
    assert len(ts) == 7 and all(t.state.name == "COMPLETE" for t in ts)
    assert len({t.user_attrs["key"] for t in ts}) == 7


OUTAGE = '''
import json, math, os
import psycopg

calls = []


def curve(point, progress):
    """A synthetic loss; its OUTAGE_AT-th finished point makes the database refuse connections."""
    if progress == 1.0:
        calls.append(point)
        with open(os.environ["OUTAGE_LOG"], "a") as f:
            f.write(json.dumps(point, sort_keys=True) + "\\n")
        if len(calls) == int(os.environ["OUTAGE_AT"]):
            db = os.environ["OUTAGE_DB"]
            with psycopg.connect(os.environ["RLRS_TEST_POSTGRES"], autocommit=True) as conn:
                conn.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS false")
                conn.execute("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                             "WHERE datname = %s AND pid <> pg_backend_pid()", (db,))
    return 1.0 + sum(math.log(point[k] / 0.01) ** 2 for k in point) + (1.0 - progress)
'''


def test_a_database_that_stays_away_stops_the_search_clearly_and_keeps_finished_trials(
        tmp_path, postgres_url, monkeypatch, capsys):
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "outage.py").write_text(OUTAGE)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    sys.modules.pop("outage", None)
    log = tmp_path / "finished.jsonl"
    monkeypatch.setenv("OUTAGE_LOG", str(log))
    monkeypatch.setenv("OUTAGE_AT", "3")
    monkeypatch.setenv("OUTAGE_DB", _db(postgres_url))
    monkeypatch.setattr(study_mod, "RETRY_DELAYS", (0.01, 0.01))
    argv = ["tune", "--model", "tiny-moe", "--steps", "100", "--params", ",".join(PARAMS), "--budget", "7",
            "--objective", "outage:curve", "--poll", "0.05", "--workers", "1", "--out", str(tmp_path / "o"),
            "--storage", postgres_url]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"study storage {postgres_url.replace(':rlrs@', ':***@')}: the database does not answer after 3 tries" in err
    assert "not currently accepting connections" in err  # the server's own reason
    assert "rerun the same command to continue: finished trials are kept" in err
    assert "rlrs:rlrs@" not in err and "Traceback" not in err and "sqlalchemy" not in err.lower()

    _restore(postgres_url)
    finished = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(finished) == 3
    done = {t.user_attrs["key"] for t in _trials(postgres_url) if t.state.name == "COMPLETE"}
    from rlrs.search import point_key

    assert {point_key(p) for p in finished[:2]} <= done  # every trial recorded before the outage is there
    monkeypatch.setenv("OUTAGE_AT", "0")
    assert main(argv) == 0  # the same command continues
    ts = _counted(_trials(postgres_url))
    assert len(ts) == 7 and all(t.state.name == "COMPLETE" for t in ts)
    assert len(log.read_text().splitlines()) == 3 + 7 - len(done)  # finished trials were not evaluated again


# A deterministic script: the same plan always reports the same losses, wherever it runs.
PLAIN = '''
import math
import rlrs

steps = rlrs.script.steps(4)
plan = rlrs.script.plan("paper-dense")
floor = 2.0 + math.log(plan.base_lr / 6e-3) ** 2 + 0.1 * math.log(plan.embedding.start / 10.0) ** 2
for step in range(0, steps + 1, 2):
    rlrs.report(step, floor + math.exp(-step / steps))
'''


def test_tune_on_slurm_with_a_postgresql_study_and_two_workers_matches_the_local_executor(
        tmp_path, postgres_url, slurm_cluster):
    script = tmp_path / "plain.py"
    script.write_text(PLAIN)
    cmd = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    search = ["--command", cmd, "--plan", "paper-dense", "--steps", "4", "--budget", "5",
              "--params", "plan.base_lr,plan.embedding.start"]
    assert main(["tune", *search, "--out", str(tmp_path / "local"), "--workers", "1"]) == 0

    out = tmp_path / "shared"
    slurm = ["--storage", postgres_url, "--out", str(out), "--workers", "1", "--poll", "0.1",
             "--executor", "slurm", "--slurm-mem-gb", "1", "--slurm-cpus", "1", "--slurm-poll-s", "0.5"]

    def rlrs_tune(*args):
        return subprocess.Popen([sys.executable, "-m", "rlrs", "tune", *args, *slurm], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    procs = [rlrs_tune(*search)]
    try:
        _wait(lambda: _has_search(postgres_url), "the lead to store its search", procs)
        procs.append(rlrs_tune("--worker", "--command", cmd))
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    assert "Slurm job" in outs[0]  # its runs were Slurm jobs

    local = optuna.load_study(study_name="rlrs-tune", storage=f"sqlite:///{tmp_path / 'local' / 'study.db'}")
    here = {t.user_attrs["key"]: t.value for t in _counted(local.get_trials(deepcopy=False))}
    there = {t.user_attrs["key"]: t.value for t in _counted(_trials(postgres_url))}
    assert there and set(there) <= set(here) | set(there)
    same = set(here) & set(there)
    assert same and all(here[k] == there[k] for k in same)  # a point measures the same on either executor
    best_local = json.loads((tmp_path / "local" / "search.json").read_text())["best"]
    best_slurm = json.loads((out / "search.json").read_text())["best"]
    assert best_slurm == best_local
