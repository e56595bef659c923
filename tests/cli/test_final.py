"""``metricrec train --final``: a production model on every interaction, trained as the validated run was."""

import csv
import json

import numpy as np
import pytest

from metricrec.cli.main import main
from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate
from metricrec.models.base import load_model


@pytest.fixture(scope="module")
def final_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("final") / "run"
    assert main(["train", "--synthetic", "small", "--factors", "16", "--final", "--no-progress", "--out", str(out)]) == 0
    return out


def test_the_final_model_holds_every_interaction_and_replays_the_validated_schedule(final_run):
    report = json.loads((final_run / "report.json").read_text())
    data = generate(preset="small", seed=0)
    final = load_model(final_run / "final")
    assert final.user_items.nnz == data.nnz == report["final"]["pairs"]  # train + valid + test
    split = ratio_split(data, (0.6, 0.2, 0.2), seed=0)
    every = (split.train.matrix + split.valid.matrix + split.test.matrix).tocsr()
    assert (final.user_items != (every > 0)).nnz == 0
    assert final.config.epochs == report["best_epoch"] == report["final"]["epochs"]
    assert len(final.history.epochs) == report["best_epoch"]
    assert [list(k) for k in final.config.decay_knots] == report["budget"]["epoch_knots"]
    assert final.data_source["final"] is True


def test_its_export_contains_no_training_interaction_and_evaluate_refuses_it(final_run, capsys):
    recs = final_run / "recs.csv"
    assert main(["recommend", "--model", str(final_run / "final"), "--users", "all", "--output", str(recs)]) == 0
    final = load_model(final_run / "final")
    users = {str(u): i for i, u in enumerate(final.user_ids)}
    items = {str(v): j for j, v in enumerate(final.item_ids)}
    rows = list(csv.DictReader(recs.open()))
    assert len(rows) == 10 * final.user_items.shape[0]
    liked = np.array([final.user_items[users[r["user"]], items[r["item"]]] for r in rows])
    assert (liked == 0).all()  # 0 rows of the export are interactions the final model trained on
    capsys.readouterr()
    assert main(["evaluate", "--model", str(final_run / "final")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "final model" in err[0] and "Traceback" not in err[0]
