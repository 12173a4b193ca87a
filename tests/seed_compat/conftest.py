"""Every test here runs in its own empty current folder: the seed API's default results folder is
``./AutoDistillationResults``."""

import pytest


@pytest.fixture(autouse=True)
def _own_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
