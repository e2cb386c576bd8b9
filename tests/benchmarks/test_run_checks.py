"""`benchmarks.common.run_checks`: the self-checks' runner keeps what finished when time runs out."""

from __future__ import annotations

import json
import os
import signal
import time

from benchmarks.common import check_passed, checks_exit_status, run_checks


def _read(path) -> dict:
    return json.loads(path.read_text())


def test_writes_after_each_check_and_records_errors(tmp_path):
    out = tmp_path / "c.json"
    seen = []

    def passing():
        seen.append(_read(out)["checks"])  # what a kill now would leave
        return {"ok": True, "value": 1}

    def raising():
        raise ValueError("boom")

    def failing():
        return [{"ok": True}, {"ok": False}]

    lines = []
    report = run_checks(
        [("a", passing), ("b", raising), ("c", failing), ("d", passing)],
        out,
        {"device": "cpu"},
        log=lines.append,
    )
    assert seen[0]["a"]["status"] == "running" and seen[0]["b"]["status"] == "pending"
    assert seen[1]["a"]["status"] == "passed" and seen[1]["b"]["status"] == "error"
    assert seen[1]["c"]["status"] == "failed" and seen[1]["d"]["status"] == "running"
    assert _read(out) == report
    checks = report["checks"]
    assert list(checks) == ["a", "b", "c", "d"]
    assert checks["a"]["result"] == {"ok": True, "value": 1}
    assert checks["b"]["error"] == "ValueError: boom" and "raise ValueError" in checks["b"]["trace"]
    assert [checks[n]["status"] for n in "abcd"] == ["passed", "error", "failed", "passed"]
    assert report["device"] == "cpu" and not report["ok"] and report["complete"]
    assert checks_exit_status(report) == 1
    assert len(lines) == 4 and lines[1].startswith("[") and "b: error" in lines[1] and "boom" in lines[1]


def test_budget_starts_nothing_new(tmp_path):
    out = tmp_path / "c.json"
    ran = []

    def check(name, seconds=0.0):
        def fn():
            ran.append(name)
            time.sleep(seconds)
            return {"ok": True}

        return fn

    report = run_checks(
        [("first", check("first", 0.05)), ("second", check("second"))], out, budget=0.01, log=print
    )
    assert ran == ["first"]  # started within the budget, so it finished; the second never began
    assert report["checks"]["second"] == {"status": "skipped", "reason": "budget"}
    assert report["skipped"] == ["second"] and report["ok"] and not report["complete"]
    assert checks_exit_status(report) == 3
    assert _read(out)["checks"]["second"]["status"] == "skipped"
    # a budget already spent at `start`: nothing runs, everything is recorded as skipped
    late = run_checks([("first", check("again"))], out, budget=5, start=time.monotonic() - 10, log=print)
    assert ran == ["first"] and late["skipped"] == ["first"]


def test_sigterm_records_the_running_check_and_skips_the_rest(tmp_path):
    out = tmp_path / "c.json"
    before = signal.getsignal(signal.SIGTERM)

    def killed():
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM should have interrupted the check")

    report = run_checks(
        [("a", lambda: {"ok": True}), ("b", killed), ("c", lambda: {"ok": True})], out, log=lambda line: None
    )
    assert [report["checks"][n]["status"] for n in "abc"] == ["passed", "killed", "skipped"]
    assert report["checks"]["c"]["reason"] == "killed" and not report["ok"]
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the runner's only while it runs
    assert _read(out) == report


def test_check_passed():
    assert check_passed({"ok": True}) and not check_passed({"ok": False}) and not check_passed({})
    assert check_passed([{"ok": True}, {"ok": True}]) and not check_passed([{"ok": True}, {}])
    assert not check_passed([]) and not check_passed(None)
