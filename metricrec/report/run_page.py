"""The report page of a ``metricrec train`` run folder (``report.json``, ``data.json``, ``model/``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .._file_kind import open_regular
from ..errors import DataError
from . import figures
from .embedding import feature_labels, popularity, project_2d, run_features, sample_rows
from .html import figure, kv_table, note, page, section, table

__all__ = ["render_run", "read_json", "metrics_table"]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path`` (DataError, one line, when it is not one: also a directory, a FIFO
    -- never waited on -- or a dangling link)."""
    try:
        with open_regular(path, "a JSON document", DataError) as fh:
            doc = json.loads(fh.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DataError(f"{path}: cannot read it as JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def metrics_table(metrics: Mapping[str, Any]) -> str:
    """Rows ``recall``, ``precision``, ... by columns ``@k``; then the metrics without a cut-off."""
    at = [k.split("@", 1) for k in metrics if "@" in k]
    names = list(dict.fromkeys(n for n, _ in at))
    ks = sorted({int(k) for _, k in at if k.isdigit()})
    rows = [[n] + [metrics.get(f"{n}@{k}") for k in ks] for n in names]
    html_rows = table(["metric"] + [f"@{k}" for k in ks], rows)
    rest = [(k, v) for k, v in metrics.items() if "@" not in k]
    return html_rows + (table(["metric", "value"], rest) if rest else "")


def _summary(report: Mapping[str, Any]) -> str:
    data = report.get("data") or {}
    src = data.get("source") or {}
    sizes = data.get("sizes") or {}
    epochs = report.get("epochs") or []
    pairs = [("data", src.get("name") or src.get("preset") or src.get("path") or src.get("train") or "-"),
             ("train / valid / test pairs", " / ".join(f"{sizes.get(k, 0):,}" for k in ("train", "valid", "test"))),
             ("epochs run", len(epochs)), ("best epoch", report.get("best_epoch")),
             ("stopped early", report.get("stopped_early")), ("training seconds", report.get("train_seconds")),
             ("training seconds to the best epoch", report.get("seconds_to_best")),
             ("validation seconds", float(sum(e.get("eval_seconds", 0.0) for e in epochs))),
             ("wall-clock seconds of fit", report.get("wall_seconds")),
             ("test evaluation seconds", report.get("test_eval_seconds")),
             ("batch size used", report.get("batch_size_used"))]
    env = report.get("environment") or {}
    pairs += [(f"environment: {k}", v) for k, v in env.items()]
    return kv_table(pairs)


def _item_maps(run: Path, data_args: Mapping[str, Any] | None, method: str, with_features: bool) -> list[str]:
    """The popularity map and, when the data has a small feature group, the category map."""
    from ..models.base import load_model

    model_dir = run / "model"
    if not model_dir.exists():
        return [note(f"no model folder at {model_dir}: no item map")]
    model = load_model(model_dir, index=False)  # only the item table is drawn: the ANN index is never read
    emb = np.asarray(model.item_embeddings)
    rows = sample_rows(emb.shape[0])
    t0 = time.perf_counter()
    xy, caption = project_2d(emb[rows], method)
    pop = popularity(getattr(model, "user_items", None), emb.shape[0])[rows]
    shown = f"{len(rows):,} of {emb.shape[0]:,} items" if len(rows) < emb.shape[0] else f"all {emb.shape[0]:,} items"
    parts = [figure(figures.item_map(xy, values=pop, title=f"item vectors by popularity ({shown})", caption=caption),
                    "2-D map of the item embeddings coloured by training popularity",
                    f"{caption}; {shown}; colour: training users per item (from the saved model); "
                    f"{time.perf_counter() - t0:.1f} s")]
    if with_features and data_args:
        feats = run_features(data_args, getattr(model, "item_ids", None), emb.shape[0])
        found = feature_labels(feats.take(rows)) if feats is not None else None
        if found is not None:
            group, codes, names = found
            parts.append(figure(figures.item_map(xy, codes=codes, names=names, title=f"item vectors by {group}",
                                                 caption=caption),
                                f"2-D map of the item embeddings coloured by {group}",
                                f"{caption}; colour: each item's least common {group} among the "
                                f"{len(names) - 1} most common ones ('other': none of them)"))
    return parts


def render_run(run: Path, *, method: str = "auto", with_features: bool = True) -> str:
    """The HTML page of a run folder.

    Parameters
    ----------
    run : Path
        A folder written by ``metricrec train`` (``report.json``; ``model/`` for the item map).
    method : {"auto", "pca", "umap"}
        How item vectors are mapped to 2-D.
    with_features : bool
        Also colour the map by an item feature group (e.g. genre) when the run's data has one.
    """
    report = read_json(run / "report.json")
    epochs = report.get("epochs")
    if not isinstance(epochs, list) or not epochs:
        raise DataError(f"{run / 'report.json'}: no per-epoch records; not a 'metricrec train' report")
    sections = [section("Summary", _summary(report)),
                section("Training curves", figure(figures.training_curves(epochs, report.get("best_epoch")),
                                                  "training loss, validation recall and seconds per epoch",
                                                  "left: loss; middle: valid Recall@50/@100 (dashed: best epoch); "
                                                  "right: training and validation seconds per epoch"))]
    test = report.get("test")
    sections.append(section("Test metrics", metrics_table(test) if isinstance(test, dict) and test
                            else note("no test metrics in report.json")))
    data_args = (report.get("data") or {}).get("args")
    sections.append(section("Item map", *_item_maps(run, data_args, method, with_features)))
    config = report.get("config") or {}
    sections.append(section("Configuration", kv_table(sorted(config.items()))))
    src = ((report.get("data") or {}).get("source") or {})
    name = src.get("name") or src.get("preset") or run.name
    return page(f"metricrec run: {name}", f"{run.resolve()} (metricrec {report.get('metricrec_version', '?')})",
                sections)
