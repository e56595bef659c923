"""benchmarks.rules: which change is kept, which is chosen, and the leave-one-set-out table, by hand."""

import pytest

from benchmarks.rules import CANDIDATES, choose, kept, leave_one_out, reference, tables

SETS = ["a", "b", "c"]
REF = {"a": 0.5, "b": 0.4, "c": 0.2}
RESULTS = {
    "defaults": {"a": 0.50, "b": 0.40, "c": 0.20},
    "good everywhere": {"a": 0.51, "b": 0.41, "c": 0.201},  # +2%, +2.5%, +0.5%
    "great on c only": {"a": 0.49, "b": 0.40, "c": 0.26},  # a -2%: never kept with a in the sets
    "worse": {"a": 0.45, "b": 0.38, "c": 0.19},
}


def test_a_change_is_kept_only_if_it_raises_the_mean_and_loses_at_most_one_percent_anywhere():
    k = kept(RESULTS, REF, SETS)
    assert set(k) == {"defaults", "good everywhere"}
    assert k["defaults"] == 1.0 and abs(k["good everywhere"] - (0.51 / 0.5 + 0.41 / 0.4 + 0.201 / 0.2) / 3) < 1e-12
    assert choose(RESULTS, REF, SETS) == "good everywhere"
    # without a, the -2% there no longer counts and the large gain on c wins
    assert choose(RESULTS, REF, ["b", "c"]) == "great on c only"
    assert choose({"defaults": RESULTS["defaults"], "worse": RESULTS["worse"]}, REF, SETS) == "defaults"


def test_leave_one_out_puts_the_choice_without_each_set_beside_the_choice_with_it():
    rows = {r["set"]: r for r in leave_one_out(RESULTS, REF, SETS)}
    assert rows["a"]["chosen_without"] == "great on c only" and rows["a"]["chosen_with_all"] == "good everywhere"
    assert abs(rows["a"]["own_tuning_worth"] - (0.51 - 0.49)) < 1e-12
    # without b, a's -2% still bars "great on c only": the same choice, worth nothing
    assert rows["b"]["chosen_without"] == "good everywhere" and rows["b"]["own_tuning_worth"] == 0.0
    text = tables(RESULTS, REF, SETS)
    assert "Chosen with every set: **good everywhere**" in text
    assert "| a | great on c only | 0.4900 | good everywhere | 0.5100 | +0.0200 |" in text


def test_reference_is_the_best_tuned_peer_else_the_defaults_own_run():
    peers = {"a": [{"method": "implicit-als", "test_recall@50": 0.6}, {"method": "cml (hand-tuned)",
                                                                       "test_recall@50": 0.9},
                   {"method": "lightfm-warp", "test_recall@50": 0.7, "tuned": False}]}
    ref = reference({"defaults": {"a": 0.5, "a+tags": 0.55, "b": 0.3}}, peers, ["a", "a+tags", "b"])
    assert ref == {"a": 0.6, "a+tags": 0.55, "b": 0.3}


def test_rules_of_the_data_compute_their_flags_from_its_statistics():
    stats = {"n_users": 100, "n_items": 2000, "train_pairs": 4000}  # 40 positives per user
    assert CANDIDATES["U share 0.2"](stats) == ["--n-negatives", "10"]  # 0.2 x 2000 / 40
    assert CANDIDATES["U share 0.05"](stats) == ["--n-negatives", "3"]  # 2.5 -> at least 3
    assert CANDIDATES["batch n/4"](stats) == ["--batch-size", "1000"]
    assert CANDIDATES["defaults"](stats) == []


def test_a_partial_study_is_tabled_but_only_complete_candidates_are_chosen():
    partial = {**RESULTS, "half run": {"a": 0.9}}  # still running: no row for b and c yet
    text = tables(partial, REF, SETS)
    assert "| half run | 0.9000 | error | error | | | |" in text
    assert "Chosen with every set: **good everywhere**" in text


def test_another_models_study_runs_its_own_candidates_under_model_flags(tmp_path, monkeypatch):
    import json

    from benchmarks import rules

    calls = []

    def fake_run(name, data_dir, threads, extra=()):
        calls.append((name, list(extra)))
        r50 = {"a": 0.5, "b": 0.4}[name] + (0.01 if "--margin-reg" in extra else 0.0)
        return {"run": name, "best_epoch": 3, "epochs_run": 4, "best_is_last": False, "test": {"recall@50": r50},
                "data_stats": {"n_users": 10, "n_items": 20, "train_pairs": 40}}

    monkeypatch.setattr(rules, "run_cli", fake_run)
    monkeypatch.setattr(rules, "RUNS", {"a": [], "b": []})
    monkeypatch.setattr(rules, "RESULTS", tmp_path)
    monkeypatch.setattr(rules, "tuned_peers", lambda files: {})
    assert rules.main(["--model", "sml", "--sets", "a", "b", "--candidates", "margin_reg 0.02"]) == 0
    assert calls == [("a", ["--model", "sml"]), ("b", ["--model", "sml"]),
                     ("a", ["--model", "sml", "--margin-reg", "0.02"]), ("b", ["--model", "sml", "--margin-reg", "0.02"])]
    saved = json.loads((tmp_path / "rules-sml.json").read_text())
    assert saved["meta"]["model"] == "sml" and saved["results"]["margin_reg 0.02"] == pytest.approx({"a": 0.51, "b": 0.41})
    assert "Chosen with every set: **margin_reg 0.02**" in (tmp_path / "rules-sml.md").read_text()
