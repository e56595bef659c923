"""Report building blocks: PNG figures, the 2-D map, feature colours, the study page."""

import base64
import io
import json
import re

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("matplotlib")

from metricrec.data.interactions import Features
from metricrec.errors import DataError
from metricrec.report import folder_kind, write_report
from metricrec.report import figures
from metricrec.report.embedding import feature_labels, popularity, project_2d, sample_rows
from metricrec.report.html import table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_pixels(png: bytes) -> np.ndarray:
    """Decode a PNG (checked: signature, IHDR) into an RGBA array."""
    import matplotlib.image as mpimg

    assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    pixels = mpimg.imread(io.BytesIO(png), format="png")
    assert pixels.shape[:2] == (height, width) and width > 100 and height > 100
    return pixels


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def assert_drawn(png: bytes) -> None:
    pixels = png_pixels(png)
    rgb = pixels[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.05  # not a blank canvas
    assert len(np.unique((rgb * 255).astype(np.uint8), axis=0)) > 8  # lines, text, colours


def test_training_curves_and_item_map_are_real_pngs():
    epochs = [{"epoch": e, "loss": 100.0 / e, "seconds": 0.1, "eval_seconds": 0.05,
               "valid": {"recall@50": 0.1 * e, "recall@100": 0.12 * e}} for e in range(1, 6)]
    assert_drawn(figures.training_curves(epochs, best_epoch=4))
    xy = np.random.default_rng(0).normal(size=(300, 2))
    assert_drawn(figures.item_map(xy, values=np.arange(300.0), title="t"))
    codes = np.arange(300) % 4
    assert_drawn(figures.item_map(xy, codes=codes, names=["a", "b", "c", "other"]))


def test_pca_map_and_popularity():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(200, 6)) * np.array([5.0, 2.0, 0.1, 0.1, 0.1, 0.1])
    xy, caption = project_2d(emb, "pca")
    assert xy.shape == (200, 2) and caption.startswith("PCA") and "%" in caption
    assert xy[:, 0].var() > xy[:, 1].var() > 1.0  # the first two directions, largest first
    assert project_2d(rng.normal(size=(10, 1)), "pca")[0].shape == (10, 2)  # one factor: padded
    m = sp.csr_matrix(np.array([[1, 0, 1], [1, 0, 0]], dtype=np.float32))
    assert popularity(m, 3).tolist() == [2.0, 0.0, 1.0]
    assert len(sample_rows(10, limit=4)) == 4 and sample_rows(3, limit=4).tolist() == [0, 1, 2]


def test_feature_labels_pick_a_small_group_and_the_least_common_shown_genre():
    names = np.array(["genre=Drama", "genre=Horror", "genre=Comedy", "year=1990s", "year=1980s"])
    rows = np.array([[1, 1, 0, 1, 0], [1, 0, 0, 0, 1], [1, 0, 1, 1, 0], [0, 0, 0, 1, 0], [1, 0, 1, 0, 1]],
                    dtype=np.float32)
    group, codes, labels = feature_labels(Features(sp.csr_matrix(rows), names))
    assert group == "genre" and labels == ["Horror", "Comedy", "Drama", "other"]
    assert [labels[c] for c in codes] == ["Horror", "Drama", "Comedy", "other", "Comedy"]
    tags = Features(sp.csr_matrix(np.eye(60, dtype=np.float32)), np.array([f"tag={i}" for i in range(60)]))
    assert feature_labels(tags) is None  # too many values to colour by


def test_table_escapes_and_formats():
    html = table(["m", "v"], [["<b>", 0.123456], ["n", 12345678.0], ["x", None]])
    assert "&lt;b&gt;" in html and "0.1235" in html and "1.235e+07" in html and "<td>-</td>" in html


def _study_json(folder, n_complete):
    import optuna

    dist = optuna.distributions
    dists = {"margin": dist.distribution_to_json(dist.FloatDistribution(0.25, 2.5)),
             "factors": dist.distribution_to_json(dist.CategoricalDistribution([32, 64]))}
    rng = np.random.default_rng(0)
    trials = []
    for n in range(n_complete + 1):
        margin = float(rng.uniform(0.25, 2.5))
        state = "PRUNED" if n == n_complete else "COMPLETE"
        value = None if state == "PRUNED" else 0.5 - 0.1 * abs(margin - 1.5)
        trials.append({"number": n, "state": state, "value": value, "params": {"margin": margin, "factors": 32 * (1 + n % 2)},
                       "seconds": 1.0, "epochs": 5, "best_epoch": 4, "intermediate": {"1": 0.1, "2": 0.2}})
    best = max((t for t in trials if t["value"] is not None), key=lambda t: t["value"])
    doc = {"kind": "metricrec.tune", "study_name": "s", "storage": "sqlite:///x.db", "metric": "valid recall@50",
           "n_trials": len(trials), "states": {"COMPLETE": n_complete, "PRUNED": 1}, "distributions": dists,
           "space": [{"name": "margin", "kind": "float", "range": "[0.25, 2.5]", "why": "m"},
                     {"name": "factors", "kind": "categorical", "range": "{32, 64}", "why": "d"}],
           "best": {**best, "config": {"margin": best["params"]["margin"], "factors": 32}}, "trials": trials}
    folder.mkdir(exist_ok=True)
    (folder / "study.json").write_text(json.dumps(doc))


def test_study_page_history_and_importances(tmp_path):
    pytest.importorskip("optuna")
    _study_json(tmp_path / "st", 8)
    assert folder_kind(tmp_path / "st") == "study"
    page = write_report(tmp_path / "st").read_text()
    pngs = embedded_pngs(page)
    assert len(pngs) == 3  # history, curves, importances
    for png in pngs:
        assert_drawn(png)
    assert "parameter importances" in page and "Best configuration (trial" in page and "PRUNED" in page
    assert "warning: fitted to only 8 complete trials (fewer than 20)" in page  # importances from few trials

    _study_json(tmp_path / "many", 24)
    page = write_report(tmp_path / "many").read_text()
    assert len(embedded_pngs(page)) == 3 and "warning: fitted to only" not in page

    # the defaults' trial (no params) is left out of the importances: 3 drawn trials are too few
    _study_json(tmp_path / "defaults", 4)
    doc = json.loads((tmp_path / "defaults" / "study.json").read_text())
    doc["trials"][0].update(params={}, defaults=True)
    (tmp_path / "defaults" / "study.json").write_text(json.dumps(doc))
    page = write_report(tmp_path / "defaults").read_text()
    assert "need at least 4 complete trials (3 so far)" in page and "the defaults (trial 0)" in page

    _study_json(tmp_path / "few", 2)  # too few trials: a note instead of a figure
    page = write_report(tmp_path / "few").read_text()
    assert len(embedded_pngs(page)) == 2 and "need at least 4 complete trials (2 so far)" in page


def test_neither_run_nor_study(tmp_path):
    with pytest.raises(DataError, match="neither a 'metricrec train' run folder"):
        folder_kind(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        folder_kind(tmp_path / "missing")
    (tmp_path / "report.json").write_text("[1]")
    with pytest.raises(DataError, match="expected a JSON object"):
        write_report(tmp_path)
