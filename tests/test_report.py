"""report.html renders from result files alone, escapes every user string, and survives
sources that moved away."""

from __future__ import annotations

import json
from pathlib import Path

from memlens.engine.records import ResultWriter, write_run_json
from memlens.report.html import histogram_svg, render

EVIL = '<script>alert("x")</script>'


def test_hostile_strings_are_escaped_and_missing_media_is_a_placeholder(tmp_path: Path) -> None:
    write_run_json(tmp_path, "scan", {"tau": 0.5, "agg": "max", "index": EVIL,
                                      "embedder": {"name": EVIL}})  # fmt: skip
    with ResultWriter(tmp_path) as w:
        w.write({"item": EVIL, "source": str(tmp_path / "gone.mp4"), "status": "ok",
                 "content_max": 0.9, "content_mean": 0.8, "vsscd": 0.7, "best_item": EVIL,
                 "best_source": str(tmp_path / "gone.png"), "best_frame": 0,
                 "best_gen_frame": 3, "content_memorized": True})  # fmt: skip
        w.write({"item": "bad.mp4", "source": "bad.mp4", "status": "error", "error": EVIL})
    html = render(tmp_path).read_text()
    assert "<script>" not in html
    assert html.count("&lt;script&gt;") >= 4
    assert html.count("unavailable") == 2  # both thumbnails: placeholders, not a crash
    assert "1 errors" in html
    assert "replication rate 1.000" in html


def test_histogram_handles_empty_and_out_of_range() -> None:
    assert "<svg" in histogram_svg([], 0.5)
    svg = histogram_svg([-0.3, 0.2, 0.9, float("inf")], 0.7, label="x")
    assert svg.count("<rect") == 40
    assert "τ=0.7" in svg


def test_run_json_records_schema_and_settings(tmp_path: Path) -> None:
    write_run_json(tmp_path, "scan", {"tau": 0.7})
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["schema_version"] == 1
    assert meta["settings"] == {"tau": 0.7}
    assert meta["versions"]["numpy"]
