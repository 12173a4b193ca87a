"""``nas-distill``: run a search, join one as a worker, and read a study.

Commands::

    nas-distill run CONFIG [--workers N]        search (N local worker processes)
    nas-distill worker CONFIG --storage URL --study NAME   join a search from anywhere
    nas-distill status [CONFIG]                 trials by state and the Pareto front
    nas-distill pareto [CONFIG] [--json|--csv]  the Pareto-optimal trials
    nas-distill report [CONFIG] [-o FILE]       an HTML report
    nas-distill dashboard [CONFIG]              optuna-dashboard on the study (127.0.0.1 by default)
    nas-distill export [CONFIG] [--trial N] -o DIR   a trained student (from_pretrained / model.keras)
    nas-distill demo                            the quickest real search there is
    nas-distill schema [-o FILE]                the JSON Schema of config files

Common flags: ``--storage URL``, ``--study NAME``, ``--run-dir DIR`` (override the config's ``study``
section), ``--debug`` (tracebacks). Errors print one line and exit non-zero. ``--help`` imports
neither torch nor Optuna.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .vocabulary import DEFAULT_RUN_DIR

PROG = "nas-distill"


class CLIError(Exception):
    """A problem to report in one line (exit code 2)."""


# ------------------------------------------------------------------------------------------ parser
def _common(p: argparse.ArgumentParser, config_required: bool = False) -> None:
    if config_required:
        p.add_argument("config", help="YAML config (with a 'task: module:function' entry point)")
    else:
        p.add_argument("config", nargs="?", help="YAML config (optional: gives storage, study and metrics)")
    p.add_argument("--storage", help="study storage URL (sqlite:///..., postgresql+psycopg://..., journal:///...;"
                                      " default: $NAS_DISTILL_STORAGE, else the config's)")
    p.add_argument("--study", "--study-name", dest="study_name", help="study name")
    p.add_argument("--run-dir", help="run folder (default study.db, artifacts)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def _run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", help="task entry point 'package.module:function' (overrides the config's)")
    p.add_argument("--max-trials", type=int, help="COMPLETE trials the study should end with")
    p.add_argument("--threads", type=int, help="torch threads per worker (default: cores // workers)")
    level = p.add_mutually_exclusive_group()
    level.add_argument("-q", "--quiet", action="store_true", help="print warnings and errors only")
    level.add_argument("-v", "--verbose", action="store_true", help="print debug lines too")
    p.add_argument("--log-format", choices=("plain", "json"), default="plain",
                   help="plain timestamped lines (default) or one JSON object per line")


def _output_flags(args) -> tuple[str, ...]:
    """The log flags of this command, for the workers it starts."""
    flags = ["--log-format", args.log_format]
    if args.quiet:
        flags.append("-q")
    if args.verbose:
        flags.append("-v")
    return tuple(flags)


def _verbosity(args) -> int:
    return -1 if args.quiet else 1 if args.verbose else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Auto-distillation on a shared Optuna study.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", help="run a search (N local worker processes)")
    _common(p, config_required=True)
    _run_flags(p)
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")

    p = sub.add_parser("worker", help="join a search as one worker")
    _common(p, config_required=True)
    _run_flags(p)
    p.add_argument("--label", help="worker name shown in progress lines and trial records")
    # Set by `run` for the workers it starts: it printed the banner and ran the dry run already.
    p.add_argument("--launched-by-run", action="store_true", help=argparse.SUPPRESS)

    p = sub.add_parser("status", help="trials by state and the Pareto front")
    _common(p)
    p.add_argument("--json", action="store_true", help="JSON output")

    p = sub.add_parser("pareto", help="the Pareto-optimal trials")
    _common(p)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON output")
    fmt.add_argument("--csv", action="store_true", help="CSV output")

    p = sub.add_parser("report", help="write an HTML report")
    _common(p)
    p.add_argument("-o", "--output", help="HTML file (default <run-dir>/report.html)")

    p = sub.add_parser("dashboard", help="start optuna-dashboard on the study")
    _common(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--wait", action="store_true",
                   help="wait for the study to be created (a dashboard started beside its workers) instead of "
                        "stopping when it does not exist")
    p.add_argument("--allow-writes", action="store_true",
                   help="let the dashboard edit notes and delete studies (default: read-only)")

    p = sub.add_parser("export", help="write a trained student, its preprocessing and a model card to a folder")
    _common(p)
    p.add_argument("--trial", type=int, help="trial number (default: best of the first metric on the front)")
    p.add_argument("-o", "--output", required=True,
                   help="folder to write: from_pretrained-able (torch), or model.keras + arch.json (Keras)")

    p = sub.add_parser("schema", help="print the JSON Schema of config files (editors complete and check with it)")
    p.add_argument("-o", "--output", help="file to write instead of printing")

    p = sub.add_parser("demo", help="run the quickest real search there is")
    p.add_argument("--run-dir", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--max-trials", type=int, default=16, help="trials (default 16)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--debug", action="store_true")
    return parser


def _version() -> str:
    from . import __version__

    return __version__


# ------------------------------------------------------------------------------------------ helpers
def _config_data(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    from .config_file import config_and_task

    return config_and_task(path)[0]


def _storage_arg(args) -> str | None:
    """``--storage``, else ``$NAS_DISTILL_STORAGE`` (every command), else None (the config's)."""
    return getattr(args, "storage", None) or os.environ.get("NAS_DISTILL_STORAGE") or None


def _study_target(args) -> tuple[str, str | None, str, int | None]:
    """(storage URL, study name or None, run dir, max_trials or None) from flags, then the config."""
    from .study import resolve_storage_url

    storage = _storage_arg(args)
    name, run_dir, max_trials = args.study_name, args.run_dir, None
    data = _config_data(getattr(args, "config", None))
    if data:
        from .autodistill import load_config

        cfg = load_config(data)
        storage = storage or cfg.study.storage
        name = name or cfg.study.study_name
        run_dir = run_dir or cfg.study.run_dir
        max_trials = cfg.max_trials
    run_dir = run_dir or DEFAULT_RUN_DIR
    url = resolve_storage_url(storage, run_dir)
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path and not Path(path).exists():
            raise CLIError(f"no study database at {path} (give --storage, --run-dir or a CONFIG)")
    return url, name, run_dir, max_trials


def _open(args):
    from .store import load_study
    from .store.budget import recorded_budget

    url, name, run_dir, max_trials = _study_target(args)
    study = load_study(url, name).study
    # The budget the workers ran to (a --max-trials override included) wins over the config's.
    max_trials = recorded_budget(study) or max_trials
    if max_trials is None:
        config = study.user_attrs.get("config") or {}
        max_trials = (config.get("auto_distillation", {}).get("search", {}) or {}).get("max_trials") \
            if isinstance(config, dict) else None
    return study, run_dir, max_trials


def _quiet_optuna(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.DEBUG if debug else optuna.logging.WARNING)
    except ImportError:  # pragma: no cover
        pass
    if not debug:
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        try:
            from optuna.exceptions import ExperimentalWarning

            warnings.filterwarnings("ignore", category=ExperimentalWarning)
        except ImportError:  # pragma: no cover
            pass


# ------------------------------------------------------------------------------------------ commands
def cmd_run(args) -> int:
    from .progress import LiveProgress, wanted
    from .workers import run_local, run_worker

    if args.workers < 1:
        raise CLIError(f"--workers must be >= 1, got {args.workers}")
    started = time.monotonic()
    target = _run_target(args, _storage_arg(args))
    _banner(target, args.workers)
    bar = wanted(_verbosity(args), args.log_format)
    opened: dict[str, Any] = {}
    with LiveProgress(target["url"], target["name"], target["budget"], enabled=bar):
        if args.workers == 1:
            code = run_worker(args.config, task=args.task, storage=_storage_arg(args), study_name=args.study_name,
                              run_dir=args.run_dir, max_trials=args.max_trials, threads=args.threads,
                              label="w0", new_run=True, opened=opened)
        else:
            code = run_local(args.config, args.workers, task=args.task, storage=_storage_arg(args),
                             study_name=args.study_name, run_dir=args.run_dir, max_trials=args.max_trials,
                             threads=args.threads, debug=args.debug, output=_output_flags(args), relay=bar)
    _final_summary(args, target, started, code, study=opened.get("study"))
    if code in (0,):
        _print_status_after_run(args)
    return code


def _run_target(args, storage: str | None) -> dict[str, Any]:
    """What a run works on, from the flags and the config: storage URL, study name, budget, search."""
    from .autodistill import load_config
    from .search.space import SearchSpace
    from .study import resolve_storage_url

    cfg = load_config(_config_data(args.config))
    run_dir = args.run_dir or cfg.study.run_dir
    algorithm = cfg.search_algorithm if isinstance(cfg.search_algorithm, str) else type(cfg.search_algorithm).__name__
    return {"url": resolve_storage_url(storage or cfg.study.storage, run_dir),
            "name": args.study_name or cfg.study.study_name, "run_dir": run_dir,
            "budget": int(args.max_trials or cfg.max_trials), "algorithm": algorithm,
            "space": len(SearchSpace(cfg.search_space)), "metrics": list(cfg.metrics),
            "stop_after_failures": cfg.study.stop_after_failures}


def _banner(target: dict[str, Any], workers: int | str) -> None:
    from . import console
    from .study import mask_url

    console.event(
        "search_started",
        f"search started: study {target['name']!r}, storage {mask_url(target['url'])}, budget "
        f"{target['budget']} trials, workers {workers}, {target['algorithm']} search over "
        f"{target['space']} architectures, metrics {', '.join(target['metrics'])}; the study stops after "
        f"{target['stop_after_failures']} failures in a row",
        study=target["name"], storage=mask_url(target["url"]), budget=target["budget"], workers=workers,
        algorithm=target["algorithm"], space=target["space"], metrics=target["metrics"])


def _final_summary(args, target: dict[str, Any], started: float, code: int, study: Any = None) -> None:
    """The last lines of a run: wall time, what the study holds, why it stopped, what to run next.

    ``study``: the worker's own study, when this process ran one. Its storage cache already holds every
    trial; opening the study afresh would build every trial again at once, a peak of tens of MiB per
    worker on a study of thousands of trials.
    """
    import logging

    from . import breaker, console
    from .progress import study_counts
    from .study import load_study, recorded_budget
    from .workers import format_seconds

    elapsed = format_seconds(time.monotonic() - started)
    try:
        study = study if study is not None else load_study(target["url"], target["name"])
        counts, budget, stopped = study_counts(study), recorded_budget(study) or target["budget"], \
            breaker.stopped(study)
    except Exception as exc:  # noqa: BLE001 - the study may not exist (a setup error before it)
        console.event("search_finished", f"search ended after {elapsed} (exit {code}) before the study "
                                         f"could be read: {exc}", level=logging.ERROR, exit_code=code)
        return
    verb = "finished" if code == 0 else "interrupted" if code == 130 else "stopped"
    why = f"; stopped by the circuit breaker: {stopped}" if stopped else ""
    early = f"{counts['stopped']} stopped early, " if counts["stopped"] else ""
    console.event(
        "search_finished",
        f"search {verb} after {elapsed}: {counts['done']} of {budget} trials complete, {counts['failed']} "
        f"failed, {early}{counts['pruned']} pruned{why} (exit {code})",
        level=logging.INFO if code == 0 else logging.ERROR, seconds=round(time.monotonic() - started, 3),
        complete=counts["done"], budget=budget, failed=counts["failed"], stopped_early=counts["stopped"],
        pruned=counts["pruned"], stopped=stopped, exit_code=code)
    where = f" {args.config}" + (f" --study {args.study_name}" if args.study_name else "") + \
        (f" --run-dir {args.run_dir}" if args.run_dir else "") + (" --storage URL" if args.storage else "")
    commands = [f"{PROG} {c}{where}" for c in ("status", "pareto", "report", "dashboard")]
    commands.append(f"{PROG} export{where} -o student/")
    console.event("next_commands", "next: " + "  |  ".join(commands), commands=commands)


def _print_status_after_run(args) -> None:
    if not sys.stdout.isatty():
        return
    try:
        print(_status_text(args))
    except Exception:  # noqa: BLE001 - the run itself succeeded
        pass


def cmd_worker(args) -> int:
    from .progress import LiveProgress, wanted
    from .workers import run_worker

    storage = _storage_arg(args)
    if args.launched_by_run:  # `run` prints the banner, the bar and the summary, and ran the dry run
        return run_worker(args.config, task=args.task, storage=storage, study_name=args.study_name,
                          run_dir=args.run_dir, max_trials=args.max_trials, threads=args.threads,
                          label=args.label, check_setup=False)
    started = time.monotonic()
    target = _run_target(args, storage)
    _banner(target, f"this one ({args.label})" if args.label else "this one")
    opened: dict[str, Any] = {}
    with LiveProgress(target["url"], target["name"], target["budget"],
                      enabled=wanted(_verbosity(args), args.log_format)):
        code = run_worker(args.config, task=args.task, storage=storage, study_name=args.study_name,
                          run_dir=args.run_dir, max_trials=args.max_trials, threads=args.threads,
                          label=args.label, opened=opened)
    _final_summary(args, target, started, code, study=opened.get("study"))
    return code


def _status_text(args) -> str:
    from .results import read_status, status_text

    study, _, max_trials = _open(args)
    return status_text(read_status(study), max_trials=max_trials)


def cmd_status(args) -> int:
    if args.json:
        from .results import read_status, status_data

        study, _, max_trials = _open(args)
        print(json.dumps(status_data(read_status(study), max_trials), indent=2, default=str))
        return 0
    print(_status_text(args))
    return 0


def cmd_pareto(args) -> int:
    from .records import read_study
    from .results import pareto_csv, pareto_table

    study, _, _ = _open(args)
    records = read_study(study)
    if args.json:
        print(json.dumps({"study_name": records.study_name, "metrics": [m.name for m in records.metrics],
                          "higher_is_better": [m.higher_is_better for m in records.metrics],
                          "trials": [t.to_result() for t in records.pareto]}, indent=2))
    elif args.csv:
        sys.stdout.write(pareto_csv(records))
    else:
        print(pareto_table(records))
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    study, run_dir, _ = _open(args)
    out = Path(args.output or Path(run_dir) / "report.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    print(write_report(study, out.parent, filename=out.name))
    return 0


def cmd_dashboard(args) -> int:
    try:
        import optuna_dashboard  # noqa: F401 - only checks that the extra is installed
    except ImportError:
        raise CLIError("optuna-dashboard is not installed (pip install 'nas-distill[dashboard]')") from None
    from .reporting.dashboard import check_port_free, launch_dashboard
    from .store import make_storage, mask_url

    url, name, run_dir, _ = _study_target(args)
    # Reading creates nothing, unless --wait: then the workers started beside it may not have created
    # the storage's schema yet.
    storage = make_storage(url, create=args.wait)
    _require_study(storage, name, url, wait=args.wait)
    problem = check_port_free(args.host, args.port)
    if problem:
        raise CLIError(problem)
    print(f"optuna-dashboard on http://{args.host}:{args.port}/ (storage {mask_url(url)})", flush=True)
    # launch_dashboard also pushes the hypervolume-history figure, which optuna-dashboard lacks.
    launch_dashboard(storage, Path(run_dir) / "artifacts", host=args.host, port=args.port, study_name=name,
                     allow_writes=args.allow_writes)
    return 0


def _require_study(storage, name: str | None, url: str, wait: bool = False) -> None:
    """The dashboard of a study that does not exist would serve an empty page: say so instead (or, with
    ``wait``, wait for its workers to create it)."""
    import time

    import optuna

    from .store import mask_url

    names = optuna.get_all_study_names(storage)
    if wait and not (name in names if name else names):
        print(f"waiting for study {name or '(any)'!r} to be created in {mask_url(url)}", flush=True)
        while not (name in names if name else names):
            time.sleep(1.0)
            names = optuna.get_all_study_names(storage)
    if name and name not in names:
        known = f"; its studies: {', '.join(sorted(names))}" if names else "; it holds no study yet"
        raise CLIError(f"no study {name!r} in {mask_url(url)}{known} (give --study)")
    if not names:
        raise CLIError(f"{mask_url(url)} holds no study yet (start a search first)")


def cmd_export(args) -> int:
    from optuna.trial import TrialState

    from .export import export_student
    from .records import read_study

    study, run_dir, _ = _open(args)
    if args.trial is None:
        records = read_study(study)
        if not records.pareto:
            raise CLIError("the study has no COMPLETE trial to export")
        number = records.best_first(records.pareto)[0].number
    else:
        number = args.trial
    trials = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not trials:
        raise CLIError(f"no trial {number} in study {study.study_name!r}")
    trial = trials[0]
    if trial.state != TrialState.COMPLETE:
        raise CLIError(f"trial {number} is {trial.state.name}, not COMPLETE")
    if not trial.user_attrs.get("artifact_id"):
        raise CLIError(f"trial {number} has no saved student (artifact_id)")
    out = export_student(study, trial, run_dir, args.output)
    print(f"trial {number} -> {out}")
    return 0


def cmd_demo(args) -> int:
    from . import demo

    return demo.main(run_dir=args.run_dir, max_trials=args.max_trials, workers=args.workers, debug=args.debug)


def cmd_schema(args) -> int:
    from .settings import schema_text

    if args.output:
        Path(args.output).write_text(schema_text(), encoding="utf-8")
    else:
        sys.stdout.write(schema_text())
    return 0


COMMANDS = {
    "run": cmd_run,
    "worker": cmd_worker,
    "status": cmd_status,
    "pareto": cmd_pareto,
    "report": cmd_report,
    "dashboard": cmd_dashboard,
    "export": cmd_export,
    "demo": cmd_demo,
    "schema": cmd_schema,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    _quiet_optuna(debug)
    if args.command in ("run", "worker"):
        from . import console

        console.configure(_verbosity(args), args.log_format, debug=debug)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `nas-distill pareto --csv | head`
        return 0
    except Exception as exc:  # noqa: BLE001 - one line, no traceback (unless --debug)
        if debug:
            raise
        from .errors import ConfigError
        from .store.classify import storage_error_text
        from .store.secrets import mask_url

        kind = "config error" if isinstance(exc, ConfigError) else "error"
        message = None if isinstance(exc, ConfigError) else storage_error_text(exc)
        message = message or (str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        message = mask_url(message)
        print(f"{PROG}: {kind}: {message}", file=sys.stderr)
        return 2 if isinstance(exc, (ConfigError, CLIError)) else 1


if __name__ == "__main__":
    sys.exit(main())
