"""The synthetic fallback of `metricrec train --dataset NAME`: only from the default data folder and when
the files cannot be downloaded; named in the output folder, data.json and the model's own metadata, and
shown by every later command (recommend, evaluate, serve /health). A chosen --data-dir (a typo) never
falls back."""

import json

import pytest

from metricrec.cli.main import main
from metricrec.models import load_model

FAST = ["--epochs", "2", "--batch-size", "500", "--factors", "8", "--no-progress", "--threads", "1"]
WARNING = "as a FALLBACK because ml-100k was not available"


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No ml-100k anywhere: an empty default cache folder and a mirror nobody listens on (port 9)."""
    monkeypatch.setenv("METRICREC_MIRROR", "http://127.0.0.1:9/")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("METRICREC_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_main_job_offline_runs_flagged_everywhere(offline, capsys):
    assert main(["train", "--dataset", "ml-100k", "--out", "runs/ml-100k", *FAST]) == 0
    err = capsys.readouterr().err
    assert "DATA: ml-100k is not available here" in err and "DATA: FALLBACK" in err
    assert "built-in synthetic data (preset small) -- FALLBACK: ml-100k was not available" in err
    run = offline / "runs" / "ml-100k-synthetic-fallback"
    assert not (offline / "runs" / "ml-100k").exists()  # never a folder named after the real data set
    doc = json.loads((run / "data.json").read_text())
    assert doc["source"]["fallback_for"] == "ml-100k" and doc["source"]["kind"] == "synthetic"
    assert doc["args"].get("synthetic") == "small" and "dataset" not in doc["args"]
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["data_source"] == {"kind": "synthetic", "preset": "small", "fallback_for": "ml-100k"}
    assert load_model(run / "model").data_source["fallback_for"] == "ml-100k"

    user = str(load_model(run / "model").user_map.ids[0])
    assert main(["recommend", "--model", str(run), "--user", user, "-n", "3"]) == 0
    printed = capsys.readouterr()
    assert WARNING in printed.err and "(SYNTHETIC fallback data, not ml-100k)" in printed.out
    assert main(["recommend", "--model", str(run / "model"), "--users", "all", "-n", "1"]) == 0
    assert WARNING in capsys.readouterr().err  # the model folder alone still knows
    assert main(["evaluate", "--model", str(run)]) == 0
    assert WARNING in capsys.readouterr().err


def test_serve_health_names_the_fallback(offline, capsys):
    from metricrec.serving.service import ModelHolder, load_serving_model

    assert main(["train", "--dataset", "ml-100k", *FAST]) == 0  # default --out: runs/ml-100k-synthetic-fallback
    run = offline / "runs" / "ml-100k-synthetic-fallback"
    holder = ModelHolder(run, lambda p: load_serving_model(p, warm_up=False))
    assert holder.current.health()["data_source"]["fallback_for"] == "ml-100k"


def test_typo_in_data_dir_never_falls_back(offline, capsys):
    out = offline / "runs" / "ml-100k"
    assert main(["train", "--dataset", "ml-100k", "--data-dir", str(offline / "sahred"), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "sahred" in err and "no synthetic fallback when the data directory is chosen (--data-dir)" in err
    assert len(err.strip().splitlines()) == 1
    empty = offline / "empty"
    empty.mkdir()  # exists, but holds no ml-100k, and the download fails
    assert main(["train", "--dataset", "ml-100k", "--data-dir", str(empty), "--out", str(out), *FAST]) == 2
    assert "127.0.0.1:9" in capsys.readouterr().err
    assert not (offline / "runs").exists()


def test_no_fallback_flag_and_environment_data_dir(offline, capsys, monkeypatch):
    assert main(["train", "--dataset", "ml-100k", "--no-fallback", *FAST]) == 2
    assert "ml-100k" in capsys.readouterr().err
    monkeypatch.setenv("METRICREC_DATA", str(offline))
    assert main(["train", "--dataset", "ml-100k", *FAST]) == 2
    assert "$METRICREC_DATA" in capsys.readouterr().err
    assert not (offline / "runs").exists()


def test_data_split_never_falls_back(offline, capsys):
    assert main(["data", "split", "--dataset", "ml-100k", "--out", "splits/ml-100k"]) == 2
    assert not (offline / "splits").exists()
