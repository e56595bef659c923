"""`metricrec report DIR` on real run folders: a tiny synthetic run, and citeulike-a when it is here."""

import base64
import io
import json
import os
import re
import time

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from metricrec.cli.main import main

from fixtures_datasets import SHARED_DATA

FAST = ["--no-progress", "--threads", "1"]


def embedded_pngs(page):
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def assert_drawn(png):
    """A valid PNG (signature, IHDR size) that matplotlib drew something into."""
    import matplotlib.image as mpimg

    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    pixels = mpimg.imread(io.BytesIO(png), format="png")
    assert pixels.shape[:2] == (height, width) and width > 100 and height > 100
    rgb = pixels[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.05 and len(np.unique((rgb * 255).astype(np.uint8), axis=0)) > 8


def _check_run_page(run, capsys, n_maps=1):
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    assert f"report -> {run / 'report.html'}" in capsys.readouterr().out
    page = (run / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page.split("<body>")[0]
    pngs = embedded_pngs(page)
    assert len(pngs) == 1 + n_maps  # training curves + item map(s)
    for png in pngs:
        assert_drawn(png)
    report = json.loads((run / "report.json").read_text())
    assert "Test metrics" in page and "<td class=\"l\">recall</td>" in page and "@50" in page
    assert f"{report['test']['recall@50']:.4f}" in page  # the table holds report.json's numbers
    assert "Training curves" in page and "seconds per epoch" in page
    return page


def test_report_of_a_tiny_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--synthetic", "small", "--epochs", "3", "--factors", "8", "--kernel", "torch",
                 "--out", str(run), *FAST]) == 0
    page = _check_run_page(run, capsys)
    assert "item vectors by popularity" in page or "popularity" in page


def test_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1  # (the command may append a hint to the line)
    assert err.startswith(f"metricrec: error: {tmp_path}: neither a 'metricrec train' run folder (report.json) "
                          "nor a 'metricrec tune' folder (study.json)")
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"metricrec: error: {tmp_path / 'nope'}: no such folder")


def _one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_report_of_what_is_not_a_folder(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "gone", tmp_path / "link")
    tail = " (give a run folder or a tune --out folder)"
    for name, words in (("a_file", "is a file, not a folder"), ("fifo", "is a FIFO (named pipe), not a folder"),
                        ("link", f"is a symbolic link to '{tmp_path / 'gone'}', which does not exist")):
        assert main(["report", str(tmp_path / name)]) == 2
        assert _one_line(capsys) == f"metricrec: error: {tmp_path / name}: {words}{tail}"


@pytest.mark.parametrize("name", ["report.json", "study.json"])
def test_report_json_that_is_not_a_file(tmp_path, capsys, name):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / name).mkdir()
    assert main(["report", str(folder)]) == 2
    assert _one_line(capsys) == f"metricrec: error: {folder / name}: is a directory, not a JSON document"
    (folder / name).rmdir()
    os.mkfifo(folder / name)  # read by stat first: never blocks
    assert main(["report", str(folder)]) == 2
    assert _one_line(capsys) == f"metricrec: error: {folder / name}: is a FIFO (named pipe), not a JSON document"
    (folder / name).unlink()
    os.symlink(tmp_path / "gone", folder / name)
    assert main(["report", str(folder)]) == 2
    assert _one_line(capsys) == (f"metricrec: error: {folder / name}: is a symbolic link to '{tmp_path / 'gone'}', "
                                 "which does not exist")


def test_report_of_a_run_with_a_collapsed_model_or_to_a_folder(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--synthetic", "small", "--epochs", "1", "--factors", "8", "--kernel", "torch",
                 "--out", str(run), *FAST]) == 0
    (tmp_path / "page").mkdir()
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(tmp_path / "page")]) == 2  # refused before drawing anything
    assert _one_line(capsys) == (f"metricrec: error: {tmp_path / 'page'}: is a directory; give the page a file "
                                 f"name (e.g. {tmp_path / 'page' / 'report.html'})")
    weights = run / "model" / "weights.npz"
    arrays = dict(np.load(weights))
    arrays["item_embeddings"][:] = 0
    np.savez(weights, **arrays)
    assert main(["report", str(run)]) == 3
    line = _one_line(capsys)
    assert line.startswith(f"metricrec: error: {weights}: item table is collapsed (all 200 rows zero)")
    assert not (run / "report.html").exists()


@pytest.mark.skipif(not (SHARED_DATA / "citeulike-a" / "users.dat").is_file(), reason="citeulike-a files not here")
def test_report_of_a_citeulike_a_run(tmp_path, capsys):
    run = tmp_path / "cite"
    t0 = time.perf_counter()
    assert main(["train", "--dataset", "citeulike-a", "--data-dir", str(SHARED_DATA), "--no-download",
                 "--no-fallback", "--epochs", "2", "--factors", "16", "--out", str(run), *FAST]) == 0
    page = _check_run_page(run, capsys)
    assert "citeulike-a" in page and "all 16,980 items" in page
    assert time.perf_counter() - t0 < 120  # ~20 s on a quiet 2-core machine
