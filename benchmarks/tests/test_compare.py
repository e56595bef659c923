"""benchmarks.compare: EASE among the methods, and a skipped run (too large a catalogue) kept with its reason."""

import argparse

import scipy.sparse as sp

import benchmarks.compare as compare
from benchmarks.compare import best_run, progress_line, row, skip_reason
from benchmarks.peers import make_peer

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
