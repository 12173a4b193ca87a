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

from .reporting.data import MetricInfo, TrialRow
from .reporting.table import terminal_width, trials_table

FORMAT = "nas-distill-results/1"
#: A results file is read in editors, not a terminal: its tables wrap at this width.
TEXT_FILE_WIDTH = 100


# ----------------------------------------------------------------------------------- from a study
def complete_records(study, metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One dict per COMPLETE trial: number, arch, values (raw, in metric order) and the useful attrs."""
    from optuna.trial import TrialState

    metrics = list(metrics or study.metric_names or [f"value_{i}" for i in range(len(study.directions))])
    records = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        arch = t.user_attrs.get("arch") or dict(t.params)
        rec = {
            "number": t.number,
            "arch": {k: arch[k] for k in sorted(arch)},
            "values": list(t.values),
        }
        for key in ("params", "timings", "worker", "artifact_id", "duplicate_of", "imported_from"):
            if key in t.user_attrs:
                rec[key] = t.user_attrs[key]
        records.append(rec)
    return records


def pareto_records(records: Sequence[Mapping[str, Any]], higher_is_better: Sequence[bool]) -> list[dict]:
    """The records on the Pareto front of their values (directions from ``higher_is_better``)."""
    from .search.pareto import find_pareto_front

    if not records:
        return []
    signs = [1.0 if h else -1.0 for h in higher_is_better]
    points = [[s * v for s, v in zip(signs, rec["values"])] for rec in records]
    return [dict(records[i]) for i in find_pareto_front(points)]


def study_results(study) -> dict[str, Any]:
    """Everything :func:`dump_results` writes, as a dict."""
    from .arch_metrics import summary as arch_metrics_summary
    from .study import mask_secrets

    metrics = list(study.metric_names or [f"value_{i}" for i in range(len(study.directions))])
    higher = [d.name.lower() == "maximize" for d in study.directions]
    records = complete_records(study, metrics)
    front = {rec["number"] for rec in pareto_records(records, higher)}
    for rec in records:
        rec["pareto"] = rec["number"] in front
    attrs = study.user_attrs
    return {
        "format": FORMAT,
        "study_name": study.study_name,
        "metrics": metrics,
        "higher_is_better": higher,
        "search_space": attrs.get("search_space"),
        "config": mask_secrets(attrs.get("config")),
        "counts": state_counts(study),
        "reasons": state_reasons(study),
        "stopped": _stop_reason(attrs),
        "trials": records,
        "architecture_metrics": arch_metrics_summary(study),
    }


def _stop_reason(attrs: Mapping[str, Any]) -> str | None:
    """Why the circuit breaker stopped the study (:mod:`nas_distill.breaker`), or None."""
    value = attrs.get("stopped")
    if not value:
        return None
    return str(value.get("reason")) if isinstance(value, Mapping) else str(value)


def status_data(data: Mapping[str, Any], max_trials: int | None = None) -> dict[str, Any]:
    """What ``nas-distill status --json`` prints: the budget and where the study stands against it,
    trial counts and reasons, the stop reason, and the Pareto-optimal trials."""
    complete = sum(1 for t in data["trials"] if "imported_from" not in t)
    return {
        "study_name": data["study_name"],
        "max_trials": max_trials,
        "complete": complete,
        "budget_met": None if not max_trials else complete >= max_trials,
        "counts": data.get("counts") or {},
        "reasons": data.get("reasons") or {},
        "stopped": data.get("stopped"),
        "metrics": data["metrics"],
        "higher_is_better": data["higher_is_better"],
        "pareto": [t for t in data["trials"] if t.get("pareto")],
    }


def state_counts(study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def state_reasons(study) -> dict[str, dict[str, int]]:
    """Why trials ended FAIL (their ``error_type``: ``WorkerLost``, an exception name...) or PRUNED
    (``duplicate``: another trial had the arch; ``discarded``: given up untrained in a race for the last
    budget slot), counted, so a status line can tell a crash from a trial that never trained; and which
    RUNNING trials have no live worker any more (no heartbeat for a grace period)."""
    from .study import lost_running_trials

    reasons: dict[str, dict[str, int]] = {}
    lost = lost_running_trials(study)
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "FAIL":
            why = str(t.user_attrs.get("error_type") or "unknown")
        elif t.state.name == "PRUNED":
            why = "duplicate" if "duplicate_of" in t.user_attrs else \
                "discarded" if "pruned_reason" in t.user_attrs else "pruned"
        elif t.state.name == "RUNNING" and t._trial_id in lost:
            why = "no heartbeat: worker lost"  # still RUNNING until a live worker's sweep fails it
        else:
            continue
        per_state = reasons.setdefault(t.state.name, {})
        per_state[why] = per_state.get(why, 0) + 1
    return reasons


# ---------------------------------------------------------------------------------------- files
def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix == ".json":
        return path.with_suffix(".txt"), path
    return path, path.with_suffix(".json") if path.suffix else Path(str(path) + ".json")


def dump_results(study, path: str | os.PathLike, *, metrics=None, higher_is_better=None,
                 data: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``<path>`` (text report) and the JSON next to it; returns (text path, json path).
    ``data``: :func:`study_results` already read (else it is read here)."""
    text_path, json_path = _paths(path)
    data = study_results(study) if data is None else data
    text_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(data, json_path)
    text_path.write_text(text_report(data))
    return text_path, json_path


def write_json(data: Mapping[str, Any], json_path: Path) -> None:
    """The results JSON, replaced atomically (a reader never sees half a file)."""
    json_tmp = json_path.with_name(json_path.name + ".tmp")
    json_tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=repr))
    os.replace(json_tmp, json_path)


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
        if "params" in rec:
            attrs["params"] = rec["params"]
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
def _table(records: Sequence[Mapping[str, Any]], data: Mapping[str, Any], width: int | None,
           leading: Sequence[str] = ()) -> str:
    """The one trial table (:mod:`nas_distill.reporting.table`) of result records."""

    metrics = [MetricInfo(m, "maximize" if h else "minimize", None)
               for m, h in zip(data["metrics"], data["higher_is_better"])]
    rows = [TrialRow(number=r["number"], state="COMPLETE", params=dict(r["arch"]), values=list(r["values"]),
                     n_params=r.get("params"), duration_s=None, worker=None, error=None,
                     pareto=bool(r.get("pareto"))) for r in records]
    keys = list(data.get("search_space") or {}) or None
    return trials_table(rows, metrics, keys, leading=leading, width=width)


def pareto_table(data: Mapping[str, Any], width: int | None = None) -> str:
    """The Pareto-optimal trials, best first in the first metric."""
    front = sorted((r for r in data["trials"] if r.get("pareto")), key=lambda r: r["values"][0],
                   reverse=data["higher_is_better"][0])
    return _table(front, data, width)


def status_text(data: Mapping[str, Any], max_trials: int | None = None, width: int | None = None) -> str:
    counts = data.get("counts") or {}
    order = ["COMPLETE", "RUNNING", "WAITING", "FAIL", "PRUNED"]
    reasons = data.get("reasons") or {}
    parts = []
    for state in order:
        if not counts.get(state):
            continue
        why = reasons.get(state) or {}
        detail = ", ".join(f"{k} {v}" for k, v in sorted(why.items(), key=lambda kv: (-kv[1], kv[0])))
        parts.append(f"{state.lower()} {counts[state]}" + (f" ({detail})" if detail else ""))
    budget = f" of {max_trials}" if max_trials else ""
    done = sum(1 for t in data["trials"] if "imported_from" not in t)
    lines = [
        f"study {data['study_name']!r}: {done}{budget} trials complete",
        "trials: " + (", ".join(parts) if parts else "none yet"),
        "metrics: " + ", ".join(
            f"{m} ({'higher' if h else 'lower'} is better)"
            for m, h in zip(data["metrics"], data["higher_is_better"])
        ),
    ]
    from .arch_metrics import summary_lines

    lines += summary_lines(data.get("architecture_metrics"))
    if (reasons.get("FAIL") or {}).get("Discarded"):
        lines.insert(2, "  (Discarded: asked by a worker after the budget was spent; never trained.)")
    if (reasons.get("PRUNED") or {}).get("discarded"):
        lines.insert(2, "  (discarded: asked by a worker in a race for the last budget slot; never trained.)")
    if data.get("stopped"):
        lines.insert(1, f"stopped by the circuit breaker: {data['stopped']}")
    width = width or terminal_width()
    lines = [part for line in lines for part in textwrap.wrap(line, width, subsequent_indent="  ")]
    if any(t.get("pareto") for t in data["trials"]):
        lines += ["", "Pareto front:", pareto_table(data, width)]
    return "\n".join(lines)


def text_report(data: Mapping[str, Any], width: int = TEXT_FILE_WIDTH) -> str:
    lines = [status_text(data, width=width), "", "All complete trials (* Pareto-optimal):",
             _table(data["trials"], data, width, leading=("pareto",))]
    return "\n".join(lines) + "\n"


def pareto_csv(data: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    keys = sorted({k for r in data["trials"] for k in r["arch"]})
    writer = csv.writer(buf)
    writer.writerow(["trial", *data["metrics"], "params", *keys])
    for r in data["trials"]:
        if r.get("pareto"):
            writer.writerow([r["number"], *r["values"], r.get("params", ""), *[r["arch"].get(k) for k in keys]])
    return buf.getvalue()
