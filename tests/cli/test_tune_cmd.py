"""`--config FILE` for every subcommand, and `metricrec tune` end to end: run, resume, best.json."""

import json
import os

import pytest

from metricrec.cli.config_file import parse_with_config
from metricrec.cli.main import build_parser, main


# ---------------------------------------------------------------------- --config FILE
def _parse(argv):
    return parse_with_config(build_parser(), argv)


def test_config_file_sets_flags_and_the_command_line_wins(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"factors": 8, "learning-rate": 0.05, "no_progress": True, "use_rank_weight": False,
                               "feature_hidden": [16, 8], "max_norm": None, "synthetic": "small", "split-seed": 3}))
    args = _parse(["train", "--config", str(cfg), "--factors", "12", "--split-seed", "4"])
    assert args.factors == 12 and args.split_seed == 4  # given on the command line
    assert args.learning_rate == 0.05 and args.no_progress is True and args.use_rank_weight is False
    assert args.feature_hidden == (16, 8) and args.max_norm == "none" and args.synthetic == "small"
    plain = _parse(["train", "--synthetic", "small"])  # a fresh parser: nothing carried over
    assert plain.factors is None and plain.no_progress is False


def test_config_file_toml_and_flag_names(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('factors = 8\n"no-rank-weight" = true\nsplit = "leave-k-out"\n')
    args = _parse(["train", "--config", str(cfg), "--synthetic", "small"])
    assert args.factors == 8 and args.use_rank_weight is False and args.split == "leave-k-out"


@pytest.mark.parametrize("doc, words", [
    ({"factorz": 3}, ["'factorz'", "not a flag of 'metricrec train'"]),
    ({"factors": "x"}, ["'factors'", "invalid int value"]),
    ({"split": "nope"}, ["'split'", "invalid choice"]),
    ({"no_progress": "yes"}, ["'no_progress'", "true or false"]),
    ([1, 2], ["expected an object"]),
])
def test_config_file_errors_are_one_line_naming_key_and_file(tmp_path, capsys, doc, words):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps(doc))
    assert main(["train", "--config", str(cfg), "--synthetic", "small"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(cfg) in err
    for w in words:
        assert w in err


def test_config_file_missing_or_invalid(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "none.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "x.json").write_text("{")
    assert main(["train", "--config", str(tmp_path / "x.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_every_subcommand_takes_a_config_file(tmp_path):
    cfg = tmp_path / "t.json"
    cfg.write_text(json.dumps({"trials": 7, "pruner": "none", "synthetic": "small"}))
    args = _parse(["tune", "--config", str(cfg)])
    assert args.trials == 7 and args.pruner == "none" and args.synthetic == "small"


# ---------------------------------------------------------------------- metricrec tune
FAST = ["--synthetic", "small", "--epochs", "2", "--factors", "8", "--threads", "1", "--kernel", "torch"]


def _tune(tmp_path, trials, *extra):
    return main(["tune", *FAST, "--trials", str(trials), "--storage", f"sqlite:///{tmp_path / 'db' / 'tune.db'}",
                 "--study-name", "s", "--out", str(tmp_path / "out"), *extra])


def test_tune_resumes_its_study_and_best_json_trains(tmp_path, capsys):
    optuna = pytest.importorskip("optuna")
    assert _tune(tmp_path, 2) == 0
    first = json.loads((tmp_path / "out" / "study.json").read_text())
    assert [t["number"] for t in first["trials"]] == [0, 1] and first["states"] == {"COMPLETE": 2}
    assert "factors" not in first["identity"]["params"]  # fixed by --factors
    # trial 0 of a new study trains the defaults (with the fixed flags), drawing nothing
    assert first["trials"][0]["defaults"] and first["trials"][0]["params"] == {}
    assert not first["trials"][1]["defaults"] and set(first["trials"][1]["params"]) == set(first["identity"]["params"])
    assert "trial   0 COMPLETE valid recall@50 " in capsys.readouterr().err

    # a run killed mid-trial leaves it RUNNING: the next run marks it FAIL and does not count it
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'db' / 'tune.db'}")
    study.ask()
    capsys.readouterr()
    assert _tune(tmp_path, 3) == 0
    captured = capsys.readouterr()
    assert "marked FAIL (left RUNNING by an interrupted run): trial 2\n" in captured.err
    assert "running 1 more" in captured.err
    doc = json.loads((tmp_path / "out" / "study.json").read_text())
    numbers = [t["number"] for t in doc["trials"]]
    assert numbers == [0, 1, 2, 3] and doc["states"] == {"COMPLETE": 3, "FAIL": 1}
    params = [tuple(sorted(t["params"].items())) for t in doc["trials"] if t["state"] == "COMPLETE"]
    assert len(set(params)) == 3  # the resumed sampler did not draw the first run's points again
    assert sum(t["defaults"] for t in doc["trials"]) == 1  # a resumed study does not train the defaults again
    for t in doc["trials"]:
        if t["state"] == "COMPLETE":
            assert t["seconds"] > 0 and t["epochs"] == 2 and 0 <= t["value"] <= 1
    assert doc["best"]["value"] == max(t["value"] for t in doc["trials"] if t["value"] is not None)

    best = json.loads((tmp_path / "out" / "best.json").read_text())
    assert best["factors"] == 8
    assert best["margin"] == doc["best"]["params"].get("margin", doc["base_config"]["margin"])
    run = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "out" / "best.json"), "--synthetic", "small", "--out", str(run),
                 "--no-progress", "--threads", "1", "--kernel", "torch"]) == 0
    report = json.loads((run / "report.json").read_text())
    for k, v in doc["best"]["params"].items():
        assert report["config"][k] == v
    assert f"--config {tmp_path / 'out' / 'best.json'}" in captured.out


def test_tune_refuses_a_study_made_on_other_data(tmp_path, capsys):
    pytest.importorskip("optuna")
    assert _tune(tmp_path, 1, "--pruner", "none") == 0
    capsys.readouterr()
    assert _tune(tmp_path, 2, "--pruner", "none", "--split-seed", "5") == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("metricrec: error: study 's' in sqlite:///") and "another train_fingerprint" in last


def _sqlite_foreign(path):
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (x)")
    db.close()


@pytest.mark.parametrize("make, words", [
    (lambda p: p.mkdir(), "{p} is a directory, not an SQLite file"),
    (lambda p: os.mkfifo(p), "{p} is a FIFO (named pipe), not an SQLite file"),
    (lambda p: os.symlink(p.parent / "gone.db", p), "{p} is a symbolic link to '{d}/gone.db', which does not exist"),
    (lambda p: p.write_text("user,item\n1,2\n"), "{p} is not an SQLite database (it starts with b'user,ite'); "
                                                 "give a new file name or an Optuna storage"),
    (_sqlite_foreign, "{p} is an SQLite database of another program (tables notes), not an Optuna storage; "
                      "give another file"),
])
def test_tune_storage_that_is_not_an_optuna_sqlite_file(tmp_path, capsys, make, words):
    pytest.importorskip("optuna")
    db = tmp_path / "t.db"
    make(db)
    before = db.read_bytes() if db.is_file() else None
    url = f"sqlite:///{db}"
    assert main(["tune", *FAST, "--trials", "1", "--storage", url, "--out", str(tmp_path / "out")]) == 2
    last = capsys.readouterr().err.strip().splitlines()
    assert last[-1] == f"metricrec: error: --storage {url}: " + words.format(p=db, d=tmp_path)
    assert before is None or db.read_bytes() == before  # another program's file is left as it was
    assert not (tmp_path / "out").exists()


def test_tune_storage_url_and_flag_errors_are_one_line(tmp_path, capsys):
    pytest.importorskip("optuna")
    (tmp_path / "f").write_text("x")
    cases = [
        (["--storage", "nonsense"], "--storage nonsense: cannot open it as an Optuna storage (Could not parse "
                                    "SQLAlchemy URL from given URL string)"),
        (["--storage", f"sqlite:///{tmp_path / 'f' / 'x.db'}"],
         f"--storage sqlite:///{tmp_path / 'f' / 'x.db'}: {tmp_path / 'f'} is not a folder"),
        (["--out", str(tmp_path / "f")], f"--out {tmp_path / 'f'}: exists and is not a folder; choose another --out"),
        (["--timeout", "-5"], "--timeout must be a positive number of seconds, got -5"),
    ]
    for extra, words in cases:
        argv = ["tune", *FAST, "--trials", "1", "--storage", f"sqlite:///{tmp_path / 'ok.db'}",
                "--out", str(tmp_path / "out"), *extra]
        assert main(argv) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"metricrec: error: {words}"
    assert not (tmp_path / "out").exists()


def test_tune_help_documents_the_search_space(capsys):
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    out = capsys.readouterr().out
    for name in ("margin", "learning_rate", "n_negatives", "batch_size", "cov_weight", "factors", "negative_group"):
        assert name in out
    assert "[0.25, 2.5]" in out and "--storage" in out and "--trials" in out


def test_tune_model_sml_draws_its_own_space_and_best_json_trains_it(tmp_path, capsys):
    pytest.importorskip("optuna")
    fast = [a if a != "torch" else "auto" for a in FAST]
    code = main(["tune", "--model", "sml", *fast, "--trials", "2", "--storage",
                 f"sqlite:///{tmp_path / 'tune.db'}", "--out", str(tmp_path / "out"), "--params", "margin_reg,item_weight"])
    assert code == 0
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "out" / "study.json").read_text())
    assert doc["study_name"] == "sml-small" and doc["identity"]["model"] == "sml"
    assert set(doc["trials"][1]["params"]) == {"margin_reg", "item_weight"}
    best = json.loads((tmp_path / "out" / "best.json").read_text())
    assert "margin_max" in best and "margin" not in best  # SML's config, not CML's
    assert "metricrec train --model sml --config" in out
    # a CML setting is refused for --model sml, naming the model it belongs to
    assert main(["tune", "--model", "sml", *fast, "--margin", "1.0", "--trials", "1", "--storage",
                 f"sqlite:///{tmp_path / 'x.db'}", "--out", str(tmp_path / "o2")]) == 2
    assert "--margin is a setting of --model cml" in capsys.readouterr().err
    assert main(["tune", "--model", "sml", *fast, "--params", "margin", "--trials", "1", "--storage",
                 f"sqlite:///{tmp_path / 'y.db'}", "--out", str(tmp_path / "o3")]) == 2
    assert "not in the search space" in capsys.readouterr().err
