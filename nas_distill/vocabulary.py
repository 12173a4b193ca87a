"""The names and defaults every layer shares: frameworks, loss types, built-in metrics, run defaults.

A leaf: it imports nothing from nas_distill, so the config, the engines (``distill/``), the searchers and
the study code can all read the same spellings without importing one another.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

# ---------------------------------------------------------------------------------------------------
# Frameworks
# ---------------------------------------------------------------------------------------------------
FRAMEWORKS = ("pytorch", "tensorflow")
#: Every accepted spelling (lower case) -> the canonical framework name.
FRAMEWORK_ALIASES = {"pytorch": "pytorch", "torch": "pytorch", "tensorflow": "tensorflow", "tf": "tensorflow"}

# ---------------------------------------------------------------------------------------------------
# Loss types (a stage means the same thing in PyTorch and in Keras)
# ---------------------------------------------------------------------------------------------------
LOSS_TYPES = ("MSE", "KL", "L1", "CE", "CosineSimilarity")
#: Lower-case spelling -> canonical loss type.
LOSS_ALIASES = {name.lower(): name for name in LOSS_TYPES}
LOSS_ALIASES.update({"cos": "CosineSimilarity", "cosine": "CosineSimilarity", "kld": "KL", "kldiv": "KL"})


def canonical_loss_type(name: str) -> str:
    """``'kl'`` -> ``'KL'``; unknown names raise ``ValueError`` listing the known ones."""
    key = str(name).strip().lower()
    if key not in LOSS_ALIASES:
        raise ValueError(f"unknown loss type {name!r}; known: {', '.join(LOSS_TYPES)}")
    return LOSS_ALIASES[key]


# ---------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------
#: What the PyTorch evaluator measures.
METRICS = ("accuracy", "latency", "params", "model_size_mb", "loss")
#: What the Keras evaluator measures (the task loss and ``compute_metrics`` are torch-only).
KERAS_METRICS = ("accuracy", "latency", "params", "model_size_mb")
#: Metric names whose default direction is "lower is better" when only a name is given.
LOWER_IS_BETTER_METRICS = frozenset({"latency", "params", "model_size_mb", "loss", "eval_loss"})
#: Built-in metrics that depend on the architecture alone (measurable on an untrained student).
BUILTIN_ARCH_METRICS = ("latency", "params", "model_size_mb")


def base_metric(name: str, known: Sequence[str] = METRICS) -> str:
    """``'eval_accuracy'`` -> ``'accuracy'``: the seed's configs name metrics the way the Hugging Face
    Trainer reports them (``eval_`` prefix). The result keeps the name the config used."""
    if name not in known and name.startswith("eval_") and name[5:] in known:
        return name[5:]
    return name


def architecture_metric_names(metrics: Sequence[str], declared: Iterable[str] = ()) -> list[str]:
    """The metrics among ``metrics`` fixed by the architecture, in their order."""
    declared = set(declared)
    return [m for m in metrics if base_metric(m) in BUILTIN_ARCH_METRICS or m in declared]


def unknown_metrics(names: Iterable[str], known: Sequence[str] = METRICS) -> list[str]:
    """The names that none of ``known`` (with or without the ``eval_`` prefix) is."""
    return [name for name in names if base_metric(name, known) not in known]


def check_metric_names(names: Iterable[str], extra: Iterable[str] = (),
                       known: Sequence[str] = METRICS) -> list[str]:
    """The names, validated: an unknown one raises ``ValueError`` listing the known ones."""
    known = list(known) + [n for n in extra if n not in known]
    names = list(names)
    bad = unknown_metrics(names, known)
    if bad:
        raise ValueError(f"unknown metric {bad[0]!r}; known metrics: {', '.join(known)} "
                         f"(an 'eval_' prefix is accepted; other names need eval_func or compute_metrics)")
    return names


# ---------------------------------------------------------------------------------------------------
# Distillation stages
# ---------------------------------------------------------------------------------------------------
KNOWLEDGE_TRANSFER = "knowledge_transfer"
REGULAR_DISTILLATION = "regular_distillation"
STAGE_KINDS = (KNOWLEDGE_TRANSFER, REGULAR_DISTILLATION)
OPTIMIZERS = ("adamw", "adam", "sgd")
CACHE_DTYPES = ("float16", "bfloat16", "float32")

# ---------------------------------------------------------------------------------------------------
# Defaults of a run
# ---------------------------------------------------------------------------------------------------
DEFAULT_STUDY_NAME = "nas-distill"
DEFAULT_RUN_DIR = "runs/default"
DEFAULT_TRAIN_STEPS = 500  # the seed's default per stage
DEFAULT_MAX_TRIALS = 3  # the seed's default
DEFAULT_SEED = 42  # the seed searchers' default
#: Seconds between a running trial's heartbeats, and of silence before it is declared dead.
DEFAULT_HEARTBEAT_INTERVAL = 10
DEFAULT_GRACE_PERIOD = 30
#: Seconds a storage call keeps retrying before its error is raised.
DEFAULT_RETRY_SECONDS = 300.0


# The pruner (search.pruner): names and defaults.
PARETO_ASHA = "pareto-asha"
NO_PRUNER = "none"
PRUNERS = (PARETO_ASHA, NO_PRUNER)
DEFAULT_PRUNER = NO_PRUNER
DEFAULT_REDUCTION_FACTOR = 3
DEFAULT_RUNG_EXAMPLES = 512
#: Trial user attrs of the pruner's stored form (see nas_distill/rungs.py): the rung records, and the stop.
RUNGS_ATTR = "rungs"
EARLY_STOP_ATTR = "early_stop"


def stopped_early(trial: Any) -> bool:
    """Whether a stored trial (an Optuna ``FrozenTrial``) is one the pruner stopped: PRUNED with the stop's
    record, not a repeat nor a trial given up before training (those are PRUNED too)."""
    return trial.state.name == "PRUNED" and EARLY_STOP_ATTR in trial.user_attrs
