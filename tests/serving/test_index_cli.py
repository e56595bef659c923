"""`metricrec index`: build beside the model, report, be found when the model is served; stale refusal."""

import pytest

pytest.importorskip("faiss")

from serving_fixtures import fit_tiny_model  # noqa: E402

from metricrec.cli.main import main  # noqa: E402
from metricrec.errors import ModelFileError  # noqa: E402
from metricrec.serving.service import load_serving_model  # noqa: E402


def test_index_command_builds_saves_and_reports(tmp_path, tiny_model, capsys):
    model_dir = tmp_path / "model"
    tiny_model.save(model_dir)
    assert main(["index", "--model", str(model_dir), "--kind", "hnsw", "--m", "8", "--ef-search", "40"]) == 0
    out = capsys.readouterr().out
    assert "index: hnsw (m=8, ef_construction=40, ef_search=40) over 80 items x 8 (l2)" in out
    assert "build: " in out and f"saved: {model_dir / 'index'}" in out and "MiB on disk" in out
    assert "recall@10 vs exact on 60 users: 1.0000" in out
    served = load_serving_model(model_dir)
    assert served.ann_index.kind == "hnsw" and served.ann_index.params["ef_search"] == 40
    assert load_serving_model(model_dir, exact=True).ann_index is None


def test_stale_index_is_refused_and_can_be_rebuilt(tmp_path, tiny_model, capsys):
    model_dir = tmp_path / "model"
    tiny_model.save(model_dir)
    assert main(["index", "--model", str(model_dir), "--kind", "ivf", "--nlist", "2", "--nprobe", "2"]) == 0
    capsys.readouterr()
    fit_tiny_model(seed=1).save(model_dir)  # re-trained: the index no longer matches
    with pytest.raises(ModelFileError, match="stale ANN index"):
        load_serving_model(model_dir)
    assert main(["index", "--model", str(model_dir), "--kind", "flat", "--sample-users", "0"]) == 0
    assert load_serving_model(model_dir).ann_index.kind == "flat"
    out = capsys.readouterr().out
    assert "index: flat over 80 items" in out and "recall" not in out


def test_index_command_errors_are_one_line(tmp_path, tiny_model, capsys):
    model_dir = tmp_path / "model"
    tiny_model.save(model_dir)
    for argv, words in [(["--kind", "ivf", "--m", "3"], "--m does not apply to --kind ivf"),
                        (["--kind", "ivf", "--nlist", "500"], "nlist must be an integer in [1, 80]")]:
        assert main(["index", "--model", str(model_dir), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    for threads in ("0", "1000000"):  # the flag's own bound (metricrec.limits.thread_count): a usage error
        with pytest.raises(SystemExit) as info:
            main(["index", "--model", str(model_dir), "--kind", "hnsw", "--threads", threads])
        err = capsys.readouterr().err.strip()
        assert info.value.code == 2 and "argument --threads: must be in [1, " in err and len(err.splitlines()) == 1
    assert main(["index", "--model", str(tmp_path / "nowhere")]) == 2
    assert "no model at" in capsys.readouterr().err


def test_a_train_run_folder_means_its_model_folder(tmp_path, tiny_model, capsys):
    tiny_model.save(tmp_path / "run" / "model")  # what `metricrec train --out run` writes
    assert main(["index", "--model", str(tmp_path / "run"), "--kind", "flat", "--sample-users", "0"]) == 0
    assert (tmp_path / "run" / "model" / "index" / "index.json").is_file()
    assert load_serving_model(tmp_path / "run" / "model").ann_index.kind == "flat"
