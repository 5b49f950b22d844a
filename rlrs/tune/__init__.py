"""``rlrs tune``: the paper's local search (appendix A.1) over a plan, trials kept in an Optuna study.

    $ rlrs tune --model micro-moe --budget 60 --out runs/tune             # trials in runs/tune/study.db
    $ rlrs tune --worker --out runs/tune                                   # a second process joins it
    $ rlrs tune --model micro-moe --budget 60 --out runs/tune --prune     # stop hopeless trials early
    $ rlrs tune --model micro-moe --budget-steps 20000 --sampler hyperband --out runs/tune-hb  # cheaper
    $ rlrs train --model micro-moe --plan runs/tune/tuned.toml --out runs/best

or from Python::

    >>> from rlrs.tune import TuneSpec, tune
    >>> spec = TuneSpec.create("tiny-moe", steps=40)
    >>> spec.params[:3]
    ('plan.base_lr', 'plan.embedding.start', 'plan.embedding.end')
    >>> result = tune(spec, "runs/tune", budget=20)     # doctest: +SKIP
    >>> result.best_loss, result.plan_path              # doctest: +SKIP

**What is searched** (:func:`default_params`): η_base, λ_start and λ_end of every component the
model has (not ``other``), weight decay and ``model.init_scale``, each multiplied by the factors
{1/5, 2/3, 1, 3/2, 5} (:mod:`rlrs.search`). The objective is the final eval loss of a short run
(``--steps``, default 300), averaged over ``--seeds`` runs (seed ``i`` sets ``train.seed`` and
``train.data_seed`` to their configured value + ``i``). A run that diverges or crashes is the worst
result: its trial is recorded as FAIL with the error and the search goes on.

**Other searches** (``--sampler tpe|cmaes|gp|hyperband``, :mod:`rlrs.tune.samplers`): Optuna's
samplers over the same parameters in log scale, and Hyperband, whose promoted points resume their
runs; each chooses by the mean over new seeds of its best points (``--confirm``), not by the
luckiest run. ``--budget-steps N`` caps the training steps of any search, restarts included.

**Outputs** in ``--out``: ``tuned.toml`` (the best plan so far, rewritten atomically after every
improvement: a plan file every ``--plan`` takes), ``tuned_config.json`` (only when a searched model
or train setting such as ``model.init_scale`` moved: it is not part of a plan; reuse it with
``--config tuned_config.json`` or ``--set model.init_scale=...``), ``search.json`` (every step's
candidates, losses, choice and compute: ``TuneResult.record``, read back typed with
``load_search``), ``runs/`` (one content-addressed run directory per
training run; its checkpoints are deleted once its trial is recorded) and, by default,
``study.db``.

**Persistence.** Every evaluated point is one trial of an Optuna study (``--storage``, default
``sqlite:///OUT/study.db``; any Optuna RDB URL such as ``postgresql://user@host/db`` or
``mysql+pymysql://...``, or ``journal:///path/to/file.log`` for Optuna's journal file storage). A
trial holds the point (``params`` and the user attr ``key``), its loss (value), the mean eval curve,
and the compute it used; FAIL trials hold ``error``, PRUNED trials ``note``. Rerunning the same
command replays the deterministic search: finished trials are read back, not rerun, so a killed
search resumes exactly where it stopped, and training runs cut short resume from their checkpoint.
A larger ``--budget`` on a rerun extends a finished search.

**Workers.** ``rlrs tune --worker --out DIR [--storage URL]`` joins the search in that study: it
reads the settings from the study, so every process runs the same deterministic search and they
agree on every step. For each step a process *claims* candidates nobody has: it creates a RUNNING
trial carrying the point. Trial numbers give all claims one order, so the first claim of a point
wins; a later one, or one beyond the global budget (distinct points whose trial is not abandoned),
is abandoned (state FAIL, user attr ``abandoned``) without being evaluated. Every Optuna storage
numbers trials in one order (RDB storages lock the study row to create a trial; a journal is one
log), so all processes agree which claims hold: the budget is exact and no point is evaluated
twice, across processes and machines. A process then trains its
claims, reports them, and waits for the claims of others to finish before the search moves on.
A claim whose process died (same host: its pid is gone; any host: no heartbeat for
``--stale-after`` seconds) is abandoned, so its point is claimed again. Use SQLite or a journal file
for processes on one machine, a database server for many machines (``postgresql://`` runs through
psycopg 3). A study of a ``--command`` search holds the command every worker runs: a worker runs it
only if given the same ``--command`` (and ``--cwd``) or ``--trust-study-command``.

**Storage failures.** A connection to a database server that drops is retried (about a minute,
``study.RETRY_DELAYS``); if it stays lost, or the disk under the study is full, the search stops with
a :class:`~rlrs.tune.study.StorageError` naming the storage (password hidden): finished trials are
kept, and rerunning the same command continues.

**Early stopping** (``--prune``): the candidates of a step are trained to 25% and 50% of their
steps first (``--prune-at``); one whose mean eval loss there is worse than the current best point's
at the same step by more than ``--prune-margin`` (relative, default 2%) is stopped and recorded as
PRUNED with the compute it used; the others resume from their checkpoints. ``search.json`` reports
the total compute (training steps and tokens over all trials) to compare with and without it. A
``--command`` script resumes only if it checkpoints into ``$RLRS_RUN_DIR`` (:mod:`rlrs.script`); one
that starts over from step 0 when a survivor is continued runs those steps again: they are counted
(``compute.steps``, of them ``compute.rerun_steps``) and ``search.json``'s ``notes`` name its runs
and the fix. Tokens are counted for a command only if it reports them (``rlrs.report(step, loss,
tokens=...)``); ``compute.tokens`` is otherwise ``null``.
"""

from .driver import SearchRecord, TuneResult, join, load_search, tune
from .objective import Objective, Partial, SyntheticObjective, TrainingObjective, make_objective
from .spec import DEFAULT_STEPS, Pruning, TuneSpec, default_params
from .study import STUDY_NAME, StudyOptions, open_storage, storage_url
from .cli import add_commands, cmd_tune

__all__ = ["DEFAULT_STEPS", "STUDY_NAME", "Objective", "Partial", "Pruning", "SearchRecord", "StudyOptions",
           "SyntheticObjective", "TrainingObjective", "TuneResult", "TuneSpec", "add_commands", "cmd_tune",
           "default_params", "join", "load_search", "make_objective", "open_storage", "storage_url", "tune"]
