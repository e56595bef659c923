"""`metricrec train --model cml|sml|bpr`: each model trains, saves what it is, and every command that
reads a model folder (evaluate, recommend, serve) takes it; model-specific flags only with their model."""

import json

import numpy as np
import pytest

from metricrec.cli.main import main
from metricrec.models import BPR, SML, load_model

FAST = ["--synthetic", "small", "--epochs", "2", "--factors", "8", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def sml_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sml") / "run"
    assert main(["train", "--model", "sml", *FAST, "--margin-max", "0.8", "--item-weight", "0.2",
                 "--negatives", "hardest", "--out", str(out)]) == 0
    return out


def test_train_sml_saves_an_sml_model_with_its_settings(sml_run):
    report = json.loads((sml_run / "report.json").read_text())
    assert report["model"] == "SML" and [e["epoch"] for e in report["epochs"]] == [1, 2]
    assert report["config"]["margin_max"] == 0.8 and report["config"]["item_weight"] == 0.2
    assert report["config"]["negatives"] == "hardest" and report["config"]["factors"] == 8
    assert {"user_loss", "item_loss", "margin_loss"} <= set(report["epochs"][0])  # SML's three terms
    assert {"recall@50", "ndcg@10"} <= set(report["test"]) and report["test"]["recall@50"] > 0
    model = load_model(sml_run / "model")
    assert type(model) is SML and model.config.margin_max == 0.8
    assert 0 <= model.user_margins.min() and model.user_margins.max() <= np.float32(0.8)
    assert json.loads((sml_run / "run.json").read_text())["args"]["model"] == "sml"


def test_evaluate_and_recommend_read_the_sml_folder(sml_run, tmp_path, capsys):
    report = json.loads((sml_run / "report.json").read_text())
    assert main(["evaluate", "--model", str(sml_run), "--json", str(tmp_path / "m.json")]) == 0
    again = json.loads((tmp_path / "m.json").read_text())
    assert again["recall@50"] == pytest.approx(report["test"]["recall@50"])  # same model, same split rebuilt
    model = load_model(sml_run / "model")
    user = model.user_ids[3]
    capsys.readouterr()
    assert main(["recommend", "--model", str(sml_run), "--user", str(user), "-n", "5"]) == 0
    printed = [l.split() for l in capsys.readouterr().out.splitlines() if l.strip()[:2].rstrip(".").isdigit()]
    want, _ = model.recommend_raw([user], N=5)[0]
    assert [row[1] for row in printed] == [str(i) for i in want.tolist()]
    recs = tmp_path / "recs.csv"
    assert main(["recommend", "--model", str(sml_run), "--users", "all", "--output", str(recs)]) == 0
    assert len(recs.read_text().splitlines()) == 1 + 10 * model.user_embeddings.shape[0]


def test_serve_answers_from_the_sml_folder(sml_run):
    testclient = pytest.importorskip("fastapi.testclient")
    from metricrec.serving.app import create_app

    model = load_model(sml_run / "model")
    with testclient.TestClient(create_app(sml_run / "model")) as client:
        user = str(model.user_ids[0])
        body = client.get("/recommend", params={"user": user, "n": 4}).json()
        want, _ = model.recommend_raw([model.user_ids[0]], N=4)[0]
        assert body["items"] == [str(i) for i in want.tolist()]
        liked = [str(i) for i in model.item_ids[:3].tolist()]
        r = client.post("/recommend", json={"items": liked, "n": 5})  # a new user, folded in
        assert r.status_code == 200, r.text
        assert len(r.json()["items"]) == 5 and not set(r.json()["items"]) & set(liked)


def test_train_bpr_saves_a_bpr_model(tmp_path, capsys):
    out = tmp_path / "bpr"
    assert main(["train", "--model", "bpr", *FAST, "--regularization", "0.02", "--out", str(out)]) == 0
    model = load_model(out / "model")
    assert type(model) is BPR and model.config.regularization == 0.02
    assert json.loads((out / "report.json").read_text())["model"] == "BPR"
    capsys.readouterr()
    assert main(["recommend", "--model", str(out), "--user", str(model.user_ids[0]), "-n", "3"]) == 0
    assert len([l for l in capsys.readouterr().out.splitlines() if l.strip()[:2].rstrip(".").isdigit()]) == 3


@pytest.mark.parametrize("argv, words", [
    (["--margin-max", "1"], "--model cml has no such setting: --margin-max is a setting of --model sml"),
    (["--model", "sml", "--margin", "0.5"], "--model sml has no such setting: --margin is a setting of --model cml"),
    (["--model", "sml", "--no-rank-weight", "--regularization", "0.1"],
     "--no-rank-weight is a setting of --model cml/dpcml; --regularization is a setting of --model bpr"),
    (["--model", "bpr", "--item-features", "tags"], "--item-features trains CML+F (--model cml)"),
    (["--model", "bpr", "--kernel", "numba"], "--model bpr has a torch training step only"),
    (["--model", "sml", "--margin-init", "2"], "margin_init must be None or a number in [0, margin_max=1.0]"),
])
def test_a_flag_of_another_model_is_one_clear_line_and_nothing_is_written(tmp_path, capsys, argv, words):
    out = tmp_path / "run"
    assert main(["train", "--synthetic", "small", "--no-progress", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert words in err[0], err[0]
    assert not out.exists()  # refused before the run's folder was made


def test_the_default_model_is_still_cml_and_its_flags_still_work(tmp_path):
    out = tmp_path / "cml"
    assert main(["train", *FAST, "--margin", "0.6", "--no-rank-weight", "--out", str(out)]) == 0
    model = load_model(out / "model")
    assert model.model_name == "CML" and model.config.margin == 0.6 and model.config.use_rank_weight is False


def test_an_unknown_model_or_negatives_mode_is_refused_by_the_parser(capsys):
    for argv in (["--model", "cpe"], ["--model", "sml", "--negatives", "closest"]):
        with pytest.raises(SystemExit) as info:
            main(["train", "--synthetic", "small", *argv])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "invalid choice" in err and "Traceback" not in err


def test_final_trains_the_same_model_class_on_every_interaction(tmp_path):
    out = tmp_path / "final"
    assert main(["train", "--model", "sml", *FAST, "--eval-every", "1", "--margin-max", "0.7", "--final",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    final = load_model(out / "final")
    assert type(final) is SML and final.config.margin_max == 0.7
    assert final.config.epochs == report["best_epoch"] and final.user_items.nnz == report["final"]["pairs"]


# ---------------------------------------------------------------------- the rest of the family
FAMILY = {"dpcml": ("DPCML", ["--n-vectors", "2"]), "sfcml": ("SFCML", ["--weighting", "pair"]),
          "transcf": ("TransCF", ["--nbr-reg", "0.05"]), "lrml": ("LRML", ["--memory-slots", "4"])}


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_every_family_model_trains_evaluates_and_recommends_through_the_cli(name, tmp_path, capsys):
    label, flags = FAMILY[name]
    out = tmp_path / name
    assert main(["train", "--model", name, *FAST, *flags, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == label and report["test"]["recall@50"] > 0
    model = load_model(out / "model")
    assert type(model).__name__ == label
    flag, value = flags[0].lstrip("-").replace("-", "_"), flags[1]
    assert str(getattr(model.config, flag)) == value  # the model's own flag reached its config
    assert main(["evaluate", "--model", str(out), "--json", str(tmp_path / "m.json")]) == 0
    again = json.loads((tmp_path / "m.json").read_text())
    assert again["recall@50"] == pytest.approx(report["test"]["recall@50"])
    capsys.readouterr()
    assert main(["recommend", "--model", str(out), "--user", str(model.user_ids[0]), "-n", "3"]) == 0
    assert len([l for l in capsys.readouterr().out.splitlines() if l.strip()[:2].rstrip(".").isdigit()]) == 3
