"""`--header` / `--no-header` and the header check through the `metricrec` command; FIFOs, directories
and devices given as input files (one line, exit 2, never a wait)."""

import re

import pytest

from fifo_guard import make_fifo, within
from metricrec.cli.main import main

FAST = ["--epochs", "1", "--batch-size", "500", "--factors", "8", "--no-progress", "--threads", "1"]
CHOICES = "pass --header / header=True to skip it as a header, or --no-header / header=False to read it as data"
BIG = ["12345678901234567890123", "12345678901234567890124", "12345678901234567890125"]

#: name -> bytes of an interactions file: a first line that is a header over 3 pairs of 3 users, 3 items.
FILES = {
    "plain": b"user,item\n1,2\n2,3\n3,1\n",
    "bom": b"\xef\xbb\xbfuser,item\n1,2\n2,3\n3,1\n",
    "crlf": b"user,item\r\n1,2\r\n2,3\r\n3,1\r\n",
    "quoted": b'"user","item"\n1,2\n2,3\n3,1\n',
    "huge ids": ("user,item\n" + "".join(f"{u},{i}\n" for u, i in zip(BIG, (2, 3, 1)))).encode(),
    "text over integer ids": b"kto,co\n1,2\n2,3\n3,1\n",
    "named columns": b"user_id,item_id,rating\n1,2,5\n2,3,4\n3,1,3\n",
}


def stats(capsys, *argv):
    """(exit status, {users, items, interactions} or the last stderr line)."""
    capsys.readouterr()
    code = main(["data", "stats", *argv])
    out, err = capsys.readouterr()
    if code:
        lines = err.strip().splitlines()
        return code, lines[-1] if lines else ""
    got = dict(line.split(None, 1) for line in out.splitlines() if line[:1].isalpha())
    return code, tuple(int(got[k].replace(",", "")) for k in ("users", "items", "interactions"))


@pytest.mark.parametrize("case", list(FILES))
def test_a_header_line_is_one_error_or_skipped_never_a_row(case, tmp_path, capsys):
    path = tmp_path / "h.csv"
    path.write_bytes(FILES[case])
    code, line = stats(capsys, "--interactions", str(path))
    assert code == 2
    assert re.fullmatch(rf"metricrec: error: {re.escape(str(path))}, line 1: looks like a header \(.+\); "
                        + re.escape(CHOICES), line), line
    assert stats(capsys, "--interactions", str(path), "--header") == (0, (3, 3, 3))
    assert stats(capsys, "--interactions", str(path), "--no-header") == (0, (4, 4, 4))  # asked for: one more row


def test_the_issue_example_and_names_given_by_the_user(tmp_path, capsys):
    path = tmp_path / "h.csv"
    path.write_bytes(FILES["plain"])
    code, line = stats(capsys, "--interactions", str(path))
    assert code == 2 and line == (f"metricrec: error: {path}, line 1: looks like a header ('user,item': 'user' "
                                  f"names a column); {CHOICES}")
    assert stats(capsys, "--interactions", str(path), "--user-col", "user", "--item-col", "item") == (0, (3, 3, 3))
    named = tmp_path / "n.csv"
    named.write_bytes(FILES["named columns"])
    assert stats(capsys, "--interactions", str(named), "--user-col", "user_id", "--item-col", "item_id",
                 "--rating-col", "rating") == (0, (3, 3, 3))


def test_text_ids_without_a_header_still_read(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text("u1,i1\nu2,i2\nu3,i1\n")
    assert stats(capsys, "--interactions", str(path)) == (0, (3, 2, 3))
    assert stats(capsys, "--interactions", str(path), "--header") == (0, (2, 2, 2))


def test_header_and_no_header_exclude_each_other(tmp_path, capsys):
    path = tmp_path / "h.csv"
    path.write_bytes(FILES["plain"])
    with pytest.raises(SystemExit) as exc:
        main(["data", "stats", "--interactions", str(path), "--header", "--no-header"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_the_choice_is_recorded_and_reused_by_evaluate(tmp_path, capsys):
    path = tmp_path / "h.csv"
    path.write_bytes(b"user,item\n" + b"".join(b"%d,%d\n" % (u, (u * 7 + k) % 30) for u in range(40) for k in range(8)))
    out = tmp_path / "run"
    assert main(["train", "--interactions", str(path), "--header", "--out", str(out), *FAST]) == 0
    assert '"header": true' in (out / "data.json").read_text()
    assert main(["evaluate", "--model", str(out)]) == 0  # rebuilt with --header: no error


# ---------------------------------------------------------------------- not a regular file
def _not_files(tmp_path):
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    return {"directory": (folder, "is a directory, not a regular file"),
            "FIFO": (make_fifo(tmp_path), "is a FIFO (named pipe), not a regular file")}


def _one_line_exit_2(capsys, argv, path, what):
    code = within(lambda: main(argv), path if "FIFO" in what else None)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == f"metricrec: error: {path}: {what}", err
    assert "Traceback" not in "\n".join(err)


@pytest.mark.parametrize("kind", ["directory", "FIFO"])
@pytest.mark.parametrize("flag", ["--interactions", "--interactions with --sep", "--train/--valid/--test"])
def test_data_files_that_are_not_files(kind, flag, tmp_path, capsys):
    path, what = _not_files(tmp_path)[kind]
    argv = {"--interactions": ["--interactions", str(path)],
            "--interactions with --sep": ["--interactions", str(path), "--sep", ","],
            "--train/--valid/--test": ["--train", str(path), "--valid", str(path), "--test", str(path)]}[flag]
    _one_line_exit_2(capsys, ["data", "stats", *argv], path, what)


@pytest.mark.parametrize("kind", ["directory", "FIFO"])
def test_item_feature_file_that_is_not_a_file(kind, tmp_path, capsys):
    path, what = _not_files(tmp_path)[kind]
    argv = ["train", "--synthetic", "small", "--item-features", str(path), "--out", str(tmp_path / "run"), *FAST]
    _one_line_exit_2(capsys, argv, path, what)
    assert not (tmp_path / "run" / "model").exists()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hdr") / "run"
    assert main(["train", "--synthetic", "small", "--out", str(out), *FAST]) == 0
    return out


def test_users_file_header(run, tmp_path, capsys):
    users = tmp_path / "users.txt"
    users.write_text("user\n3\n1\n")
    capsys.readouterr()
    assert main(["recommend", "--model", str(run), "--users", str(users), "-n", "2"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"metricrec: error: {users}, line 1: looks like a header ('user': 'user' names a column); {CHOICES}")
    assert main(["recommend", "--model", str(run), "--users", str(users), "-n", "2", "--header"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "user,rank,item,score" and [r.split(",")[0] for r in rows[1:]] == ["3", "3", "1", "1"]
    assert main(["recommend", "--model", str(run), "--users", str(users), "--no-header"]) == 2  # 'user' as an id
    assert "unknown user id(s): 'user'" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["directory", "FIFO"])
def test_users_and_new_users_files_that_are_not_files(kind, run, tmp_path, capsys):
    path, what = _not_files(tmp_path)[kind]
    for flag in ("--users", "--new-users"):
        capsys.readouterr()
        _one_line_exit_2(capsys, ["recommend", "--model", str(run), flag, str(path)], path, what)


@pytest.mark.parametrize("kind", ["directory", "FIFO", "/dev/zero"])
def test_config_file_that_is_not_a_file(kind, tmp_path, capsys):
    if kind == "/dev/zero":
        path, what = "/dev/zero", "is a character device, not a regular file"
        if not __import__("os").path.exists(path):
            pytest.skip("no /dev/zero")
    else:
        path, what = _not_files(tmp_path)[kind]
    code = within(lambda: main(["train", "--config", str(path), "--synthetic", "small"]),
                  path if kind == "FIFO" else None)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == f"metricrec: error: --config {path}: {what}"


def test_config_file_over_the_size_cap(tmp_path, capsys):
    from metricrec.cli.config_file import MAX_CONFIG_BYTES

    path = tmp_path / "big.json"
    path.write_text('{"epochs": 1' + " " * MAX_CONFIG_BYTES + "}")
    assert main(["train", "--config", str(path), "--synthetic", "small"]) == 2
    assert capsys.readouterr().err.strip().endswith(f"more than {MAX_CONFIG_BYTES:,} bytes: not a config file")
