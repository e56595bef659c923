"""`metricrec recommend`: one user, all users to CSV/parquet, a file of users, new users folded in."""

import pyarrow.parquet as pq
import pyarrow.csv as pacsv
import pytest

from metricrec.cli.main import main
from metricrec.models import load_model

FAST = ["--epochs", "2", "--batch-size", "500", "--factors", "8", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "run"
    assert main(["train", "--synthetic", "small", "--out", str(out), *FAST]) == 0
    return out


def test_all_users_to_csv_and_parquet_match_the_library(run, tmp_path):
    model = load_model(run / "model")
    for name in ("recs.csv", "recs.parquet"):
        path = tmp_path / name
        assert main(["recommend", "--model", str(run), "--users", "all", "-n", "4", "--output", str(path)]) == 0
        table = pq.read_table(path) if name.endswith("parquet") else pacsv.read_csv(path)
        assert table.column_names == ["user", "rank", "item", "score"]
        assert table.num_rows == 4 * model.user_embeddings.shape[0]
        first = table.slice(0, 4).to_pydict()
        items, scores = model.recommend_raw([first["user"][0]], N=4)[0]
        assert first["rank"] == [1, 2, 3, 4] and first["item"] == items.tolist()
        assert first["score"] == pytest.approx(scores.tolist(), abs=1e-5)


def test_a_file_of_users_and_unknown_ids(run, tmp_path, capsys):
    model = load_model(run / "model")
    users = tmp_path / "users.txt"
    users.write_text(f"{model.user_ids[3]}\n{model.user_ids[1]}\n")
    assert main(["recommend", "--model", str(run), "--users", str(users), "-n", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "user,rank,item,score" and len(out) == 5 and out[1].startswith(f"{model.user_ids[3]},1,")
    users.write_text("424242\n")
    assert main(["recommend", "--model", str(run), "--users", str(users)]) == 2
    assert "424242" in capsys.readouterr().err


def test_one_user_prints_its_list(run, capsys):
    model = load_model(run / "model")
    assert main(["recommend", "--model", str(run), "--user", str(model.user_ids[0]), "-n", "3"]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.lstrip()[:1].isdigit()]
    assert len(lines) == 3


def test_new_users_are_folded_in(run, tmp_path):
    model = load_model(run / "model")
    liked = tmp_path / "liked.csv"
    a, b = model.item_ids[:2]
    liked.write_text(f"user,item\nnew1,{a}\nnew1,{b}\nnew2,{a}\n")
    out = tmp_path / "new.csv"
    assert main(["recommend", "--model", str(run), "--new-users", str(liked), "-n", "5", "--output", str(out)]) == 0
    table = pacsv.read_csv(out).to_pydict()
    assert sorted(set(table["user"])) == ["new1", "new2"] and len(table["user"]) == 10
    new1 = [i for u, i in zip(table["user"], table["item"]) if u == "new1"]
    assert a not in new1 and b not in new1


def test_approximate_recommendations_use_the_index_saved_beside_the_model(run, tmp_path):
    pytest.importorskip("faiss")
    exact, approx = tmp_path / "exact.csv", tmp_path / "approx.csv"
    assert main(["index", "--model", str(run), "--kind", "flat"]) == 0
    model = load_model(run / "model")
    assert model.ann_index is not None and load_model(run / "model", index=False).ann_index is None
    assert main(["recommend", "--model", str(run), "--users", "all", "-n", "5", "--output", str(exact)]) == 0
    assert main(["recommend", "--model", str(run), "--users", "all", "-n", "5", "--approximate",
                 "--output", str(approx)]) == 0
    a, b = pacsv.read_csv(exact).to_pydict(), pacsv.read_csv(approx).to_pydict()
    assert a["item"] == b["item"]  # a flat (exact) index: the same lists through the approximate path
