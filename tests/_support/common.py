"""Ports, servers and task configs shared by several test modules.

They live here, not in conftest.py, because tests/torch/ has a conftest.py of its own and
`from conftest import ...` would then resolve to whichever conftest was imported first.
"""

from __future__ import annotations

import socket
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]



TASK_MODULE = '''
"""A test task: pure-Python students whose metrics are functions of the arch; train sleeps a bit."""
import os, time

def model_builder(arch):
    if arch.get("b") == -1:
        raise ValueError("invalid")
    return dict(arch)

def train_func(model):
    delay = float(os.environ.get("ND_TEST_TRAIN_SECONDS", "0.05"))
    end = time.time() + delay
    while time.time() < end:
        time.sleep(0.01)

def eval_func(model):
    return {"acc": float(model["a"] * 10 + model["b"]), "cost": float(model["a"] * model["b"])}

def make_task(config):
    return {"model_builder": model_builder, "train_func": train_func, "eval_func": eval_func}
'''


def task_config(run_dir, *, storage=None, study_name="test", max_trials=12, space=None, algorithm="grid",
                heartbeat_interval=1, grace_period=3, task="nd_test_task:make_task"):
    """A config dict (seed layout + task entry point) for the test task."""
    study = {"run_dir": str(run_dir), "study_name": study_name, "heartbeat_interval": heartbeat_interval,
             "grace_period": grace_period}
    if storage:
        study["storage"] = storage
    return {
        "task": task,
        "model": {"framework": "pytorch"},
        "auto_distillation": {
            "search": {
                "search_space": space or {"a": [1, 2, 3, 4], "b": [1, 2, 3, 4]},
                "search_algorithm": algorithm,
                "metrics": ["acc", "cost"],
                "higher_is_better": [True, False],
                "max_trials": max_trials,
            },
            "study": study,
        },
    }



def tiny_bert_task(n_items: int, label: str = "i % 2") -> str:
    """Source of a task module: a one-layer BERT teacher, students built from its config, and ``n_items``
    random token sequences labelled by the Python expression ``label`` of the index ``i`` (train and eval)."""
    return r'''
import torch, transformers
from nas_distill.builders import from_config

CFG = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
           max_position_embeddings=16, num_labels=2)

def make_task(config):
    torch.manual_seed(0)
    ids = torch.randint(1, 50, (N_ITEMS, 8))
    items = [{"input_ids": ids[i], "labels": torch.tensor(LABEL)} for i in range(N_ITEMS)]
    return {"model_builder": from_config(transformers.BertConfig(**CFG)),
            "teacher_model": transformers.BertForSequenceClassification(transformers.BertConfig(**CFG)),
            "train_dataset": items, "eval_dataset": items}
'''.replace("N_ITEMS", str(n_items)).replace("LABEL", label)


def write_config(path, data) -> str:
    import yaml

    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def get_json(url: str):
    """GET ``url`` and decode its JSON body."""
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def wait_for_server_json(proc, log, url: str, timeout_s: float):
    """Poll ``url`` until the server process ``proc`` answers with JSON; fail with its log if it exits
    or stays silent past ``timeout_s``. Polling is the only readiness signal optuna-dashboard gives."""
    import time
    import urllib.error

    import pytest

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read()[-3000:]}")
        try:
            return get_json(url)
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"the server did not answer within {timeout_s} s:\n{log.read()[-3000:]}")
            time.sleep(0.2)


def stop_server(proc, timeout_s: float = 10) -> None:
    """SIGTERM the server process ``proc`` and wait for it; SIGKILL it if it has not stopped by then."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)


def listening_addresses(port: int) -> list[str]:
    """Local IPv4/IPv6 addresses in LISTEN state on ``port`` (from /proc/net/tcp*, Linux)."""
    found = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A = LISTEN
                if len(address) == 8:  # IPv4, little-endian hex
                    found.append(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
                else:
                    found.append(address)
    return found
