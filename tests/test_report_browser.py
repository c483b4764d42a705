"""The HTML reports in a real browser (headless Chromium, tests/browser.py): each loads with no
console error, failed load or CSP violation, every thumbnail decodes, every plot draws, and
the expected sections are there. Negative controls show that a broken page is caught.

Skips when no Chromium binary is found (apt-get install chromium, or MEMLENS_CHROMIUM=path),
unless MEMLENS_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from browser import SKIP_REASON, Browser, PageReport, assert_page_ok, find_chromium
from memlens.cli import main

# MEMLENS_REQUIRE_BROWSER=1 (CI, once Chromium is installed): a missing binary is an error
_REQUIRED = os.environ.get("MEMLENS_REQUIRE_BROWSER") == "1"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(find_chromium() is None and not _REQUIRED, reason=SKIP_REASON),
]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with Browser() as b:
        yield b


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]


# -- negative controls: the checker sees what a reader would ----------------------------------

BROKEN = {
    "uncaught exception": ("<script>throw new Error('boom')</script>", "boom"),
    "late exception": ("<script>setTimeout(() => null.x, 10)</script>", "uncaught exception"),
    "console.error": ("<script>console.error('went wrong')</script>", "went wrong"),
    "missing file": ("<img src='missing.png' alt='m'>", "ERR_FILE_NOT_FOUND"),
    "undecodable data: image": ("<img src='data:image/png;base64,AAAA' alt='x'>", "did not render"),
    "CSP violation": (
        (
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'\">"
            "<script>document.title = 'ran'</script>"
        ),
        "Content Security Policy",
    ),
    "empty plot": ("<svg width='200' height='100' aria-label='empty'></svg>", "svg drew nothing"),
    "external request": (
        "<link rel='stylesheet' href='http://127.0.0.1:9/x.css'>",
        "request outside the page",
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_page_is_caught(chromium: Browser, tmp_path: Path, case: str) -> None:
    body, expected = BROKEN[case]
    page = tmp_path / "page.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>t</title></head>"
                    f"<body><h1>t</h1>{body}</body></html>")  # fmt: skip
    problems = "\n".join(chromium.check(page).problems())
    assert expected in problems, problems


def test_clean_page_has_no_problems(chromium: Browser, tmp_path: Path) -> None:
    from memlens.report.html import histogram_svg

    page = tmp_path / "page.html"
    page.write_text("<!doctype html><html><head><meta charset='utf-8'><title>ok</title></head>"
                    f"<body><h1>ok</h1><h2>plot</h2>{histogram_svg([0.1, 0.5], 0.3)}"
                    "<script>console.log('fine'); console.warn('not an error')</script>"
                    "</body></html>")  # fmt: skip
    report = chromium.check(page)
    assert report == PageReport(url=page.resolve().as_uri(), title="ok", headings=["ok", "plot"],
                                svgs=[("score histogram", True)])  # fmt: skip


# -- the reports ------------------------------------------------------------------------------


def test_scan_report_with_motion_and_thumbnails(chromium: Browser, tmp_path: Path) -> None:
    """A real `scan --motion` run: clips made from photographs, one copied, one still, and
    one file that cannot be decoded (an error row)."""
    from memlens.datasets.clips import sprite_clip, write_image, write_video
    from memlens.datasets.photos import real_photographs

    photos = real_photographs()
    rng = np.random.default_rng(0)
    path = [(30 + 6 * i + rng.uniform(-3, 3), 30 + 4 * np.sin(i)) for i in range(12)]
    dance = sprite_clip(photos["coffee"], photos["astronaut"], path)
    train, gen = tmp_path / "train", tmp_path / "gen"
    train.mkdir()
    gen.mkdir()
    write_video(train / "dance.mp4", dance)
    write_video(train / "other.mp4", sprite_clip(photos["coins"], photos["moon"], path[::-1]))
    write_image(train / "photo.png", photos["chelsea"][:240, :320])
    write_video(gen / "copy.mp4", dance)
    write_video(gen / "moves_alike.mp4", sprite_clip(photos["brick"], photos["rocket"], path))
    write_video(gen / "still.mp4", np.repeat(photos["chelsea"][None, :240, :320], 12, axis=0))
    (gen / "broken.mp4").write_bytes(b"not a video")
    idx, run = tmp_path / "idx", tmp_path / "run"
    assert main(["index", "build", str(train), "--out", str(idx), "--embedder", "builtin",
                 "--quiet"]) == 0  # fmt: skip
    assert main(["scan", str(gen), "--index", str(idx), "--out", str(run), "--motion",
                 "--flow-frames", "12", "--quiet"]) == 1  # 1: a failed input  # fmt: skip
    rows = _rows(run)
    n_ok = sum(r["status"] == "ok" for r in rows)
    assert n_ok == 3
    n_flow = sum(bool(r.get("motion_flow_image")) and not r.get("motion_static") for r in rows)
    assert n_flow >= 1
    report = chromium.check(run / "report.html")
    assert_page_ok(report, title="memlens scan report",
                   headings=("memlens scan report", "Content scores", "Top matches",
                             "Motion (OFS-k", "Errors"),
                   min_images=2 * n_ok + n_flow, min_svgs=3)  # fmt: skip
    assert sum(src.startswith("data:image/jpeg") for src, _ in report.images) == 2 * n_ok
    assert sum(src.startswith("data:image/png") for src, _ in report.images) == n_flow


@pytest.mark.usefixtures("one_torch_thread")
def test_detect_report(chromium: Browser, tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    prompts = ["a photo of a cat", "Emma <i>Beauty</i> & the beast", "a dog", "blue sky"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    (tmp_path / "labels.tsv").write_text(
        "prompt\tlabel\n" + "".join(f"{p}\t{int(i < 2)}\n" for i, p in enumerate(prompts))
    )
    run = tmp_path / "run"
    assert main(["detect", "--model", str(tiny_model_dirs["sd"]), "--prompts",
                 str(tmp_path / "prompts.txt"), "--labels", str(tmp_path / "labels.tsv"),
                 "--out", str(run), "--generations", "1", "--steps", "all",
                 "--inference-steps", "3", "--explain-top", "1", "--device", "cpu",
                 "--quiet"]) == 0  # fmt: skip
    report = chromium.check(run / "report.html")
    assert_page_ok(report, title="memlens detect report",
                   headings=("memlens detect report", "Text-guidance magnitude",
                             "Detection (labelled prompts)", "Top prompts by magnitude",
                             "Token significance"),
                   min_svgs=2 + len(prompts))  # histogram, ROC, a sparkline per prompt  # fmt: skip
    labels = [label for label, _ in report.svgs]
    assert labels.count("ROC curve") == 1
    assert labels.count("per-step magnitude") == len(prompts)


@pytest.mark.usefixtures("one_torch_thread")
def test_invert_report(chromium: Browser, tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    import cv2

    from memlens.report.invert_html import SAMPLES_SHOWN

    rng = np.random.default_rng(0)
    images = []
    for i in range(2):
        p = tmp_path / f"img {i}<&>.png"  # odd characters in the name: escaped in the report
        cv2.imwrite(str(p), (rng.random((40, 52, 3)) * 255).astype(np.uint8))
        images.append(str(p))
    run = tmp_path / "run"
    assert main(["invert", "--model", str(tiny_model_dirs["sd"]), "--out", str(run),
                 "--max-steps", "4", "--samples", "2", "--check-every", "2", "--ddim-steps", "2",
                 "--embedder", "builtin", "--quiet", "--images", *images]) == 0  # fmt: skip
    report = chromium.check(run / "report.html")
    assert_page_ok(report, title="memlens InvMM report",
                   headings=("memlens InvMM report", "Score distribution", "Images"),
                   min_svgs=1 + 2)  # the histogram, a convergence curve per image  # fmt: skip
    assert sum(src.startswith("data:image/jpeg") for src, _ in report.images) == 2  # targets
    assert sum(src.startswith("data:image/png") for src, _ in report.images) == 2 * SAMPLES_SHOWN


def test_audit_report(chromium: Browser, audited: tuple[Path, object]) -> None:
    run, _ = audited
    report = chromium.check(run / "report.html")
    assert_page_ok(report, title="memlens audit report",
                   headings=("memlens audit report", "Detectors against the labels",
                             "Prompts by their most copied sample", "Token significance",
                             "InvMM of training items"),
                   min_images=8, min_svgs=4)  # fmt: skip
