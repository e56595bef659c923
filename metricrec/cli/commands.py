"""The commands of `metricrec`: the module that registers each and its one-line help.

A table of its own, so that `metricrec --help`, `--version` and a command's parsing import only
the module of the command asked for (:func:`metricrec.cli.main.build_parser`).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["COMMANDS", "Command"]


class Command(NamedTuple):
    """Where a command is registered (``metricrec.cli.<module>.register``) and what it does."""

    module: str
    help: str


COMMANDS: dict[str, Command] = {
    "data": Command("data_cmd", "inspect and split data"),
    "train": Command("train_cmd", "train a model (CML, SML or BPR), print the per-epoch table, save model and report.json"),
    "evaluate": Command("train_cmd", "full-ranking metrics of a trained model on its test (or valid) part"),
    "recommend": Command("recommend_cmd", "top-N items by raw id: one user, all users to a file, or new users"),
    "index": Command("index_cmd", "build an ANN index (faiss HNSW or IVF) over a saved model's items"),
    "serve": Command("serve_cmd", "serve a saved model over HTTP (GET/POST /recommend, /similar-items, /health; "
                                  "ids are strings; schemas at /openapi.json)"),
    "tune": Command("tune_cmd", "tune CML's hyperparameters with Optuna (TPE, pruning, resumable SQLite study)"),
    "report": Command("report_cmd", "write DIR/report.html: curves, metrics, item map (a run) or history (a study)"),
}
