import pytest
import torch
from torch import nn


class ToyLM(nn.Module):
    """A tiny language model named the rlrs way: every component is present once."""

    def __init__(self, vocab=32, d=8, experts=2, tie=False):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        block = nn.Module()
        block.attn_norm = nn.LayerNorm(d)
        block.attn = nn.Module()
        block.attn.qkv = nn.Linear(d, d)
        block.mlp_norm = nn.LayerNorm(d)
        block.mlp = nn.Module()
        block.mlp.up = nn.Linear(d, d, bias=False)
        block.moe = nn.Module()
        block.moe.router = nn.Linear(d, experts, bias=False)
        block.moe.experts = nn.Module()
        block.moe.experts.w = nn.Parameter(torch.randn(experts, d, d) * 0.1)
        self.blocks = nn.ModuleList([block])
        self.norm = nn.LayerNorm(d)
        self.unembed = nn.Linear(d, vocab, bias=False)
        if tie:
            self.unembed.weight = self.embed.weight

    def forward(self, idx):
        b = self.blocks[0]
        x = self.embed(idx)
        x = x + b.attn.qkv(b.attn_norm(x))
        h = b.mlp_norm(x)
        gate = torch.softmax(b.moe.router(h), -1)
        x = x + b.mlp.up(h) + torch.einsum("bte,edf,btd->btf", gate, b.moe.experts.w, h)
        return self.unembed(self.norm(x))


@pytest.fixture
def toy():
    torch.manual_seed(0)
    return ToyLM()


def _sentences(n, seed=0):
    import random

    rng = random.Random(seed)
    subjects = ["the king", "a fool", "my lord", "the queen", "this night", "our love", "the sea"]
    verbs = ["speaks of", "dreams of", "fears", "loves", "remembers", "forgets", "calls"]
    objects = ["the crown", "a storm", "his brother", "sweet music", "the moon", "old wars", "her ring"]
    return "\n".join(
        f"{rng.choice(subjects).capitalize()} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(n)
    )


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """A small learnable corpus (10 documents of templated sentences) and its own cache dir."""
    root = tmp_path_factory.mktemp("corpus")
    docs = root / "docs"
    docs.mkdir()
    for i in range(10):
        (docs / f"doc{i}.txt").write_text(_sentences(400, seed=i))
    return root


@pytest.fixture
def tiny_sets(corpus_dir):
    """--set overrides that point a tiny preset at the test corpus."""
    return {
        "data.corpus": str(corpus_dir / "docs"),
        "data.cache_dir": str(corpus_dir / "cache"),
        "data.val_fraction": 0.2,
        "train.threads": 1,
    }


# --- real services: a single-node Slurm cluster and a PostgreSQL server --------------------------
# scripts/services.sh starts both (.ci/run does, before the suite). Where they are not running, a
# root session that has them installed starts them here for the session; elsewhere the tests that
# need them skip, naming why. Under CI (RLRS_CI=1) a missing service fails those tests instead.

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

_SERVICES = Path(__file__).resolve().parents[1] / "scripts" / "services.sh"
_started: list[str] = []


def _missing(why: str):
    if os.environ.get("RLRS_CI") == "1":
        pytest.fail(f"CI must provide this service: {why}")
    pytest.skip(why)


def _running() -> bool:
    """Whether both services answer, with the environment scripts/services.sh wrote (if any):
    services someone else started are used, never restarted or stopped by the tests."""
    env_file = Path(os.environ.get("RLRS_SERVICES_DIR", "/tmp/rlrs-services")) / "env.sh"
    if not (os.environ.get("SLURM_CONF") and os.environ.get("RLRS_TEST_POSTGRES")) and env_file.exists():
        for line in env_file.read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            os.environ.setdefault(key, value)
    if not (os.environ.get("SLURM_CONF") and os.environ.get("RLRS_TEST_POSTGRES")):
        return False
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return False
    try:
        import psycopg
    except ImportError:
        return True  # the PostgreSQL tests skip on the missing driver themselves
    try:
        psycopg.connect(os.environ["RLRS_TEST_POSTGRES"], connect_timeout=10).close()
    except psycopg.OperationalError:
        return False
    return True


def _present() -> bool:
    """Whether either service's processes are here (someone started them, perhaps still starting)."""
    slurm = subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True).returncode == 0
    pg = subprocess.run(["pgrep", "-x", "postgres"], capture_output=True).returncode == 0
    return slurm or pg


def _start_services() -> str | None:
    """Start the services as scripts/services.sh does; None, or why they cannot be started here.
    Services someone else runs are only waited for (a server busy under load may answer late):
    never started again, never stopped by the tests."""
    if _running():
        return None
    if _present():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if _running():
                return None
            time.sleep(1.0)
        return "Slurm or PostgreSQL runs here but does not answer (scontrol ping, a connection) within 120 s"
    if os.geteuid() != 0:
        return "not root: start them with `sudo scripts/services.sh start` and source what it prints"
    missing = [c for c in ("slurmctld", "munged", "pg_ctlcluster") if shutil.which(c) is None]
    if missing:
        return f"{', '.join(missing)} not installed: ./setup.sh installs Debian's slurm-wlm, munge and postgresql as root"
    run = subprocess.run([str(_SERVICES), "start"], capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        return f"scripts/services.sh start failed: {run.stderr.strip()[-400:]}"
    for line in run.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        os.environ[key] = value
    _started.append("services")
    return None


@pytest.fixture(scope="session")
def services():
    why = _start_services()
    if why:
        _missing(why)
    yield
    if _started:
        subprocess.run([str(_SERVICES), "stop"], capture_output=True, timeout=120)
        _started.clear()


@pytest.fixture(scope="session")
def slurm_cluster(services):
    """The local Slurm cluster's config file ($SLURM_CONF), for sbatch/squeue and submitit."""
    conf = os.environ["SLURM_CONF"]
    if subprocess.run(["scontrol", "ping"], capture_output=True).returncode != 0:
        _missing(f"slurmctld does not answer `scontrol ping` (SLURM_CONF={conf})")
    return conf


@pytest.fixture
def postgres_url(services):
    """A fresh, empty PostgreSQL database for one test (dropped after it): its URL."""
    psycopg = pytest.importorskip("psycopg")
    base = os.environ["RLRS_TEST_POSTGRES"]
    name = f"rlrs_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as err:
        _missing(f"PostgreSQL at {base.split('@')[-1]} does not answer: {err}")
    yield base.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
