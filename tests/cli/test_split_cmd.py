"""`metricrec data split` then `train --train/--valid/--test` trains on the same users, items and pairs as
training on the data set itself (the id universe is written with the parts), and the split folder is
written as one unit: a kill at any moment leaves the old split or the new one."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import metricrec._atomic as at
from fixtures_datasets import SHARED_DATA
from metricrec.cli.main import main
from metricrec.cli.sources import make_split, rebuild
from metricrec.data.datasets import load_dataset
from metricrec.data.split_files import read_split, write_split
from metricrec.data.synthetic import generate
from metricrec.fingerprint import fingerprint

FAST = ["--epochs", "3", "--batch-size", "500", "--factors", "8", "--no-progress", "--threads", "1"]
PARTS = ("train", "valid", "test")


def _read(folder):
    return read_split(*(folder / f"{p}.csv" for p in PARTS))


def _same(a, b):
    assert a.train.user_ids.tolist() == b.train.user_ids.tolist()
    assert a.train.item_ids.tolist() == b.train.item_ids.tolist()
    for p in PARTS:
        assert (getattr(a, p).matrix != getattr(b, p).matrix).nnz == 0, p


def test_split_files_train_like_the_data_set_itself(tmp_path, capsys):
    folder = tmp_path / "split"
    assert main(["data", "split", "--synthetic", "small", "--out", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "users.csv" in printed and "items.csv" in printed and "split.json" in printed
    direct = make_split(rebuild({"synthetic": "small"}), generate(preset="small", seed=0))
    _same(_read(folder), direct)
    runs = {}
    for name, flags in (("direct", ["--synthetic", "small"]),
                        ("files", [f"--{p}={folder / f'{p}.csv'}" for p in PARTS])):
        assert main(["train", *flags, "--out", str(tmp_path / name), *FAST]) == 0
        runs[name] = json.loads((tmp_path / name / "report.json").read_text())
    assert runs["files"]["data"]["sizes"] == runs["direct"]["data"]["sizes"]
    assert runs["files"]["data"]["train_fingerprint"] == runs["direct"]["data"]["train_fingerprint"]
    assert runs["files"]["test"]["recall@50"] == runs["direct"]["test"]["recall@50"]  # the same training
    assert main(["evaluate", "--model", str(tmp_path / "files")]) == 0  # rebuilt from the files, checked


@pytest.mark.skipif(not (SHARED_DATA / "ml-100k" / "u.data").is_file(), reason="shared ml-100k absent")
def test_ml100k_split_files_lose_nothing(tmp_path, capsys):
    folder = tmp_path / "split"
    assert main(["data", "split", "--dataset", "ml-100k", "--data-dir", str(SHARED_DATA), "--out", str(folder)]) == 0
    direct = make_split(rebuild({"dataset": "ml-100k"}), load_dataset("ml-100k", SHARED_DATA, download=False))
    back = _read(folder)
    _same(back, direct)
    assert back.train.shape == (943, 1682) and back.sizes() == direct.sizes()
    assert fingerprint(back.train.matrix, back.train.user_ids, back.train.item_ids) == \
        fingerprint(direct.train.matrix, direct.train.user_ids, direct.train.item_ids)
    # what the train file's own universe (the behaviour before) loses, all kept now
    in_train = np.zeros(direct.train.n_items, bool)
    in_train[direct.train.matrix.indices] = True
    lost = {p: int((~in_train[getattr(direct, p).matrix.indices]).sum()) for p in ("valid", "test")}
    assert lost == {"valid": 70, "test": 63} and int((~in_train).sum()) == 333


# ---------------------------------------------------------------------- kill at any point
KILLED = 17


class _Os:
    """``os`` of metricrec._atomic with every disk step counted; ``os._exit`` at step ``fail_at``."""

    def __init__(self, fail_at):
        self.fail_at, self.n = fail_at, 0

    def __getattr__(self, name):
        return getattr(os, name)

    def _step(self, call, *args):
        self.n += 1
        if self.n == self.fail_at:
            if call is os.write:  # a torn write
                call(args[0], bytes(memoryview(args[1]).cast("B"))[: max(1, len(args[1]) // 2)])
            os._exit(KILLED)
        return call(*args)

    def write(self, fd, data):
        return self._step(os.write, fd, data)

    def fsync(self, fd):
        return self._step(os.fsync, fd)

    def rename(self, src, dst):
        return self._step(os.rename, src, dst)

    def replace(self, src, dst):
        return self._step(os.replace, src, dst)


def _splits():
    data = generate(40, 30, 500, n_clusters=2, seed=0, with_item_features=False)
    args = rebuild({"synthetic": "small"})
    old = make_split(args, data)
    args.split_seed = 1
    return old, make_split(args, data)


def _old_or_new(folder, old, new):
    back = _read(folder)  # the manifest check passes: the five files belong together
    matches = []
    for cand in (old, new):
        try:
            _same(back, cand)
            matches.append(cand)
        except AssertionError:
            pass
    assert len(matches) == 1
    return matches[0] is new


@pytest.mark.parametrize("two_rename", [False, True])
def test_kill_at_every_step_of_a_split_write(tmp_path, monkeypatch, two_rename):
    old, new = _splits()
    if two_rename:  # where renameat2(RENAME_EXCHANGE) is unavailable: the two-rename swap and its recovery
        def unsupported(src, dst, flags):
            raise at._Unsupported
        monkeypatch.setattr(at, "_renameat2", unsupported)
    k = 0
    while True:
        k += 1
        folder = tmp_path / f"s{k}"
        write_split(old, folder)
        pid = os.fork()
        if pid == 0:
            try:
                monkeypatch.setattr(at, "os", _Os(k))
                write_split(new, folder)
                os._exit(0)
            except BaseException:
                os._exit(3)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        assert code in (0, KILLED)
        at.recover(folder)  # what the next reader or writer of the folder does after a two-rename kill
        is_new = _old_or_new(folder, old, new)
        if code == 0:
            assert is_new and k > 10
            break
        write_split(new, folder)  # the next write cleans up and succeeds
        assert _old_or_new(folder, old, new) and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_sigkill_of_the_command_at_random_moments(tmp_path):
    folder = tmp_path / "split"
    base = [sys.executable, "-m", "metricrec", "data", "split", "--synthetic", "small", "--out", str(folder)]
    subprocess.run([*base, "--split-seed", "0"], check=True, capture_output=True)
    old = _read(folder)
    t0 = time.monotonic()
    subprocess.run([*base, "--split-seed", "1"], check=True, capture_output=True)
    full = time.monotonic() - t0
    new = _read(folder)
    subprocess.run([*base, "--split-seed", "0"], check=True, capture_output=True)
    rng = np.random.default_rng(0)
    for delay in sorted(rng.uniform(0.5, 1.0, size=4) * full):
        proc = subprocess.Popen([*base, "--split-seed", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        at.recover(folder)
        _old_or_new(folder, old, new)
        subprocess.run([*base, "--split-seed", "0"], check=True, capture_output=True)  # back to the old one
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
