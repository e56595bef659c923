"""Paths and writers shared by the benchmark modules."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from metricrec.serialization import atomic_write_bytes

__all__ = ["ROOT", "RESULTS", "default_data_dir", "write_text", "write_json", "write_results"]

#: The repository root (the folder holding ``benchmarks/``).
ROOT = Path(__file__).resolve().parent.parent
#: Where every benchmark writes its JSON and markdown.
RESULTS = ROOT / "benchmarks" / "results"


def default_data_dir() -> str:
    """``$METRICREC_DATA``, else ``../shared/data`` beside the repository."""
    return os.environ.get("METRICREC_DATA", str(ROOT.parent / "shared" / "data"))


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically: readers never see a half-written results file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any, indent: int = 1) -> None:
    """Write ``obj`` as JSON atomically."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def write_results(stem: Path, result: Any, text: str) -> None:
    """A benchmark's outputs: ``stem.json`` (the numbers) and ``stem.md`` (``text``, its table), both
    atomically, then ``text`` printed."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_json(stem.with_suffix(".json"), result)
    write_text(stem.with_suffix(".md"), text)
    print(text)


def meta_page(name: str, meta: Any, text: str) -> str:
    """The ``.md`` page of a results file: its name, the run's ``meta`` as a JSON block, then ``text``."""
    return f"# {name}\n\n```\n{json.dumps(meta, indent=1)}\n```\n\n{text}\n"
