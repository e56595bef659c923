"""`metricrec --help`, `--version` and `import metricrec` import no torch; a command imports its own
module only, and the parser it builds is the full one's for that command."""

import subprocess
import sys

import pytest

from metricrec.cli.commands import COMMANDS
from metricrec.cli.main import build_parser, chosen_command

_PROBE = "import sys, runpy; sys.argv = ['metricrec', *{argv!r}]\n" \
         "try:\n    runpy.run_module('metricrec', run_name='__main__')\nexcept SystemExit:\n    pass\n" \
         "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)"


def _torch_imported(argv):
    done = subprocess.run([sys.executable, "-c", _PROBE.format(argv=argv)], capture_output=True, text=True, timeout=120)
    return done.stderr.strip().splitlines()[-1] == "TORCH", done.stdout


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["data", "--help"], ["serve", "--help"]])
def test_help_and_version_import_no_torch(argv):
    torch_in, out = _torch_imported(argv)
    assert not torch_in, argv
    assert out  # they printed their text


@pytest.mark.parametrize("argv", [["--version"], ["--help"]])
def test_help_and_version_import_no_numerics_at_all(argv):
    """What makes them fast (0.9 s with scipy imported, 0.1 s without, on the 2-core CI machine): not
    a timing, which a loaded machine would break, but the imports that cost the time."""
    probe = _PROBE.format(argv=argv).replace(
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)",
        "print(sorted(m for m in ('torch', 'scipy', 'numpy', 'pyarrow', 'numba') if m in sys.modules), "
        "file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr


def test_import_metricrec_imports_no_torch_until_a_model_is_asked_for():
    code = ("import sys, metricrec; a = 'torch' in sys.modules; metricrec.CML; "
            "print(a, 'torch' in sys.modules, metricrec.CML.__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "True", "CML"], done.stderr


def test_top_level_help_lists_every_command_with_its_help():
    text = build_parser(only="").format_help()
    for name, command in COMMANDS.items():
        assert name in text and command.help.split()[0] in text


def test_the_chosen_command_is_found_past_top_level_options():
    assert chosen_command(["--debug", "train", "--out", "x"]) == "train"
    assert chosen_command(["--config", "train", "evaluate"]) == "evaluate"  # --config's value is skipped
    assert chosen_command(["--help"]) is None and chosen_command(["nope"]) is None


@pytest.mark.parametrize("argv", [["train", "--synthetic", "small", "--epochs", "3", "--margin", "0.5"],
                                  ["evaluate", "--model", "m"], ["data", "stats", "--synthetic", "small"]])
def test_a_command_parses_as_in_the_full_parser(argv):
    one, full = build_parser(only=argv[0]).parse_args(argv), build_parser().parse_args(argv)
    assert {k: v for k, v in vars(one).items() if k != "func"} == {k: v for k, v in vars(full).items() if k != "func"}
    assert one.func.__qualname__ == full.func.__qualname__
