"""`benchmarks.common.run_checks`: the self-checks' runner keeps what finished when time runs out."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

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


def test_self_checks_run_the_most_important_first():
    """gpu_selfcheck: the fused path's parts, then training, the GEMMs; decode_selfcheck: greedy first."""
    from benchmarks import decode_selfcheck, gpu_selfcheck

    names = [
        n
        for n, _ in gpu_selfcheck.build_checks(
            gpu_selfcheck.parse_args(["--out", "x", "--norm-placement", "sublayer"])
        )
    ]
    assert names[:4] == [
        "layer sublayer pointer",
        "group sublayer pointer",
        "block sublayer pointer",
        "train reference eager",
    ]
    assert names[4:] == [
        "train fast pointer eager",
        "train fast pointer compiled",
        "train fast tma eager",
        "train fast tma compiled",
        "gemm pointer",
        "gemm tma",
    ]
    only = gpu_selfcheck.parse_args(
        ["--out", "x", "--only", "train,gemm", "--no-gemm", "--kernels", "pointer"]
    )
    assert [n for n, _ in gpu_selfcheck.build_checks(only)] == [
        "train reference eager",
        "train fast pointer eager",
        "train fast pointer compiled",
    ]
    names = [n for n, _ in decode_selfcheck.build_checks(decode_selfcheck.parse_args(["--out", "x"]))]
    assert names[0] == "greedy" and len(names) == len(set(names)) == 1 + 4 + 2 + 4
    assert decode_selfcheck.parse_args(["--out", "x", "--train-steps", "300"]).train_steps == 300


def test_gemm_float64_reference_equals_the_int64_one():
    """gpu_selfcheck's GEMM reference (float64 product, then int8_mm_reference's scaling) is the library's."""
    import torch

    from benchmarks.gpu_selfcheck import gemm_reference_gpu
    from bittern.kernels.int8_mm import int8_mm_reference

    g = torch.Generator().manual_seed(0)
    M, N, K = 37, 24, 5632
    a = torch.randint(-128, 128, (M, K), dtype=torch.int8, generator=g)
    a[0] = -128  # the largest sums the 1B shapes reach
    b = torch.randint(-1, 2, (N, K), dtype=torch.int8, generator=g)
    b[0] = -1
    row, col = torch.rand(M, generator=g) + 0.5, torch.rand(N, generator=g) + 0.5
    assert torch.equal(gemm_reference_gpu(a, b), int8_mm_reference(a, b))
    for r, c in ((row, col), (None, col), (row, None), (None, col[:1])):
        for dtype in (torch.bfloat16, torch.float32):
            assert torch.equal(gemm_reference_gpu(a, b, r, c, dtype), int8_mm_reference(a, b, r, c, dtype))


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="the fused kernels on CPU need TRITON_INTERPRET=1"
)
@pytest.mark.parametrize(
    ("part", "placement"), [("layer", "sublayer"), ("group", "sublayer"), ("layer", "inside")]
)
def test_part_checks_run_on_the_cpu(part, placement):
    """gpu_selfcheck's parts check on tiny shapes in Triton's interpreter: it passes, every gradient seen."""
    from benchmarks.gpu_selfcheck import check_part

    tiny = dict(preset="tiny", vocab_size=64, dim=32, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=16)
    result = check_part(
        part, placement, device="cpu", model_dims=tiny, tokens=(2, 16), devices=("cuda", "cpu")
    )
    fused = result["fused eager"]
    assert result["ok"] and fused["worst_grad_rel_diff"] < 1e-5 and fused["outputs_rel_diff"] < 1e-5
    # x, the weights, the norms' weights (the layer's own or its sub-norm; the group's two pre-norms)
    assert fused["grads_checked"] == {"layer": 1 + 1 + 1, "group": 1 + 5 + 2}[part]
