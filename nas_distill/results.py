"""Search results as plain data: read from the study, Pareto front, JSON / text / CSV.

JSON only (no pickle): ``dump_results`` writes ``<name>.txt`` (a readable report) and ``<name>.json``
(``{"format": "nas-distill-results/1", "study_name", "metrics", "higher_is_better", "search_space",
"trials": [{"number", "arch", "values", "params", "timings", "worker", "pareto"}...]}``);
``read_results`` reads that JSON back, or a study straight from a storage URL. ``import_results``
copies results into a study as COMPLETE trials marked ``imported_from`` (not retrained, not counted in
the budget).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

from .atomic_file import write_text_atomic
from .records import N_PARAMS, StudyRecords, TrialRecord, parameter_count, read_study
from .reporting.table import terminal_width, trials_table

FORMAT = "nas-distill-results/1"
#: A results file is read in editors, not a terminal: its tables wrap at this width.
TEXT_FILE_WIDTH = 100
#: ``status`` lists at most this many of the latest trials the pruner stopped.
STOPPED_SHOWN = 10


# ----------------------------------------------------------------------------------- from a study
def read_status(study) -> StudyRecords:
    """The study's records (:func:`nas_distill.records.read_study`) with what ``status`` adds: why trials
    failed or were pruned, which RUNNING ones lost their worker, and the architecture-metrics summary."""
    from .arch_metrics import summary as arch_metrics_summary
    from .study import lost_running_trials

    records = read_study(study)
    records.reasons = records.state_reasons(lost_running_trials(study))
    records.architecture_metrics = arch_metrics_summary(study)
    return records


def study_results(study=None, *, records: StudyRecords | None = None) -> dict[str, Any]:
    """Everything :func:`dump_results` writes, as a dict (``records``: :func:`read_status` already read)."""
    from .study import mask_secrets

    records = read_status(study) if records is None else records
    return {
        "format": FORMAT,
        "study_name": records.study_name,
        "metrics": [m.name for m in records.metrics],
        "higher_is_better": [m.higher_is_better for m in records.metrics],
        "search_space": records.search_space,
        "config": mask_secrets(records.config),
        "counts": records.state_counts,
        "reasons": records.reasons,
        "stopped": records.stopped,
        "trials": [t.to_result() for t in records.complete],
        "architecture_metrics": records.architecture_metrics,
    }


def status_data(records: StudyRecords, max_trials: int | None = None) -> dict[str, Any]:
    """What ``nas-distill status --json`` prints: the budget and where the study stands against it,
    trial counts and reasons, the stop reason, the trials the pruner stopped and the training steps it
    saved, and the Pareto-optimal trials."""
    complete = _trained(records)
    return {
        "study_name": records.study_name,
        "max_trials": max_trials,
        "complete": complete,
        "budget_met": None if not max_trials else complete >= max_trials,
        "counts": records.state_counts,
        "reasons": records.reasons,
        "stopped": records.stopped,
        "stopped_early": [t.number for t in records.stopped_early],
        "steps_saved": records.steps_saved,
        "metrics": [m.name for m in records.metrics],
        "higher_is_better": [m.higher_is_better for m in records.metrics],
        "pareto": [t.to_result() for t in records.pareto],
    }


def _trained(records: StudyRecords) -> int:
    """COMPLETE trials this search trained (imported ones do not count against its budget)."""
    return sum(1 for t in records.complete if "imported_from" not in t.attrs)


# ---------------------------------------------------------------------------------------- files
def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix == ".json":
        return path.with_suffix(".txt"), path
    return path, path.with_suffix(".json") if path.suffix else Path(str(path) + ".json")


def dump_results(study, path: str | os.PathLike, *, records: StudyRecords | None = None) -> tuple[Path, Path]:
    """Write ``<path>`` (text report) and the JSON next to it; returns (text path, json path).
    ``records``: :func:`read_status` already read (else it is read here)."""
    text_path, json_path = _paths(path)
    records = read_status(study) if records is None else records
    text_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(study_results(records=records), json_path)
    text_path.write_text(text_report(records))
    return text_path, json_path


def write_json(data: Mapping[str, Any], json_path: Path) -> None:
    """The results JSON, replaced atomically (a reader never sees half a file)."""
    write_text_atomic(json_path, json.dumps(data, indent=2, sort_keys=False, default=repr))


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """Results from our JSON (a file, or a folder holding ``search_results.json``) or a storage URL.

    A URL may end in ``#study_name`` to pick a study.
    """
    text = str(path)
    if "://" in text:
        from .study import load_study

        url, _, name = text.partition("#")
        return study_results(load_study(url, name or None))
    p = Path(path)
    if p.is_dir():
        candidates = [p / "search_results.json", p / "AutoDistillationSearch" / "search_results.json"]
        found = [c for c in candidates if c.exists()]
        if not found:
            raise FileNotFoundError(f"no search_results.json in {p}")
        p = found[0]
    elif p.suffix != ".json" and p.with_suffix(".json").exists():
        p = p.with_suffix(".json")
    try:  # JSON only: a pickle (or anything else) renamed .json is refused here, never unpickled
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p}: not a nas-distill results file (not JSON: {exc})") from None
    if not isinstance(data, dict) or "trials" not in data or "metrics" not in data:
        raise ValueError(f"{p}: not a nas-distill results file (expected keys 'metrics' and 'trials')")
    _check_trials(data, p)
    return data


def _check_trials(data: Mapping[str, Any], source: Any) -> None:
    """A results file is someone else's data: each trial must be ``{arch: {name: scalar}, values:
    [number, ...]}`` before anything indexes or hashes it."""
    scalar = (str, int, float, bool, type(None))
    if not isinstance(data["trials"], list) or not isinstance(data["metrics"], list):
        raise ValueError(f"{source}: 'metrics' and 'trials' must be lists")
    for i, rec in enumerate(data["trials"]):
        arch, values = (rec.get("arch"), rec.get("values")) if isinstance(rec, dict) else (None, None)
        if not isinstance(arch, dict) or not all(isinstance(v, scalar) for v in arch.values()):
            raise ValueError(f"{source}: trials[{i}].arch must map names to plain values, got {arch!r:.200}")
        if not isinstance(values, list) or len(values) != len(data["metrics"]) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{source}: trials[{i}].values must be {len(data['metrics'])} number(s), "
                             f"got {values!r:.200}")


def import_results(study, results: Mapping[str, Any], *, metrics, search_space, source: str) -> int:
    """Add the results' trials to ``study`` as COMPLETE trials marked ``imported_from``.

    Archs already COMPLETE in the study, archs outside the search space and results with other metrics
    are skipped. Every trial is checked before the first is added (a bad record imports nothing), and a
    value that is not a finite number (``Infinity``, ``NaN``) is refused: it would dominate the front.
    Returns the number imported.
    """
    import optuna
    from optuna.trial import TrialState

    from .search.space import SearchSpace

    if list(results["metrics"]) != list(metrics):
        raise ValueError(f"results have metrics {results['metrics']}, this search has {list(metrics)}")
    space = SearchSpace(search_space)
    distributions = space.distributions()
    have = {json.dumps(t.params, sort_keys=True)
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    trials = []
    for i, rec in enumerate(results["trials"]):
        arch = rec["arch"]
        if arch not in space:
            continue
        key = json.dumps({k: arch[k] for k in space.keys}, sort_keys=True)
        if key in have:
            continue
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in rec["values"]):
            raise ValueError(f"{source}: trials[{i}].values must be finite numbers, got {rec['values']!r:.200}; "
                             f"nothing was imported")
        attrs = {"arch": arch, "imported_from": source, "imported_number": rec.get("number")}
        for name, value in zip(metrics, rec["values"]):
            attrs[name] = value
        if parameter_count(rec) is not None:
            attrs[N_PARAMS] = parameter_count(rec)
        trials.append(optuna.trial.create_trial(
            state=TrialState.COMPLETE,
            params={k: arch[k] for k in space.keys},
            distributions=distributions,
            values=list(rec["values"]),
            user_attrs=attrs,
            system_attrs={"nas_distill:claim": space.index_of(arch)},
        ))
        have.add(key)
    study.add_trials(trials)
    return len(trials)


# ---------------------------------------------------------------------------------------- text
def _table(records: StudyRecords, trials: Sequence[TrialRecord], width: int | None,
           leading: Sequence[str] = (), metrics: bool = True) -> str:
    """``trials`` in the one trial table; a ``rungs`` column when the study has rung records."""
    keys = list(records.search_space or {}) or None
    trailing = ("rungs",) if records.has_rungs else ()
    return trials_table(trials, records.metrics if metrics else [], keys, leading=leading, trailing=trailing,
                        width=width)


def _pruner_line(records: StudyRecords) -> list[str]:
    stopped = records.stopped_early
    if not stopped:
        return []
    planned = sum(t.early_stop.of for t in stopped)
    return [f"pruner: {len(stopped)} trial{'s' if len(stopped) != 1 else ''} stopped early, "
            f"{records.steps_saved} training steps saved (of the {planned} they planned)"]


def _stopped_section(records: StudyRecords, width: int) -> list[str]:
    """The latest trials the pruner stopped: their arch and rungs, then why each was stopped."""
    stopped = records.stopped_early
    if not stopped:
        return []
    shown = stopped[-STOPPED_SHOWN:]
    more = f" (latest {len(shown)} of {len(stopped)})" if len(shown) < len(stopped) else ""
    lines = ["", f"Stopped early by the pruner{more}:", _table(records, shown, width, metrics=False)]
    for t in shown:
        why = f"#{t.number} at step {t.early_stop.step} of {t.early_stop.of}: {t.early_stop.reason or '-'}"
        lines += textwrap.wrap(why, width, initial_indent="  ", subsequent_indent="    ")
    return lines


def pareto_table(records: StudyRecords, width: int | None = None) -> str:
    """The Pareto-optimal trials, best first in the first metric."""
    return _table(records, records.best_first(records.pareto), width)


def status_text(records: StudyRecords, max_trials: int | None = None, width: int | None = None) -> str:
    """What ``nas-distill status`` prints (``records`` from :func:`read_status`)."""
    counts = records.state_counts
    order = ["COMPLETE", "RUNNING", "WAITING", "FAIL", "PRUNED"]
    reasons = records.reasons
    parts = []
    for state in order:
        if not counts.get(state):
            continue
        why = reasons.get(state) or {}
        detail = ", ".join(f"{k} {v}" for k, v in sorted(why.items(), key=lambda kv: (-kv[1], kv[0])))
        parts.append(f"{state.lower()} {counts[state]}" + (f" ({detail})" if detail else ""))
    budget = f" of {max_trials}" if max_trials else ""
    lines = [
        f"study {records.study_name!r}: {_trained(records)}{budget} trials complete",
        "trials: " + (", ".join(parts) if parts else "none yet"),
        "metrics: " + ", ".join(
            f"{m.name} ({'higher' if m.higher_is_better else 'lower'} is better)" for m in records.metrics),
    ]
    from .arch_metrics import summary_lines

    lines += _pruner_line(records)
    lines += summary_lines(records.architecture_metrics)
    if (reasons.get("FAIL") or {}).get("Discarded"):
        lines.insert(2, "  (Discarded: asked by a worker after the budget was spent; never trained.)")
    if (reasons.get("PRUNED") or {}).get("discarded"):
        lines.insert(2, "  (discarded: asked by a worker in a race for the last budget slot; never trained.)")
    if records.stopped:
        lines.insert(1, f"stopped by the circuit breaker: {records.stopped}")
    width = width or terminal_width()
    lines = [part for line in lines for part in textwrap.wrap(line, width, subsequent_indent="  ")]
    if records.pareto:
        lines += ["", "Pareto front:", pareto_table(records, width)]
    lines += _stopped_section(records, width)
    return "\n".join(lines)


def text_report(records: StudyRecords, width: int = TEXT_FILE_WIDTH) -> str:
    """The results text file: the status, then every complete trial (``*`` marks the Pareto front)."""
    lines = [status_text(records, width=width), "", "All complete trials (* Pareto-optimal):",
             _table(records, records.complete, width, leading=("pareto",))]
    return "\n".join(lines) + "\n"


def pareto_csv(records: StudyRecords) -> str:
    """The Pareto-optimal trials as CSV: trial, each metric, the parameter count, each arch key."""
    buf = io.StringIO()
    keys = sorted({k for t in records.complete for k in t.arch})
    writer = csv.writer(buf)
    writer.writerow(["trial", *(m.name for m in records.metrics), "params", *keys])
    for t in records.pareto:
        writer.writerow([t.number, *t.values, "" if t.n_params is None else t.n_params,
                         *[t.arch.get(k) for k in keys]])
    return buf.getvalue()
