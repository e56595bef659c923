"""The reliability cases of docs/reliability.md, run through the `metricrec` command and checked.

Each case builds its inputs (bad flags, hostile model files, broken data, a diverging training) in a
scratch folder, runs ``metricrec`` in this process, and checks the documented outcome: the exit
status, the words of the one-line message, that no traceback is printed, that the last line of
stderr is the ``metricrec:`` line, the peak memory of the run (hostile files must be refused before
anything they ask for is allocated: tracemalloc peak under :data:`MAX_PEAK_MB`) and any extra
condition (no model written, the old model untouched). The signal cases (SIGINT, SIGTERM, SIGKILL
and ``--resume``) need a child process: they are tests/reliability/test_resume_cli.py.

Run: ``python -m benchmarks.reliability_cases`` (prints the table, exits 1 on any mismatch);
tests/reliability/test_cases_table.py runs every case.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import sys
import tempfile
import tracemalloc
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

#: A refused hostile file may cost at most this much memory (tracemalloc peak of the whole command).
MAX_PEAK_MB = 64
FAST = ["--epochs", "2", "--factors", "8", "--batch-size", "500", "--no-progress", "--threads", "1"]


@dataclass
class Case:
    """One case: ``build(tmp, base) -> argv`` makes the inputs; the command must exit ``code`` and its
    stderr contain ``says``; ``check(tmp)`` any extra condition."""

    kind: str
    what: str
    build: Callable[[Path, Path], list[str]]
    code: int
    says: str
    check: Callable[[Path], bool] | None = None
    peak: bool = False  # measure the memory peak


# ---------------------------------------------------------------------- inputs
def _base_run(tmp: Path) -> Path:
    """A small trained run (synthetic data) the model-file cases copy and damage."""
    from metricrec.cli.main import main

    out = tmp / "base"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["train", "--synthetic", "small", "--out", str(out), *FAST]) == 0
    return out


def _copy(base: Path, tmp: Path, name: str) -> Path:
    run = tmp / name
    shutil.copytree(base, run)
    return run


def _user(base: Path) -> str:
    return str(json.loads((base / "model" / "config.json").read_text())["user_ids"]["values"][0])


def _edit_config(tmp: Path, base: Path, name: str, edit: Callable[[dict], None]) -> Path:
    run = _copy(base, tmp, name)
    doc = json.loads((run / "model" / "config.json").read_text())
    edit(doc)
    (run / "model" / "config.json").write_text(json.dumps(doc))
    return run


def _recommend(run: Path, base: Path, *extra: str) -> list[str]:
    return ["recommend", "--model", str(run), "--user", _user(base), *extra]


def _npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _huge_header_npz(tmp: Path, base: Path) -> list[str]:
    """weights.npz whose user table header asks for 2^40 x 8 float32 (32 TiB) in a 2.5 KB file."""
    run = _copy(base, tmp, "huge_header")
    weights = run / "model" / "weights.npz"
    with zipfile.ZipFile(weights, "w") as z:
        z.writestr("user_embeddings.npy", _npy_header((2**40, 8)) + bytes(2000))
        z.writestr("item_embeddings.npy", _npy_header((200, 8)) + bytes(6400))
    return _recommend(run, base)


def _zero_bomb_npz(tmp: Path, base: Path) -> list[str]:
    """weights.npz with a deflated member of 400 MB of zeros (under 1 MB on disk)."""
    run = _copy(base, tmp, "zero_bomb")
    n = 400 * 2**20 // 32
    with zipfile.ZipFile(run / "model" / "weights.npz", "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("user_embeddings.npy", "w", force_zip64=True) as fh:
            fh.write(_npy_header((n, 8)))
            zeros = bytes(1 << 20)
            for _ in range(400):
                fh.write(zeros)
    return _recommend(run, base)


def _huge_safetensors(tmp: Path, base: Path) -> list[str]:
    """A safetensors weights file whose header declares a 2^40-row table."""
    run = _copy(base, tmp, "huge_st")
    doc = json.loads((run / "model" / "config.json").read_text())
    doc["weights"] = "weights.safetensors"
    (run / "model" / "config.json").write_text(json.dumps(doc))
    header = json.dumps({"user_embeddings": {"dtype": "F32", "shape": [2**40, 8],
                                             "data_offsets": [0, 2**45]}}).encode()
    (run / "model" / "weights.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(64))
    (run / "model" / "weights.npz").unlink()
    return _recommend(run, base)


def _single_npz_huge_meta(tmp: Path, base: Path) -> list[str]:
    """A single-file .npz model whose metadata claims 10^9 users."""
    from metricrec.serialization import load_model_files, save_model_files

    arrays, meta = load_model_files(base / "model")
    meta = {k: v for k, v in meta.items() if k not in ("format", "format_version", "weights")}
    save_model_files(tmp / "single.npz", arrays, {**meta, "n_users": 10**9, "user_ids": None})
    return ["recommend", "--model", str(tmp / "single.npz"), "--user", "0"]


def _pairs_csv(tmp: Path, name: str, pairs: list[tuple[int, int]]) -> Path:
    path = tmp / name
    path.write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in pairs))
    return path


def _split_files(tmp: Path, heavy: int | None = None, test: str = "ok", valid: str = "ok") -> list[str]:
    """A predefined split of 40 users x 60 items; ``heavy``: a user holding that many items in train."""
    rng = np.random.default_rng(0)
    tr, va, te = [], [], []
    for u in range(40):
        items = rng.choice(60, 10, replace=False)
        tr += [(u, i) for i in items[:6]]
        va += [(u, i) for i in items[6:8]]
        te += [(u, i) for i in items[8:]]
    if heavy is not None:
        tr += [(999, i) for i in range(heavy)]
    te = [] if test == "empty" else tr[:15] + te if test == "leak" else te
    te += [(500, 1), (500, 2), (501, 3)] if test == "strangers" else []  # users in no training pair
    va = [] if valid == "empty" else va
    files = [_pairs_csv(tmp, f"{p}.csv", rows) for p, rows in (("train", tr), ("valid", va), ("test", te))]
    return ["train", "--train", str(files[0]), "--valid", str(files[1]), "--test", str(files[2]),
            "--out", str(tmp / "run"), *FAST]


def _nothing_written(tmp: Path) -> bool:
    return not (tmp / "run" / "model").exists() and not (tmp / "run" / "report.json").exists()


def _old_model_kept(tmp: Path, base: Path | None = None) -> list[str]:
    run = _copy(base, tmp, "run")
    (tmp / "before").write_bytes((run / "model" / "weights.npz").read_bytes())
    return ["train", "--synthetic", "small", "--learning-rate", "1e30", "--cov-weight", "1", "--out", str(run), *FAST]


def _same_weights(tmp: Path) -> bool:
    return (tmp / "before").read_bytes() == (tmp / "run" / "model" / "weights.npz").read_bytes()


def _mutated_checkpoint(tmp: Path, base: Path, how: str) -> list[str]:
    """A run whose checkpoint is kept (as a killed run leaves it), then damaged ``how``."""
    from unittest import mock

    from metricrec.cli.main import main

    run = tmp / "run"
    with mock.patch("metricrec.cli.train_exec.finish_checkpoint"), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        assert main(["train", "--synthetic", "small", "--out", str(run), *FAST]) == 0
    ck = run / "checkpoint"
    if how == "truncated":
        data = (ck / "state.npz").read_bytes()
        (ck / "state.npz").write_bytes(data[: len(data) // 2])
    elif how == "other data":  # the checkpoint's own record of its training pairs (run.json is this run's)
        doc = json.loads((ck / "state.json").read_text())
        doc["train"]["nnz"] += 1
        (ck / "state.json").write_text(json.dumps(doc))
    elif how == "fifo":
        (ck / "state.npz").unlink()
        os.mkfifo(ck / "state.npz")
    elif how == "huge array":
        doc = json.loads((ck / "state.json").read_text())
        doc["step"]["$tuple"][0]["shape"] = [2**40, 8]
        (ck / "state.json").write_text(json.dumps(doc))
    return ["train", "--resume", str(run)]


def _changed_data_run(tmp: Path, base: Path) -> list[str]:
    """A run killed before its first checkpoint whose data changed since: its run.json (status
    ``started``) records one training pair more than the data now gives."""
    run = _copy(base, tmp, "run")
    shutil.rmtree(run / "model")
    for name in ("report.json", "data.json"):
        (run / name).unlink()
    doc = json.loads((run / "run.json").read_text())
    doc["status"] = "started"
    doc["data"]["train_fingerprint"]["nnz"] += 1
    (run / "run.json").write_text(json.dumps(doc))
    return ["train", "--resume", str(run)]


def _foreign_run_json(tmp: Path) -> Path:
    (tmp / "out").mkdir()
    (tmp / "out" / "run.json").write_text('{"my": "notes"}')
    return tmp / "out"


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            doc = doc[key]
        doc[last] = value
    return edit


# ---------------------------------------------------------------------- the cases
A, B, C, D, E = ("tracebacks", "sizes trusted", "silent training failures", "interruptions", "more")
CASES: list[Case] = [
    Case(A, "train --device foo", lambda t, b: ["train", "--synthetic", "small", "--device", "foo", *FAST],
         2, "device must be 'cpu', 'cuda', 'cuda:N' or 'auto'"),
    Case(A, "recommend -n 100000000000", lambda t, b: _recommend(b, b, "-n", "100000000000"), 0,
         "only 1", peak=True),
    Case(A, "recommend, data.json a list", lambda t, b: _recommend(_data_json(t, b, "[1, 2]"), b), 3,
         "data.json: expected a JSON object"),
    Case(A, "evaluate, data.json a list", lambda t, b: ["evaluate", "--model", str(_data_json(t, b, "[1]"))], 3,
         "data.json: expected a JSON object"),
    Case(A, "config.json n_users = 10^30", lambda t, b: _recommend(_edit_config(t, b, "r", _set("n_users", 10**30)), b),
         3, "'n_users' must be an integer in", peak=True),
    Case(A, "config.json factors = Infinity",
         lambda t, b: _recommend(_edit_config(t, b, "r", _set("config.factors", float("inf"))), b), 3,
         "factors must be a positive integer"),
    Case(A, "config.json factors = 10^12",
         lambda t, b: _recommend(_edit_config(t, b, "r", _set("config.factors", 10**12)), b), 3,
         "more than 65,536", peak=True),
    Case(A, "config.json history epoch = 1e400",
         lambda t, b: _recommend(_edit_config(t, b, "r", _set("history.epochs", [{"epoch": 1e400, "loss": 1,
                                                                                  "seconds": 1}])), b),
         3, "key 'history.epochs[0].epoch' must be an integer"),
    Case(A, "one user holds nearly every training item", lambda t, b: _split_files(t, heavy=59), 0, "test ("),
    Case(A, "one user holds every training item", lambda t, b: _split_files(t, heavy=60), 0,
         "1 user(s) hold every one of the 60 items"),
    Case(B, "npz header asks for 32 TiB in a 2.5 KB file", _huge_header_npz, 3, "declares shape (1099511627776, 8)",
         peak=True),
    Case(B, "npz member: 400 MB of deflated zeros", _zero_bomb_npz, 3, "more than 64x", peak=True),
    Case(B, "safetensors header declares a 2^40-row table", _huge_safetensors, 3, "data offsets", peak=True),
    Case(B, "single .npz whose metadata claims 10^9 users", _single_npz_huge_meta, 3, "expected (1000000000, 8)",
         peak=True),
    Case(B, "config.json: feature network 10^9 wide",
         lambda t, b: _recommend(_edit_config(t, b, "r", _set("item_features", {
             "names": ["a"], "mlp": {"n_features": 1, "out_dim": 8, "hidden": [10**9], "dropout": 0.1}})), b),
         3, "'mlp.hidden' must be a list", peak=True),
    # lambda_c 1: at CML's defaults (lambda_c 0) AdaGrad's normalised steps and the unit-ball clip keep even
    # a 1e30 rate finite; the covariance term on clipped rows is what collapses every vector to zero.
    Case(C, "--learning-rate 1e30 --cov-weight 1", lambda t, b: ["train", "--synthetic", "small", "--learning-rate",
                                                                 "1e30", "--cov-weight", "1", "--out", str(t / "run"),
                                                                 *FAST],
         4, "training diverged at epoch 1", _nothing_written),
    Case(C, "--learning-rate 1e30 --cov-weight 1 over a good model", _old_model_kept, 4, "lower the learning rate", _same_weights),
    Case(C, "empty test part", lambda t, b: _split_files(t, test="empty"), 2, "the test part is empty",
         _nothing_written),
    Case(C, "empty valid part (a --valid file of nothing usable)", lambda t, b: _split_files(t, valid="empty"), 2,
         "the valid part is empty", _nothing_written),
    Case(C, "train/test overlap", lambda t, b: _split_files(t, test="leak"), 2,
         "the split leaks: 15 (user, item) pairs", _nothing_written),
    Case(C, "--out is a file", lambda t, b: ["train", "--synthetic", "small", "--out", str(_file(t)), *FAST], 2,
         "exists and is a file"),
    Case(D, "--resume of a finished run", lambda t, b: ["train", "--resume", str(b)], 0,
         "is finished: model"),
    Case(D, "--resume of a folder that is not a run", lambda t, b: ["train", "--resume", str(t)], 2,
         "not a 'metricrec train' run folder"),
    Case(D, "--resume, data changed since the run started", _changed_data_run, 2,
         "changed since the run started: training pairs: ", _nothing_written),
    Case(D, "--out holding a run.json that is not a run record",
         lambda t, b: ["train", "--synthetic", "small", "--out", str(_foreign_run_json(t)), *FAST], 2,
         "is not a metricrec run record"),
    Case(D, "--resume with another flag", lambda t, b: ["train", "--resume", str(b), "--epochs", "9"], 2,
         "drop --epochs"),
    Case(D, "--resume, truncated checkpoint", lambda t, b: _mutated_checkpoint(t, b, "truncated"), 3,
         "state.npz: cannot read weights"),
    Case(D, "--resume, checkpoint of other data", lambda t, b: _mutated_checkpoint(t, b, "other data"), 3,
         "made on other training data"),
    Case(D, "--resume, checkpoint declaring a 2^40-row table", lambda t, b: _mutated_checkpoint(t, b, "huge array"),
         3, "state.npz", peak=True),
    Case(E, "recommend -n 0", lambda t, b: _recommend(b, b, "-n", "0"), 2, "-n must be a positive integer"),
    Case(E, "recommend, unknown user", lambda t, b: ["recommend", "--model", str(b), "--user", "nope"], 2,
         "unknown user id"),
    Case(E, "interactions file missing", lambda t, b: ["data", "stats", "--interactions", str(t / "no.csv")], 2,
         "no.csv"),
    Case(E, "interactions file with a header line, columns by position",
         lambda t, b: ["data", "stats", "--interactions", str(_input_file(t, "header"))], 2,
         "h.csv, line 1: looks like a header ('user,item': 'user' names a column); pass --header"),
    Case(E, "interactions file a directory",
         lambda t, b: ["data", "stats", "--interactions", str(_input_file(t, "dir"))], 2,
         "h.csv: is a directory, not a regular file"),
    Case(E, "interactions file a FIFO",
         lambda t, b: ["data", "stats", "--interactions", str(_input_file(t, "fifo"))], 2,
         "h.csv: is a FIFO (named pipe), not a regular file"),
    Case(E, "--config /dev/zero", lambda t, b: ["train", "--config", "/dev/zero", "--synthetic", "small"], 2,
         "--config /dev/zero: is a character device, not a regular file"),
    Case(E, "config.json not an object", lambda t, b: _recommend(_raw_config(t, b, "[]"), b), 3,
         "not a metricrec model"),
    Case(E, "weights.npz truncated", lambda t, b: _recommend(_truncated_weights(t, b), b), 3, "cannot read weights"),
    Case(E, "bad flag value (--epochs x)", lambda t, b: ["train", "--epochs", "x"], 2, "invalid int value: 'x'"),
    Case(E, "weights.npz a directory", lambda t, b: _recommend(_not_a_file(t, b, "weights.npz", "dir"), b), 3,
         "weights.npz: is a directory, not a weights file"),
    Case(E, "weights.npz a FIFO", lambda t, b: _recommend(_not_a_file(t, b, "weights.npz", "fifo"), b), 3,
         "weights.npz: is a FIFO (named pipe), not a weights file"),
    Case(E, "config.json a dangling symlink", lambda t, b: _recommend(_not_a_file(t, b, "config.json", "link"), b),
         3, "config.json: is a symbolic link to"),
    Case(E, "item table all zeros (a collapsed model)", lambda t, b: _recommend(_zero_items(t, b), b), 3,
         "item table is collapsed (all 200 rows zero)"),
    Case(D, "--resume, state.npz a FIFO", lambda t, b: _mutated_checkpoint(t, b, "fifo"), 3,
         "state.npz: is a FIFO (named pipe), not a checkpoint file"),
    Case(C, "test file with users unknown to train", lambda t, b: _split_files(t, test="strangers"), 0,
         "2 user(s) with 3 of its 83 pairs are not in the id universe"),
]


def _not_a_file(tmp: Path, base: Path, name: str, kind: str) -> Path:
    """A copy of the run whose model/NAME is a directory, a FIFO or a dangling symbolic link."""
    run = _copy(base, tmp, "r")
    path = run / "model" / name
    path.unlink()
    if kind == "dir":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink(tmp / "gone", path)
    return run


def _zero_items(tmp: Path, base: Path) -> Path:
    run = _copy(base, tmp, "r")
    weights = run / "model" / "weights.npz"
    arrays = dict(np.load(weights))
    arrays["item_embeddings"][:] = 0.0
    np.savez(weights, **arrays)
    return run


def _input_file(tmp: Path, kind: str) -> Path:
    """``tmp/h.csv``: a header line over 3 pairs (``header``), a directory, or a FIFO (stat'ed, never opened)."""
    path = tmp / "h.csv"
    if kind == "header":
        path.write_text("user,item\n1,2\n2,3\n3,1\n")
    elif kind == "dir":
        path.mkdir()
    else:
        os.mkfifo(path)
    return path


def _data_json(tmp: Path, base: Path, text: str) -> Path:
    run = _copy(base, tmp, "r")
    (run / "data.json").write_text(text)
    return run


def _raw_config(tmp: Path, base: Path, text: str) -> Path:
    run = _copy(base, tmp, "r")
    (run / "model" / "config.json").write_text(text)
    return run


def _truncated_weights(tmp: Path, base: Path) -> Path:
    run = _copy(base, tmp, "r")
    data = (run / "model" / "weights.npz").read_bytes()
    (run / "model" / "weights.npz").write_bytes(data[: len(data) // 3])
    return run


def _file(tmp: Path) -> Path:
    (tmp / "a_file").write_text("x")
    return tmp / "a_file"


# ---------------------------------------------------------------------- running them
def run_case(case: Case, tmp: Path, base: Path) -> dict[str, Any]:
    """Run one case in ``tmp``; returns what happened and whether it is the documented outcome."""
    from metricrec.cli.main import main

    argv = case.build(tmp, base)
    err, out = io.StringIO(), io.StringIO()
    if case.peak:
        tracemalloc.start()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    finally:
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20 if case.peak else None
        tracemalloc.stop()
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    problems = []
    if code != case.code:
        problems.append(f"exit {code}, expected {case.code}")
    if case.says not in err.getvalue() + out.getvalue():
        problems.append(f"does not say {case.says!r}")
    if "Traceback" in err.getvalue():
        problems.append("printed a traceback")
    if code != 0 and not last.startswith("metricrec"):
        problems.append(f"last line is not the one-line error: {last!r}")
    if peak_mb is not None and peak_mb > MAX_PEAK_MB:
        problems.append(f"peak memory {peak_mb:.0f} MB")
    if case.check is not None and not case.check(tmp):
        problems.append("extra check failed")
    said = [ln for ln in lines + out.getvalue().splitlines() if case.says in ln]
    return {"code": code, "line": last if code else (said or [""])[0], "peak_mb": peak_mb, "problems": problems}


def run_all(cases: list[Case] = CASES) -> list[tuple[Case, dict[str, Any]]]:
    """Run every case in fresh scratch folders (one trained base run shared); [(case, result)]."""
    results = []
    with tempfile.TemporaryDirectory() as root:
        base = _base_run(Path(root))
        for k, case in enumerate(cases):
            tmp = Path(root) / f"case{k}"
            tmp.mkdir()
            result = run_case(case, tmp, base)
            result["line"] = result["line"].replace(str(tmp), "RUN").replace(str(base), "RUN")
            results.append((case, result))
    return results


def table(results: list[tuple[Case, dict[str, Any]]]) -> str:
    """The markdown table of docs/reliability.md."""
    rows = ["| class | case | exit | message (stderr, last line) | peak MB | ok |", "|---|---|---|---|---|---|"]
    for case, r in results:
        line = r["line"].replace("|", "\\|")
        line = line if len(line) <= 240 else line[:237] + "..."
        peak = "" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        rows.append(f"| {case.kind} | {case.what} | {r['code']} | `{line}` | {peak} | "
                    f"{'yes' if not r['problems'] else '; '.join(r['problems'])} |")
    return "\n".join(rows)


def main() -> int:
    results = run_all()
    print(table(results))
    bad = [(c.what, r["problems"]) for c, r in results if r["problems"]]
    for what, problems in bad:
        print(f"MISMATCH {what}: {'; '.join(problems)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
