"""``--config FILE``: flag values of any ``metricrec`` subcommand read from a JSON or TOML file.

The file holds one object (JSON) or table (TOML) whose keys are the subcommand's flag names, with
``-`` or ``_`` (``"learning-rate"``, ``"learning_rate"``), or the names the flags store into
(``"use_rank_weight": false`` is ``--no-rank-weight``). Values become the subcommand's defaults, so
flags given on the command line win. Values are checked the way the flag itself checks its text
(type, choices); a list is joined with commas (``"feature_hidden": [256, 128]``), ``null`` is
``none``. A key that is no flag of the subcommand is a one-line error naming the key and the file.

``metricrec tune`` writes its best configuration as such a file (``best.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping

from .._file_kind import open_regular
from ..errors import ConfigError

__all__ = ["add_config_arguments", "read_config_file", "apply_config_file", "parse_with_config"]

#: The largest config file read (a flag file is a few hundred bytes; more is not a config file).
MAX_CONFIG_BYTES = 1 << 20
_NO_VALUE = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)  # noqa: SLF001
_SKIP = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)  # noqa: SLF001


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of ``parser`` by name ({} when it has none)."""
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return dict(action.choices)
    return {}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` to every subcommand of ``parser`` that has no subcommands of its own."""
    for sub in _subcommands(parser).values():
        if not _subcommands(sub) and "--config" not in sub._option_string_actions:  # noqa: SLF001
            sub.add_argument("--config", metavar="FILE",
                             help="read flag values from a JSON or TOML file (keys: flag names; "
                                  "command-line flags win)")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The object in a ``.json`` or ``.toml`` file (JSON for any other suffix).

    Raises
    ------
    ConfigError
        The file is missing, not a regular file (a directory, a FIFO, a device such as ``/dev/zero``:
        checked before it is opened, so nothing blocks or reads without end), larger than
        :data:`MAX_CONFIG_BYTES`, unreadable, not valid JSON/TOML (or nested too deeply to parse), or not
        an object.
    """
    p = Path(path)
    try:
        with open_regular(p, "a regular file", ConfigError, where=f"--config {p}") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"--config {p}: more than {MAX_CONFIG_BYTES:,} bytes: not a config file")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--config {p}: cannot read the file (no such file)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {p}: cannot read the file ({exc.__class__.__name__}: {exc})") from None
    if p.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # pragma: no cover - Python 3.10
            raise ConfigError(f"--config {p}: TOML files need Python 3.11 or later; use JSON") from None
        try:
            doc: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config {p}: not valid TOML ({exc})") from None
        except RecursionError:  # before: a traceback of thousands of lines, exit 1
            raise ConfigError(f"--config {p}: not a config file (values nested too deeply to read)") from None
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config {p}: not valid JSON ({exc})") from None
        except RecursionError:
            raise ConfigError(f"--config {p}: not a config file (values nested too deeply to read)") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"--config {p}: expected an object of flag names and values, got {type(doc).__name__}")
    return doc


def _key(name: str) -> str:
    return name.lstrip("-").replace("_", "-").lower()


def _actions_by_key(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.Action, bool]]:
    """Flag name or dest (normalised) -> (action, named by its dest rather than by a flag)."""
    found: dict[str, tuple[argparse.Action, bool]] = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list of its actions
        if isinstance(action, _SKIP) or not action.option_strings or action.dest == "config":
            continue
        found.setdefault(_key(action.dest), (action, True))
        for opt in action.option_strings:
            if opt.startswith("--"):
                found[_key(opt)] = (action, False)
    return found


def _flag_value(action: argparse.Action, value: Any, by_dest: bool, where: str) -> Any:
    """The value a switch (``store_true``/``store_false``) stores for a JSON value."""
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if by_dest:
        return value
    return action.const if value else action.default


def _converted(parser: argparse.ArgumentParser, action: argparse.Action, value: Any, where: str) -> Any:
    """``value`` checked and converted as the flag would convert its text."""
    if isinstance(value, bool) or isinstance(value, dict):
        raise ConfigError(f"{where}: expected a value for {action.option_strings[-1]}, got {value!r}")
    if action.nargs not in (None, "?") and isinstance(value, list):
        items = [str(v) for v in value]
    else:
        text = "none" if value is None else ",".join(map(str, value)) if isinstance(value, list) else str(value)
        items = [text]
    try:
        out = [parser._get_value(action, item) for item in items]  # noqa: SLF001 - the flag's own conversion
        for item in out:
            parser._check_value(action, item)  # noqa: SLF001
    except (argparse.ArgumentError, argparse.ArgumentTypeError, TypeError, ValueError) as exc:
        msg = getattr(exc, "message", None) or str(exc)
        raise ConfigError(f"{where}: {msg}") from None
    return out if action.nargs not in (None, "?") else out[0]


def apply_config_file(parser: argparse.ArgumentParser, doc: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Set the defaults of ``parser`` from ``doc`` (see the module docstring); return them by dest.

    Raises
    ------
    ConfigError
        A key that is no flag of ``parser``, or a value the flag refuses.
    """
    actions = _actions_by_key(parser)
    defaults: dict[str, Any] = {}
    for key, value in doc.items():
        where = f"--config {source}: key {key!r}"
        hit = actions.get(_key(str(key)))
        if hit is None:
            raise ConfigError(f"{where} is not a flag of 'metricrec {parser.prog.split()[-1]}'")
        action, by_dest = hit
        if isinstance(action, _NO_VALUE):
            defaults[action.dest] = _flag_value(action, value, by_dest, where)
        else:
            defaults[action.dest] = _converted(parser, action, value, where)
        action.required = False  # the file gives it
    parser.set_defaults(**defaults)
    return defaults


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; when the chosen subcommand got ``--config FILE``, parse again with the file's
    values as that subcommand's defaults (so flags on the command line win).

    Raises
    ------
    ConfigError
        The file cannot be read or holds a key or value the subcommand refuses.
    """
    args = parser.parse_args(argv)
    path = getattr(args, "config", None)
    sub = _subcommands(parser).get(getattr(args, "command", None) or "")
    if not path or sub is None:
        return args
    apply_config_file(sub, read_config_file(path), str(path))
    return parser.parse_args(argv)
