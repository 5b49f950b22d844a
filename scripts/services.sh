#!/usr/bin/env bash
# Start or stop the real services some tests (and a user trying rlrs's cluster features on one
# machine) need: a single-node Slurm cluster (munged, slurmctld, slurmd) and a PostgreSQL server.
#   scripts/services.sh start    start both (as root); prints the lines to `source` for the tests
#   scripts/services.sh stop     stop what `start` started
#   scripts/services.sh env      print the environment lines again
# Everything it writes lives in $RLRS_SERVICES_DIR (default /tmp/rlrs-services): slurm.conf, the
# daemons' state, logs and pid files, and env.sh with
#   SLURM_CONF=.../slurm.conf                        (sbatch, squeue, scancel and submitit read it)
#   RLRS_TEST_POSTGRES=postgresql://rlrs:rlrs@localhost:5432/rlrs_test
# The tests use a service when its variable is set and skip with the reason when it is not; CI
# (.ci/run) starts both, so there nothing skips.
set -euo pipefail
DIR=${RLRS_SERVICES_DIR:-/tmp/rlrs-services}
PG_VERSION=${PG_VERSION:-15}
say() { echo "services: $*" >&2; }

need_root() {
  if [[ $(id -u) != 0 ]]; then
    say "must run as root (it starts munged, slurmctld, slurmd and PostgreSQL)"; exit 1
  fi
}

write_env() {
  {
    echo "export SLURM_CONF=$DIR/slurm.conf"
    echo "export RLRS_TEST_POSTGRES=postgresql://rlrs:rlrs@localhost:5432/rlrs_test"
  } >"$DIR/env.sh"
  cat "$DIR/env.sh"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS >= deadline )); then say "$what did not come up within ${limit}s"; return 1; fi
    sleep 0.2
  done
}

start_slurm() {
  for cmd in munged slurmctld slurmd sinfo; do
    command -v $cmd >/dev/null || { say "$cmd missing: apt-get install slurm-wlm munge (./setup.sh does, as root)"; exit 1; }
  done
  mkdir -p "$DIR/slurm/state" "$DIR/slurm/spool" "$DIR/munge"
  if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
  if ! pgrep -x munged >/dev/null; then
    su -s /bin/sh munge -c "munged --force" || munged --force
  fi
  wait_for 10 munged munge -n
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
  cat >"$DIR/slurm.conf" <<EOF
ClusterName=rlrs
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/slurm/state
SlurmdSpoolDir=$DIR/slurm/spool
SlurmctldPidFile=$DIR/slurm/slurmctld.pid
SlurmdPidFile=$DIR/slurm/slurmd.pid
SlurmctldLogFile=$DIR/slurm/slurmctld.log
SlurmdLogFile=$DIR/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
MinJobAge=300
KillWait=5
# A loaded machine (the whole test suite on 2 cores) can take long to end a cancelled job's
# processes; Slurm's default of 60 s then drains the node ("Kill task failed") for every later job.
UnkillableStepTimeout=300
InactiveLimit=0
OverTimeLimit=0
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF=$DIR/slurm.conf
  # Slurm's commands without $SLURM_CONF read /etc/slurm/slurm.conf: point it here unless a real
  # cluster's configuration is already there.
  if [[ ! -e /etc/slurm/slurm.conf || $(readlink /etc/slurm/slurm.conf) == "$SLURM_CONF" ]]; then
    mkdir -p /etc/slurm && ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf
  fi
  if scontrol ping 2>/dev/null | grep -q UP && pgrep -x slurmd >/dev/null; then
    if sinfo -h -o %t | grep -q drain; then  # e.g. "Kill task failed": this one-node test cluster needs it back
      say "resuming the drained node ($(sinfo -h -R -o '%E' | head -1))"
      scontrol update nodename="$(hostname -s)" state=resume
    fi
    say "Slurm already up (jobs of others left running): $(sinfo -h -o '%P %D %t %c CPUs')"
    return
  fi
  pkill -x slurmctld 2>/dev/null || true
  pkill -x slurmd 2>/dev/null || true
  slurmctld -c -f "$SLURM_CONF"   # -c: a clean start, no jobs left from an earlier run
  wait_for 20 slurmctld scontrol ping
  slurmd -f "$SLURM_CONF"
  wait_for 30 "the Slurm node" bash -c "sinfo -h -o %t | grep -Eq '^(idle|mix|alloc)'"
  say "Slurm up: $(sinfo -h -o '%P %D %t %c CPUs')"
}

start_postgres() {
  command -v pg_ctlcluster >/dev/null || { say "pg_ctlcluster missing: apt-get install postgresql (./setup.sh does, as root)"; exit 1; }
  if ! pg_lsclusters -h | awk '{print $1, $2}' | grep -qx "$PG_VERSION main"; then
    pg_createcluster "$PG_VERSION" main >&2
  fi
  # Its messages go to stderr: stdout carries only the environment lines (eval'd by .ci/run).
  pg_ctlcluster "$PG_VERSION" main start >&2 2>/dev/null || pg_ctlcluster "$PG_VERSION" main status >/dev/null
  wait_for 20 PostgreSQL su postgres -c "psql -qAtc 'select 1'"
  su postgres -c "psql -qAtc \"select 1 from pg_roles where rolname='rlrs'\"" | grep -q 1 \
    || su postgres -c "psql -qc \"create role rlrs login password 'rlrs' createdb\""
  su postgres -c "psql -qAtc \"select 1 from pg_database where datname='rlrs_test'\"" | grep -q 1 \
    || su postgres -c "createdb -O rlrs rlrs_test"
  say "PostgreSQL up: postgresql://rlrs:***@localhost:5432/rlrs_test"
}

stop_all() {
  if [[ -f $DIR/slurm.conf ]]; then
    SLURM_CONF=$DIR/slurm.conf scancel --full --quiet --user "$(id -un)" 2>/dev/null || true
  fi
  for f in "$DIR/slurm/slurmd.pid" "$DIR/slurm/slurmctld.pid"; do
    [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null || true
  done
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  pkill -x munged 2>/dev/null || true
  if [[ $(readlink /etc/slurm/slurm.conf 2>/dev/null) == "$DIR/slurm.conf" ]]; then rm -f /etc/slurm/slurm.conf; fi
  if command -v pg_ctlcluster >/dev/null; then pg_ctlcluster "$PG_VERSION" main stop 2>/dev/null || true; fi
  say "stopped"
}

case ${1:-} in
  start) need_root; mkdir -p "$DIR"; start_slurm; start_postgres; write_env ;;
  stop) need_root; stop_all ;;
  env) cat "$DIR/env.sh" ;;
  *) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p;}' "$0"; exit 2 ;;
esac
