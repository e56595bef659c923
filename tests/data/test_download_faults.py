"""Kill at any point of a data set download: every disk step of ``ensure_files`` (each chunk written to
the part file, each member extracted, each fsync and rename of the atomic folder swap) fails in turn --
by an exception in process, or by ``os._exit`` in a forked child (a kill). Afterwards the data directory
holds nothing or the complete data set folder, never a partial one; an exception leaves no temp file;
and the next load removes whatever a kill left and succeeds."""

import os
import shutil

import pytest

import metricrec._atomic as at
import metricrec.data.datasets.download as dl
from fixtures_datasets import ml100k_files
from metricrec.data.datasets import load_dataset

from test_download import serve_zip, server  # noqa: F401 - the fixture

KILLED = 17


class Injected(Exception):
    """The failure the tests inject."""


class Faults:
    """Counts disk steps and fails at step ``fail_at`` (before or after it)."""

    def __init__(self, fail_at, when, how):
        self.fail_at, self.when, self.how, self.n = fail_at, when, how, 0

    def _fail(self):
        if self.how == "kill":
            os._exit(KILLED)
        raise Injected(f"fault at step {self.n}")

    def step(self, call, *args, **kw):
        self.n += 1
        if self.n == self.fail_at and self.when == "before":
            self._fail()
        result = call(*args, **kw)
        if self.n == self.fail_at:
            self._fail()
        return result


class _Os:
    def __init__(self, faults):
        self._faults = faults

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        return self._faults.step(os.write, fd, data)

    def fsync(self, fd):
        return self._faults.step(os.fsync, fd)

    def rename(self, src, dst):
        return self._faults.step(os.rename, src, dst)

    def replace(self, src, dst):
        return self._faults.step(os.replace, src, dst)


class _Shutil:
    def __init__(self, faults):
        self._faults = faults

    def __getattr__(self, name):
        return getattr(shutil, name)

    def copyfileobj(self, *args):
        return self._faults.step(shutil.copyfileobj, *args)


def _install(m, faults):
    m.setattr(at, "os", _Os(faults))
    m.setattr(dl, "os", _Os(faults))
    m.setattr(dl, "shutil", _Shutil(faults))
    real = at._renameat2
    m.setattr(at, "_renameat2", lambda *a: faults.step(real, *a))


def _load(data_dir, base, digest):
    return load_dataset("ml-100k", data_dir, base_url=base, sha256=digest, verify=False)


def _attempt(monkeypatch, data_dir, base, digest, fail_at, when, how):
    faults = Faults(fail_at, when, how)
    if how == "raise":
        with monkeypatch.context() as m:
            _install(m, faults)
            try:
                _load(data_dir, base, digest)
            except Injected:
                return faults.n, True
        return faults.n, False
    pid = os.fork()
    if pid == 0:
        try:
            _install(monkeypatch, faults)
            _load(data_dir, base, digest)
            os._exit(0)
        except BaseException:
            os._exit(3)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    assert code in (0, KILLED), f"the child failed for another reason (exit {code})"
    return None, code == KILLED


def _complete_or_absent(data_dir, *, hidden_allowed):
    names = sorted(p.name for p in data_dir.iterdir())
    visible = [n for n in names if not n.startswith(".")]
    assert visible in ([], ["ml-100k"]), names
    if visible:
        folder = data_dir / "ml-100k"
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == ml100k_files()
    if not hidden_allowed:
        assert names == visible, f"temp files left after an exception: {names}"


@pytest.mark.parametrize("how", ["raise", "kill"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_fault_at_every_step_of_a_download(server, tmp_path, monkeypatch, how, when):  # noqa: F811
    root, base = server
    members = {f"ml-100k/{name}": data for name, data in ml100k_files().items()}
    digest = serve_zip(root, members)
    k, steps = 0, None
    while True:
        k += 1
        data_dir = tmp_path / f"{how}-{when}-{k}"
        data_dir.mkdir()
        counted, failed = _attempt(monkeypatch, data_dir, base, digest, k, when, how)
        _complete_or_absent(data_dir, hidden_allowed=how == "kill")
        if not failed:
            steps = k - 1
            break
        assert _load(data_dir, base, digest).nnz == 2  # the next load cleans up and succeeds
        assert sorted(p.name for p in data_dir.iterdir()) == ["ml-100k"]
        assert k < 100
    assert steps >= 8  # the chunk, four members, fsyncs and the rename were all tried
