"""Multi-fidelity pruning: training steps to a good front with no pruning, our Pareto-aware rule, MO-ASHA.

What it measures
    For each space, three methods search side by side with the same step budget, and each is scored by
    the hypervolume of its front of COMPLETE (fully trained) students in the plane (final accuracy, max;
    log10 latency, min) as a function of the cumulative training steps it spent:

    * ``none``: the ``bo`` searcher (``make_searcher('bo', known_objectives=latency)``, the latency
      measured on the untrained student, as the pipeline measures it), every trial trained in full,
      ``--trials`` trials. Its step total is the budget of the other two.
    * ``ours``: the same searcher and seed; at each rung a trial is evaluated on the rung slice and
      ``nas_distill.search.pruner.decide`` rules on it against every other trial of the study at that
      rung (read back from the study's ``rungs`` attrs, with the final values of those that finished: a
      rung stops nobody until they show it ranks students as the end does). A stopped trial is told PRUNED with its
      ``rungs`` and ``early_stop`` attrs (the stored form the pipeline writes) and costs only the steps
      it trained; the searcher never proposes its architecture again. Runs until the budget is spent.
    * ``moasha``: Syne Tune's MO-ASHA (``pip install 'nas-distill[bench]'``; the row says so when it
      is missing) with its own random proposals (a configuration it proposes a second time is skipped
      at no cost), minimising (1 - accuracy, latency) at the same rungs, same budget. Its time
      attribute counts rungs (1, eta, eta^2, ...), so its milestones are exactly our rung steps.

    A bound, per space: the steps a pruner that knew every student's final accuracy would need on the
    no-pruning search's own proposals (the fewest of them whose front reaches the target trained in full,
    every other one to the first rung). It is optimistic: with pruning the searcher no longer sees the
    final values of the stopped students, and proposes differently.

    Printed per space and method (median over ``--seeds`` searcher seeds): the steps and CPU seconds
    spent until the hypervolume first reaches 0.99 x the ``none`` run's final hypervolume of the same
    seed (``n/a`` when never), the final hypervolume (the front at the budget) and its ratio to
    ``none``'s, trials started / completed / pruned. The last line is one JSON object
    ``{"<space>": {"<method>": {"steps_to_099": N or null, "final_hv": x}, ...}, ...}``.

How the students are trained (the training table)
    Real flash distillation on CPU, one torch thread: each architecture a method proposes is built
    (``torch.manual_seed(0)``), distilled once through the engine's distiller
    (``engine('pytorch').make_distiller(...)``, the pipeline's ``FlashDistiller``, training seed 0) and
    the result is kept for every method and seed (memoised, on demand). During that one training, the
    distiller's ``after_step`` hook evaluates the student at every rung step of its budget
    (``distiller.rung_steps(fractions)``: fractions of the regular-distillation steps, after knowledge
    transfer) with the engine's evaluator on the rung slice (the first ``--rung-examples`` examples of
    the evaluation set), then puts it back in training mode. A rung evaluation does not change training:
    for the first architecture of each space the bench trains it again without the hook and asserts that
    the weights and the final accuracy are identical, so the rung values are exactly what a pruned trial
    would have seen. Recorded per architecture: rung accuracies, final accuracy (whole evaluation set),
    latency (the evaluator's median at batch 1 on the untrained student, measured for every point before
    the search: the pipeline's known objective, and the objective scored), CPU seconds per training step
    and per rung evaluation. A trial's CPU cost is its steps x its arch's CPU seconds per step, plus its
    rung evaluations.

Spaces
    ``digits``: the demo task (``nas_distill.demo``: scikit-learn's digits, the cached ViT teacher), its
    108-student space, flash distillation shortened as in ``bench/measure_digits_students.py`` (50
    knowledge-transfer + 150 regular steps). Reference point: accuracy 0.1 (chance, 10 classes), the
    slowest student's latency.
    ``text``: ``nas_distill.tasks.text`` on data built here, offline: sentences of filler words and three
    sentiment words, each maybe negated by ``not``; the label is the sign of the negation-aware sum (so a
    student must read word order). WordPiece tokenizer over the 42-word vocabulary, 20 tokens; a BERT
    teacher (hidden 64, 3 layers) trained briefly here; 72 BERT students (hidden 16-64, 1-3 layers, 2 or 4
    heads, FFN 32-128), 50 knowledge-transfer (encoder output, MSE) + 150 regular steps (KL at T=2 +
    labels). Reference point: accuracy 0.5 (chance, 2 classes), the slowest student's latency.

    Teachers are trained once and kept in ``--work-dir`` (a later run reuses them); ``--table-cache DIR``
    keeps the training table between runs too (JSON), for development only: a figure worth quoting comes
    from a run that trains its table.

Usage::

    OMP_NUM_THREADS=1 python bench/multi_fidelity.py                      # both spaces, 30 seeds
    OMP_NUM_THREADS=1 python bench/multi_fidelity.py --spaces text --seeds 1 --trials 8   # a smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

SPACES = ("digits", "text")
METHODS = ("none", "ours", "moasha")
TARGET = 0.99
INIT_SEED = 0
TRAIN_SEED = 0
METRICS = ["accuracy", "latency"]
DIRECTIONS = ["maximize", "minimize"]


# ---------------------------------------------------------------------------------------------- spaces
@dataclass
class Space:
    name: str
    search_space: dict
    teacher: Any
    train: Any
    eval: Any
    config: Any  # the AutoDistillationConfig: its .flash and .evaluation settings
    builder: Callable[[dict], Any]
    reference_accuracy: float
    notes: str = ""


def digits_space(work_dir: Path) -> Space:
    from nas_distill.autodistill import load_config
    from nas_distill.demo import demo_config
    from nas_distill.tasks import digits

    folder = work_dir / "digits"
    data = demo_config(str(folder))
    flash = data["auto_distillation"]["flash_distillation"]
    flash["knowledge_transfer"]["train_steps"] = [50]
    flash["regular_distillation"]["train_steps"] = [150]
    started = time.process_time()
    teacher, metrics = digits.load_or_train_teacher(folder)
    train, val, _ = digits.datasets()
    notes = (f"teacher val accuracy {metrics.get('val_accuracy', float('nan')):.3f}, "
             f"{time.process_time() - started:.0f} CPU s to load or train")
    return Space("digits", dict(digits.STUDENT_SPACE), teacher, train, val, load_config(data),
                 digits.student_builder, reference_accuracy=0.1, notes=notes)


TEXT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEXT_FILLER = ["the", "a", "movie", "was", "film", "it", "is", "this", "plot", "actors", "and", "very",
               "story", "quite", "so", "really"]
TEXT_POS = ["good", "great", "fine", "nice", "happy", "love", "best", "fun", "clever", "warm"]
TEXT_NEG = ["bad", "awful", "poor", "sad", "hate", "worst", "dull", "ugly", "weak", "cold"]
TEXT_WORDS = TEXT_SPECIAL + TEXT_FILLER + TEXT_POS + TEXT_NEG + ["not"]
TEXT_SPACE = {"hidden_size": [16, 32, 48, 64], "num_hidden_layers": [1, 2, 3], "num_attention_heads": [2, 4],
              "intermediate_size": [32, 64, 128]}
TEXT_TEACHER = {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 128}
TEXT_MAX_LENGTH = 20
NEGATION = 0.2


def text_rows(n: int, seed: int) -> list[dict]:
    """Sentences of 4-8 filler words and three sentiment words, each negated by ``not`` with probability
    :data:`NEGATION`; label 1 when more of them are positive after negation."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        clauses, score = [], 0
        for _ in range(3):
            positive = rng.random() < 0.5
            negated = rng.random() < NEGATION
            word = rng.choice(TEXT_POS if positive else TEXT_NEG)
            clauses.append(["not", word] if negated else [word])
            score += 1 if positive != negated else -1
        parts = [[w] for w in rng.choices(TEXT_FILLER, k=rng.randint(4, 8))] + clauses
        rng.shuffle(parts)
        rows.append({"text": " ".join(w for part in parts for w in part), "label": int(score > 0)})
    return rows


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def train_text_teacher(folder: Path, train_csv: Path, steps: int = 1500, batch_size: int = 64,
                       lr: float = 1e-3) -> dict:
    """A BERT teacher trained on the text rows (AdamW, warm-up then cosine), saved with its tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from nas_distill.tasks.text import tokenize

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(TEXT_WORDS)}, do_lower_case=True)
    with train_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    data = tokenize(tokenizer, [r["text"] for r in rows], [int(r["label"]) for r in rows], TEXT_MAX_LENGTH)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(TEXT_WORDS), max_position_embeddings=32, num_labels=2,
                        **TEXT_TEACHER)
    model = BertForSequenceClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = steps // 20
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / warmup if s < warmup else
                                                  0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))))
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=generator)
        batch = {k: v[idx] for k, v in data.features.items()}
        loss = model(**batch, labels=data.labels[idx]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"steps": steps}


def text_space(work_dir: Path) -> Space:
    from nas_distill.autodistill import load_config
    from nas_distill.engines import engine
    from nas_distill.tasks.text import text_task

    folder = work_dir / "text"
    folder.mkdir(parents=True, exist_ok=True)
    train_csv = _write_csv(folder / "train.csv", text_rows(3000, seed=1))
    eval_csv = _write_csv(folder / "eval.csv", text_rows(800, seed=2))
    started = time.process_time()
    teacher_dir = folder / "teacher"
    if not (teacher_dir / "config.json").exists():
        train_text_teacher(teacher_dir, train_csv)
    task = text_task(None, teacher=str(teacher_dir), data={"train": str(train_csv), "eval": str(eval_csv)},
                     max_length=TEXT_MAX_LENGTH)
    data = {
        "model": {"framework": "pytorch"},
        "auto_distillation": {
            "search": {"search_space": TEXT_SPACE, "search_algorithm": "bo", "metrics": METRICS,
                       "higher_is_better": [True, False], "max_trials": 10},
            "flash_distillation": {
                "knowledge_transfer": {"block_names": ["bert.encoder"],
                                       "layer_mappings_for_knowledge_transfer": [[["bert.encoder", "bert.encoder"]]],
                                       "loss_types": [["MSE"]], "train_steps": [50]},
                "regular_distillation": {"loss_types": [["KL"]], "add_origin_loss": [True], "temperature": [2.0],
                                         "train_steps": [150]},
                "learning_rate": 2e-3, "batch_size": 64, "device": "cpu"},
            "evaluation": {"latency_batch_size": 1, "latency_warmup": 5, "latency_repeats": 30, "device": "cpu"},
            "study": {"run_dir": str(folder), "study_name": "text-bench"},
        },
    }
    config = load_config(data)
    accuracy = engine("pytorch").evaluate(task["teacher_model"], task["eval_dataset"], ["accuracy"],
                                          settings=config.evaluation)["accuracy"]
    notes = f"teacher eval accuracy {accuracy:.3f}, {time.process_time() - started:.0f} CPU s to load or train"
    return Space("text", dict(TEXT_SPACE), task["teacher_model"], task["train_dataset"], task["eval_dataset"],
                 config, task["model_builder"], reference_accuracy=0.5, notes=notes)


BUILDERS = {"digits": digits_space, "text": text_space}


# ------------------------------------------------------------------------------------- training table
def arch_id(arch: dict) -> str:
    return json.dumps(dict(sorted(arch.items())))


@dataclass
class Run:
    """One architecture, distilled once: what every method is fed."""

    rungs: dict[int, float]   # rung step -> accuracy on the rung slice
    accuracy: float           # final accuracy, whole evaluation set
    cpu_per_step: float
    rung_cpu: dict[int, float] = field(default_factory=dict)  # rung step -> CPU s of its evaluation


class Table:
    """The training table of one space: latencies of every point, runs on demand."""

    def __init__(self, space: Space, fractions: list[float], rung_examples: int, cache: Path | None):
        import optuna

        from nas_distill.engines import engine
        from nas_distill.search.space import SearchSpace

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self.space = space
        self.points = SearchSpace(space.search_space)
        self.engine = engine("pytorch")
        self.distiller = self.engine.make_distiller(space.teacher, space.train, space.config.flash,
                                                    cache_dir=None)
        self.total = self.distiller.total_steps
        self.rung_steps = self.distiller.rung_steps(fractions)
        self.rung_slice = self.engine.first_rows(space.eval, rung_examples)
        self.runs: dict[str, Run] = {}
        self.trained = 0
        self.train_cpu = 0.0
        self.cache = cache / f"{space.name}.json" if cache else None
        stored = json.loads(self.cache.read_text()) if self.cache and self.cache.exists() else {}
        if stored:
            runs = stored["runs"] if stored.get("total") == self.total else {}
            for key, r in runs.items():
                run = Run(rungs={int(s): a for s, a in r["rungs"].items()}, accuracy=r["accuracy"],
                          cpu_per_step=r["cpu_per_step"], rung_cpu={int(s): c for s, c in r["rung_cpu"].items()})
                if set(self.rung_steps) <= set(run.rungs):  # else trained again, for these rungs
                    self.runs[key] = run
        started = time.process_time()
        archs = [self.points.point(i) for i in range(len(self.points))]
        # a cached table keeps its latencies too: a run from it then repeats the searches exactly
        self.latency_cached = all(arch_id(a) in stored.get("latency", {}) for a in archs)
        self.latency = {arch_id(a): stored["latency"][arch_id(a)] if self.latency_cached else self._latency(a)
                        for a in archs}
        self.latency_cpu = time.process_time() - started
        slowest = max(self.latency.values())
        self.reference = np.array([space.reference_accuracy, -math.log10(slowest)])

    def _latency(self, arch: dict) -> float:
        import torch

        torch.manual_seed(INIT_SEED)
        model = self.space.builder(arch)
        return float(self.engine.evaluate(model, self.space.eval, ["latency"],
                                          settings=self.space.config.evaluation)["latency"])

    def get(self, arch: dict) -> Run:
        key = arch_id(arch)
        if key not in self.runs:
            self.runs[key] = self._train(arch)[0]
            self.trained += 1
            if self.cache:
                self.cache.parent.mkdir(parents=True, exist_ok=True)
                self.cache.write_text(json.dumps({"total": self.total, "latency": self.latency,
                                                  "runs": {k: asdict(r) for k, r in self.runs.items()}}))
        return self.runs[key]

    def _train(self, arch: dict, hook: bool = True) -> tuple[Run, dict]:
        import torch

        torch.manual_seed(INIT_SEED)
        model = self.space.builder(arch)
        rungs: dict[int, float] = {}
        rung_cpu: dict[int, float] = {}
        wanted = set(self.rung_steps)

        def after_step(done: int, total: int) -> None:
            if done in wanted:
                started = time.process_time()
                rungs[done] = self.engine.evaluate(model, self.rung_slice, ["accuracy"],
                                                   settings=self.space.config.evaluation)["accuracy"]
                model.train()
                rung_cpu[done] = time.process_time() - started

        self.distiller.after_step = after_step if hook else None
        started = time.process_time()
        try:
            self.distiller.distill(model, seed=TRAIN_SEED)
        finally:
            self.distiller.after_step = None
        cpu = time.process_time() - started - sum(rung_cpu.values())
        self.train_cpu += cpu + sum(rung_cpu.values())
        accuracy = float(self.engine.evaluate(model, self.space.eval, ["accuracy"],
                                              settings=self.space.config.evaluation)["accuracy"])
        run = Run(rungs=rungs, accuracy=accuracy, cpu_per_step=cpu / self.total, rung_cpu=rung_cpu)
        return run, {k: v.detach().clone() for k, v in model.state_dict().items()}

    def check_hook_changes_nothing(self, arch: dict) -> str:
        """Train ``arch`` with and without the rung hook; the weights and final accuracy must be equal."""
        import torch

        with_hook, weights_with = self._train(arch, hook=True)
        without, weights_without = self._train(arch, hook=False)
        same = weights_with.keys() == weights_without.keys() and all(
            torch.equal(weights_with[k], weights_without[k]) for k in weights_with)
        assert same and with_hook.accuracy == without.accuracy, (
            f"{self.space.name}: the rung evaluations changed training of {arch}: accuracy "
            f"{with_hook.accuracy} with the hook, {without.accuracy} without")
        self.runs.setdefault(arch_id(arch), with_hook)
        return (f"rung hook changes nothing: {arch} trained with and without it, identical weights, "
                f"final accuracy {with_hook.accuracy:.4f} both times")

    def point(self, arch: dict) -> np.ndarray:
        """The arch's higher-is-better point in the scored plane (accuracy, -log10 latency)."""
        return np.array([self.get(arch).accuracy, -math.log10(self.latency[arch_id(arch)])])


# ------------------------------------------------------------------------------------------- methods
@dataclass
class Trial:
    number: int
    arch: dict
    state: str           # COMPLETE / PRUNED
    steps: int           # steps charged
    cpu: float           # CPU seconds charged
    stopped_at: int | None = None


@dataclass
class Outcome:
    trials: list[Trial] = field(default_factory=list)
    skipped: int = 0  # proposals of an architecture already tried, not started

    def curve(self, table: Table) -> list[tuple[int, float, float]]:
        """``(cumulative steps, cumulative CPU s, hypervolume of the COMPLETE front)`` after each trial."""
        from nas_distill.search.pareto import hypervolume

        steps, cpu, points, out = 0, 0.0, [], []
        for t in self.trials:
            steps += t.steps
            cpu += t.cpu
            if t.state == "COMPLETE":
                points.append(table.point(t.arch))
            hv = hypervolume(np.array(points), table.reference) if points else 0.0
            out.append((steps, cpu, hv))
        return out


def charge(table: Table, arch: dict, steps: int) -> float:
    """CPU seconds of training ``arch`` for ``steps`` steps, with the rung evaluations on the way."""
    run = table.get(arch)
    return run.cpu_per_step * steps + sum(c for s, c in run.rung_cpu.items() if s <= steps)


def make_bo(table: Table, seed: int):
    from nas_distill.search.searchers import make_searcher

    def known(arch):  # the latency measured on the untrained student, higher-is-better sign
        return {1: -table.latency[arch_id(arch)]}

    searcher = make_searcher("bo", table.space.search_space, seed=seed, directions=DIRECTIONS,
                             known_objectives=known)
    # the names the rung records use: the searcher reads stopped trials' partial values by them
    searcher.study.set_metric_names(METRICS)
    return searcher


def run_none(table: Table, seed: int, n_trials: int) -> Outcome:
    searcher = make_bo(table, seed)
    out = Outcome()
    for _ in range(n_trials):
        arch = searcher.suggestion()
        number = searcher.current_trial.number
        run = table.get(arch)
        searcher.feedback([run.accuracy, -table.latency[arch_id(arch)]])
        out.trials.append(Trial(number, arch, "COMPLETE", table.total, charge(table, arch, table.total)))
    return out


def run_ours(table: Table, seed: int, budget: int, eta: int) -> Outcome:
    """The pipeline's rung step, on the table: the rung records are written to the trial and read back from
    the study for the decision (``nas_distill.rungs``), a stopped trial is told PRUNED with ``early_stop``."""
    from optuna.trial import TrialState

    from nas_distill.errors import SearchSpaceExhausted
    from nas_distill.rungs import StoppedEarly, minimize_form, results_at
    from nas_distill.search.pruner import RungResult, decide
    from nas_distill.vocabulary import EARLY_STOP_ATTR, RUNGS_ATTR

    searcher = make_bo(table, seed)
    study = searcher.study
    higher = {"accuracy": True, "latency": False}
    out = Outcome()
    spent = 0
    while spent < budget:
        try:
            arch = searcher.suggestion()
        except SearchSpaceExhausted:
            break
        trial = searcher.current_trial
        run = table.get(arch)
        known = {"latency": table.latency[arch_id(arch)]}
        records, stopped = [], None
        for step in table.rung_steps:
            values = {"accuracy": run.rungs[step]}
            records.append({"step": step, "of": table.total, "values": values, "known": known})
            trial.set_user_attr(RUNGS_ATTR, records)
            own = RungResult(trial.number, minimize_form(["accuracy"], values, higher),
                             minimize_form(["latency"], known, higher))
            others = [r for r in results_at(study.get_trials(deepcopy=False), step, table.total, ["accuracy"],
                                            ["latency"], higher, METRICS) if r.number != trial.number]
            decision = decide(own, others, eta)
            if not decision.keep:
                trial.set_user_attr(EARLY_STOP_ATTR, StoppedEarly(step, table.total, decision.reason, others).record)
                searcher.tell(trial, state=TrialState.PRUNED)
                stopped = step
                break
        if stopped is None:
            searcher.feedback([run.accuracy, -known["latency"]])
        steps = stopped or table.total
        spent += steps
        out.trials.append(Trial(trial.number, arch, "PRUNED" if stopped else "COMPLETE", steps,
                                charge(table, arch, steps), stopped_at=stopped))
    return out


def moasha_missing() -> str | None:
    try:
        from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA  # noqa: F401
    except ImportError as exc:
        return f"not installed ({exc.name}): pip install 'nas-distill[bench]'"
    return None


def run_moasha(table: Table, seed: int, budget: int, eta: int) -> Outcome:
    import datetime

    from syne_tune.backend.trial_status import Trial as SyneTrial
    from syne_tune.config_space import choice
    from syne_tune.optimizer.scheduler import SchedulerDecision
    from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA

    # MO-ASHA draws its configurations and brackets from numpy's global generator.
    np.random.seed(seed)
    n_rungs = len(table.rung_steps)
    milestones = [eta**k for k in range(n_rungs)]
    scheduler = MOASHA({k: choice(list(v)) for k, v in table.space.search_space.items()},
                       metrics=["error", "latency"], do_minimize=True, time_attr="rung", max_t=eta**n_rungs,
                       grace_period=1, reduction_factor=eta, random_seed=seed)
    got = sorted(level for level, _ in scheduler.brackets[0].rungs)
    if got != milestones + [eta**n_rungs]:
        raise RuntimeError(f"MO-ASHA's milestones {got} are not the rungs {milestones} + the end")
    out = Outcome()
    seen: set[str] = set()
    spent, skipped = 0, 0
    while spent < budget and len(seen) < len(table.points):
        config = scheduler.suggest().config
        arch = {k: config[k] for k in table.space.search_space}
        if arch_id(arch) in seen:
            skipped += 1
            continue
        seen.add(arch_id(arch))
        number = len(out.trials)
        trial = SyneTrial(trial_id=number, config=config, creation_time=datetime.datetime.now())
        scheduler.on_trial_add(trial)
        run = table.get(arch)
        latency = table.latency[arch_id(arch)]
        stopped = None
        for level, step in zip(milestones, table.rung_steps):
            result = {"rung": level, "error": 1.0 - run.rungs[step], "latency": latency}
            if scheduler.on_trial_result(trial, result) == SchedulerDecision.STOP:
                stopped = step
                break
        if stopped is None:
            scheduler.on_trial_complete(trial, {"rung": eta**n_rungs, "error": 1.0 - run.accuracy,
                                                "latency": latency})
        steps = stopped or table.total
        spent += steps
        out.trials.append(Trial(number, arch, "PRUNED" if stopped else "COMPLETE", steps,
                                charge(table, arch, steps), stopped_at=stopped))
    out.skipped = skipped
    return out


# -------------------------------------------------------------------------------------------- scoring
@dataclass
class Score:
    steps_to: float        # inf when never
    cpu_to: float
    final_hv: float
    started: int
    completed: int
    pruned: int
    spent: int


def score(outcome: Outcome, table: Table, target_hv: float, budget: int) -> Score:
    curve = outcome.curve(table)
    # a trial that ends past the budget is not counted: the method had to stop there
    reached = next(((s, c) for s, c, hv in curve if hv >= target_hv and s <= budget), (math.inf, math.inf))
    within = [hv for s, _, hv in curve if s <= budget]
    return Score(steps_to=reached[0], cpu_to=reached[1], final_hv=within[-1] if within else 0.0,
                 started=len(outcome.trials), completed=sum(t.state == "COMPLETE" for t in outcome.trials),
                 pruned=sum(t.state == "PRUNED" for t in outcome.trials),
                 spent=curve[-1][0] if curve else 0)


def oracle_bound(none: Outcome, table: Table, target_hv: float) -> float:
    """The fewest steps any pruning rule could reach ``target_hv`` with, were the searcher to propose what
    it proposed without pruning: the no-pruning trials up to its first reaching the target, the fewest of
    them whose front reaches it trained in full, every other one stopped at the first rung (inf: never)."""
    import itertools

    from nas_distill.search.pareto import find_pareto_front, hypervolume

    reached = next((i for i, (_, _, hv) in enumerate(none.curve(table)) if hv >= target_hv), None)
    if reached is None:
        return math.inf
    points = np.array([table.point(t.arch) for t in none.trials[:reached + 1]])
    front = list(find_pareto_front(points))
    needed = next(size for size in range(1, len(front) + 1)
                  if any(hypervolume(points[list(subset)], table.reference) >= target_hv
                         for subset in itertools.combinations(front, size)))
    return needed * table.total + (reached + 1 - needed) * table.rung_steps[0]


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def fmt(value: float, spec: str) -> str:
    return "n/a" if not math.isfinite(value) else format(value, spec)


def acceptance(figures: dict, budget: int, hv_ratio: float) -> str:
    """The goal's figures for ``ours``: steps to 0.99 against the no-pruning run's budget and its own steps
    to 0.99 (goal <= 0.5), final hypervolume against no pruning's (goal >= 0.99), steps against MO-ASHA's."""
    def steps(method):
        value = figures.get(method, {}).get("steps_to_099", None)
        return math.inf if value is None else value

    ours, none = steps("ours"), steps("none")
    parts = [f"ours: steps to 0.99 = {fmt(ours / budget, '.2f')} of none's budget {budget} and "
             f"{fmt(ours / none, '.2f')} of none's own steps to 0.99 (goal <= 0.5)",
             f"final HV {hv_ratio:.3f} of none's (median over seeds; goal >= 0.99)"]
    if "moasha" in figures:
        moasha = steps("moasha")
        if math.isinf(ours) and math.isinf(moasha):
            parts.append("neither ours nor MO-ASHA reaches 0.99 (median)")
        else:
            parts.append(f"steps to 0.99 {'<=' if ours <= moasha else '>'} MO-ASHA's "
                         f"({fmt(ours, '.0f')} vs {fmt(moasha, '.0f')})")
    return "; ".join(parts)


# ----------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spaces", default=",".join(SPACES), help="comma-separated spaces (default: both)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods (default: all)")
    parser.add_argument("--seeds", type=int, default=30, help="searcher seeds (default 30)")
    parser.add_argument("--trials", type=int, default=24, help="trials of the no-pruning run (default 24)")
    parser.add_argument("--eta", type=int, default=3, help="reduction factor (default 3)")
    parser.add_argument("--rungs", default=None,
                        help="comma-separated rung fractions of the regular-distillation steps "
                             "(default 1/eta^2, 1/eta)")
    parser.add_argument("--rung-examples", type=int, default=512, help="examples of the rung slice (default 512)")
    parser.add_argument("--work-dir", default="/tmp/nas-distill-mfbench", help="teachers and data")
    parser.add_argument("--table-cache", default=None, help="keep the training table here between runs (JSON)")
    args = parser.parse_args(argv)

    import torch

    from nas_distill.search.pruner import default_fractions

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    spaces = [s.strip() for s in args.spaces.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name in spaces:
        if name not in SPACES:
            parser.error(f"--spaces: unknown space {name!r}; known: {', '.join(SPACES)}")
    for name in methods:
        if name not in METHODS:
            parser.error(f"--methods: unknown method {name!r}; known: {', '.join(METHODS)}")
    if "none" not in methods:
        parser.error("--methods: 'none' is needed (it sets the budget and the target)")
    fractions = ([float(f) for f in args.rungs.split(",")] if args.rungs else default_fractions(args.eta))
    skipped = {}
    if "moasha" in methods and (why := moasha_missing()):
        skipped["moasha"] = why
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(args.table_cache) if args.table_cache else None
    wall = time.perf_counter()
    cpu0 = time.process_time()
    summary: dict[str, dict] = {}
    for name in spaces:
        space = BUILDERS[name](work_dir)
        table = Table(space, fractions, args.rung_examples, cache)
        first = table.points.point(0)
        check = table.check_hook_changes_nothing(first)
        budget = args.trials * table.total
        print(f"\nspace {name}: {len(table.points)} students, keys {list(table.points.keys)}; {space.notes}")
        print(f"  budget per trial {table.total} steps, rungs at steps {table.rung_steps} (fractions "
              f"{[round(f, 4) for f in fractions]} of the regular-distillation steps), eta {args.eta}, rung slice "
              f"{len(table.rung_slice)} examples; every method's budget {budget} steps ({args.trials} full trials)")
        how = "read from the table cache" if table.latency_cached else \
            f"measured untrained in {table.latency_cpu:.0f} CPU s"
        print(f"  latency of every student {how}; reference "
              f"point (accuracy {space.reference_accuracy}, latency {10 ** -table.reference[1]:.3f} ms)")
        print(f"  {check}")
        results: dict[str, list[Score]] = {m: [] for m in methods}
        skipped_proposals: dict[str, list[int]] = {m: [] for m in methods}
        bounds: list[float] = []
        for seed in range(args.seeds):
            none = run_none(table, seed, args.trials)
            target = TARGET * none.curve(table)[-1][2]
            bounds.append(oracle_bound(none, table, target))
            outcomes = {"none": none}
            if "ours" in methods:
                outcomes["ours"] = run_ours(table, seed, budget, args.eta)
            if "moasha" in methods and "moasha" not in skipped:
                outcomes["moasha"] = run_moasha(table, seed, budget, args.eta)
            for method, outcome in outcomes.items():
                results[method].append(score(outcome, table, target, budget))
                skipped_proposals[method].append(outcome.skipped)
        none_hv = [s.final_hv for s in results["none"]]
        print(f"  training table: {table.trained} students distilled in {table.train_cpu:.0f} CPU s "
              f"(rung evaluations included), shared by every method and seed")
        print(f"  median over {args.seeds} seeds; target = {TARGET} x the none run's final hypervolume "
              f"of the same seed")
        print("| method | steps to 0.99 | CPU s to 0.99 | final HV | vs none | started | completed | pruned "
              "| steps spent |")
        print("|--------|--------------:|--------------:|---------:|--------:|--------:|----------:|-------:"
              "|------------:|")
        summary[name] = {}
        ratios: dict[str, float] = {}
        for method in methods:
            if method in skipped:
                print(f"| {method} | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a |  ({skipped[method]})")
                continue
            scores = results[method]
            steps_to = median([s.steps_to for s in scores])
            ratio = ratios[method] = median([s.final_hv / hv for s, hv in zip(scores, none_hv)])
            final = median([s.final_hv for s in scores])
            print(f"| {method} | {fmt(steps_to, '.0f')} | {fmt(median([s.cpu_to for s in scores]), '.1f')} "
                  f"| {final:.4f} | {ratio:.3f} | {median([s.started for s in scores]):.0f} "
                  f"| {median([s.completed for s in scores]):.0f} | {median([s.pruned for s in scores]):.0f} "
                  f"| {median([s.spent for s in scores]):.0f} |")
            per_seed = ", ".join(f"{fmt(s.steps_to, '.0f')}/{s.final_hv:.4f}" for s in scores)
            repeats = skipped_proposals[method]
            print(f"    per seed (steps to 0.99 / final HV): {per_seed}" +
                  (f"; repeated proposals skipped: median {median(repeats):.0f}" if any(repeats) else ""))
            summary[name][method] = {"steps_to_099": round(steps_to) if math.isfinite(steps_to) else None,
                                     "final_hv": round(final, 6)}
        none_steps = median([s.steps_to for s in results["none"]])
        print(f"  bound: a pruner knowing every student's final accuracy, on the no-pruning search's own "
              f"proposals, would need {fmt(median(bounds), '.0f')} steps ({fmt(median(bounds) / none_steps, '.2f')} "
              f"of none's): the students its front needs in full, every other one to the first rung "
              f"({table.rung_steps[0]} of {table.total} steps)")
        if "ours" in summary[name]:
            print("  " + acceptance(summary[name], budget, ratios["ours"]))
    print(f"\ntotal: {time.perf_counter() - wall:.0f} s wall, {time.process_time() - cpu0:.0f} s CPU")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
