"""Hostile inputs, second pass (issue 19): ANN index files checked before faiss allocates, one table of
limits for the CLI, the configs and the loader, bounded threads, config files that cannot hang or read
without end, near-collapse refused as divergence, ``--ratios X,0,Y``, and messages that name what is
wrong. Every case of the table "Hostile inputs, second pass" in docs/reliability.md is run here through
the command (its exit status and its one line) and the table is checked against the cases."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from fifo_guard import make_fifo, within
from metricrec.cli.main import main
from metricrec.errors import ConfigError, ModelFileError, TrainingDivergedError

faiss = pytest.importorskip("faiss")

from metricrec.serving.ann import AnnIndex  # noqa: E402
from metricrec.serving.faiss_file import check_index_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--epochs", "2", "--factors", "16", "--batch-size", "500", "--no-progress", "--threads", "1"]
GB3 = 750_000_000  # int32 or float32 items: 3,000,000,000 bytes


# ---------------------------------------------------------------------- a run and its hostile indexes
@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A trained run folder (300 users x 200 items, d = 16) without an index."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    assert main(["train", "--synthetic", "small", "--out", str(out), *FAST]) == 0
    return out


def _vector_offsets(raw: bytes, start: int, items: tuple[int, ...]) -> list[int]:
    """Where each of the consecutive faiss vectors from ``start`` keeps its 8-byte length."""
    at, pos = [], start
    for item in items:
        at.append(pos)
        pos += 8 + item * struct.unpack_from("<Q", raw, pos)[0]
    return at


def _patch(raw: bytearray, kind: str, how: str) -> None:
    """Make a valid ``index.faiss`` of ``kind`` hostile in the way ``how`` says."""
    if how == "3 GB":  # the largest array of each kind declared at 750,000,000 items
        if kind == "hnsw":  # assign_probas, cum_nneighbor_per_level, levels, offsets, then neighbours
            pos = _vector_offsets(raw, 37, (8, 4, 4, 8, 4))[-1]
        elif kind == "flat":
            pos = 37
        else:  # ivf: header, nlist, nprobe, the flat quantiser, the direct map, then the list sizes
            codes = 37 + 16 + 4 + 33  # the quantiser's codes, after its type (4 bytes) and header (33)
            direct_map = codes + 8 + 4 * struct.unpack_from("<Q", raw, codes)[0] + 1  # after the map's type
            lists = direct_map + 8 + 8 * struct.unpack_from("<Q", raw, direct_map)[0]
            assert raw[lists: lists + 4] == b"ilar" and raw[lists + 20: lists + 24] == b"full"
            pos = lists + 24 + 8  # the first list's size
        struct.pack_into("<Q", raw, pos, GB3)
    elif how == "dimension":
        struct.pack_into("<i", raw, 4, 17)
    elif how == "ntotal":
        struct.pack_into("<q", raw, 8, 10**9)
    elif how == "appended":
        raw += b"\0" * 64


def hostile_index(run: Path, where: Path, kind: str = "hnsw", how: str = "3 GB") -> Path:
    """A copy of ``run`` with an index beside its model whose ``index.faiss`` was made hostile by
    ``how``, and an ``index.json`` that matches it (who writes one file can write both)."""
    copy = shutil.copytree(run, where)
    table = np.load(copy / "model" / "weights.npz")["item_embeddings"]
    params = {"nlist": 4} if kind == "ivf" else {}
    AnnIndex.build(table, kind, **params).save(copy / "model" / "index")
    f = copy / "model" / "index" / "index.faiss"
    raw = bytearray(f.read_bytes())
    _patch(raw, kind, how)
    f.write_bytes(bytes(raw))
    meta_file = f.parent / "index.json"
    meta = json.loads(meta_file.read_text())
    meta.update(index_sha256=hashlib.sha256(raw).hexdigest(), index_bytes=len(raw))
    meta_file.write_text(json.dumps(meta))
    return copy


# ---------------------------------------------------------------------- the cases of the docs' table
@dataclass
class Case:
    """One row of the docs' table: ``argv(tmp, run)`` run through ``main``, its exit status and the
    words its last stderr line holds (None: no message expected); ``check(tmp)`` what must hold after."""

    group: str
    what: str
    argv: Callable[[Path, Path], list[str]]
    exit: int
    words: str | None
    check: Callable[[Path], bool] | None = None


def _fifo(tmp: Path) -> Path:
    return make_fifo(tmp, "p")


def _config(tmp: Path, text: str, name: str = "c.json") -> Path:
    (tmp / name).write_text(text)
    return tmp / name


def _no_model(tmp: Path) -> bool:
    return not (tmp / "out" / "model").exists() and not (tmp / "out" / "report.json").exists()


def _no_valid_run(tmp: Path) -> bool:
    report = json.loads((tmp / "out" / "report.json").read_text())
    return (tmp / "out" / "model" / "config.json").is_file() and all(not e["valid"] for e in report["epochs"])


def _split_without_valid(tmp: Path, run: Path) -> list[str]:
    assert main(["data", "split", "--synthetic", "small", "--ratios", "0.8,0,0.2", "--out", str(tmp / "s")]) == 0
    return ["train", *(x for p in ("train", "valid", "test") for x in (f"--{p}", str(tmp / "s" / f"{p}.csv"))),
            "--out", str(tmp / "out"), *FAST]


def _approx(tmp: Path, run: Path, kind: str = "hnsw", how: str = "3 GB") -> list[str]:
    return ["recommend", "--model", str(hostile_index(run, tmp / "r", kind, how)), "--user", "0", "-n", "3",
            "--approximate"]


def _deep_index_json(tmp: Path, run: Path) -> list[str]:
    copy = hostile_index(run, tmp / "r", "flat", "none")
    (copy / "model" / "index" / "index.json").write_text("[" * 100_000 + "]" * 100_000)
    return ["recommend", "--model", str(copy), "--user", "0", "--approximate"]


I, L, T, C, D, R, W = ("indexes", "limits", "threads", "config files", "near-collapse", "ratios", "misnamed")
NOT_A_FAISS = "index.faiss: not a faiss index metricrec can use ("
CASES = [
    Case(I, "recommend --approximate, index.faiss of 67 KB declaring a 3 GB HNSW neighbour list",
         _approx, 3, f"{NOT_A_FAISS}the HNSW neighbour lists: 750,000,000 items (3,000,000,000 bytes) declared, but "
                     "only"),
    Case(I, "recommend --approximate, flat index.faiss declaring 3 GB of vectors",
         lambda t, r: _approx(t, r, "flat"), 3, "the flat index vectors: 750,000,000 items (3,000,000,000 bytes)"),
    Case(I, "recommend --approximate, IVF index.faiss whose first list declares 750,000,000 vectors",
         lambda t, r: _approx(t, r, "ivf"), 3, "an IVF list holds 750,000,000 vectors, more than the 200"),
    Case(I, "recommend --approximate, index.faiss of another dimension",
         lambda t, r: _approx(t, r, "hnsw", "dimension"), 3, "the HNSW index has dimension 17, the model's vectors "
                                                             "have 16"),
    Case(I, "recommend --approximate, index.faiss declaring 10^9 vectors",
         lambda t, r: _approx(t, r, "flat", "ntotal"), 3, "the flat index holds 1,000,000,000 vectors, 200 expected"),
    Case(I, "recommend --approximate, bytes appended to index.faiss",
         lambda t, r: _approx(t, r, "flat", "appended"), 3, "64 bytes follow the index"),
    Case(I, "recommend (exact) beside that hostile index", lambda t, r: _approx(t, r)[:-1], 0, None),
    Case(I, "recommend --approximate, index.json nested 100,000 deep", _deep_index_json, 3,
         "index.json: not valid JSON (RecursionError"),
    Case(L, "train --factors 70000", lambda t, r: ["train", "--synthetic", "small", "--out", str(t / "out"),
                                                   "--factors", "70000"], 2,
         "argument --factors: must be in [1, 65,536] (the widest embedding a model file may hold), got 70,000",
         _no_model),
    Case(L, "train --feature-hidden 70000", lambda t, r: ["train", "--synthetic", "small", "--out", str(t / "out"),
                                                          "--feature-hidden", "70000"],
         2, "argument --feature-hidden: expected at most 16 widths in [1, 65,536] (the most a model file may hold)",
         _no_model),
    Case(L, "train --config FILE with factors 70000",
         lambda t, r: ["train", "--synthetic", "small", "--out", str(t / "out"), "--config",
                       str(_config(t, '{"factors": 70000}'))], 2, "key 'factors': must be in [1, 65,536]", _no_model),
    Case(T, "train --threads 1000000", lambda t, r: ["train", "--synthetic", "small", "--out", str(t / "out"),
                                                     "--threads", "1000000"], 2,
         "argument --threads: must be in [1, ", _no_model),
    Case(T, "tune --threads 1000000", lambda t, r: ["tune", "--synthetic", "small", "--out", str(t / "out"),
                                                    "--threads", "1000000"], 2, "argument --threads: must be in [1, "),
    Case(T, "index --threads 1000000", lambda t, r: ["index", "--model", str(r), "--threads", "1000000"], 2,
         "argument --threads: must be in [1, "),
    Case(C, "train --config /dev/zero (unbounded read)", lambda t, r: ["train", "--synthetic", "small",
                                                                        "--config", "/dev/zero"], 2,
         "--config /dev/zero: is a character device, not a regular file"),
    Case(C, "train --config FIFO (a hang)", lambda t, r: ["train", "--synthetic", "small", "--config",
                                                          str(_fifo(t))], 2, "is a FIFO (named pipe), not a regular file"),
    Case(C, "train --config FILE of 2 MB", lambda t, r: ["train", "--synthetic", "small", "--config",
                                                         str(_config(t, '{"epochs": 1' + " " * 2_000_000 + "}"))], 2,
         "more than 1,048,576 bytes: not a config file"),
    Case(C, "train --config FILE nested 200,000 deep (JSON)",
         lambda t, r: ["train", "--synthetic", "small", "--config",
                       str(_config(t, '{"epochs": ' + "[" * 200_000 + "]" * 200_000 + "}"))], 2,
         "not a config file (values nested too deeply to read)"),
    Case(C, "train --config FILE nested 200,000 deep (TOML)",
         lambda t, r: ["train", "--synthetic", "small", "--config",
                       str(_config(t, "epochs = " + "[" * 200_000 + "]" * 200_000, "c.toml"))], 2,
         "not a config file (values nested too deeply to read)"),
    Case(D, "train --learning-rate 1e30 at the defaults",
         lambda t, r: ["train", "--synthetic", "small", "--out", str(t / "out"), "--learning-rate", "1e30",
                       "--no-progress"], 4,
         "vectors nearly collapsed onto", _no_model),
    Case(R, "train --ratios 0.8,0,0.2", lambda t, r: ["train", "--synthetic", "small", "--out", str(t / "out"),
                                                      "--ratios", "0.8,0,0.2", *FAST], 0, None, _no_valid_run),
    Case(R, "data split --ratios 0.8,0,0.2, then train on its files", _split_without_valid, 0, None, _no_valid_run),
    Case(R, "train --ratios 0.8,-0.1,0.3", lambda t, r: ["train", "--synthetic", "small", "--out", str(t / "out"),
                                                         "--ratios", "0.8,-0.1,0.3"], 2,
         "--ratios must be a positive train and test share and a valid share >= 0 (0: no validation part), got "
         "'0.8,-0.1,0.3'", _no_model),
    Case(W, "train --out FIFO", lambda t, r: ["train", "--synthetic", "small", "--out", str(_fifo(t)), *FAST], 2,
         "exists and is a FIFO (named pipe), not a folder; choose another --out"),
    Case(W, "train --resume FIFO", lambda t, r: ["train", "--resume", str(_fifo(t))], 2,
         "is a FIFO (named pipe), not a run folder"),
    Case(W, "train --data-dir FIFO", lambda t, r: ["train", "--dataset", "ml-100k", "--data-dir", str(_fifo(t)),
                                                   "--out", str(t / "out"), *FAST], 2,
         "is a FIFO (named pipe), not a folder (given as data_dir)"),
    Case(W, "evaluate --model FIFO", lambda t, r: ["evaluate", "--model", str(_fifo(t))], 2,
         "is a FIFO (named pipe), not a run or model folder"),
    Case(W, "index --out FIFO", lambda t, r: ["index", "--model", str(r), "--kind", "flat", "--out", str(_fifo(t))],
         2, "exists and is a FIFO (named pipe), not a directory"),
]


def _run_case(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code)


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_each_case_has_its_exit_status_and_one_line(case, run, tmp_path, capsys):
    argv = case.argv(tmp_path, run)
    fifo = tmp_path / "p" if (tmp_path / "p").exists() else None
    capsys.readouterr()
    code = within(lambda: _run_case(argv), fifo)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code == case.exit, err[-600:]
    if case.words is not None:
        last = err.strip().splitlines()[-1]
        assert last.startswith("metricrec") and ": error: " in last and case.words in last, last
    if case.check is not None:
        assert case.check(tmp_path)


def test_the_table_in_the_docs_lists_every_case_with_its_exit_status():
    doc = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    rows = {line.split(" | ")[1]: line for line in doc.splitlines() if line.startswith("| ") and " | " in line}
    missing = [c.what for c in CASES if c.what not in rows]
    assert missing == []
    wrong = [c.what for c in CASES if f" | {c.exit} | " not in rows[c.what]]
    assert wrong == []


# ---------------------------------------------------------------------- the index: memory, serving
# Peak memory of the child itself: VmHWM (the peak resident set of its own address space; ru_maxrss
# would also count the pytest parent it was forked from, which Linux keeps across exec).
_PEAK = """
def peak_mb():
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource, sys
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
"""

_LOAD_AND_MEASURE = _PEAK + """
import json, sys
import numpy as np
from metricrec.errors import ModelFileError
from metricrec.serving.ann import AnnIndex
model = sys.argv[1]
table = np.load(model + "/weights.npz")["item_embeddings"]
try:
    AnnIndex.load(model + "/index", item_table=table, distance="euclidean")
    message = None
except ModelFileError as exc:
    message = str(exc)
print(json.dumps({"message": message, "peak_mb": peak_mb()}))
"""

_CLI_AND_MEASURE = _PEAK + """
import json, sys
from metricrec.cli.main import main
from metricrec.models import load_model
load_model(sys.argv[1] + "/model", index=False)  # torch, numpy and the model: the baseline
import faiss  # noqa: F401 - its own libraries are no part of what the index asks for
before = peak_mb()
code = main(["recommend", "--model", sys.argv[1], "--user", "0", "-n", "3", "--approximate"])
print(json.dumps({"code": code, "before_mb": before, "after_mb": peak_mb()}))
"""


def _child(code: str, *args: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["hnsw", "flat", "ivf"])
def test_a_small_index_declaring_gigabytes_is_refused_under_100_mb(kind, run, tmp_path):
    copy = hostile_index(run, tmp_path / "r", kind)
    assert (copy / "model" / "index" / "index.faiss").stat().st_size < 200_000
    got = _child(_LOAD_AND_MEASURE, str(copy / "model"))
    assert got["message"] is not None and NOT_A_FAISS in got["message"]
    assert got["peak_mb"] < 100, got  # the whole process (numpy, faiss, metricrec); faiss alone: 2.9 GB before
    print(f"{kind}: peak RSS of the whole process {got['peak_mb']:.1f} MB")


def test_the_hostile_index_case_of_the_command_adds_under_100_mb(run, tmp_path):
    copy = hostile_index(run, tmp_path / "r")
    got = _child(_CLI_AND_MEASURE, str(copy))
    assert got["code"] == 3 and got["after_mb"] - got["before_mb"] < 100, got
    print(f"recommend --approximate: peak RSS {got['before_mb']:.1f} MB before, {got['after_mb']:.1f} MB after")


def test_serving_reads_the_index_only_for_approximate_retrieval(run, tmp_path):
    from metricrec.serving.service import ModelHolder, RequestError, load_serving_model

    copy = hostile_index(run, tmp_path / "r")
    exact = ModelHolder(copy / "model", loader=lambda p: load_serving_model(p, exact=True, warm_up=False))
    assert exact.reload().model.ann_index is None  # /reload of an --exact service: the index is never read
    with pytest.raises(ModelFileError, match="neighbour lists: 750,000,000 items"):
        ModelHolder(copy / "model", loader=lambda p: load_serving_model(p, warm_up=False))
    good = shutil.copytree(run, tmp_path / "good")
    holder = ModelHolder(good / "model", loader=lambda p: load_serving_model(p, warm_up=False))
    table = np.load(good / "model" / "weights.npz")["item_embeddings"]
    AnnIndex.build(table, "flat").save(good / "model" / "index")
    holder.reload()
    shutil.rmtree(good / "model" / "index")
    shutil.copytree(copy / "model" / "index", good / "model" / "index")
    with pytest.raises(RequestError) as info:  # an approximate service keeps its model and says why
        holder.reload()
    assert info.value.status == 409 and "neighbour lists: 750,000,000 items" in info.value.detail


def _faiss_index(kind: str, metric: int, x: np.ndarray, n: int):
    """A faiss index of ``kind`` (as metricrec builds them) over the first ``n`` rows of ``x``."""
    if kind == "flat":
        index = faiss.IndexFlat(x.shape[1], metric)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(x.shape[1], 8, metric)
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlat(x.shape[1], metric), x.shape[1], 40, metric)
        index.train(x)
    index.add(x[:n])
    return index


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
@pytest.mark.parametrize("metric", [faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT])
def test_the_check_accepts_every_index_faiss_writes_and_refuses_every_truncation(kind, metric, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 8)).astype(np.float32)
    name = "l2" if metric == faiss.METRIC_L2 else "ip"
    for n in (600, 50) if kind == "ivf" else (600, 1):
        f = tmp_path / f"{n}.faiss"
        index = _faiss_index(kind, metric, x, n)
        if n == 50:  # 50 vectors around one point, so that most of the 40 lists are empty: "sparse" sizes
            index.reset()
            index.add(x[:1] + 1e-3 * rng.standard_normal((50, 8)).astype(np.float32))
        faiss.write_index(index, str(f))
        assert kind != "ivf" or (b"sprs" in f.read_bytes()) == (n == 50)
        check_index_file(f, kind=kind, n_items=n, d=8, metric=name, params={"nlist": 40})
        raw = f.read_bytes()
        for cut in range(0, len(raw), max(1, len(raw) // 97)):
            (tmp_path / "cut.faiss").write_bytes(raw[:cut])
            with pytest.raises(ModelFileError, match="not a faiss index metricrec can use"):
                check_index_file(tmp_path / "cut.faiss", kind=kind, n_items=n, d=8, metric=name, params={"nlist": 40})
        with pytest.raises(ModelFileError, match="metric type"):
            check_index_file(f, kind=kind, n_items=n, d=8, metric="ip" if name == "l2" else "l2", params={"nlist": 40})


# ---------------------------------------------------------------------- one table of limits
def test_the_cli_the_configs_and_the_loader_share_one_table_of_limits(tmp_path):
    from metricrec import CML, CMLConfig
    from metricrec import limits
    from metricrec.models import schema
    from metricrec.models.cml import feature_net

    assert (schema.MAX_FACTORS, schema.MAX_ROWS, schema.MAX_ARRAY_BYTES) == (
        limits.MAX_FACTORS, limits.MAX_ROWS, limits.MAX_ARRAY_BYTES)
    assert (feature_net.MAX_WIDTH, feature_net.MAX_LAYERS, feature_net.MAX_MLP_BYTES) == (
        limits.MAX_HIDDEN_WIDTH, limits.MAX_HIDDEN_LAYERS, limits.MAX_MLP_BYTES)
    assert CMLConfig(factors=limits.MAX_FACTORS).factors == 65_536  # the widest the loader reads
    with pytest.raises(ConfigError, match=r"factors must be an integer in \[1, 65,536\]"):
        CMLConfig(factors=limits.MAX_FACTORS + 1)
    assert CMLConfig(feature_hidden=(limits.MAX_HIDDEN_WIDTH,), factors=8).feature_hidden == (65_536,)
    for hidden in ((limits.MAX_HIDDEN_WIDTH + 1,), (1,) * (limits.MAX_HIDDEN_LAYERS + 1),
                   (limits.MAX_HIDDEN_WIDTH,) * 6):  # the last: 80 GiB of hidden layers
        with pytest.raises(ConfigError, match="feature_hidden"):
            CMLConfig(feature_hidden=hidden, factors=8)
    doc = {"names": ["a"], "mlp": {"n_features": 1, "out_dim": 8, "hidden": [limits.MAX_HIDDEN_WIDTH + 1],
                                   "dropout": 0.5}}
    with pytest.raises(ModelFileError, match=r"widths in \[1, 65536\]"):
        feature_net.mlp_shapes(doc, "f.", 8, "here")
    with pytest.raises(ConfigError, match="a feature network over 2,000,000 features"):
        feature_net.FeatureMLP(2_000_000, 8, (10_000,))  # 80 GB of input layer: refused before allocating
    with pytest.raises(ConfigError, match=r"num_threads must be an integer in \[1, "):
        CML(num_threads=10**6)
    assert limits.max_threads() >= max(limits.MAX_THREADS, limits.usable_cores())


# ---------------------------------------------------------------------- near-collapse
def test_near_collapse_is_divergence_and_healthy_tables_are_not():
    from metricrec.training.guards import MIN_DISTINCT_START, check_tables, distinct_rows

    gen = torch.Generator().manual_seed(0)
    start = torch.rand(200, 8, generator=gen) * 2 - 1
    points = torch.nn.functional.normalize(torch.randn(6, 8, generator=gen), dim=1)
    onto_six = points[torch.arange(200) % 6]  # 200 vectors on 6 points of the sphere, as a rate of 1e30 makes
    ref = {"item": distinct_rows(start)}
    assert ref["item"] == 200 and distinct_rows(onto_six) == 6
    with pytest.raises(TrainingDivergedError, match="the 200 item vectors nearly collapsed onto 6 distinct point"):
        check_tables({"item": onto_six}, 1, 1e30, ref)
    check_tables({"item": start + 1e-3 * torch.rand(200, 8, generator=gen)}, 1, 0.3, ref)  # moved: all distinct
    nudged = onto_six.clone()
    nudged[:, 0] += torch.arange(200) * 2e-7  # every row one step apart: distinct, however close
    check_tables({"item": nudged}, 1, 0.3, ref)
    check_tables({"item": onto_six}, 1, 0.3, {"item": MIN_DISTINCT_START - 1})  # too few points to judge
    cold = start.clone()
    cold[100:] = cold[100]  # half the rows start on one point (items without training pairs) and stay there
    check_tables({"item": cold}, 1, 0.3, {"item": distinct_rows(cold)})
    big = torch.rand(10_000, 4, generator=gen)
    assert distinct_rows(big) == 4096  # a sample of evenly spaced rows
