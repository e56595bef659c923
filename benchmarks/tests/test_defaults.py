"""benchmarks.defaults: the numbers it reads from a report.json and the table beside the peers."""

from benchmarks.defaults import summarise, table


def _report():
    epochs = [{"epoch": e, "seconds": 0.2, "eval_seconds": 0.1 if e % 5 == 0 else 0.0,
               "valid": {"recall@50": 0.3 + e / 100} if e % 5 == 0 else {}} for e in range(1, 11)]
    return {"epochs": epochs, "best_epoch": 10, "init_seconds": 0.5, "seconds_to_best": 2.0, "train_seconds": 2.0,
            "wall_seconds": 4.0, "test": {"recall@50": 0.36, "ndcg@50": 0.25, "auc": 0.9, "n_users": 5},
            "batch_size_used": 1000, "n_negatives_used": 20, "config": {"epochs": 10}}


def test_summarise_counts_the_initialisation_and_the_validation_share():
    r = summarise("citeulike-a", _report(), load=0.5, process_s=6.0)
    assert r["train_seconds_to_best"] == 2.5 and r["validation_seconds"] == 0.2
    assert r["validation_share"] == 0.05 and r["valid_recall@50"] == 0.4
    assert r["test"] == {"recall@50": 0.36, "ndcg@50": 0.25} and r["n_negatives"] == 20


def test_table_puts_the_peers_under_each_default_run():
    run = summarise("citeulike-a", _report(), load=0.5, process_s=6.0)
    peers = {"citeulike-a": [{"method": "implicit-als", "test_recall@50": 0.354, "test_ndcg@10": 0.2, "best_epoch": 42,
                              "train_seconds_to_best": 3.27, "wall_seconds": 26.7, "setting": {}}]}
    lines = table([run, {**run, "run": "citeulike-a+tags"}, {"run": "ml-100k", "error": "boom"}], peers).splitlines()
    assert "**0.3600**" in lines[2] and "2.50" in lines[2] and "5%" in lines[2]
    assert lines[3].startswith("| citeulike-a | implicit-als (tuned) | 0.3540 | 0.2000 | 42 | 3.27 | 26.70")
    assert "--item-features tags" in lines[4] and "error: boom" in lines[5]


def test_tuned_peers_keep_each_methods_best_run_on_valid(tmp_path):
    import json

    from benchmarks.defaults import tuned_peers

    def run(method, valid, test):
        return {"dataset": "d", "method": method, "best_valid": {"recall@50": valid}, "test": {"recall@50": test},
                "best_epoch": 3, "train_seconds_to_best": 1.0, "train_seconds_total": 2.0, "eval_seconds_total": 1.0}
    runs = [run("implicit-als", 0.40, 0.50), run("implicit-als", 0.45, 0.44), run("lightfm-warp", 0.3, 0.3),
            run("popularity", 0.9, 0.9), {"dataset": "d", "method": "lightfm-bpr", "error": "x"}]
    (tmp_path / "c.json").write_text(json.dumps({"runs": runs}))
    peers = tuned_peers(tmp_path / "c.json")["d"]
    assert sorted((p["method"], p["test_recall@50"]) for p in peers) == [("implicit-als", 0.44), ("lightfm-warp", 0.3)]
    assert peers[0]["wall_seconds"] == 3.0


def test_tuned_peers_read_every_results_file_and_leave_out_skipped_runs(tmp_path):
    import json

    from benchmarks.defaults import tuned_peers

    def run(method, valid, test):
        return {"dataset": "d", "method": method, "best_valid": {"recall@50": valid}, "test": {"recall@50": test},
                "best_epoch": 1, "train_seconds_to_best": 0.5, "train_seconds_total": 0.5, "eval_seconds_total": 0.1}
    (tmp_path / "real.json").write_text(json.dumps({"runs": [run("implicit-als", 0.4, 0.5)]}))
    (tmp_path / "ease.json").write_text(json.dumps({"runs": [
        run("ease", 0.45, 0.52), run("ease", 0.47, 0.55),
        {"dataset": "big", "method": "ease", "skipped": "EASE needs ~9 GiB"}]}))
    peers = tuned_peers([tmp_path / "real.json", tmp_path / "ease.json", tmp_path / "absent.json"])
    assert list(peers) == ["d"]
    assert sorted((p["method"], p["test_recall@50"]) for p in peers["d"]) == [("ease", 0.55), ("implicit-als", 0.5)]


def test_gaps_state_the_ratio_to_the_best_tuned_peer_and_whether_the_best_epoch_was_the_last():
    from benchmarks.defaults import gaps

    run = summarise("citeulike-a", _report(), load=0.5, process_s=6.0)
    assert run["best_is_last"]  # best 10 of 10 epochs
    peers = {"citeulike-a": [{"method": "implicit-als", "test_recall@50": 0.40},
                             {"method": "ease", "test_recall@50": 0.45, "tuned": False},
                             {"method": "cml (hand-tuned)", "test_recall@50": 0.5}]}
    lines = gaps([run, {**run, "run": "filmtrust", "best_is_last": False}], peers).splitlines()
    assert lines[2] == "| citeulike-a | 0.3600 | implicit-als | 0.4000 | 0.900 | yes |"
    assert lines[3] == "| filmtrust | 0.3600 | (no tuned peer) | | | no |"
