from __future__ import annotations

import json
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


def test_user_errors_exit_2_with_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "memlens.cli", "bench", "search", "--nq", "-3"],
        check=False,
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "expected a positive integer" in proc.stderr
    assert "Traceback" not in proc.stderr
