"""Data set files are checked at every load against the official release: a truncated or edited file is
one DataError naming the file and what differs, never loaded silently; ``verify=False`` loads it on purpose."""

import shutil

import pytest

from fixtures_datasets import SHARED_DATA
from metricrec.cli.main import main
from metricrec.data.datasets import load_dataset
from metricrec.data.datasets.verify import FileSpec, verify_files
from metricrec.errors import DataError

needs_ml100k = pytest.mark.skipif(not (SHARED_DATA / "ml-100k" / "u.data").is_file(), reason="shared ml-100k absent")


def test_verify_files_sizes_and_checksums(tmp_path):
    (tmp_path / "a.dat").write_bytes(b"hello\n")
    ok = FileSpec("a.dat", 6, "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")
    assert verify_files(tmp_path, [ok, FileSpec("missing.dat", 3)], "toy") == ["a.dat"]
    with pytest.raises(DataError, match=r"a\.dat: 6 bytes, but the official toy a\.dat has 7 \(truncated"):
        verify_files(tmp_path, [FileSpec("a.dat", 7)], "toy")
    with pytest.raises(DataError, match=r"a\.dat: 6 bytes, .* has 5 \(longer than the original"):
        verify_files(tmp_path, [FileSpec("a.dat", 5)], "toy")
    with pytest.raises(DataError, match=r"a\.dat: sha256 5891b5b5\w+ differs from the official toy a\.dat \(0000"):
        verify_files(tmp_path, [FileSpec("a.dat", 6, "0" * 64)], "toy", "fetch it again")
    assert verify_files(tmp_path, [FileSpec("a.dat", 6)], "toy") == ["a.dat"]  # size only where no sha256 is known


@pytest.fixture
def ml100k_copy(tmp_path):
    if not (SHARED_DATA / "ml-100k" / "u.data").is_file():
        pytest.skip("shared ml-100k absent")
    shutil.copytree(SHARED_DATA / "ml-100k", tmp_path / "ml-100k")
    return tmp_path


@needs_ml100k
def test_real_files_pass(tmp_path):
    x = load_dataset("ml-100k", SHARED_DATA, download=False)
    assert x.meta["verified"] == ["u.data", "u.item", "u.user", "u.genre"]
    assert load_dataset("citeulike-a", SHARED_DATA).meta["verified"] == ["users.dat", "item-tag.dat"]


def test_truncated_u_data_is_an_error_naming_file_and_sizes(ml100k_copy):
    u_data = ml100k_copy / "ml-100k" / "u.data"
    raw = u_data.read_bytes()
    cut = raw[:raw.rindex(b"\n", 0, 1_000_000) + 1]  # whole lines: it would parse as a smaller ml-100k
    u_data.write_bytes(cut)
    with pytest.raises(DataError) as err:
        load_dataset("ml-100k", ml100k_copy, download=False)
    msg = str(err.value)
    assert "\n" not in msg and str(u_data) in msg
    assert f"{len(cut):,} bytes, but the official ml-100k u.data has 1,979,173 (truncated" in msg
    assert f"delete {ml100k_copy / 'ml-100k'} to download it again" in msg and "--no-verify" in msg
    x = load_dataset("ml-100k", ml100k_copy, download=False, verify=False)  # on purpose: loads, and says so
    assert x.meta["verified"] == [] and x.meta["n_ratings"] < 100_000


def test_edited_u_item_same_size_is_an_error(ml100k_copy):
    u_item = ml100k_copy / "ml-100k" / "u.item"
    raw = bytearray(u_item.read_bytes())
    raw[10] = ord("X") if raw[10] != ord("X") else ord("Y")
    u_item.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"u\.item: sha256 \w+ differs from the official ml-100k u\.item"):
        load_dataset("ml-100k", ml100k_copy, download=False)


def test_cli_truncated_file_is_one_line_exit_2_and_never_a_fallback(ml100k_copy, capsys, tmp_path):
    u_data = ml100k_copy / "ml-100k" / "u.data"
    raw = u_data.read_bytes()
    u_data.write_bytes(raw[:raw.rindex(b"\n", 0, 500_000) + 1])
    size = f"u.data: {u_data.stat().st_size:,} bytes"
    assert main(["data", "stats", "--dataset", "ml-100k", "--data-dir", str(ml100k_copy)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and size in err and "Traceback" not in err
    out = tmp_path / "run"
    assert main(["train", "--dataset", "ml-100k", "--data-dir", str(ml100k_copy), "--out", str(out),
                 "--epochs", "1", "--no-progress"]) == 2
    assert size in capsys.readouterr().err and not out.exists()
    assert main(["data", "stats", "--dataset", "ml-100k", "--data-dir", str(ml100k_copy), "--no-verify"]) == 0
    assert "NOT verified" in capsys.readouterr().out
