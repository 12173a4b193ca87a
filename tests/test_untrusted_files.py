"""Untrusted files never run code on load (issue #7, item 5).

Every payload below WOULD create a marker file if it were unpickled / constructed (the first test proves
each one is live). Each is fed to a load path of nas-distill: results files, the teacher cache, student
checkpoints and exported artifacts, the config loader, student archives. The marker must never appear,
and the error (or the cache's rebuild) must be clear.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from nas_distill.autodistill import AutoDistillation
from nas_distill.config import AutoDistillationConfig
from nas_distill.engines.students import extract_student
from nas_distill.errors import ConfigError
from nas_distill.results import read_results
from nas_distill.workers import read_config_file

REPO_ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this calls ``pathlib.Path(marker).touch()``: no shell, nothing but the marker."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def pickle_bytes(marker, protocol=pickle.HIGHEST_PROTOCOL) -> bytes:
    return pickle.dumps({"weights": Payload(marker)}, protocol=protocol)


def object_npy(marker) -> bytes:
    arr = np.empty(1, dtype=object)
    arr[0] = Payload(marker)
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def evil_yaml(marker) -> str:
    return f"search:\n  search_space: !!python/object/apply:os.makedirs ['{marker}']\n"  # no shell needed


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER-code-ran"
    yield path
    assert not path.exists(), "a crafted file ran code"


# ------------------------------------------------------------------------------ the payloads are live
def test_every_payload_would_run_code_if_loaded_unsafely(tmp_path):
    """Without this, a test below could pass because its payload was dead, not because we refused it."""
    torch = pytest.importorskip("torch")
    markers = [tmp_path / f"live-{i}" for i in range(5)]
    pickle.loads(pickle_bytes(markers[0]))
    pickle.loads(pickle_bytes(markers[1], protocol=0))
    np.load(io.BytesIO(object_npy(markers[2])), allow_pickle=True)
    yaml.unsafe_load(evil_yaml(markers[3]))
    torch_file = tmp_path / "w.bin"
    torch.save({"w": Payload(markers[4])}, torch_file)
    torch.load(torch_file, weights_only=False)
    assert all(m.exists() for m in markers)


# ------------------------------------------------------------------------------------ results files
def small_config(run_dir):
    return {"search": {"search_space": {"a": [1, 2]}, "metrics": ["acc"], "max_trials": 2},
            "study": {"run_dir": str(run_dir), "study_name": "untrusted"}}


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_renamed_results_json_is_refused(tmp_path, marker, protocol):
    path = tmp_path / "search_results.json"
    path.write_bytes(pickle_bytes(marker, protocol))
    with pytest.raises(ValueError, match=r"search_results\.json: not a nas-distill results file \(not JSON"):
        read_results(path)
    with pytest.raises(ValueError, match="not a nas-distill results file"):
        read_results(tmp_path)  # the folder form finds the same file
    ad = AutoDistillation(lambda arch: arch, small_config(tmp_path / "run"))
    with pytest.raises(ValueError, match="not a nas-distill results file"):
        ad.load_search_results(path)


def test_a_json_results_file_is_data_only(tmp_path, marker):
    """jsonpickle-style tags are plain strings to json: nothing is constructed or called, and a
    structure that is not results data is refused with the trial it is in."""
    evil = {"py/reduce": [{"py/function": "pathlib.Path.touch"}, {"py/tuple": [str(marker)]}]}
    path = tmp_path / "search_results.json"
    good = {"number": 1, "arch": {"a": 2}, "values": [0.5]}
    path.write_text(json.dumps({"metrics": ["acc"], "higher_is_better": [True],
                                "trials": [good, {"number": 0, "arch": {"a": evil}, "values": [1.0]}]}))
    ad = AutoDistillation(lambda arch: arch, small_config(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"trials\[1\]\.arch must map names to plain values"):
        ad.load_search_results(path)
    path.write_text(json.dumps({"metrics": ["acc"], "trials": [good, {"arch": {"a": 1}, "values": evil}]}))
    with pytest.raises(ValueError, match=r"trials\[1\]\.values must be 1 number"):
        read_results(path)
    path.write_text(json.dumps({"metrics": ["acc"], "trials": [good, {"arch": {"a": "py/reduce"}, "values": [1]}]}))
    assert ad.load_search_results(path) == 1  # only the arch of the space is imported
    assert [t.user_attrs["arch"] for t in ad.study.trials] == [{"a": 2}]


# ------------------------------------------------------------------------------------ teacher cache
def test_a_pickled_cache_array_is_refused_and_rebuilt(tmp_path, marker):
    pytest.importorskip("torch")
    from nas_distill.distill.torch.cache import MANIFEST, load_or_build, read_entry

    root, fp = str(tmp_path / "cache"), "f" * 64
    logits = np.arange(12, dtype=np.float32).reshape(4, 3)
    builds = []

    def build():
        builds.append(1)
        return {"logits": logits}, {"logits": None}

    load_or_build(root, fp, build)
    entry_dir = Path(root, fp)
    # Replace logits.npy with an object array holding the payload, and make the manifest agree with it
    # (size, sha256, dtype, shape), so refusing it is up to np.load(allow_pickle=False) alone.
    evil = object_npy(marker)
    (entry_dir / "logits.npy").write_bytes(evil)
    manifest = json.loads((entry_dir / MANIFEST).read_text())
    import hashlib

    manifest["arrays"]["logits"].update(bytes=len(evil), sha256=hashlib.sha256(evil).hexdigest(),
                                        dtype="object", shape=[1])
    (entry_dir / MANIFEST).write_text(json.dumps(manifest))
    assert read_entry(root, fp) is None
    entry, built = load_or_build(root, fp, build)
    assert built and len(builds) == 2
    assert np.array_equal(np.asarray(entry.arrays["logits"], dtype=np.float32), logits)

    # A manifest that is itself a pickle: not JSON, so the entry is rebuilt too.
    (Path(root, fp) / MANIFEST).write_bytes(pickle_bytes(marker))
    entry, built = load_or_build(root, fp, build)
    assert built and len(builds) == 3


# ------------------------------------------------------------------------------ student checkpoints
@pytest.fixture(scope="module")
def saved_student(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    from _support.torch_models import bert_config

    folder = tmp_path_factory.mktemp("student") / "good"
    transformers.BertForSequenceClassification(bert_config()).save_pretrained(folder)
    assert (folder / "model.safetensors").exists()
    return folder


def crafted_checkpoint(saved_student, out: Path, marker, *, safetensors: bool, bin_file: bool) -> Path:
    import shutil

    import torch

    out.mkdir(parents=True)
    shutil.copy(saved_student / "config.json", out / "config.json")
    if safetensors:  # a "model.safetensors" that is really a torch pickle
        torch.save({"w": Payload(marker)}, out / "model.safetensors")
    if bin_file:
        torch.save({"w": Payload(marker)}, out / "pytorch_model.bin")
    return out


@pytest.mark.parametrize("safetensors,bin_file", [(True, False), (False, True), (True, True)])
def test_pickled_checkpoints_never_run(tmp_path, marker, saved_student, safetensors, bin_file):
    from transformers import BertForSequenceClassification

    folder = crafted_checkpoint(saved_student, tmp_path / "ckpt", marker, safetensors=safetensors,
                                bin_file=bin_file)
    with pytest.raises(Exception) as info:  # safetensors only: the pickle is never opened
        BertForSequenceClassification.from_pretrained(folder, use_safetensors=True, local_files_only=True)
    assert "safetensors" in str(info.value).lower() or "header" in str(info.value).lower(), info.value
    # transformers' own default (no use_safetensors) reads .bin with torch.load(weights_only=True)
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do: what matters is that nothing ran
        BertForSequenceClassification.from_pretrained(folder, local_files_only=True)


def test_an_exported_student_with_pickles_is_refused(tmp_path, marker, saved_student):
    """A student archive in the artifact store replaced by one holding pickles: `nas-distill export`
    unpacks it (plain files), and loading it with use_safetensors=True refuses the fake weights."""
    import optuna
    from optuna.artifacts import upload_artifact
    from transformers import BertForSequenceClassification

    from nas_distill import cli
    from nas_distill.study import artifact_store

    run_dir = tmp_path / "run"
    folder = crafted_checkpoint(saved_student, tmp_path / "evil", marker, safetensors=True, bin_file=True)
    archive = tmp_path / "student.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    storage = f"sqlite:///{run_dir / 'study.db'}"
    run_dir.mkdir()
    study = optuna.create_study(storage=storage, study_name="s", directions=["maximize"])
    trial = study.ask()
    trial.set_user_attr("artifact_id", upload_artifact(artifact_store=artifact_store(run_dir),
                                                       file_path=str(archive), study_or_trial=trial))
    study.tell(trial, 1.0)
    out = tmp_path / "exported"
    assert cli.main(["export", "--storage", storage, "--study", "s", "--run-dir", str(run_dir), "--trial", "0",
                     "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                     "nas_distill.json", "pytorch_model.bin"]
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do: what matters is that nothing ran
        BertForSequenceClassification.from_pretrained(out, use_safetensors=True, local_files_only=True)


# ------------------------------------------------------------------------------------ config loader
def test_python_tags_in_a_yaml_config_never_run(tmp_path, marker):
    path = tmp_path / "evil.yaml"
    path.write_text(evil_yaml(marker))
    with pytest.raises(ConfigError, match="invalid YAML"):
        AutoDistillationConfig(str(path))
    with pytest.raises(ConfigError, match="invalid YAML"):  # a file path goes through the CLI's reader
        AutoDistillation(lambda arch: arch, str(path))
    with pytest.raises(ConfigError, match="invalid YAML"):
        read_config_file(path)  # the CLI's reader (config + task entry point)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    res = subprocess.run([sys.executable, "-m", "nas_distill.cli", "run", str(path)], capture_output=True,
                         text=True, timeout=120, env=env, cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"nas-distill: config error: {path}: ") and "invalid YAML" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------- student archives
def tar_with(path: Path, members) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_member(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link_member(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("member", [
    file_member("../escape.txt"),
    file_member("../out-sibling/escape.txt"),  # shares the output folder's name as a prefix
    file_member("/tmp/nas-distill-abs-escape.txt"),
    link_member("model.safetensors", "/etc/passwd"),
    link_member("config.json", "../escape.txt"),
    link_member("hard", "/etc/passwd", kind=tarfile.LNKTYPE),
], ids=["parent", "sibling-prefix", "absolute", "symlink-abs", "symlink-rel", "hardlink"])
def test_student_archives_with_escaping_members_are_refused(tmp_path, member):
    out = tmp_path / "out"
    archive = tar_with(tmp_path / "student.tar", [file_member("config.json", b"{}"), member])
    with pytest.raises(ValueError, match=r"refusing to extract '.*': not a plain file inside"):
        extract_student(archive, out)
    assert list(out.iterdir()) == [], "something was extracted before the archive was refused"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "student.tar"]
    assert not Path("/tmp/nas-distill-abs-escape.txt").exists()


def test_compressed_student_archives_are_refused(tmp_path):
    """A few KB that would inflate a thousandfold: the artifact store holds plain tars only."""
    import io

    archive = tmp_path / "student.tar"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("model.safetensors")
        info.size = 16 * 2**20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert archive.stat().st_size * 500 < 16 * 2**20
    with pytest.raises(ValueError, match="not an uncompressed tar"):
        extract_student(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_plain_student_archive_extracts(tmp_path):
    archive = tar_with(tmp_path / "student.tar", [file_member("config.json", b"{}"),
                                                  file_member("sub/arch.json", b"[]")])
    out = extract_student(archive, tmp_path / "out")
    assert (out / "config.json").read_bytes() == b"{}" and (out / "sub" / "arch.json").read_bytes() == b"[]"


# --------------------------------------------------------------------------------------- the code base
UNSAFE = [
    ("pickle.load", r"\bpickle\.loads?\("), ("unpickler", r"Unpickler\("),
    ("torch.load without weights_only=True", r"torch\.load\((?![^)]*weights_only=True)"),
    ("np.load with pickles", r"allow_pickle\s*=\s*True"), ("yaml.load", r"yaml\.(unsafe_)?load\("),
    ("yaml full loader", r"yaml\.(Full|Unsafe)?Loader\b"), ("eval", r"(?<![\w.])eval\("),
    ("exec", r"(?<![\w.])exec\("), ("marshal / shelve / dill", r"\b(marshal|shelve|dill|joblib)\.load"),
    ("broadcast_object_list", r"broadcast_object_list\("),
    ("keras load without safe_mode", r"load_model\((?![^)]*safe_mode=True)"),
]

# The one unpickler: it reads the seed's lastest_results.npy and refuses every global but numpy's array and
# scalar constructors before it is looked up (tests/seed_compat/test_old_results.py proves a crafted payload
# never runs).
ALLOWED = {("unpickler", "nas_distill/seed_results.py")}


def test_no_unsafe_loader_in_the_package():
    """grep: nothing in the package (or its benches / examples) unpickles, evals or loads unsafely."""
    import re

    found = []
    for folder in ("nas_distill", "bench", "examples"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if '"""' in line or code.strip().startswith(("``", "*")):
                    continue
                for what, pattern in UNSAFE:
                    if (what, path.relative_to(REPO_ROOT).as_posix()) in ALLOWED:
                        continue
                    if re.search(pattern, code) and "``" not in code:
                        found.append(f"{path.relative_to(REPO_ROOT)}:{n}: {what}: {line.strip()}")
    assert found == []
