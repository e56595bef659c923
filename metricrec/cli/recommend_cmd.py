"""`metricrec recommend`: one user's list on the terminal, every user's (or a file's users') lists
to CSV/parquet, or new users folded in from their liked items -- all from the model directory alone."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import scipy.sparse as sp

from ..data.datasets import item_titles
from ..data.columns import id_column
from ..data.delimited import read_columns
from ..data.readers import read_interactions
from ..errors import ConfigError, DataError
from ..models.base import EmbeddingRecommender, load_model
from ..models.schema import read_run_doc
from ..serialization import atomic_output
from .sources import add_header_arguments, model_data_warning, note
from .commands import COMMANDS

__all__ = ["register", "cmd_recommend"]

#: Users per chunk when writing recommendations for many users (bounds memory with the model's own
#: score-block limit; see metricrec.models.retrieval_api.SCORE_BLOCK_BYTES).
USERS_PER_CHUNK = 4096


def register(sub: argparse._SubParsersAction) -> None:
    rec = sub.add_parser("recommend", help=COMMANDS["recommend"].help)
    rec.add_argument("--model", required=True, help="a folder written by 'metricrec train' (or its model/ folder)")
    who = rec.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="one raw user id: print the list (with titles for MovieLens when at hand)")
    who.add_argument("--users", metavar="all|FILE", help="'all', or a file of raw user ids (one a line; a first "
                                                          "line that looks like a header needs --header or --no-header)")
    who.add_argument("--new-users", metavar="CSV", help="user,item rows (header user,item) of new users to fold in")
    rec.add_argument("-n", "--n", type=int, default=10, help="how many items per user (default 10)")
    rec.add_argument("--output", help="recs.csv or recs.parquet: user,rank,item,score rows (default: print)")
    rec.add_argument("--keep-liked", action="store_true", help="do not filter the users' training items")
    rec.add_argument("--approximate", action="store_true", help="use the model's ANN index (metricrec index)")
    add_header_arguments(rec, "the --users file")
    rec.set_defaults(func=cmd_recommend)


def cmd_recommend(args: argparse.Namespace) -> int:
    if isinstance(args.n, bool) or args.n <= 0:
        raise ConfigError(f"-n must be a positive integer, got {args.n}")
    model, run = _load(args.model, index=args.approximate)
    if args.user is not None:
        return _print_one(model, run, args)
    if args.new_users:
        users, recs = _new_users(model, args)
    else:
        users = _users(model, args.users, args.header)
        recs = _chunks(model, users, args)
    t0 = time.perf_counter()
    n_rows = _write(recs, args.output)
    where = args.output or "stdout"
    note(f"recommendations for {len(users):,} users -> {where} ({n_rows:,} rows, {time.perf_counter() - t0:.2f} s)")
    return 0


def _load(path: str, *, index: bool) -> tuple[EmbeddingRecommender, Path]:
    """The model of a run folder (or a model folder / file) and the run folder; the ANN index beside the
    model is read only when ``index`` (``--approximate``): exact retrieval never touches it."""
    run = Path(path)
    model_dir = run / "model" if os.path.lexists(run / "model" / "config.json") else run
    model = load_model(model_dir, index=index)
    if model.user_items is None and model.user_map is None:
        note("(this model has no raw id maps: user and item ids are row indices)")
    run = run if model_dir != run else run.parent
    doc = read_run_doc(run / "data.json") if os.path.lexists(run / "data.json") else None  # a FIFO: refused
    if warning := model_data_warning(model, doc):
        note(warning)  # a synthetic fallback is never shown as the real data set
    return model, run


def _print_one(model: EmbeddingRecommender, run: Path, args: argparse.Namespace) -> int:
    (items, scores), = model.recommend_raw([args.user], args.n, filter_already_liked_items=not args.keep_liked,
                                          approximate=args.approximate)
    titles = _titles(run)
    src = getattr(model, "data_source", None) or {}
    fallback = f" (SYNTHETIC fallback data, not {src['fallback_for']})" if src.get("fallback_for") else ""
    print(f"top {args.n} for user {args.user}{fallback}:")
    for rank, (item, score) in enumerate(zip(items.tolist(), scores.tolist()), 1):
        print(f"{rank:>3}. {item!s:<10} {score:8.4f}  {titles.get(item, '')}".rstrip())
    if len(items) < args.n:
        print(f"(only {len(items)} items left after filtering)")
    return 0


def _titles(run: Path) -> dict:
    """MovieLens titles when the run's data.json names a data set whose files are still there."""
    doc_path = run / "data.json"
    if not os.path.lexists(doc_path):
        return {}
    src = read_run_doc(doc_path).get("source", {})  # checked: a damaged data.json is one clear error
    name, data_dir = src.get("name", ""), src.get("data_dir")
    if src.get("kind") != "dataset" or not name.startswith("ml-") or not data_dir:
        return {}
    folder = Path(data_dir)
    for base in (folder.parent, folder):  # the recorded folder is the data set's own, or its parent
        try:
            return item_titles(name, base)
        except (OSError, ValueError):
            continue
    note(f"(titles unavailable: {name} files not found under {folder})")
    return {}


def _users(model: EmbeddingRecommender, spec: str, header: bool | None) -> np.ndarray:
    n_users = model.user_embeddings.shape[0]
    if spec == "all":
        return np.arange(n_users) if model.user_map is None else model.user_map.ids
    ids = _read_ids(spec, header)
    model.user_index(ids)  # unknown ids: one error naming them, before any work
    return ids


def _chunks(model: EmbeddingRecommender, users: np.ndarray, args: argparse.Namespace) -> Iterator[tuple]:
    for lo in range(0, len(users), USERS_PER_CHUNK):
        part = users[lo: lo + USERS_PER_CHUNK]
        yield part, model.recommend_raw(part, args.n, filter_already_liked_items=not args.keep_liked,
                                        approximate=args.approximate)


def _new_users(model: EmbeddingRecommender, args: argparse.Namespace) -> tuple[np.ndarray, Iterator[tuple]]:
    data = read_interactions(args.new_users, user_col="user", item_col="item")
    if data.nnz == 0:
        raise DataError(f"{args.new_users}: no user,item rows")
    liked = data.matrix
    cols = model.item_index(data.item_ids[liked.indices])  # unknown items: one error naming them
    rows = sp.csr_matrix((np.ones(liked.nnz, np.float32), cols, liked.indptr),
                         shape=(liked.shape[0], model.item_embeddings.shape[0]))
    vectors = model.fold_in_rows(rows)
    ids, scores = model.recommend_vectors(vectors, args.n, exclude=None if args.keep_liked else rows,
                                          approximate=args.approximate)
    return data.user_ids, iter([(data.user_ids, model._trimmed(ids, scores))])


def _write(recs: Iterator[tuple], output: str | None) -> int:
    """Write ``user,rank,item,score`` rows: CSV or parquet (by suffix) atomically, or print them."""
    if output is None:
        n = 0
        print("user,rank,item,score")
        for users, lists in recs:
            for row in _rows(users, lists):
                print(",".join(map(str, row)))
                n += 1
        return n
    suffix = Path(output).suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ConfigError(f"--output must end in .csv or .parquet, got {output!r}")
    with atomic_output(output) as tmp:
        return _write_parquet(recs, tmp) if suffix == ".parquet" else _write_csv(recs, tmp)


def _columns(users: np.ndarray, lists: list) -> dict[str, np.ndarray]:
    lengths = np.array([len(items) for items, _ in lists], dtype=np.int64)
    ranks = np.concatenate([np.arange(1, k + 1) for k in lengths]) if lengths.sum() else np.zeros(0, np.int64)
    items = np.concatenate([items for items, _ in lists]) if lists else np.zeros(0)
    scores = np.concatenate([s for _, s in lists]) if lists else np.zeros(0, np.float32)
    return {"user": np.repeat(np.asarray(users), lengths), "rank": ranks, "item": items, "score": scores}


def _rows(users: np.ndarray, lists: list) -> Iterator[tuple[Any, ...]]:
    cols = _columns(users, lists)
    yield from zip(cols["user"].tolist(), cols["rank"].tolist(), cols["item"].tolist(),
                   np.round(cols["score"].astype(np.float64), 6).tolist())


def _write_csv(recs: Iterator[tuple], path: Path) -> int:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    n = 0
    with pa.OSFile(str(path), "wb") as sink:
        writer = None
        for users, lists in recs:
            table = pa.table(_columns(users, lists))
            writer = writer or pacsv.CSVWriter(sink, table.schema)
            writer.write_table(table)
            n += table.num_rows
        if writer is not None:
            writer.close()
    return n


def _write_parquet(recs: Iterator[tuple], path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, writer = 0, None
    try:
        for users, lists in recs:
            table = pa.table(_columns(users, lists))
            writer = writer or pq.ParquetWriter(str(path), table.schema)
            writer.write_table(table)
            n += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return n


def _read_ids(path: str, header: bool | None) -> np.ndarray:
    """Raw ids, one a line (the id rule of :func:`metricrec.data.ids.canonical_ids`), read like every
    text file (:func:`metricrec.data.delimited.read_columns`): a regular file only, and a first line
    that looks like a header (``user``, ``user_id``, text over integer ids) refused unless ``header``
    (``--header`` / ``--no-header``) says what it is."""
    t = read_columns(path, {"id": 0}, header=header, fields=1, what="user ids")
    return id_column(t, "id", "user")
