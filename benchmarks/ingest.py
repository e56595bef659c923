"""Ingestion speed: a large ``user,item`` CSV read into an :class:`~metricrec.data.interactions.Interactions`.

Writes synthetic files into a temporary folder and reads each one with
:func:`metricrec.data.readers.read_interactions` in a fresh Python process, recording the read time and
the peak resident memory (``ru_maxrss``) of that process, also after its imports alone. Cases:

- ``int``: ``--lines`` lines (default 20,000,000) of integer ids, header ``user,item``;
- ``int-gz``: the same format, ``--small-lines`` lines (default 5,000,000), gzip compressed;
- ``str``: ``--small-lines`` lines of string ids (``u123``, ``i45``).

Ids are uniform over 200,000 users and 50,000 items (a few duplicate pairs, collapsed with a warning).
Results go to ``benchmarks/results/ingest.json`` and ``ingest.md``::

    python benchmarks/ingest.py                 # full size, about a minute on 2 cores
    python benchmarks/ingest.py --lines 1000000 --small-lines 200000 --out /tmp/ingest
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

import metricrec
from metricrec.serialization import atomic_write_bytes, atomic_write_json

N_USERS, N_ITEMS = 200_000, 50_000
_CHUNK = 1_000_000
_CHILD = """
import json, resource, sys, time, warnings
from metricrec.data.readers import read_interactions
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    x = read_interactions(sys.argv[1], user_col="user", item_col="item")
seconds = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_rss_mb": rss / 1024, "import_rss_mb": rss0 / 1024,
                  "n_users": x.n_users, "n_items": x.n_items, "nnz": x.nnz,
                  "n_duplicates": x.meta.get("n_duplicates", 0), "id_kind": x.user_map.kind}))
"""


def write_csv(path: Path, n_lines: int, *, string_ids: bool, seed: int = 0) -> int:
    """Write ``user,item`` + ``n_lines`` random pairs (gzip when ``path`` ends in .gz); return the byte size."""
    rng = np.random.default_rng(seed)
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    sink = pa.CompressedOutputStream(str(path), "gzip") if path.suffix == ".gz" else pa.OSFile(str(path), "wb")
    with sink:
        sink.write(b"user,item\n")
        for start in range(0, n_lines, _CHUNK):
            m = min(_CHUNK, n_lines - start)
            users = pa.array(rng.integers(0, N_USERS, m))
            items = pa.array(rng.integers(0, N_ITEMS, m))
            if string_ids:
                users = pc.binary_join_element_wise("u", pc.cast(users, pa.string()), "")
                items = pc.binary_join_element_wise("i", pc.cast(items, pa.string()), "")
            pacsv.write_csv(pa.table({"user": users, "item": items}), sink, options)
    return path.stat().st_size


def measure(path: Path) -> dict:
    """Read ``path`` in a fresh interpreter; its timing, peak memory and counts."""
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"reading {path} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_cases(folder: Path, lines: int, small: int) -> list[dict]:
    cases = [("int", "pairs.csv", lines, False), ("int-gz", "pairs_small.csv.gz", small, False),
             ("str", "pairs_str.csv", small, True)]
    out = []
    for name, file_name, n, string_ids in cases:
        path = folder / file_name
        t = time.perf_counter()
        size = write_csv(path, n, string_ids=string_ids)
        print(f"{name}: wrote {n:,} lines ({size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s", flush=True)
        result = {"case": name, "lines": n, "file_mib": round(size / 2**20, 1), **measure(path)}
        print(f"{name}: read in {result['seconds']:.2f} s, peak RSS {result['peak_rss_mb']:.0f} MiB", flush=True)
        out.append(result)
        path.unlink()
    return out


def markdown(doc: dict) -> str:
    rows = [
        "# Ingestion benchmark (`benchmarks/ingest.py`)",
        "",
        f"`read_interactions` on a `user,item` CSV, fresh process per case; {doc['machine']['cpus']} CPUs, "
        f"load average {doc['machine']['load_average_1min']} at the start (a shared machine).",
        "",
        "| case | lines | file MiB | seconds | lines/s | peak RSS MiB | RSS after imports MiB | users | items | pairs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["results"]:
        rows.append(
            f"| {r['case']} | {r['lines']:,} | {r['file_mib']} | {r['seconds']:.2f} | {r['lines'] / r['seconds']:,.0f} "
            f"| {r['peak_rss_mb']:.0f} | {r['import_rss_mb']:.0f} | {r['n_users']:,} | {r['n_items']:,} | {r['nnz']:,} |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lines", type=int, default=20_000_000, help="lines of the integer-id file (default 20M)")
    p.add_argument("--small-lines", type=int, default=5_000_000, help="lines of the .csv.gz and string-id files")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="results folder")
    p.add_argument("--tmp", default=None, help="folder for the temporary data files (default: system temp)")
    args = p.parse_args(argv)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
               "load_average_1min": round(os.getloadavg()[0], 1), "metricrec": metricrec.__version__}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        results = run_cases(Path(tmp), args.lines, args.small_lines)
    doc = {"benchmark": "ingest", "machine": machine, "results": results}
    out = Path(args.out)
    atomic_write_json(out / "ingest.json", doc)
    atomic_write_bytes(out / "ingest.md", markdown(doc).encode("utf-8"))
    print(markdown(doc))


if __name__ == "__main__":
    main()
