from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from memlens import _dispatch
from memlens.cli import main


@pytest.mark.skipif(_dispatch.compiled_cpu_reason("cpu") is not None, reason="CPU core not built")
def test_bench_search_writes_json(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r" / "search.json"
    rc = main(
        [
            "bench",
            "search",
            "--smoke",
            "--nq",
            "64",
            "--nr",
            "3000",
            "--k",
            "1",
            "50",
            "--d",
            "64",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    methods = {r["method"] for r in res["rows"]}
    assert {
        "memlens cpu fp32",
        "memlens cpu int8",
        "torch mm+topk",
        "numpy matmul+argpartition",
    } <= methods
    for row in res["rows"]:
        assert row["recall"] == pytest.approx(1.0)
        assert row["pairs_per_s"] > 0
    assert res["machine"]["memlens"]["cpu"]["simd"]
    assert "pairs/s" in capsys.readouterr().out


@pytest.mark.skipif(_dispatch.compiled_cpu_reason("cpu") is not None, reason="CPU core not built")
def test_bench_flow_rates_each_call_against_its_own_probe(tmp_path) -> None:
    out = tmp_path / "flow.json"
    rc = main(["bench", "flow", "--smoke", "--dtypes", "float16", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    (cpu,) = [r for r in res["rows"] if r["method"] == "memlens cpu"]
    reads = cpu["extra"]["probe_read_gbps"]
    assert len(reads) == res["config"]["repeat"]
    assert min(reads) > 0
    # each call's rate over the probe read right after it, then the median
    nbytes = cpu["gb_per_s"] * cpu["seconds"] * 1e9
    ratios = [
        nbytes / t / 1e9 / r for t, r in zip(cpu["extra"]["seconds_each"], reads, strict=True)
    ]
    assert cpu["vs_probe"] == pytest.approx(statistics.median(ratios))
    assert cpu["max_err"] < 1e-6
    assert cpu["vs_torch"] > 0


def test_median_ratio_pairs_each_call_with_the_probe_after_it() -> None:
    from memlens.bench.timing import median_ratio, times_with_probe

    # 1 GB in 0.1 s = 10 GB/s against probes of 20, 10, 40 GB/s: ratios 0.5, 1.0, 0.25
    assert median_ratio(10**9, [0.1, 0.1, 0.1], [20.0, 10.0, 40.0]) == pytest.approx(0.5)
    # calls timed 1 s and 0.25 s against probes 1 and 4 GB/s: both ratio 1 (like with like)
    assert median_ratio(10**9, [1.0, 0.25], [1.0, 4.0]) == pytest.approx(1.0)
    calls: list[int] = []
    times, reads = times_with_probe(lambda: calls.append(1), "cpu", 3, 1, warmups=2)
    assert len(calls) == 5
    assert len(times) == 3
    assert len(reads) == 3
    assert all(t >= 0 for t in times)
    assert all(r > 0 for r in reads)


def test_user_errors_exit_2_with_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "memlens.cli", "bench", "search", "--nq", "-3"],
        check=False,
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "expected a positive integer" in proc.stderr
    assert "Traceback" not in proc.stderr
