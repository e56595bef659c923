"""Model files are checked before anything they ask for is allocated: array headers against the file
and against the shapes the model's own document implies; the documents as schemas."""

import io
import json
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from metricrec import CML
from metricrec._array_files import MAX_EXPANSION, read_npz, read_safetensors
from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate
from metricrec.errors import ModelFileError
from metricrec.models.base import load_model
from metricrec.models.cml.feature_net import mlp_shapes
from metricrec.models.schema import read_run_doc


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A plain CML and a CML+F, fitted briefly, saved in every layout."""
    split = ratio_split(generate(preset="small", seed=0), seed=0)
    root = tmp_path_factory.mktemp("models")
    plain = CML(factors=8, epochs=1, show_progress=False, verbose=False).fit(split.train)
    feat = CML(factors=8, epochs=1, feature_weight=1.0, feature_hidden=(16,), show_progress=False,
               verbose=False).fit(split.train, item_features=split.train.item_features)
    paths = {"dir": plain.save(root / "dir"), "single": plain.save(root / "single.npz"),
             "safetensors": plain.save(root / "st", weights_format="safetensors"), "features": feat.save(root / "feat")}
    return plain, feat, paths


def _npy(shape, dtype="<f4", data=b""):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def _peak_mb(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 2**20


def test_every_layout_still_round_trips(models):
    plain, feat, paths = models
    for name in ("dir", "single", "safetensors"):
        back = load_model(paths[name])
        assert np.array_equal(back.user_embeddings, plain.user_embeddings)
        assert np.array_equal(back.item_embeddings, plain.item_embeddings)
        assert (back.user_items != plain.user_items).nnz == 0
    back = load_model(paths["features"])
    x = feat.item_vectors_from_features(feat_rows := np.eye(len(feat.item_feature_names))[:3])
    assert np.allclose(back.item_vectors_from_features(feat_rows), x)


def test_a_tiny_npz_asking_for_terabytes_is_refused_before_allocating(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("t.npy", _npy((2**40, 8), data=bytes(2000)))
    assert len(buf.getvalue()) < 2600
    with pytest.raises(ModelFileError, match=r"declares shape \(1099511627776, 8\).*holds 2,000 bytes"):
        assert _peak_mb(lambda: read_npz(buf, "x.npz")) < 1
    assert _peak_mb(lambda: pytest.raises(ModelFileError, read_npz, buf, "x.npz")) < 1


def test_compressed_zeros_are_refused_before_expanding(tmp_path):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("t.npy", "w", force_zip64=True) as fh:
            fh.write(_npy((400 * 2**20 // 4,)))
            for _ in range(400):
                fh.write(bytes(2**20))
    assert path.stat().st_size < 2**20
    with open(path, "rb") as fh:
        peak = _peak_mb(lambda: pytest.raises(ModelFileError, read_npz, fh, path))
    assert peak < 4
    with open(path, "rb") as fh, pytest.raises(ModelFileError, match=f"more than {MAX_EXPANSION}x"):
        read_npz(fh, path)


@pytest.mark.parametrize("member, words", [
    (("o.npy", _npy((3,), "|O", bytes(24))), "dtype object"),
    (("s.npy", _npy((3,), "<U4", bytes(48))), "not a plain number type"),
    (("short.npy", _npy((10,), "<f8", bytes(16))), "holds 16 bytes"),
    (("junk.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'  \n"), "no valid .npy header"),
    (("noext", b"abc"), "unexpected or repeated member"),
])
def test_npz_headers_are_checked(member, words):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(*member)
    with pytest.raises(ModelFileError, match=words):
        read_npz(buf, "x.npz")


def _st(header, data=b""):
    raw = json.dumps(header).encode()
    return io.BytesIO(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("blob, words", [
    (io.BytesIO(b"\x01\x02"), "shorter than its 8-byte header"),
    (io.BytesIO(struct.pack("<Q", 2**62) + b"{}"), "does not fit a file"),
    (_st({"t": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 2**42]}}, bytes(8)), "data offsets"),
    (_st({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, bytes(8)), "spans 8 bytes"),
    (_st({"t": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}, bytes(8)), "no supported dtype"),
    (_st({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}), "invalid shape"),
    (_st([1, 2]), "not a JSON object"),
])
def test_safetensors_headers_are_checked(blob, words):
    with pytest.raises(ModelFileError, match=words):
        read_safetensors(blob, "w.safetensors")


def test_a_header_that_contradicts_config_json_is_refused_before_reading(models, tmp_path, monkeypatch):
    _, _, paths = models
    doc = json.loads((paths["dir"] / "config.json").read_text())
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({**doc, "n_users": 10**6}))
    (tmp_path / "m" / "weights.npz").write_bytes((paths["dir"] / "weights.npz").read_bytes())
    read = []
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: read.append(1))
    with pytest.raises(ModelFileError, match=r"'user_embeddings' has shape \(300, 8\).*expected \(1000000, 8\)"):
        CML.load(tmp_path / "m")
    assert read == []  # refused on the headers alone


@pytest.mark.parametrize("edit, words", [
    (lambda d: d.update(n_users=-1), "'n_users' must be an integer"),
    (lambda d: d.update(n_items=True), "'n_items' must be an integer"),
    (lambda d: d["config"].update(factors=10**6), "more than 65,536"),
    (lambda d: d["config"].update(learning_rate=float("nan")), "learning_rate must be a positive number"),
    (lambda d: d.update(config="x"), "key 'config' must be an object"),
    (lambda d: d.update(history={"epochs": [{"epoch": 1, "loss": "x", "seconds": 1}]}), "epochs[0].loss"),
    (lambda d: d.update(history={"epochs": "many"}), "invalid history"),
    (lambda d: d.update(history={"best_epoch": 0}), "history.best_epoch"),
    (lambda d: d.update(user_ids={"kind": "int", "values": "abc"}), "invalid user_ids"),
    (lambda d: d.update(user_ids={"kind": "int", "values": [10**30] * 300}), "invalid user_ids"),
    (lambda d: d.update(model=["CML"]), "unknown model type"),
    (lambda d: d.update(format_version=True), "format_version True"),
    (lambda d: d.update(item_features={"names": ["a"], "mlp": {"n_features": 1, "out_dim": 8, "hidden": [2**20],
                                                                "dropout": 0.5}}), "'mlp.hidden' must be"),
    (lambda d: d.update(item_features={"names": ["a"] * 2**10, "mlp": {"n_features": 2**10, "out_dim": 8,
                                                                       "hidden": [2**16] * 16, "dropout": 0}}),
     "more than"),
])
def test_config_json_is_checked_as_a_schema(models, tmp_path, edit, words):
    _, _, paths = models
    doc = json.loads((paths["dir"] / "config.json").read_text())
    edit(doc)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(doc))
    (tmp_path / "m" / "weights.npz").write_bytes((paths["dir"] / "weights.npz").read_bytes())
    with pytest.raises(ModelFileError, match=words.replace("[", r"\[").replace("(", r"\(")) as info:
        load_model(tmp_path / "m")
    assert "m/config.json" in str(info.value) or "unknown model type" in str(info.value)


def test_feature_network_description_bounds():
    ok = {"names": ["a", "b"], "mlp": {"n_features": 2, "out_dim": 8, "hidden": [4], "dropout": 0.1}}
    assert mlp_shapes(ok, "p.", 8, "f") == {"p.input.weight": (2, 4), "p.input.bias": (4,),
                                            "p.layers.0.weight": (8, 4), "p.layers.0.bias": (8,)}
    for bad in ({**ok, "names": ["a"]}, {**ok, "mlp": {**ok["mlp"], "out_dim": 9}},
                {**ok, "mlp": {**ok["mlp"], "dropout": 1.0}}, {**ok, "mlp": {**ok["mlp"], "n_features": 2.0}}, []):
        with pytest.raises(ModelFileError, match="invalid item feature network"):
            mlp_shapes(bad, "p.", 8, "f")


@pytest.mark.parametrize("text, words", [
    ("[1, 2]", "expected a JSON object"), ("{", "not valid JSON"), ('{"source": 3}', "key 'source'"),
    ('{"source": {"kind": "magic"}}', "'kind' is one of"), ('{"sizes": {"train": -1}}', "'sizes.train'"),
    ('{"args": {"dataset": ["a"]}}', "key 'dataset' must be a plain value"), ('{"split": 1}', "key 'split'"),
])
def test_data_json_is_checked_as_a_schema(tmp_path, text, words):
    (tmp_path / "data.json").write_text(text)
    with pytest.raises(ModelFileError, match=words):
        read_run_doc(tmp_path / "data.json")
