"""`metricrec train --item-features FILE` end to end on tiny data written by the test."""

import json
import re

import numpy as np
import pytest

from metricrec import CML
from metricrec.cli.main import main
from metricrec.data.synthetic import generate


FAST = ["--epochs", "3", "--batch-size", "500", "--factors", "8", "--no-progress", "--threads", "1"]


def _files(tmp_path):
    data = generate(60, 40, 1200, n_clusters=3, seed=0, with_item_features=False)
    rows, cols, _ = data.to_coo_arrays()
    inter = tmp_path / "pairs.csv"
    inter.write_text("user,item\n" + "".join(f"u{data.user_ids[r]},i{data.item_ids[c]}\n" for r, c in zip(rows, cols)))
    clusters = data.meta["item_cluster"]
    lines = ["item,feature,value"] + [f"i{data.item_ids[j]},cluster={clusters[j]}" for j in range(38)]
    lines += [f"i{data.item_ids[j]},size,{0.5 + j / 40}" for j in range(0, 38, 2)]
    lines += ["i999,cluster=0", f"i{data.item_ids[0]},cluster={clusters[0]}"]  # unknown item, duplicate pair
    feats = tmp_path / "feats.csv"
    feats.write_text("\n".join(lines) + "\n")
    return inter, feats, data


def test_train_with_item_feature_file_reports_features_and_saves_f(tmp_path, capsys):
    inter, feats, data = _files(tmp_path)
    out = tmp_path / "run"
    rc = main(["train", "--interactions", str(inter), "--user-col", "user", "--item-col", "item",
               "--item-features", str(feats), "--feature-weight", "0.5", "--feature-hidden", "16",
               "--out", str(out), *FAST])
    assert rc == 0
    err = capsys.readouterr().err
    assert "FEATURES: file | 4 features on 38 of 40 items" in err
    report = json.loads((out / "report.json").read_text())
    f = report["features"]
    assert f["source"] == "file" and f["n_features"] == 4 and f["n_rows_with_features"] == 38
    assert f["weight"] == 0.5 and f["hidden"] == [16] and isinstance(f["n_cold_items"], int)
    warnings = " | ".join(f["warnings"])
    assert "1 rows for 1 unknown item id(s)" in warnings and "1 duplicate" in warnings
    assert "2 of 40 items have no feature" in warnings
    assert report["config"]["feature_weight"] == 0.5 and report["config"]["feature_hidden"] == [16]
    assert all("feature_loss" in e and e["feature_loss"] > 0 for e in report["epochs"])
    model = CML.load(out / "model")
    assert model.item_feature_names.tolist() == ["cluster=0", "cluster=1", "cluster=2", "size"]
    vec = model.recalculate_item({"cluster=1": 1.0})
    assert vec.shape == (8,) and np.linalg.norm(vec) <= 1.0 + 1e-6
    # the saved run still evaluates and recommends
    assert main(["evaluate", "--model", str(out)]) == 0
    assert main(["recommend", "--model", str(out), "--user", f"u{data.user_ids[0]}", "-n", "3"]) == 0


def test_item_features_alone_use_the_default_weight_and_bad_combinations_fail(tmp_path, capsys):
    inter, feats, _ = _files(tmp_path)
    base = ["train", "--interactions", str(inter), "--user-col", "user", "--item-col", "item", *FAST]
    out = tmp_path / "run2"
    assert main([*base, "--item-features", str(feats), "--out", str(out)]) == 0
    from metricrec.models.cml.feature_reg import DEFAULT_FEATURE_WEIGHT

    # the default rule: lambda_f scaled by the square of the share of distinct feature rows -- the 19
    # items with a size value are each their own row, the other 19 share their cluster's 3 rows
    weight = json.loads((out / "report.json").read_text())["features"]["weight"]
    assert weight == pytest.approx(DEFAULT_FEATURE_WEIGHT * (22 / 38) ** 2)
    bad = tmp_path / "nan.csv"
    bad.write_text("item,feature,value\ni0,a,nan\n")
    cases = [(["--feature-weight", "1"], "needs item features"),
             (["--item-features", "tags"], "no built-in item features"),
             (["--item-features", str(bad)], r"nan\.csv, line 2")]
    for extra, message in cases:
        capsys.readouterr()
        assert main([*base, *extra, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert re.search(message, err), err
