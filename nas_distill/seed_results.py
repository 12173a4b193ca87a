"""The seed's results folder (``AutoDistillationResults/``): its text files, and reading an old one back.

Written here, in the seed's line formats (scripts that parse them keep working):

* ``Trial_{k}_results.txt`` after the k-th completed trial, ``Final_results.txt`` at the end of a search:
  ``==== All Search Results ====`` then one line per completed trial ``key_value,key_value: {metrics}
  Paras: <millions>M`` (keys sorted, metrics as the dict ``{name: value}`` in the config's order), then
  ``==== Best Search Results ====`` and the Pareto front, numbered ``1. ...``;
* ``lastest_results.json`` (the seed's spelling): the results as :func:`nas_distill.results.study_results`
  gives them, and ``lastest_results.txt``, the same as a readable table. The seed's pickled
  ``lastest_results.npy`` is never written.

Read back by :func:`read_results_folder` for a resume: ``lastest_results.json``; else an old
``lastest_results.npy`` through :func:`load_old_npy`, a restricted unpickler that rebuilds only dicts,
tuples, lists, strings, numbers and numpy scalars / arrays and refuses any other object before it is
built (nothing in the file is ever called except numpy's own array and scalar constructors); else the
``Final_results.txt`` / latest ``Trial_*_results.txt`` text.
"""

from __future__ import annotations

import ast
import logging
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .atomic_file import write_text_atomic

log = logging.getLogger(__name__)

FOLDER = "AutoDistillationResults"
LATEST_JSON = "lastest_results.json"
LATEST_NPY = "lastest_results.npy"
FINAL_TEXT = "Final_results.txt"
ALL_HEADER = "=" * 30 + " All Search Results " + "=" * 30
BEST_HEADER = "=" * 30 + " Best Search Results " + "=" * 30
_TRIAL_TEXT = re.compile(r"Trial_(\d+)_results\.txt")


class UnsafeResultsFile(ValueError):
    """An old results file holds something other than plain data; it was not loaded."""


# ----------------------------------------------------------------------------------------- writing
def trial_file(folder: str | os.PathLike, k: int) -> Path:
    return Path(folder) / f"Trial_{int(k)}_results.txt"


def _arch_text(arch: Mapping[str, Any]) -> str:
    return ",".join(f"{k}_{arch[k]}" for k in sorted(arch))


def _params_text(params: Any) -> str:
    return str(params / 10**6) if isinstance(params, (int, float)) else "nan"


def _line(rec: Mapping[str, Any], metrics: Sequence[str]) -> str:
    values = dict(zip(metrics, rec["values"]))
    return f"{_arch_text(rec['arch'])}: {values} Paras: {_params_text(rec.get('params'))}M"


def results_text(data: Mapping[str, Any]) -> str:
    """The seed's results text for ``data`` (:func:`nas_distill.results.study_results`)."""
    metrics = list(data["metrics"])
    lines = [ALL_HEADER, ""]
    lines += [_line(rec, metrics) for rec in data["trials"]]
    lines += ["", "", "", BEST_HEADER, ""]
    lines += [f"{i}. {_line(rec, metrics)}" for i, rec in enumerate(
        (r for r in data["trials"] if r.get("pareto")), start=1)]
    return "\n".join(lines) + "\n"


def write_results(study, text_path: str | os.PathLike, *, table: bool = True) -> Path:
    """``text_path`` in the seed's format (replaced atomically: a script polling it never reads half a
    file), and beside it ``lastest_results.json`` with, when ``table``, its readable table
    ``lastest_results.txt`` (:func:`nas_distill.results.dump_results`)."""
    from .results import dump_results, read_status, study_results, write_json

    records = read_status(study)
    data = study_results(records=records)
    text_path = Path(text_path)
    text_path.parent.mkdir(parents=True, exist_ok=True)
    if table:
        dump_results(study, text_path.parent / LATEST_JSON, records=records)
    else:
        write_json(data, text_path.parent / LATEST_JSON)
    write_text_atomic(text_path, results_text(data))
    return text_path


# ----------------------------------------------------------------------------------------- reading
def has_results(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return folder.is_dir() and (
        (folder / LATEST_JSON).is_file() or (folder / LATEST_NPY).is_file() or _latest_text(folder) is not None)


def read_results_folder(path: str | os.PathLike, search_space: Mapping[str, Sequence[Any]],
                        metrics: Sequence[str]) -> dict[str, Any]:
    """Results (``{"metrics", "trials": [{"arch", "values", "params"?}]}``) from a results folder or an
    old ``.npy`` / ``.txt`` file; see the module docstring for the order of preference."""
    from .results import read_results

    path = Path(path)
    if path.is_dir():
        for name in (LATEST_JSON, "search_results.json"):
            if (path / name).is_file():
                return read_results(path / name)
        if (path / LATEST_NPY).is_file():
            path = path / LATEST_NPY
        else:
            text = _latest_text(path)
            if text is None:
                raise FileNotFoundError(f"{path}: no {LATEST_JSON}, {LATEST_NPY}, {FINAL_TEXT} or "
                                        f"Trial_*_results.txt to resume from")
            path = text
    if path.suffix == ".npy":
        return _results_from_old_dict(load_old_npy(path), search_space, metrics, path)
    if path.suffix == ".txt":
        return {"metrics": list(metrics), "trials": parse_results_text(path, search_space, metrics)}
    return read_results(path)


def _latest_text(folder: Path) -> Path | None:
    if (folder / FINAL_TEXT).is_file():
        return folder / FINAL_TEXT
    trials = []
    for p in folder.glob("Trial_*_results.txt"):
        m = _TRIAL_TEXT.fullmatch(p.name)
        if m:
            trials.append((int(m.group(1)), p))
    return max(trials)[1] if trials else None  # each Trial file holds every result up to it


# ------------------------------------------------------------------------------ the old pickled .npy
def _numpy_constructors() -> dict[tuple[str, str], Any]:
    """The only callables an old ``np.save`` of plain data needs, under both numpy 1 and 2 module names.
    Taken from numpy's own pickling (``__reduce__``), not imported by name."""
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


class _PlainDataUnpickler(pickle.Unpickler):
    """Rebuilds containers and numbers (pickle opcodes that call nothing) and numpy arrays / scalars;
    any other global a pickle names is refused before it is looked up, so it is never called."""

    def __init__(self, file, source: Any):
        super().__init__(file)
        self._source = source
        self._allowed = _numpy_constructors()

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise UnsafeResultsFile(
                f"{self._source}: refused to load {module}.{name}: an old results file may hold only "
                f"dicts, tuples, lists, strings, numbers and numpy arrays (nothing else is unpickled)")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeResultsFile(f"{self._source}: refused a persistent reference in the pickle")


def load_old_npy(path: str | os.PathLike) -> Any:
    """The object an old ``np.save(path, obj, allow_pickle=True)`` stored, when it is plain data.

    The ``.npy`` header is read with numpy's format functions; an object array is rebuilt by
    :class:`_PlainDataUnpickler` (``np.load(allow_pickle=True)`` is never used), anything else with
    ``np.load(allow_pickle=False)``. A 0-d object array (what saving a dict gives) is unwrapped.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                _, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except ValueError as exc:
            raise ValueError(f"{path}: not a .npy file ({exc})") from None
        if not dtype.hasobject:
            return np.load(path, allow_pickle=False)
        try:
            obj = _PlainDataUnpickler(handle, path).load()
        except UnsafeResultsFile:
            raise
        except Exception as exc:  # noqa: BLE001 - a truncated or malformed pickle stream
            raise ValueError(f"{path}: unreadable pickled data ({type(exc).__name__}: {exc})") from None
    _check_plain(obj, path)
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
        obj = obj.item()
    return obj


def _check_plain(obj: Any, source: Any, depth: int = 0) -> None:
    """What the unpickler built is plain data (a second line of defence, and a bound on nesting)."""
    if depth > 50:
        raise UnsafeResultsFile(f"{source}: nested too deeply")
    if obj is None or isinstance(obj, (str, bytes, bool, int, float, complex, np.generic)):
        if isinstance(obj, np.generic) and obj.dtype.hasobject:
            raise UnsafeResultsFile(f"{source}: an object scalar")
        return
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            for item in obj.ravel().tolist():
                _check_plain(item, source, depth + 1)
        return
    if isinstance(obj, (list, tuple)):
        for item in obj:
            _check_plain(item, source, depth + 1)
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            _check_plain(key, source, depth + 1)
            _check_plain(value, source, depth + 1)
        return
    raise UnsafeResultsFile(f"{source}: holds a {type(obj).__name__}, not plain data")


def _number(value: Any, where: str) -> float:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _metric_values(metrics_value: Any, metrics: Sequence[str], where: str) -> list[float]:
    """A seed ``eval_func`` result (dict, sequence or number) -> values in ``metrics`` order."""
    if isinstance(metrics_value, np.ndarray):
        metrics_value = metrics_value.tolist()
    if isinstance(metrics_value, Mapping):
        missing = [m for m in metrics if m not in metrics_value]
        if missing:
            raise ValueError(f"{where}: holds metrics {sorted(map(str, metrics_value))}, this search needs "
                             f"{list(metrics)} (missing {missing})")
        return [_number(metrics_value[m], f"{where}[{m!r}]") for m in metrics]
    if isinstance(metrics_value, (list, tuple)):
        if len(metrics_value) != len(metrics):
            raise ValueError(f"{where}: {len(metrics_value)} value(s), this search has {len(metrics)} "
                             f"metric(s) {list(metrics)}")
        return [_number(v, f"{where}[{i}]") for i, v in enumerate(metrics_value)]
    if len(metrics) != 1:
        raise ValueError(f"{where}: one number, this search has {len(metrics)} metrics {list(metrics)}")
    return [_number(metrics_value, where)]


def _plain_value(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _results_from_old_dict(obj: Any, search_space: Mapping[str, Sequence[Any]], metrics: Sequence[str],
                           source: Any) -> dict[str, Any]:
    """The seed's ``search_results`` ({arch vector in sorted-key order: metrics}) -> our results."""
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected the seed's dict of arch vector -> metrics, got "
                         f"{type(obj).__name__}")
    keys = sorted(search_space)
    trials = []
    for i, (vector, value) in enumerate(obj.items()):
        where = f"{source}: entry {i}"
        if not isinstance(vector, tuple) or len(vector) != len(keys):
            raise ValueError(f"{where}: the arch {vector!r} is not a vector of {len(keys)} value(s) for "
                             f"{keys}")
        arch = {k: _plain_value(v) for k, v in zip(keys, vector)}
        trials.append({"number": i, "arch": arch, "values": _metric_values(value, metrics, where)})
    return {"metrics": list(metrics), "trials": trials}


# --------------------------------------------------------------------------------- the old text
_NUMPY_REPR = re.compile(r"np\.\w+\(([^()]*)\)")  # numpy 2 prints np.float64(0.5)


def parse_results_text(path: str | os.PathLike, search_space: Mapping[str, Sequence[Any]],
                       metrics: Sequence[str]) -> list[dict[str, Any]]:
    """The "All Search Results" lines of a seed results text -> trials ``{arch, values, params}``.
    Values are read with ``ast.literal_eval`` (literals only); an arch outside the space is skipped."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        start = lines.index(ALL_HEADER) + 1
    except ValueError:
        raise ValueError(f"{path}: not a seed results text (no {ALL_HEADER.strip('= ')!r} header)") from None
    end = lines.index(BEST_HEADER) if BEST_HEADER in lines else len(lines)
    keys = sorted(search_space)
    trials = []
    for number, line in enumerate(text for text in lines[start:end] if text.strip()):
        where = f"{path}: line {line!r:.80}"
        head, sep, params = line.rpartition(" Paras: ")
        arch_text, sep2, metrics_text = head.partition(": ")
        if not sep or not sep2:
            raise ValueError(f"{where}: expected 'key_value,...: metrics Paras: <n>M'")
        arch = _parse_arch(arch_text, keys, search_space)
        if arch is None:
            log.warning("%s: not an architecture of this search space; skipped", where)
            continue
        try:
            value = ast.literal_eval(_NUMPY_REPR.sub(r"\1", metrics_text.strip()))
        except (ValueError, SyntaxError):
            raise ValueError(f"{where}: the metrics {metrics_text!r} are not a literal") from None
        rec = {"number": number, "arch": arch, "values": _metric_values(value, metrics, where)}
        try:
            rec["params"] = int(round(float(params.rstrip("M")) * 10**6))
        except ValueError:
            pass
        trials.append(rec)
    return trials


def _parse_arch(text: str, keys: Sequence[str], space: Mapping[str, Sequence[Any]]) -> dict | None:
    """``k1_v1,k2_v2`` (keys sorted, as written) -> the arch, values taken from the space by their text."""
    arch = {}
    rest = text
    for i, key in enumerate(keys):
        if not rest.startswith(key + "_"):
            return None
        rest = rest[len(key) + 1:]
        if i + 1 < len(keys):
            cut = rest.find("," + keys[i + 1] + "_")
            if cut < 0:
                return None
            value_text, rest = rest[:cut], rest[cut + 1:]
        else:
            value_text, rest = rest, ""
        matches = [v for v in space[key] if str(v) == value_text]
        if len(matches) != 1:
            return None
        arch[key] = matches[0]
    return arch
