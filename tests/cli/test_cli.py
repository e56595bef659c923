"""The `metricrec` command end to end on tiny data written by the tests."""

import json

import numpy as np
import pytest

from metricrec.cli.main import main
from metricrec.data.synthetic import generate

from fixtures_datasets import SHARED_DATA


def _ratings_csv(tmp_path, n_users=60, n_items=40, seed=0):
    data = generate(n_users, n_items, 1200, n_clusters=3, seed=seed, with_item_features=False)
    rows, cols, _ = data.to_coo_arrays()
    rng = np.random.default_rng(seed)
    path = tmp_path / "ratings.csv"
    lines = ["user,item,rating"] + [
        f"u{data.user_ids[r]},i{data.item_ids[c]},{rng.integers(3, 6)}" for r, c in zip(rows, cols)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


FAST = ["--epochs", "3", "--batch-size", "500", "--factors", "8", "--no-progress", "--threads", "1"]


def test_train_writes_model_and_report_then_evaluate_and_recommend(tmp_path, capsys):
    csv = _ratings_csv(tmp_path)
    out = tmp_path / "run"
    rc = main(["train", "--interactions", str(csv), "--user-col", "user", "--item-col", "item",
               "--rating-col", "rating", "--min-rating", "4", "--out", str(out), "--eval-every", "1", *FAST])
    assert rc == 0
    printed = capsys.readouterr()
    assert "R@50" in printed.out and "R@100" in printed.out  # the per-epoch table
    assert "DATA: file" in printed.err
    report = json.loads((out / "report.json").read_text())
    assert [e["epoch"] for e in report["epochs"]] == [1, 2, 3]
    for e in report["epochs"]:
        assert e["seconds"] > 0 and set(e["valid"]) == {"recall@50", "recall@100", "n_users"}
    assert report["best_epoch"] in (1, 2, 3)
    assert report["config"]["factors"] == 8 and report["config"]["batch_size"] == 500
    assert {"recall@10", "recall@20", "recall@50", "recall@100", "ndcg@50", "mrr", "auc"} <= set(report["test"])
    assert report["train_seconds"] == pytest.approx(sum(e["seconds"] for e in report["epochs"]))
    assert (out / "model" / "weights.npz").is_file() and (out / "model" / "config.json").is_file()

    assert main(["evaluate", "--model", str(out), "--json", str(tmp_path / "m.json")]) == 0
    again = json.loads((tmp_path / "m.json").read_text())
    assert again["recall@50"] == pytest.approx(report["test"]["recall@50"])  # same split rebuilt

    capsys.readouterr()
    user = "u" + str(generate(60, 40, 1200, n_clusters=3, seed=0, with_item_features=False).user_ids[0])
    assert main(["recommend", "--model", str(out), "--user", user, "-n", "5"]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()[:2].rstrip(".").isdigit()]
    assert len(lines) == 5 and all(" i" in l for l in lines)


def test_predefined_split_round_trip_through_data_split(tmp_path, capsys):
    csv = _ratings_csv(tmp_path)
    split_dir = tmp_path / "split"
    assert main(["data", "split", "--interactions", str(csv), "--user-col", "user", "--item-col", "item",
                 "--out", str(split_dir)]) == 0
    for part in ("train", "valid", "test"):
        assert (split_dir / f"{part}.csv").read_text().startswith("user,item\n")
    out = tmp_path / "run"
    assert main(["train", "--train", str(split_dir / "train.csv"), "--valid", str(split_dir / "valid.csv"),
                 "--test", str(split_dir / "test.csv"), "--out", str(out), *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["source"]["kind"] == "predefined"
    assert report["data"]["sizes"]["train"] > 0


def test_stats_counts_by_hand(tmp_path, capsys):
    path = tmp_path / "r.tsv"
    path.write_text("1\t10\t5\n1\t11\t3\n2\t10\t4\n3\t12\t1\n")
    assert main(["data", "stats", "--interactions", str(path), "--rating-col", "2", "--min-rating", "4"]) == 0
    out = capsys.readouterr().out
    assert "users         3" in out and "items         3" in out
    assert "ratings       4" in out and "positives     2" in out


@pytest.mark.parametrize("argv, message", [
    (["train", "--synthetic", "small", "--margin", "-1"], "margin must be a positive number"),
    (["train", "--synthetic", "small", "--dataset", "ml-100k"], "choose one data source"),
    (["train", "--epochs", "2"], "no data"),
    (["data", "stats", "--interactions", "/nonexistent/file.csv"], "/nonexistent/file.csv"),
    (["train", "--train", "a.csv"], "all three"),
    (["data", "stats", "--synthetic", "small", "--ratios", "0.5,0.5"], "--ratios"),
])
def test_bad_input_is_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_malformed_file_names_the_line(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("1,10,5\n1,11,x\n")
    assert main(["data", "stats", "--interactions", str(path), "--rating-col", "2"]) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "line 2" in err


def test_offline_dataset_falls_back_to_synthetic_and_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("METRICREC_MIRROR", "http://127.0.0.1:9/")  # nothing listens on port 9
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the default data folder: no ml-100k there
    monkeypatch.delenv("METRICREC_DATA", raising=False)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "ml-100k", "--out", str(out), *FAST]) == 0
    err = capsys.readouterr().err
    assert "FALLBACK: using the built-in synthetic data set" in err
    report = json.loads((tmp_path / "run-synthetic-fallback" / "report.json").read_text())
    assert report["data"]["source"]["fallback_for"] == "ml-100k" and not out.exists()
    assert main(["train", "--dataset", "ml-100k", "--no-fallback", *FAST]) == 2
    assert "ml-100k" in capsys.readouterr().err


def test_recommend_unknown_user(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--synthetic", "small", "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    assert main(["recommend", "--model", str(out), "--user", "999999"]) == 2
    assert "unknown user id" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED_DATA / "ml-100k" / "u.data").is_file(), reason="shared ml-100k not present")
def test_stats_on_real_ml100k(capsys):
    assert main(["data", "stats", "--dataset", "ml-100k", "--data-dir", str(SHARED_DATA)]) == 0
    out = capsys.readouterr().out
    assert "users         943" in out and "items         1,682" in out
    assert "ratings       100,000" in out and "positives     55,375" in out
