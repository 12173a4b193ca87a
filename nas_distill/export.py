"""``nas-distill export``: a trained student as a folder that works without this package.

What the folder holds (a Hugging Face student; a Keras one has ``model.keras`` instead of the first two):

* ``config.json`` + ``model.safetensors``: ``from_pretrained``-able; ``config.json``'s ``id2label`` holds
  the label names (from the task's model builder);
* the preprocessing config the task gave (``preprocessor_config.json`` of an image processor, or the
  tokenizer's files), saved with every student, so ``transformers.pipeline(task, model=folder)`` runs;
* ``arch.json``: the architecture (the trial's params);
* ``nas_distill.json``: study, trial, architecture, every metric with its direction, the parameter
  count, the label names;
* ``README.md``: a short model card (front matter for the Hugging Face Hub, how it was found, its
  figures, how to run it).

Every file is made readable by the group (and folders searchable): a student is often exported to a
shared folder, and the artifact store's temporary files are private to their writer.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from .records import parameter_count

#: ``config.json`` architectures suffix -> the ``transformers.pipeline`` task that runs it.
_PIPELINE_TAGS = {
    "ForImageClassification": "image-classification",
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForCausalLM": "text-generation",
}


def pipeline_tag(model_config: dict[str, Any]) -> str | None:
    """The ``pipeline`` task of a ``config.json`` (from its ``architectures``), else ``None``."""
    for arch in model_config.get("architectures") or []:
        for suffix, tag in _PIPELINE_TAGS.items():
            if str(arch).endswith(suffix):
                return tag
    return None


def _label_order(key: Any) -> tuple[int, Any]:
    text = str(key)
    return (0, int(text)) if text.lstrip("-").isdigit() else (1, text)


def student_summary(study: Any, trial: Any, model_config: dict[str, Any]) -> dict[str, Any]:
    """What ``nas_distill.json`` holds."""
    directions = [d.name.lower() for d in study.directions]
    names = list(study.metric_names or [f"value_{i}" for i in range(len(directions))])
    id2label = model_config.get("id2label") or {}
    return {
        "study_name": study.study_name,
        "trial": trial.number,
        "architecture": dict(trial.params),
        "metrics": {name: value for name, value in zip(names, trial.values)},
        "directions": dict(zip(names, directions)),
        "params": parameter_count(trial.user_attrs),
        "labels": [id2label[k] for k in sorted(id2label, key=_label_order)] if id2label else None,
        "pipeline_tag": pipeline_tag(model_config),
    }


def model_card(summary: dict[str, Any], files: list[str]) -> str:
    """A short ``README.md`` for the exported student."""
    tag = summary["pipeline_tag"]
    front = ["---", "library_name: transformers" if tag else "library_name: keras",
             *([f"pipeline_tag: {tag}"] if tag else []), "tags:", "- nas-distill", "- knowledge-distillation",
             "---"]
    arch = "\n".join(f"| `{k}` | {v} |" for k, v in summary["architecture"].items())
    metrics = "\n".join(
        f"| {name} | {value:.6g} | {'higher' if summary['directions'][name] == 'maximize' else 'lower'} is better |"
        for name, value in summary["metrics"].items())
    params = f" It has {summary['params']:,} parameters." if isinstance(summary["params"], int) else ""
    labels = f"\n\nLabels (`config.json` `id2label`): {', '.join(map(str, summary['labels']))}." \
        if summary["labels"] else ""
    if tag == "image-classification":
        usage = ('from transformers import pipeline\n\nclassify = pipeline("image-classification", model="PATH")\n'
                 "print(classify(image))   # a PIL image, or a uint8 numpy array (height, width, channels)")
        if "preprocessor_config.json" in files:
            usage += ("\n# One-channel models: pass a numpy array, the pipeline turns PIL images into RGB")
    elif tag:
        usage = f'from transformers import pipeline\n\nrun = pipeline("{tag}", model="PATH")\nprint(run(inputs))'
    else:
        usage = ('import keras\n\nmodel = keras.saving.load_model("PATH/model.keras", safe_mode=True)'
                 if "model.keras" in files else "# load the weights in model.safetensors into your model class")
    return "\n".join(front) + f"""

# Student of study `{summary['study_name']}`, trial {summary['trial']}

A student architecture found and trained by nas-distill (a multi-objective search over student
architectures, each trained briefly by flash distillation from a teacher), exported from its study's
trial {summary['trial']}.{params}

## Architecture

| key | value |
|---|---|
{arch}

## Metrics (measured by the search, on its evaluation data)

| metric | value | direction |
|---|---|---|
{metrics}{labels}

## Use

```python
{usage}
```

Files: {', '.join(f'`{f}`' for f in files)}. `nas_distill.json` holds the same figures as data.
"""


def _share_with_group(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        extra = stat.S_IRGRP | (stat.S_IXGRP if path.is_dir() else 0)
        os.chmod(path, stat.S_IMODE(path.stat().st_mode) | extra)


def export_student(study: Any, trial: Any, run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write ``trial``'s student (downloaded from the run's artifact store) and its metadata to ``out_dir``."""
    from .engines.students import download_student
    from .study import artifact_store

    out = download_student(artifact_store(run_dir), trial.user_attrs["artifact_id"], out_dir)
    config_file = out / "config.json"
    model_config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    summary = student_summary(study, trial, model_config)
    (out / "nas_distill.json").write_text(json.dumps(summary, indent=2) + "\n")
    files = sorted(p.name for p in out.iterdir() if p.name != "README.md")
    (out / "README.md").write_text(model_card(summary, files))
    _share_with_group(out)
    return out
