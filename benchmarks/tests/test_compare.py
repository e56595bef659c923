"""benchmarks.compare: EASE among the methods, a skipped run (too large a catalogue) kept with its reason, the
development sets split as stated, and per-data-set grids."""

import argparse

import numpy as np
import scipy.sparse as sp

import benchmarks.compare as compare
from benchmarks.compare import best_run, progress_line, row, skip_reason
from benchmarks.peers import make_peer
from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate

SKIPPED = {"dataset": "big", "method": "ease", "setting": {"lam": 1.0}, "threads": 2, "skipped": "EASE needs ~9 GiB"}


def ok_run(valid, test):
    return {"dataset": "big", "method": "ease", "setting": {"lam": valid}, "best_epoch": 1,
            "best_valid": {"recall@50": valid}, "test": {"recall@50": test, "recall@100": test, "ndcg@50": test},
            "median_s_per_epoch": 0.5, "train_seconds_to_best": 0.5, "peak_rss_mb": 100.0}


def test_ease_runs_one_epoch_over_a_log_grid_of_lambda():
    assert "ease" in compare.METHODS and compare.EPOCH_CAP["ease"] == 1
    lams = compare.GRIDS["ease"]["lam"]
    assert lams == sorted(lams) and lams[0] == 1.0 and lams[-1] == 5000.0 and len(lams) == 9
    assert [g["lam"] for g in compare.grid("ease", "ml-100k")] == lams


def test_skip_reason_asks_the_peer_and_allocates_nothing_for_others():
    huge = sp.csr_matrix((1, 2_000_000))
    assert skip_reason(make_peer("ease", {"lam": 10.0}), huge).startswith("EASE needs ~74505.8 GiB")
    assert skip_reason(make_peer("popularity"), huge) is None


def test_a_skipped_run_is_in_the_table_with_its_reason_and_never_the_best():
    assert row(SKIPPED) == "| big | ease | skipped: EASE needs ~9 GiB | | | | | | |"
    assert progress_line(SKIPPED).endswith("skipped: EASE needs ~9 GiB")
    assert best_run([SKIPPED]) is SKIPPED
    good = ok_run(0.3, 0.31)
    assert best_run([SKIPPED, good, ok_run(0.2, 0.5)]) is good
    assert row(good).startswith("| big | ease | 1 | 0.3100 |")


def test_the_grid_stops_at_the_first_skip(monkeypatch, capsys):
    launched = []
    monkeypatch.setattr(compare, "launch", lambda spec: launched.append(spec) or {**SKIPPED, "setting": spec["params"]})
    args = argparse.Namespace(grid=None, tune=True, threads=2, patience=10, max_epochs=None, data_dir="d")
    results = compare.run_method("ml-100k", "ease", args)
    assert len(launched) == 1 and results[0]["skipped"] == "EASE needs ~9 GiB"
    assert "skipped" in capsys.readouterr().out


def fake_data():
    return generate(preset="small", seed=0)


def test_development_sets_are_split_as_stated(monkeypatch):
    loaded, predefined = [], []
    monkeypatch.setattr(compare, "load_dataset", lambda name, data_dir, **kw: loaded.append((name, kw)) or fake_data())
    monkeypatch.setattr(compare, "load_dataset_split", lambda name, d: predefined.append(name) or "authors' split")
    assert compare.load_split("steam-200k", "d") == "authors' split" and predefined == ["steam-200k"] and not loaded
    loo = compare.load_split("ml-100k-loo", "d")
    assert loaded == [("ml-100k", {"download": False})]  # ml-100k's own positives (rating >= 4)
    assert loo.meta["method"] == "leave_k_out_random" and loo.meta["seed"] == 0
    per_user = lambda m: np.diff(m.indptr)  # noqa: E731
    big = per_user(fake_data().matrix) >= 3
    assert np.all(per_user(loo.test.matrix)[big] == 1) and np.all(per_user(loo.valid.matrix)[big] == 1)
    for name in ("filmtrust", "amazon-beauty", "amazon-toys"):
        split = compare.load_split(name, "d")
        assert loaded[-1] == (name, {"download": False}) and split.meta["method"] == "ratio"
        expected = ratio_split(fake_data(), (0.6, 0.2, 0.2), seed=0)
        assert (split.test.matrix != expected.test.matrix).nnz == 0
    assert set(compare.MAX_EPOCHS) == set(compare.DATASETS)


def test_per_data_set_grids_replace_the_default_one_and_an_override_replaces_both():
    beauty = compare.grid("ease", "amazon-beauty")
    lams = [g["lam"] for g in beauty]
    assert lams == sorted(lams) and len(lams) >= 4 and lams[-1] / lams[0] >= 10  # a log grid over >= 1 decade
    assert compare.grid("ease", "filmtrust") == compare.grid("ease", "ml-100k")  # no own grid: GRIDS
    assert len(compare.grid("implicit-als", "amazon-toys")) < len(compare.grid("implicit-als", "steam-200k"))
    assert compare.grid("ease", "amazon-toys", {"lam": [7.0]}) == [{"lam": 7.0}]
    for name in compare.DATASET_GRIDS:
        assert name in compare.DATASETS and set(compare.DATASET_GRIDS[name]) <= set(compare.METHODS)


def test_merge_keeps_every_run_and_refuses_a_pair_found_twice(tmp_path):
    import json

    import pytest

    from benchmarks import compare

    def run(dataset, method, valid):
        return {"dataset": dataset, "method": method, "best_epoch": 3, "best_valid": {"recall@50": valid},
                "test": {"recall@50": valid, "recall@100": valid, "ndcg@50": valid / 2},
                "median_s_per_epoch": 0.1, "train_seconds_to_best": 0.3, "peak_rss_mb": 100}

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"meta": {"tune": True}, "runs": [run("x", "ease", 0.2), run("x", "ease", 0.3)]}))
    b.write_text(json.dumps({"meta": {"tune": False}, "runs": [run("y", "ease", 0.1)]}))
    meta, runs = compare.merge([a, b])
    assert [m["file"] for m in meta["merged"]] == ["a.json", "b.json"] and len(runs) == 3
    table = compare.table_of(runs).splitlines()
    assert len(table) == 4 and "| x | ease | 3 | 0.3000 |" in table[2] and "| y | ease |" in table[3]
    b.write_text(json.dumps({"meta": {}, "runs": [run("x", "ease", 0.1)]}))
    with pytest.raises(SystemExit, match="x / ease is in both"):
        compare.merge([a, b])
    b.write_text("{}")
    with pytest.raises(SystemExit, match="b.json: not a results file"):
        compare.merge([a, b])
