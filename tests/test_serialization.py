"""Model files: exact round trips in every layout, and every kind of bad file refused without pickle."""

import json
import os
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp

import metricrec.serialization as ser
from metricrec import CML, CMLConfig, Interactions
from metricrec.serialization import ModelFormatError, load_model_files, save_model_files

LAYOUTS = ["dir-npz", "dir-safetensors", "single-npz"]

# Set by _Canary.__reduce__'s target if anything ever unpickles the canary.
UNPICKLED = []


def _canary_hit():
    UNPICKLED.append(1)
    return 0.0


class _Canary:
    def __reduce__(self):
        return (_canary_hit, ())


@pytest.fixture(scope="module")
def model():
    """A model with string user ids and integer item ids, trained with a valid set."""
    rng = np.random.default_rng(0)
    cells = rng.choice(30 * 40, size=400, replace=False)
    users, items = cells // 40, cells % 40
    data = Interactions.from_arrays([f"user-{u}" for u in users], items * 10 + 7)
    train = data.with_matrix(sp.csr_matrix(data.matrix.multiply(rng.random(data.matrix.shape) < 0.8)))
    valid = data.with_matrix(data.matrix - train.matrix)
    return CML(factors=6, epochs=4, patience=0, batch_size=128, seed=3, max_norm=None,
               show_progress=False, verbose=False).fit(train, valid)


def _save(model, tmp_path, layout, name="m"):
    if layout == "dir-npz":
        return model.save(tmp_path / name)
    if layout == "dir-safetensors":
        pytest.importorskip("safetensors")
        return model.save(tmp_path / name, weights_format="safetensors")
    return model.save(tmp_path / f"{name}.npz")


def _parts(model):
    """What CML.save writes, for hand-made variants: (arrays, meta)."""
    arrays = {"user_embeddings": model.user_embeddings.copy(), "item_embeddings": model.item_embeddings.copy()}
    meta = {"model": "CML", "config": model.config.to_dict(), "n_users": arrays["user_embeddings"].shape[0],
            "n_items": arrays["item_embeddings"].shape[0], "user_ids": None, "item_ids": None}
    return arrays, meta


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("layout", LAYOUTS)
def test_exact_round_trip(model, tmp_path, layout):
    path = _save(model, tmp_path, layout)
    loaded = CML.load(path)
    assert np.array_equal(loaded.user_embeddings, model.user_embeddings)
    assert np.array_equal(loaded.item_embeddings, model.item_embeddings)
    assert loaded.user_embeddings.dtype == np.float32
    assert loaded.config == model.config
    assert loaded.user_ids.tolist() == model.user_ids.tolist() and loaded.user_ids[0].startswith("user-")
    assert loaded.item_ids.tolist() == model.item_ids.tolist() and loaded.item_ids.dtype.kind == "i"
    assert loaded.history.best_epoch == model.history.best_epoch
    users = np.arange(30)
    a = model.recommend(users, None, N=12, filter_already_liked_items=False)
    b = loaded.recommend(users, None, N=12, filter_already_liked_items=False)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert np.array_equal(model.similar_items(3, N=5)[0], loaded.similar_items(3, N=5)[0])


def test_layout_on_disk(model, tmp_path):
    d = model.save(tmp_path / "dir")
    assert sorted(os.listdir(d)) == ["config.json", "weights.npz"]
    doc = json.loads((d / "config.json").read_text())
    assert doc["format"] == "metricrec.model" and doc["model"] == "CML" and doc["weights"] == "weights.npz"
    assert CMLConfig.from_dict(doc["config"]) == model.config
    with np.load(d / "weights.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["item_embeddings", "user_embeddings", "user_items.indices", "user_items.indptr"]
    f = model.save(tmp_path / "one.npz")
    assert f.is_file() and sorted(os.listdir(tmp_path)) == ["dir", "one.npz"]


def test_plain_matrix_model_round_trips_without_ids(tmp_path):
    m = CML(factors=3, epochs=1, show_progress=False, verbose=False).fit(sp.csr_matrix(np.eye(5, 7)))
    loaded = CML.load(m.save(tmp_path / "x.npz"))
    assert loaded.user_ids is None and loaded.item_ids is None
    assert np.array_equal(loaded.item_embeddings, m.item_embeddings)


def test_save_and_load_model_files_generic(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float64).reshape(2, 3), "b": np.array([1, 2], dtype=np.int32)}
    for path in (tmp_path / "d", tmp_path / "f.npz"):
        save_model_files(path, arrays, {"model": "X", "note": [1, "two"]})
        got, meta = load_model_files(path)
        assert set(got) == {"a", "b"} and all(np.array_equal(got[k], arrays[k]) and got[k].dtype == arrays[k].dtype
                                              for k in arrays)
        assert meta["note"] == [1, "two"] and meta["format_version"] == ser.FORMAT_VERSION


# ---------------------------------------------------------------------- atomic writes
@pytest.mark.parametrize("layout", LAYOUTS)
def test_saving_over_a_model_leaves_no_temp_files(model, tmp_path, layout):
    path = _save(model, tmp_path, layout)
    before = sorted(os.listdir(tmp_path)), (sorted(os.listdir(path)) if path.is_dir() else None)
    _save(model, tmp_path, layout)
    after = sorted(os.listdir(tmp_path)), (sorted(os.listdir(path)) if path.is_dir() else None)
    assert before == after
    assert not any(".tmp" in n for n in after[0] + (after[1] or []))
    assert np.array_equal(CML.load(path).user_embeddings, model.user_embeddings)


def test_failed_write_keeps_the_old_model_and_no_temp(model, tmp_path, monkeypatch):
    path = model.save(tmp_path / "m.npz")
    old = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ser.os, "replace", broken_replace)
    other = CML(factors=2, epochs=1, show_progress=False, verbose=False).fit(sp.csr_matrix(np.eye(3, 4)))
    with pytest.raises(OSError, match="disk full"):
        other.save(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["m.npz"]
    assert path.read_bytes() == old
    assert np.array_equal(CML.load(path).user_embeddings, model.user_embeddings)


def test_save_refusals(model, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        model.save(tmp_path / "file")
    with pytest.raises(ValueError, match="weights_format"):
        model.save(tmp_path / "d", weights_format="pickle")
    with pytest.raises(RuntimeError, match="not fitted"):
        CML().save(tmp_path / "u.npz")


# ---------------------------------------------------------------------- bad files
def _corrupt_cases(model, tmp_path):
    """name -> path of a broken model file or directory."""
    cases = {}
    good_dir = model.save(tmp_path / "good")
    good_npz = model.save(tmp_path / "good.npz")

    def copy_dir(name):
        d = tmp_path / name
        d.mkdir()
        for f in good_dir.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        return d

    blob = good_npz.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(blob[: len(blob) // 2])
    cases["truncated npz"] = tmp_path / "truncated.npz"
    (tmp_path / "random.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    cases["random bytes npz"] = tmp_path / "random.npz"
    (tmp_path / "empty.npz").write_bytes(b"")
    cases["empty file"] = tmp_path / "empty.npz"

    d = copy_dir("trunc_weights")
    w = (d / "weights.npz").read_bytes()
    (d / "weights.npz").write_bytes(w[:-100])
    cases["truncated weights in dir"] = d

    d = copy_dir("flipped_weights")
    w = bytearray((d / "weights.npz").read_bytes())
    w[len(w) // 3] ^= 0x40  # inside the user embeddings' data: the zip CRC catches it
    (d / "weights.npz").write_bytes(bytes(w))
    cases["one flipped byte in the weights"] = d

    d = copy_dir("random_weights")
    (d / "weights.npz").write_bytes(np.random.default_rng(1).bytes(2048))
    cases["random weights in dir"] = d

    d = copy_dir("bad_json")
    (d / "config.json").write_text("{not json")
    cases["config.json not JSON"] = d

    d = copy_dir("binary_json")
    (d / "config.json").write_bytes(b"\xff\xfe\x00garbage")
    cases["config.json not UTF-8"] = d

    d = copy_dir("foreign_json")
    (d / "config.json").write_text(json.dumps({"_name_or_path": "bert-base", "hidden_size": 768}))
    cases["config.json of a foreign format"] = d

    d = copy_dir("list_json")
    (d / "config.json").write_text("[1, 2, 3]")
    cases["config.json a list"] = d

    d = copy_dir("future")
    doc = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**doc, "format_version": 99}))
    cases["newer format version"] = d

    d = copy_dir("other_model")
    (d / "config.json").write_text(json.dumps({**doc, "model": "BPR"}))
    cases["another model type"] = d

    d = copy_dir("bad_config")
    (d / "config.json").write_text(json.dumps({**doc, "config": {**doc["config"], "factors": -1}}))
    cases["invalid hyperparameter"] = d

    d = copy_dir("unknown_key")
    (d / "config.json").write_text(json.dumps({**doc, "config": {**doc["config"], "warp_speed": 9}}))
    cases["unknown config key"] = d

    d = copy_dir("traversal")
    (tmp_path / "weights.npz").write_bytes((d / "weights.npz").read_bytes())
    (d / "config.json").write_text(json.dumps({**doc, "weights": "../weights.npz"}))
    cases["weights path outside the directory"] = d

    d = copy_dir("no_weights")
    (d / "weights.npz").unlink()
    cases["weights file missing"] = d

    d = tmp_path / "no_config"
    d.mkdir()
    cases["directory without config.json"] = d

    d = copy_dir("bad_ids")
    (d / "config.json").write_text(json.dumps({**doc, "user_ids": {"kind": "str", "values": ["a"]}}))
    cases["ids of the wrong length"] = d

    d = copy_dir("bad_history")
    (d / "config.json").write_text(json.dumps({**doc, "history": "yes"}))
    cases["history not an object"] = d

    arrays, meta = _parts(model)
    save_model_files(tmp_path / "missing.npz", {"user_embeddings": arrays["user_embeddings"]}, meta)
    cases["missing array"] = tmp_path / "missing.npz"
    save_model_files(tmp_path / "shape.npz", {**arrays, "item_embeddings": arrays["item_embeddings"][:-1]}, meta)
    cases["wrong shape"] = tmp_path / "shape.npz"
    save_model_files(tmp_path / "width.npz", {k: v[:, :-1] for k, v in arrays.items()}, meta)
    cases["wrong width"] = tmp_path / "width.npz"
    nan = arrays["user_embeddings"].copy()
    nan[2, 1] = np.nan
    save_model_files(tmp_path / "nan.npz", {**arrays, "user_embeddings": nan}, meta)
    cases["NaN inside"] = tmp_path / "nan.npz"
    save_model_files(tmp_path / "int.npz", {**arrays, "user_embeddings": np.ones(nan.shape, np.int32)}, meta)
    cases["integer array"] = tmp_path / "int.npz"
    save_model_files(tmp_path / "bad_n.npz", arrays, {**meta, "n_users": "many"})
    cases["n_users not a number"] = tmp_path / "bad_n.npz"

    np.savez(tmp_path / "plain.npz", **arrays)
    cases["plain np.savez without metadata"] = tmp_path / "plain.npz"
    np.savez(tmp_path / "badmeta.npz", **arrays, __metadata__=np.frombuffer(b"\xff{{", dtype=np.uint8))
    cases["metadata not JSON"] = tmp_path / "badmeta.npz"
    with open(tmp_path / "npy.npz", "wb") as fh:
        np.save(fh, arrays["user_embeddings"])
    cases["an .npy under an .npz name"] = tmp_path / "npy.npz"
    (tmp_path / "pickle.npz").write_bytes(b"\x80\x04K\x01.")
    cases["a pickle under an .npz name"] = tmp_path / "pickle.npz"
    return cases


# case -> what the error says (each refused for its own reason, naming the file)
REASONS = {
    "truncated npz": "cannot read weights", "random bytes npz": "cannot read weights",
    "empty file": "cannot read weights", "truncated weights in dir": "cannot read weights",
    "one flipped byte in the weights": "Bad CRC", "random weights in dir": "cannot read weights",
    "config.json not JSON": "not valid JSON", "config.json not UTF-8": "not valid JSON",
    "config.json of a foreign format": "not a metricrec model", "config.json a list": "not a metricrec model",
    "newer format version": "format_version 99", "another model type": "'BPR' model",
    "invalid hyperparameter": "factors must be", "unknown config key": "warp_speed",
    "weights path outside the directory": "unexpected weights file name", "weights file missing": "missing",
    "directory without config.json": "config.json is missing", "ids of the wrong length": "user_ids has 1",
    "history not an object": "invalid history", "missing array": "'item_embeddings' is missing",
    "wrong shape": r"\(39, 6\)", "wrong width": r"\(30, 5\)", "NaN inside": "NaN",
    "integer array": "int32", "n_users not a number": "invalid model config",
    "plain np.savez without metadata": "without metricrec metadata", "metadata not JSON": "corrupt metadata",
    "an .npy under an .npz name": "not an .npz archive", "a pickle under an .npz name": "cannot read weights",
}


def test_corrupt_and_foreign_files_are_refused(model, tmp_path):
    cases = _corrupt_cases(model, tmp_path)
    assert sorted(cases) == sorted(REASONS)
    for name, path in cases.items():
        with pytest.raises(ModelFormatError, match=REASONS[name]) as info:
            CML.load(path)
        assert path.name in str(info.value), name


def test_model_format_error_is_a_value_error():
    assert issubclass(ModelFormatError, ValueError)


def _object_npz(model, path, single):
    """An .npz whose embedding array is an object array holding the canary."""
    arrays, meta = _parts(model)
    obj = np.empty(arrays["user_embeddings"].shape, dtype=object)
    obj[...] = 0.5
    obj[0, 0] = _Canary()
    doc = {"format": ser.FORMAT, "format_version": ser.FORMAT_VERSION, **meta}
    payload = {**arrays, "user_embeddings": obj}
    if single:
        payload["__metadata__"] = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
        np.savez(path, **payload)  # np.savez pickles object arrays
        return path
    path.mkdir()
    np.savez(path / "weights.npz", **payload)
    (path / "config.json").write_text(json.dumps({**doc, "weights": "weights.npz"}))
    return path


@pytest.mark.parametrize("single", [True, False])
def test_object_arrays_are_refused_not_unpickled(model, tmp_path, single):
    path = _object_npz(model, tmp_path / ("obj.npz" if single else "objdir"), single)
    with zipfile.ZipFile(path if single else path / "weights.npz") as z:  # the file really holds a pickle
        assert any(b"_canary_hit" in z.read(n) for n in z.namelist())
    UNPICKLED.clear()
    with pytest.raises(ModelFormatError, match="cannot read weights"):
        CML.load(path)
    assert UNPICKLED == []


def test_arrays_are_never_read_with_pickle_allowed(model, tmp_path, monkeypatch):
    """Arrays are read by numpy.lib.format.read_array (after their headers were checked), always with
    allow_pickle=False; np.load is not used at all."""
    calls = []
    real = np.lib.format.read_array

    def spy(*args, **kwargs):
        calls.append(kwargs.get("allow_pickle"))
        return real(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "read_array", spy)
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load called"))
    for path in (model.save(tmp_path / "a.npz"), model.save(tmp_path / "b"),
                 _object_npz(model, tmp_path / "c.npz", True)):
        try:
            CML.load(path)
        except ModelFormatError:
            pass
    assert calls and set(calls) == {False}


def test_corrupt_safetensors_refused(model, tmp_path):
    pytest.importorskip("safetensors")
    d = model.save(tmp_path / "st", weights_format="safetensors")
    assert sorted(os.listdir(d)) == ["config.json", "weights.safetensors"]
    data = (d / "weights.safetensors").read_bytes()
    (d / "weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="cannot read weights"):
        CML.load(d)
    (d / "weights.safetensors").write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(ModelFormatError, match="cannot read weights"):
        CML.load(d)


def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        CML.load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        CML.load(tmp_path / "nope.npz")
