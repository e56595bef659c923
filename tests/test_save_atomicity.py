"""A model is saved as one atomic unit: a failure or a kill at any step of a save leaves the old
complete model or the new complete one, never a mix and never nothing where a model was.

Every step of a save that touches the disk goes through ``metricrec._atomic``'s ``os`` (each
``os.write``, ``os.fsync``, ``os.rename``/``os.replace``) or its ``_renameat2``. The tests count those
steps and, at step k, raise an exception (in process) or ``os._exit`` (in a forked child), just
before the step (a write is cut in half) or just after it.
"""

import os
import stat

import numpy as np
import pytest

import metricrec._atomic as at
import metricrec.serialization as ser
from metricrec.serialization import (ModelFormatError, atomic_directory, atomic_output, atomic_write_text,
                                     load_model_files, recover, save_model_files)

KILLED = 17  # the exit code of a child killed by a fault


class Injected(Exception):
    """The failure the tests inject."""


def _model(marker):
    """Arrays and meta whose every value says which save they come from (1: old, 2: new)."""
    n = 3 if marker == 1 else 5
    arrays = {"w": np.full((n, 2), float(marker)), "v": np.full(n + 1, float(marker), dtype=np.float32)}
    if marker == 2:
        arrays["extra"] = np.full(4, 2.0)
    return arrays, {"model": "test", "marker": marker}


def _check_whole(path):
    """Load ``path``; return its marker after checking arrays and meta belong to the same save."""
    arrays, meta = load_model_files(path)
    marker = meta["marker"]
    expected, _ = _model(marker)
    assert sorted(arrays) == sorted(expected)
    for k, v in expected.items():
        assert arrays[k].shape == v.shape and np.all(arrays[k] == marker), (k, marker)
    return marker


class Faults:
    """Counts the disk steps of a save and fails at step ``fail_at``."""

    def __init__(self, fail_at, when, how):
        self.fail_at, self.when, self.how, self.n = fail_at, when, how, 0

    def _fail(self):
        if self.how == "kill":
            os._exit(KILLED)
        raise Injected(f"fault at step {self.n}")

    def step(self, name, call, *args):
        self.n += 1
        if self.n != self.fail_at:
            return call(*args)
        if self.when == "before":
            if name == "write":  # a torn write: half the bytes, then the failure
                call(args[0], bytes(memoryview(args[1]).cast("B"))[: max(1, len(args[1]) // 2)])
            self._fail()
        result = call(*args)
        self._fail()
        return result


class _Os:
    """``os`` for metricrec._atomic, with the disk steps routed through :class:`Faults`."""

    def __init__(self, faults):
        self._faults = faults

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        return self._faults.step("write", os.write, fd, data)

    def fsync(self, fd):
        return self._faults.step("fsync", os.fsync, fd)

    def rename(self, src, dst):
        return self._faults.step("rename", os.rename, src, dst)

    def replace(self, src, dst):
        return self._faults.step("replace", os.replace, src, dst)


@pytest.fixture(params=["exchange", "two-rename"])
def swap(request, monkeypatch):
    """Run with renameat2(RENAME_EXCHANGE) (where the system has it) and with the two-rename fallback."""
    if request.param == "two-rename":
        def unsupported(src, dst, flags):
            raise at._Unsupported
        unsupported.no_disk_step = True
        monkeypatch.setattr(at, "_renameat2", unsupported)
    elif at._libc_renameat2() is None:
        pytest.skip("no renameat2 here")
    return request.param


def _install(monkeypatch, faults):
    monkeypatch.setattr(at, "os", _Os(faults))
    real = at._renameat2
    if getattr(real, "no_disk_step", False):  # the two-rename fallback: renameat2 touches nothing
        return
    monkeypatch.setattr(at, "_renameat2", lambda src, dst, flags: faults.step("renameat2", real, src, dst, flags))


def _attempt(monkeypatch, target, fail_at, when, how):
    """One save of the new model with a fault at step ``fail_at``. Returns (steps counted, failed)."""
    faults = Faults(fail_at, when, how)
    if how == "raise":
        with monkeypatch.context() as m:
            _install(m, faults)
            try:
                save_model_files(target, *_model(2))
            except Injected:
                return faults.n, True
        return faults.n, False
    pid = os.fork()
    if pid == 0:  # the child: save, die at the fault
        try:
            _install(monkeypatch, faults)
            save_model_files(target, *_model(2))
            os._exit(0)
        except BaseException:
            os._exit(3)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    assert code in (0, KILLED), f"the child failed for another reason (exit {code})"
    return None, code == KILLED


def _after_fault(target, had_old):
    """What a fault may leave: the old model or the new one (or nothing at a first save)."""
    if not had_old and not os.path.lexists(target) and ser.recovery_source(target) is None:
        with pytest.raises(FileNotFoundError):
            load_model_files(target)
        return None
    marker = _check_whole(target)
    assert marker in ((1, 2) if had_old else (2,))
    return marker


@pytest.mark.parametrize("how", ["raise", "kill"])
@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("layout", ["dir", "npz"])
@pytest.mark.parametrize("had_old", [False, True], ids=["first-save", "overwrite"])
def test_a_fault_at_any_step_leaves_old_or_new(tmp_path, monkeypatch, swap, how, when, layout, had_old):
    if swap == "two-rename" and (layout == "npz" or not had_old):
        pytest.skip("no folder swap here (a single file, or nothing to replace): same as the exchange case")
    seen, step = set(), 0
    while True:
        step += 1
        parent = tmp_path / f"s{step}"
        target = parent / ("m.npz" if layout == "npz" else "m")
        if had_old:
            save_model_files(target, *_model(1))
        n, failed = _attempt(monkeypatch, target, step, when, how)
        if not failed:
            break
        loaded_before = os.path.lexists(target)
        seen.add(_after_fault(target, had_old))
        assert os.path.lexists(target) == loaded_before  # loading changed nothing
        if recover(target) is not None:  # an interrupted two-rename swap: restored as read
            assert _check_whole(target) in (1, 2)
        save_model_files(target, *_model(2))  # the next save works and clears what the fault left
        assert _check_whole(target) == 2 and os.listdir(parent) == [target.name]
        assert step < 40
    assert _check_whole(target) == 2 and os.listdir(parent) == [target.name]
    assert step >= (4 if layout == "npz" else 7)  # every step of the save was hit once
    assert seen == ({1, 2} if had_old else {None, 2})  # the faults fell both before and after the swap
    if layout == "dir" and had_old and how == "raise":
        assert at.last_swap == swap


def test_interrupted_two_rename_swap_is_read_then_restored(tmp_path):
    target = tmp_path / "m"
    save_model_files(target, *_model(1))
    token = "00000000000000000001.999999999.abcdef"  # no such process: a killed save
    os.rename(target, at._sibling(target, "old", token))
    assert _check_whole(target) == 1 and not target.exists()  # the old copy, read in place
    new = at._sibling(target, "tmp", token)
    save_model_files(tmp_path / "elsewhere", *_model(2))
    os.rename(tmp_path / "elsewhere", new)  # the new copy was complete when the old one was moved aside
    assert _check_whole(target) == 2 and not target.exists()
    assert recover(target) == target and _check_whole(target) == 2
    save_model_files(target, *_model(1))
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_stale_temp_siblings_are_cleaned_live_ones_kept(tmp_path):
    target = tmp_path / "m"
    dead = at._sibling(target, "tmp", "00000000000000000001.999999999.abcdef")
    dead.mkdir()
    (dead / "weights.npz").write_bytes(b"half")
    live = at._sibling(target, "tmp", f"00000000000000000002.{os.getppid()}.abcdef")  # a running process
    live.mkdir()
    save_model_files(target, *_model(1))
    assert sorted(os.listdir(tmp_path)) == sorted(["m", live.name])


def test_a_reader_racing_a_save_gets_one_whole_model(tmp_path, monkeypatch):
    target = tmp_path / "m"
    save_model_files(target, *_model(1))
    real, calls = ser._read_dir, []

    def read_while_saving(fd, path, *rest):
        if not calls:  # the folder is open: now a save swaps the new one in and deletes the old one
            calls.append(1)
            save_model_files(target, *_model(2))
        return real(fd, path, *rest)

    monkeypatch.setattr(ser, "_read_dir", read_while_saving)
    assert _check_whole(target) in (1, 2)


def test_other_entries_of_a_model_folder_are_carried_over(tmp_path):
    target = tmp_path / "m"
    save_model_files(target, *_model(1))
    (target / "index").mkdir()
    (target / "index" / "index.json").write_text("{}")
    save_model_files(target, *_model(2))
    assert sorted(os.listdir(target)) == ["config.json", "index", "weights.npz"]
    assert (target / "index" / "index.json").read_text() == "{}"


def test_a_folder_that_is_not_a_model_is_not_replaced(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=f"{tmp_path.name}.*not a metricrec model"):
        save_model_files(tmp_path, *_model(1))
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_atomic_directory_swaps_in_whole_or_not_at_all(tmp_path):
    target = tmp_path / "run"
    with atomic_directory(target) as d:
        (d / "a.txt").write_text("1")
        (d / "sub").mkdir()
        (d / "sub" / "b.txt").write_text("1")
    with pytest.raises(Injected):
        with atomic_directory(target) as d:
            (d / "a.txt").write_text("2")
            raise Injected
    assert (target / "a.txt").read_text() == "1" and os.listdir(tmp_path) == ["run"]
    with atomic_directory(target) as d:
        (d / "c.txt").write_text("3")
    assert os.listdir(target) == ["c.txt"] and os.listdir(tmp_path) == ["run"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="file: exists and is not a directory"):
        with atomic_directory(tmp_path / "file"):
            pass


def test_atomic_output_replaces_on_success_only(tmp_path):
    out = tmp_path / "recs.csv"
    with atomic_output(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".recs.csv.tmp.")
        tmp.write_text("a\n")
    with pytest.raises(Injected):
        with atomic_output(out) as tmp:
            tmp.write_text("b\n")
            raise Injected
    assert out.read_text() == "a\n" and os.listdir(tmp_path) == ["recs.csv"]


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_files_and_folders_honour_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        save_model_files(tmp_path / "m", *_model(1))
        save_model_files(tmp_path / "m", *_model(2))  # replaced: the new folder has the modes too
        save_model_files(tmp_path / "f.npz", *_model(1))
        atomic_write_text(tmp_path / "t.txt", "x")
        with atomic_output(tmp_path / "o.csv") as tmp:
            tmp.write_text("x")
        with atomic_directory(tmp_path / "run") as d:
            (d / "data.json").write_text("{}")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    for f in ("m/config.json", "m/weights.npz", "f.npz", "t.txt", "o.csv"):
        assert mode(tmp_path / f) == file_mode, f
    for d in ("m", "run"):
        assert mode(tmp_path / d) == dir_mode, d


def test_unreadable_model_is_still_refused(tmp_path):
    target = tmp_path / "m"
    save_model_files(target, *_model(1))
    (target / "weights.npz").write_bytes(b"junk")
    with pytest.raises(ModelFormatError, match="m/weights.npz: cannot read weights"):
        load_model_files(target)
