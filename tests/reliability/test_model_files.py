"""Model files are checked before anything they ask for is allocated: array headers against the file
and against the shapes the model's own document implies; the documents as schemas."""

import io
import json
import os
import shutil
import signal
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from metricrec import CML
from metricrec._array_files import MAX_EXPANSION, read_npz, read_safetensors
from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate
from metricrec.cli.main import main
from metricrec.errors import CheckpointError, ModelFileError
from metricrec.models.base import load_model
from metricrec.models.cml.feature_net import mlp_shapes
from metricrec.models.schema import read_run_doc
from metricrec.serialization import load_model_files, save_model_files
from metricrec.training.json_files import read_json


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


# ---------------------------------------------------------------------- collapsed tables
def _degenerate(model, path, side, how):
    """``model`` (changed in place) saved to ``path`` with its ``side`` table zeroed or every row set to row 3."""
    table = getattr(model, f"_{side}")
    table[:] = 0.0 if how == "zero" else table[3].clone()
    return model.save(path, weights_format="safetensors") if path.suffix == ".st" else model.save(path)


@pytest.mark.parametrize("layout, weights", [("dir", "dir/weights.npz"), ("single.npz", "single.npz"),
                                             ("st.st", "st.st/weights.safetensors")])
@pytest.mark.parametrize("side, how, rows", [("item", "zero", "zero"), ("user", "one point", "equal")])
def test_collapsed_tables_are_refused_at_load(models, tmp_path, layout, weights, side, how, rows):
    plain, _, _ = models
    model = load_model(plain.save(tmp_path / "keep"))
    _degenerate(model, tmp_path / layout, side, how)
    n = getattr(plain, f"{side}_embeddings").shape[0]
    effect = "every user gets the same list" if side == "user" else "every item scores the same"
    with pytest.raises(ModelFileError) as info:
        load_model(tmp_path / layout)
    assert str(info.value) == (f"{tmp_path / weights}: {side} table is collapsed (all {n:,} rows {rows}); "
                               f"the model is degenerate ({effect})")


def test_a_collapsed_model_is_exit_3_in_one_line(models, tmp_path, capsys):
    plain, _, _ = models
    model = load_model(plain.save(tmp_path / "keep"))
    _degenerate(model, tmp_path / "zeros", "item", "zero")
    user = str(json.loads((tmp_path / "zeros" / "config.json").read_text())["user_ids"]["values"][0])
    assert main(["recommend", "--model", str(tmp_path / "zeros"), "--user", user]) == 3
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [
        f"metricrec: error: {tmp_path / 'zeros' / 'weights.npz'}: item table is collapsed (all "
        f"{plain.item_embeddings.shape[0]:,} rows zero); the model is degenerate (every item scores the same) "
        "(check the path; a damaged model must be trained or saved again)"]


def _resized(models, path, user, item):
    """The plain model's file with these tables instead (no id maps, no liked items)."""
    _, _, paths = models
    arrays, meta = load_model_files(paths["single"])
    meta = {k: v for k, v in meta.items() if k not in ("format", "format_version", "user_ids", "item_ids")}
    meta.update(n_users=user.shape[0], n_items=item.shape[0])
    save_model_files(path, {"user_embeddings": user, "item_embeddings": item}, meta)
    return path


def test_tables_that_cannot_collapse_or_barely_differ_load(models, tmp_path):
    plain, _, _ = models
    one = _resized(models, tmp_path / "one.npz", np.zeros((1, 8), np.float32), np.zeros((1, 8), np.float32))
    back = load_model(one)  # one user, one item: a table of one row is no collapse, even at zero
    assert back.user_embeddings.shape == (1, 8)
    assert back.recommend(0, None, N=1, filter_already_liked_items=False)[0].tolist() == [0]
    close = plain.item_embeddings.copy()
    close[:] = close[0]
    close[1:, 0] += 1e-4 * np.abs(close).max()  # rows 1e-4 apart (relative): distinct points, not refused
    back = load_model(_resized(models, tmp_path / "close.npz", plain.user_embeddings, close))
    assert np.array_equal(back.item_embeddings, close)
    close[1:, 0] = close[0, 0] + 1e-7 * np.abs(close).max()  # within 1e-6 (relative): one point
    with pytest.raises(ModelFileError, match=r"item table is collapsed \(all 200 rows equal\)"):
        load_model(_resized(models, tmp_path / "same.npz", plain.user_embeddings, close))


def test_trained_bpr_and_tiny_models_load(tmp_path):
    import scipy.sparse as sp

    from metricrec.models.bpr import BPR

    split = ratio_split(generate(preset="small", seed=1), seed=0)
    bpr = BPR(factors=8, epochs=1, show_progress=False, verbose=False).fit(split.train)
    assert np.array_equal(load_model(bpr.save(tmp_path / "bpr")).item_embeddings, bpr.item_embeddings)
    tiny = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], np.float32))
    cml = CML(factors=4, epochs=2, show_progress=False, verbose=False).fit(tiny)
    assert load_model(cml.save(tmp_path / "tiny")).user_embeddings.shape == (3, 4)


# ---------------------------------------------------------------------- files that are not files
@pytest.fixture
def no_hang():
    """A FIFO opened for reading would block: fail after 20 s instead of hanging the suite."""
    def stop(signum, frame):
        raise TimeoutError("blocked on a FIFO")
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _make(path, kind):
    """Replace ``path`` by a directory, a FIFO or a dangling link; the message's words for it."""
    if path.exists():
        path.unlink()
    if kind == "dir":
        path.mkdir()
        return "is a directory, not"
    if kind == "fifo":
        os.mkfifo(path)
        return "is a FIFO (named pipe), not"
    os.symlink(path.parent / "gone", path)
    return f"is a symbolic link to '{path.parent / 'gone'}', which does not exist"


KINDS = ["dir", "fifo", "dangling"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name, what", [("weights.npz", "a weights file"), ("config.json", "a model document")])
def test_model_files_that_are_not_files_are_one_error(models, tmp_path, no_hang, name, what, kind):
    _, _, paths = models
    model = shutil.copytree(paths["dir"], tmp_path / "m")
    words = _make(model / name, kind)
    expected = f"{model / name}: {words}" + (f" {what}" if kind != "dangling" else "")
    with pytest.raises(ModelFileError) as info:
        load_model(model)
    assert str(info.value) == expected


@pytest.mark.parametrize("kind", ["fifo", "dir"])
def test_weights_a_fifo_or_a_folder_is_exit_3_in_one_line(models, tmp_path, capsys, no_hang, kind):
    _, _, paths = models
    model = shutil.copytree(paths["dir"], tmp_path / "m")
    _make(model / "weights.npz", kind)
    user = str(json.loads((model / "config.json").read_text())["user_ids"]["values"][0])
    assert main(["recommend", "--model", str(model), "--user", user]) == 3
    what = "a FIFO (named pipe)" if kind == "fifo" else "a directory"
    assert capsys.readouterr().err.strip().splitlines() == [
        f"metricrec: error: {model / 'weights.npz'}: is {what}, not a weights file (check the path; a damaged "
        "model must be trained or saved again)"]


def test_single_file_model_path_a_fifo_or_a_dangling_link(tmp_path, no_hang):
    os.mkfifo(tmp_path / "m.npz")
    with pytest.raises(ModelFileError, match=r"m\.npz: is a FIFO \(named pipe\), not a model file or folder$"):
        load_model(tmp_path / "m.npz")
    os.symlink(tmp_path / "gone.npz", tmp_path / "l.npz")
    with pytest.raises(FileNotFoundError, match=r"no model at .*l\.npz \(a symbolic link to .*gone\.npz'"):
        load_model(tmp_path / "l.npz")  # as missing as no file: exit 2, as for a wrong path


@pytest.mark.parametrize("kind", KINDS)
def test_data_json_and_checkpoint_documents_that_are_not_files(tmp_path, no_hang, kind):
    words = _make(tmp_path / "data.json", kind)
    with pytest.raises(ModelFileError) as info:
        read_run_doc(tmp_path / "data.json")
    assert str(info.value) == f"{tmp_path / 'data.json'}: {words}" + (" a run document" if kind != "dangling" else "")
    words = _make(tmp_path / "state.json", kind)
    with pytest.raises(CheckpointError) as info:
        read_json(tmp_path / "state.json")
    assert str(info.value) == f"{tmp_path / 'state.json'}: {words}" + (
        " a checkpoint document" if kind != "dangling" else "")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name, what", [("index.json", "an index description"), ("index.faiss", "an index file")])
def test_index_files_that_are_not_files(models, tmp_path, no_hang, name, what, kind):
    pytest.importorskip("faiss")
    from metricrec.serving.ann import AnnIndex

    plain, _, paths = models
    model = shutil.copytree(paths["dir"], tmp_path / "m")
    AnnIndex.build(plain.item_embeddings, "flat").save(model / "index")
    assert load_model(model).ann_index is not None
    words = _make(model / "index" / name, kind)
    with pytest.raises(ModelFileError) as info:
        load_model(model)
    assert str(info.value) == f"{model / 'index' / name}: {words}" + (f" {what}" if kind != "dangling" else "")
