"""benchmarks.family: the numbers it reads from a report.json, the choice on valid, the table."""

import sys

from benchmarks.family import GRIDS, MODELS, _run_measured, choose, summarise, table


def _report(valid=0.4, test=0.36):
    epochs = [{"epoch": e, "seconds": 0.1 * e, "valid": {"recall@50": valid} if e == 3 else {}} for e in range(1, 5)]
    return {"epochs": epochs, "best_epoch": 3, "init_seconds": 0.5, "seconds_to_best": 0.6, "wall_seconds": 2.0,
            "test": {"recall@50": test, "ndcg@10": 0.2}, "config": {}}


def test_summarise_reads_the_best_epoch_and_the_mean_epoch_seconds():
    r = summarise(_report())
    assert r["valid_recall@50"] == 0.4 and r["test_recall@50"] == 0.36 and r["test_ndcg@10"] == 0.2
    assert abs(r["seconds_per_epoch"] - 0.25) < 1e-12 and abs(r["seconds_to_best"] - 1.1) < 1e-12
    assert (r["best_epoch"], r["epochs_run"]) == (3, 4)


def test_choose_goes_by_valid_never_by_test_and_skips_errors():
    a = {"flags": [], **summarise(_report(valid=0.40, test=0.50))}
    b = {"flags": ["--learning-rate", "1.0"], **summarise(_report(valid=0.45, test=0.30))}
    assert choose([a, b, {"flags": ["x"], "error": "boom"}]) is b
    assert choose([{"error": "boom"}]) is None


def test_table_rows_relative_to_cml_defaults_and_errors_kept():
    cml = {"model": "cml", "data": "d", "role": "defaults", "flags": [], "peak_rss_mb": 100.0, **summarise(_report())}
    other = {**cml, "model": "sml", "test_recall@50": 0.396}
    failed = {"model": "lrml", "data": "d", "role": "defaults", "flags": [], "error": "boom"}
    lines = table([cml, other, failed], {}).splitlines()
    assert "| d | cml | defaults | 0.3600 |" in lines[2] and "+0.0%" in lines[2]
    assert "+10.0%" in lines[3] and "error: boom" in lines[4]


def test_every_model_has_a_grid():
    assert set(GRIDS) == set(MODELS) and all(GRIDS[m] for m in MODELS)


def test_peak_memory_is_the_childs_own():
    code, err, peak = _run_measured([sys.executable, "-c", "x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096])"])
    assert code == 0 and err == ""
    assert 200 <= peak < 400  # the 200 MiB it touched, plus the interpreter
    code, err, _ = _run_measured([sys.executable, "-c", "import sys; sys.exit('no such set')"])
    assert code == 1 and "no such set" in err


def test_reuse_keeps_the_rows_not_rerun_and_orders_the_table(tmp_path, monkeypatch):
    import json

    from benchmarks import family

    old = [{"model": m, "data": d, "role": "defaults", "flags": [], "peak_rss_mb": 1.0, **summarise(_report(test=t))}
           for m, d, t in (("sml", "ml-100k", 0.30), ("cml", "ml-100k", 0.36), ("sml", "filmtrust", 0.80))]
    (tmp_path / "old.json").write_text(json.dumps({"meta": {"grids": {"cml": [["--learning-rate", "0.1"]]}}, "rows": old}))
    ran = []

    def fake_run(model, data, data_dir, threads, extra=()):
        ran.append((model, data))
        return {"model": model, "data": data, "flags": list(extra), "peak_rss_mb": 1.0,
                **summarise(_report(test=0.40))}

    monkeypatch.setattr(family, "run_model", fake_run)
    monkeypatch.setattr(family, "RESULTS", tmp_path)
    monkeypatch.setattr(family, "tuned_peers", lambda files: {})
    assert family.main(["--models", "sml", "--sets", "ml-100k", "--reuse", str(tmp_path / "old.json")]) == 0
    rows = json.loads((tmp_path / "family.json").read_text())["rows"]
    assert ran == [("sml", "ml-100k")]
    got = [(r["data"], r["model"], r["test_recall@50"]) for r in rows]
    # ml-100k before filmtrust (the order of the sets), cml before sml; sml on ml-100k replaced
    assert got == [("ml-100k", "cml", 0.36), ("ml-100k", "sml", 0.40), ("filmtrust", "sml", 0.80)]
    # the grids of the tuned rows kept stay stated, though this run tuned nothing
    assert json.loads((tmp_path / "family.json").read_text())["meta"]["grids"] == {"cml": [["--learning-rate", "0.1"]]}
