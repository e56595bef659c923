"""`metricrec index`: build an approximate nearest-neighbour index beside a saved model."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..limits import thread_count
from .commands import COMMANDS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help=COMMANDS["index"].help)
    p.add_argument("--model", required=True,
                   help="a folder written by 'metricrec train' (its model/ is used) or by model.save()")
    p.add_argument("--kind", choices=("hnsw", "ivf", "flat"), default="hnsw",
                   help="hnsw (graph), ivf (inverted file) or flat (exact) (default hnsw)")
    g = p.add_argument_group("hnsw")
    g.add_argument("--m", type=int, help="links per node (default 32)")
    g.add_argument("--ef-construction", type=int, help="build beam width (default 200)")
    g.add_argument("--ef-search", type=int, help="search beam width (default 128)")
    g = p.add_argument_group("ivf")
    g.add_argument("--nlist", type=int, help="k-means cells (default 4 sqrt(n_items), at most n_items / 39)")
    g.add_argument("--nprobe", type=int, help="cells searched per query (default nlist / 16)")
    g.add_argument("--train-size", type=int, help="rows sampled to train the cells (default min(n, 64 nlist))")
    p.add_argument("--out", help="index folder (default: MODEL/index, where loading the model finds it)")
    p.add_argument("--sample-users", type=int, default=1000,
                   help="users whose vectors measure recall@10 against exact search (default 1000; 0: skip)")
    p.add_argument("--threads", type=thread_count, help="faiss (OpenMP) threads (default: all cores)")
    p.set_defaults(func=cmd_index)


_KIND_PARAMS = {"hnsw": ("m", "ef_construction", "ef_search"), "ivf": ("nlist", "nprobe", "train_size"), "flat": ()}


def _params(args: argparse.Namespace) -> dict:
    own = _KIND_PARAMS[args.kind]
    for names in _KIND_PARAMS.values():
        for name in names:
            if name not in own and getattr(args, name) is not None:
                raise ConfigError(f"--{name.replace('_', '-')} does not apply to --kind {args.kind}")
    return {name: getattr(args, name) for name in own if getattr(args, name) is not None}


def cmd_index(args: argparse.Namespace) -> int:
    from ..serving.ann import AnnIndex, index_dir_for, _faiss
    from ..serving.ann_eval import compare_to_exact
    from ..serving.service import load_model_only, model_path

    params = _params(args)
    if args.sample_users < 0:
        raise ConfigError(f"--sample-users must be >= 0, got {args.sample_users}")
    if args.threads is not None:  # bounded by its flag's type (metricrec.limits.thread_count)
        _faiss().omp_set_num_threads(args.threads)
    path = model_path(args.model)  # a 'metricrec train' folder: its model/
    model = load_model_only(path, index=False)  # a stale index must not stop its rebuild
    table = model.item_embeddings
    index = AnnIndex.build(table, args.kind, distance=model.distance, **params)
    out = Path(args.out) if args.out else index_dir_for(path)
    index.save(out)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    shown = ", ".join(f"{k}={v}" for k, v in index.params.items())
    print(f"index: {args.kind}{f' ({shown})' if shown else ''} over {index.n_items} items x {index.d} ({index.metric})")
    print(f"build: {index.build_seconds:.2f} s")
    print(f"saved: {out} ({size / 2**20:.1f} MiB on disk, about the index's size in memory)")
    if args.sample_users:
        # a model with several vectors per user (DPCML's user_vectors, (n_users, C, d)) queries the
        # index with each of them, as its approximate retrieval does
        users = getattr(model, "user_vectors", None)
        users = model.user_embeddings if users is None else users
        rng = np.random.default_rng(0)
        pick = rng.choice(users.shape[0], min(args.sample_users, users.shape[0]), replace=False)
        queries = users[np.sort(pick)].reshape(-1, table.shape[1])
        r = compare_to_exact(index, table, queries, 10, distance=model.distance)
        each = f" ({queries.shape[0]} queries)" if queries.shape[0] != pick.size else ""
        print(f"recall@10 vs exact on {pick.size} users{each}: {r['recall']:.4f} "
              f"({r['approx_qps']:,.0f} vs {r['exact_qps']:,.0f} queries/s exact, one query per call: "
              f"{r['speedup']:.1f}x)")
    if out != index_dir_for(path):
        print(f"note: {out} is not {index_dir_for(path)}: loading the model will not find it")
    return 0
