"""Fixtures for the Keras engine tests: TensorFlow backend, quiet logs, digits data, a small teacher."""

from __future__ import annotations

import os

# Before keras is imported anywhere in the session.
os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("keras")
pytest.importorskip("sklearn")

from _support.keras_models import digits, mlp  # noqa: E402


@pytest.fixture(scope="session")
def train_data():
    return digits(256)


@pytest.fixture(scope="session")
def eval_data():
    return digits(200, offset=1000)


@pytest.fixture
def teacher():
    """A wider teacher (48, 48) that counts its forwards (``teacher.get_layer('calls').calls``)."""
    return mlp((48, 48), name="teacher", seed=1, prefix="t", count_calls=True)
