"""A file several workers of one run folder replace (the results JSON): racing writers each finish, the
file left is one whole write, and no temporary file is left behind."""

from __future__ import annotations

import json
import os
import stat
import threading

from nas_distill.results import write_json


def _race(write, writers: int = 8, rounds: int = 60) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def writer(number: int) -> None:
        start.wait()
        for round_ in range(rounds):
            try:
                write(number, round_)
            except BaseException as exc:  # noqa: BLE001 - collected: the test asserts there are none
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_workers_writing_the_results_json_at_once_all_finish_and_leave_one_whole_file(tmp_path):
    path = tmp_path / "lastest_results.json"
    payload = {"rows": list(range(2000))}  # large enough that writes overlap
    errors = _race(lambda number, round_: write_json({**payload, "writer": number, "round": round_}, path))
    assert errors == []
    final = json.loads(path.read_text())
    assert final["rows"] == payload["rows"] and 0 <= final["writer"] < 8
    assert [p.name for p in tmp_path.iterdir()] == ["lastest_results.json"]



def test_the_file_gets_the_permissions_of_any_new_file(tmp_path):
    """Other users of a shared run folder read results as they read any file the run writes."""
    path = tmp_path / "lastest_results.json"
    write_json({"a": 1}, path)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)
