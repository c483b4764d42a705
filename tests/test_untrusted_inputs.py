"""Untrusted inputs through the CLI (issue 9, DESIGN.md §9): a corrupt or hostile index is
refused with one line naming the file and exit status 2, index paths never leave the index
directory, stored arrays are never unpickled, and the HTML report escapes file names.

What opening an index checks (decided here, documented in docs/reliability.md): the manifest
(JSON, schema, counts, paths), every file's presence and size, the shards' .npy headers and
the items table's sha256. Shard checksums are read in full only by ``memlens index verify``
(and ``ReferenceIndex.open(verify=True)``): hashing every shard on each ``scan`` would read
the whole index, 20 GB at 1e7 x 512, before the first query. A shard of the right size with
altered values therefore gives altered scores, never a crash (tested below).
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memlens.cli import main
from memlens.datasets.clips import write_image

REPO = Path(__file__).resolve().parents[1]
HOSTILE = "<i>x&<script>alert(1)"  # no "/": it is a file name


def _code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


def _media(d: Path, names: list[str], seed: int) -> Path:
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in names:
        write_image(d / name, rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))
    return d


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("untrusted")
    names = [f"img_{n}.png" for n in range(7)] + [f"{HOSTILE}.png"]
    train = _media(d / "train", names, seed=3)
    idx = d / "idx"
    args = ["index", "build", str(train), "--out", str(idx), "--embedder", "builtin",
            "--shard-rows", "3", "--quiet"]  # fmt: skip
    assert _code(args) == 0
    gen = _media(d / "gen", ["a.png"], seed=4)
    shutil.copy(train / f"{HOSTILE}.png", gen / f"{HOSTILE}.png")
    return {"dir": d, "train": train, "idx": idx, "gen": gen}


@pytest.fixture
def idx(built: dict[str, Path], tmp_path: Path) -> Path:
    """A fresh copy of the built index to damage."""
    out = tmp_path / "idx"
    shutil.copytree(built["idx"], out)
    return out


def _edit_manifest(root: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    path = root / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], names: str) -> str:
    capsys.readouterr()
    assert _code(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("memlens: error: "), err
    assert names in lines[0], err
    assert "Traceback" not in err
    return lines[0]


def _commands(built: dict[str, Path], idx: Path, tmp_path: Path) -> list[list[str]]:
    """Every command that opens an index: scan, index verify and a resumed build."""
    return [
        ["scan", str(built["gen"]), "--index", str(idx), "--out", str(tmp_path / "run"),
         "--quiet"],
        ["index", "verify", str(idx)],
        ["index", "build", str(built["train"]), "--out", str(idx), "--embedder", "builtin",
         "--shard-rows", "3", "--resume", "--quiet"],
    ]  # fmt: skip


# --------------------------------------------------------------------- corrupt manifests


def _set(key: str, value: object) -> Callable[[dict[str, Any]], object]:
    return lambda m: m.__setitem__(key, value)


MANIFEST_DAMAGE: dict[str, tuple[Callable[[dict[str, Any]], object] | bytes, str]] = {
    "not json": (b'{"format": "memlens.reference_index", ', "is not valid JSON"),
    "not utf-8": (b"\xff\xfe{}", "is not valid JSON"),
    "NaN constant": (b'{"dim": NaN}', "is not valid JSON"),
    "a list": (b"[1, 2]", "must be a JSON object"),
    "empty": (b"", "is not valid JSON"),
    "other format": (_set("format", "something.else"), "format must be"),
    "newer schema": (_set("schema_version", 2), "schema_version 2 is not supported"),
    "dim as string": (_set("dim", "512"), "dim must be an integer"),
    "dim disagrees": (_set("dim", 7), "but embedder.dim is"),
    "rows beyond shards": (_set("num_rows", 10**6), "shards hold only"),
    "items beyond rows": (_set("num_items", 10**6), "num_items must be"),
    "negative rows": (_set("num_rows", -1), "num_rows must be"),
    "shards not a list": (_set("shards", {}), "shards must be a list"),
    "shard rows off": (lambda m: m["shards"][0].__setitem__("rows", 2), "rows must be"),
    "bad sha": (lambda m: m["shards"][0].__setitem__("sha256", "0" * 63), "sha256 must be"),
    "size disagrees": (lambda m: m["shards"][0].__setitem__("bytes", 12), "has "),
    "items count disagrees": (
        lambda m: (
            m.__setitem__("num_rows", m["num_rows"] - 1),
            m.__setitem__("num_items", m["num_items"] - 1),
        ),
        "items.parquet",
    ),
    "items checksum": (lambda m: m["items"].__setitem__("sha256", "a" * 64), "checksum mismatch"),
}


@pytest.mark.parametrize("case", list(MANIFEST_DAMAGE))
def test_corrupt_manifest_is_one_line_exit_2(
    case: str, built: dict[str, Path], idx: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    damage, match = MANIFEST_DAMAGE[case]
    if isinstance(damage, bytes):
        (idx / "manifest.json").write_bytes(damage)
    else:
        _edit_manifest(idx, damage)
    before = sorted(p.name for p in (idx / "shards").iterdir())
    for argv in _commands(built, idx, tmp_path):
        line = _one_line_error(capsys, argv, str(idx))
        assert match in line, line
    # refusing an index never "repairs" it by deleting what the manifest did not explain
    assert sorted(p.name for p in (idx / "shards").iterdir()) == before


# ------------------------------------------------------------------------------- shards


def _first_shard(root: Path) -> Path:
    m = json.loads((root / "manifest.json").read_text())
    return root / m["shards"][0]["file"]


def _data_offset(path: Path) -> int:
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


def test_shard_checksum_mismatch(
    built: dict[str, Path], idx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same size, one value changed: ``index verify`` (and a resume, which copies the last
    partial shard's rows) names the file; a scan opens it (sizes only) and does not crash."""
    m = json.loads((idx / "manifest.json").read_text())
    last = idx / m["shards"][-1]["file"]
    for shard in (_first_shard(idx), last):
        data = bytearray(shard.read_bytes())
        data[_data_offset(shard) + 5] ^= 0x40
        shard.write_bytes(bytes(data))
    line = _one_line_error(capsys, ["index", "verify", str(idx)], _first_shard(idx).name)
    assert "checksum mismatch" in line
    build = _commands(built, idx, tmp_path)[2]
    assert "checksum mismatch" in _one_line_error(capsys, build, last.name)
    assert _code(_commands(built, idx, tmp_path)[0]) == 0


def test_truncated_or_missing_shard(
    built: dict[str, Path], idx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shard = _first_shard(idx)
    shard.write_bytes(shard.read_bytes()[:-4])
    for argv in _commands(built, idx, tmp_path):
        assert "truncated or replaced" in _one_line_error(capsys, argv, shard.name)
    shard.unlink()
    for argv in _commands(built, idx, tmp_path):
        assert "is missing" in _one_line_error(capsys, argv, shard.name)


@pytest.mark.parametrize(
    "header",
    [
        {"descr": "<f8", "fortran_order": False},  # other dtype
        {"descr": "<f4", "fortran_order": True},  # Fortran order
        {"descr": "|O", "fortran_order": False},  # objects: would need unpickling
    ],
)
def test_shard_header_is_checked(
    header: dict[str, Any], built: dict[str, Path], idx: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A shard whose header was rewritten (same size) is refused before any value is read;
    an object array is never unpickled."""
    shard = _first_shard(idx)
    data = shard.read_bytes()
    start = _data_offset(shard)
    with open(shard, "rb") as f:
        np.lib.format.read_magic(f)
        shape = np.lib.format.read_array_header_1_0(f)[0]
    hdr = {**header, "shape": shape}
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, hdr)
    new = buf.getvalue()
    assert len(new) == start, "the rewritten header must keep the size"
    shard.write_bytes(new + data[start:])
    scan = _commands(built, idx, tmp_path)[0]
    line = _one_line_error(capsys, scan, shard.name)
    assert "must hold a C-order float32 array" in line or "not a readable .npy" in line


def test_non_finite_shard_values_do_not_crash(built: dict[str, Path], idx: Path) -> None:
    """NaN, ±Inf and huge values written over a shard's rows (the checksum then mismatches,
    which only ``index verify`` reads): the search runs in a child process and finishes."""
    shard = _first_shard(idx)
    start = _data_offset(shard)
    data = bytearray(shard.read_bytes())
    vals = np.array([np.nan, np.inf, -np.inf, 3e38, -3e38, 1e-45], np.float32)
    n = (len(data) - start) // 4
    data[start:] = np.resize(vals, n).tobytes()
    shard.write_bytes(bytes(data))
    run = idx.parent / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "memlens.cli", "scan", str(built["gen"]), "--index", str(idx),
         "--out", str(run), "--quiet"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode in (0, 2), proc.stderr[-3000:]
    if proc.returncode == 0:
        rows = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
        assert len(rows) == 2
        # every damaged row holds a NaN (the values repeat every 6): never ranked
        assert all(np.isfinite(r["content_max"]) for r in rows)


# ------------------------------------------------------------------------ escaping paths


@pytest.mark.parametrize(
    "bad", ["../outside.f32.npy", "/tmp/outside.f32.npy", "shards/../../outside.f32.npy", "link"]
)
def test_manifest_paths_cannot_leave_the_index(
    bad: str, built: dict[str, Path], idx: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A manifest naming a file outside the index is refused by every command, and the
    outside file is neither read nor deleted (a resume deletes files the manifest drops)."""
    outside = tmp_path / "outside.f32.npy"
    np.save(outside, np.zeros((3, 4), np.float32))
    if bad == "link":  # a symlink inside the index that points out of it
        shard = _first_shard(idx)
        shard.unlink()
        shard.symlink_to(outside)
    else:
        rel = bad.replace("/tmp/outside.f32.npy", str(outside))
        _edit_manifest(idx, lambda m: m["shards"][0].__setitem__("file", rel))
    for argv in _commands(built, idx, tmp_path):
        line = _one_line_error(capsys, argv, "manifest.json")
        assert any(
            s in line for s in ("escapes the index directory", "must not contain", "relative")
        ), line
    assert outside.is_file()


# ------------------------------------------------------------------- no unpickling of files


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            out.append((ast.unparse(node.func), node))
    return out


def _kw(call: ast.Call, name: str) -> str | None:
    for k in call.keywords:
        if k.arg == name:
            return ast.unparse(k.value)
    return None


PICKLE_MODULES = ("pickle", "dill", "marshal", "joblib", "cloudpickle", "shelve")
# modules that may pickle in memory, and why: never a file, never bytes from outside the run
PICKLE_IN_MEMORY = {
    "python/memlens/engine/ray_engine.py": "ships an embedder object to its own Ray workers",
}


def test_no_file_is_unpickled() -> None:
    """Every ``torch.load`` passes ``weights_only=True``; no ``np.load`` allows pickles; no
    module imports pickle & co. except to pickle objects of the same run in memory (listed
    above; even there no ``load`` from a file). TorchScript archives go through
    ``torch.jit.load``'s own restricted unpickler; diffusers/transformers call torch.load
    with weights_only=True themselves."""
    bad = []
    files = [
        p for d in ("python/memlens", "kernels", "benchmarks") for p in (REPO / d).rglob("*.py")
    ]
    assert len(files) > 50
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        where = str(path.relative_to(REPO))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if (
                    any(m.split(".")[0] in PICKLE_MODULES for m in mods)
                    and where not in PICKLE_IN_MEMORY
                ):
                    bad.append(f"{where}:{node.lineno} imports {mods}")
        for func, call in _calls(tree):
            if func.endswith("torch.load") and _kw(call, "weights_only") != "True":
                bad.append(f"{where}:{call.lineno} torch.load without weights_only=True")
            if func in ("np.load", "numpy.load") and _kw(call, "allow_pickle") not in (
                None,
                "False",
            ):
                bad.append(f"{where}:{call.lineno} np.load with allow_pickle")
            if func.endswith(("yaml.load", "yaml.unsafe_load")):
                bad.append(f"{where}:{call.lineno} {func}")
            mod, _, name = func.rpartition(".")
            if mod in PICKLE_MODULES and name in ("load", "Unpickler", "open"):
                bad.append(f"{where}:{call.lineno} {func} (reads a file)")
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------------- HTML escaping


def test_scan_report_escapes_file_names(built: dict[str, Path], tmp_path: Path) -> None:
    """A generated file and a training file named with markup: the report shows the names
    escaped and contains no markup from them."""
    run = tmp_path / "run"
    argv = ["scan", str(built["gen"]), "--index", str(built["idx"]), "--out", str(run), "--quiet"]
    assert _code(argv) == 0
    rows = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    assert {r["item"] for r in rows} == {"gen/a.png", f"gen/{HOSTILE}.png"}
    evil = next(r for r in rows if r["item"] == f"gen/{HOSTILE}.png")
    assert evil["best_item"] == f"train/{HOSTILE}.png"  # it matched its training copy
    html = (run / "report.html").read_text()
    assert "<i>x" not in html
    assert "<script>alert" not in html
    assert "&lt;i&gt;x&amp;&lt;script&gt;alert(1)" in html
