"""Saving and loading embedding models: named float arrays plus one JSON document, never pickle.

A model directory holds the two tables, the training positives (``user_items.*``), any model
extras (CML+F's feature network), and ``config.json`` with the config, id maps, history and the
training data's fingerprint; :mod:`metricrec.serialization` writes it as one atomic unit.
"""

from __future__ import annotations

from functools import partial
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from .. import __version__
from ..data.ids import IdIndex
from ..serialization import ModelFormatError, load_model_files, save_model_files
from ..training.guards import table_state
from ..training.history import History
from .schema import check_model_arrays, model_facts

__all__ = ["MODELS", "PersistenceMixin", "load_model"]

#: Every model class by its saved name (filled by subclassing EmbeddingRecommender).
MODELS: dict[str, type] = {}


#: The modules of metricrec's own models: importing one registers its class in :data:`MODELS`.
BUILTIN_MODEL_MODULES = ("metricrec.models.cml.model", "metricrec.models.bpr.model", "metricrec.models.sml.model",
                         "metricrec.models.dpcml.model", "metricrec.models.sfcml.model",
                         "metricrec.models.transcf.model", "metricrec.models.lrml.model")


def _register_builtin_models() -> None:
    """Import metricrec's model modules (``metricrec.models`` imports them lazily), so that
    :func:`load_model` knows every built-in model whatever the caller imported."""
    import importlib

    for name in BUILTIN_MODEL_MODULES:
        importlib.import_module(name)


class PersistenceMixin:
    """``save``/``load`` for :class:`~metricrec.models.base.EmbeddingRecommender`."""

    def save(self, path: str | Path, *, weights_format: str = "npz") -> Path:
        """Save to a directory (``weights.npz`` or ``weights.safetensors`` + ``config.json``) or a
        single ``.npz`` file. No pickle; exact round trip (float32 arrays as trained)."""
        user, item = self._fitted()
        arrays = {"user_embeddings": self.user_embeddings, "item_embeddings": self.item_embeddings}
        extra_arrays, extra_meta = self._extra_arrays()
        arrays.update(extra_arrays)
        if self.user_items is not None:
            arrays["user_items.indptr"] = self.user_items.indptr.astype(np.int64)
            arrays["user_items.indices"] = self.user_items.indices.astype(np.int32)
        meta = {
            "model": self.model_name, "metricrec_version": __version__, "config": self.config.to_dict(),
            "n_users": int(user.shape[0]), "n_items": int(item.shape[0]),
            "user_ids": _map_to_json(self.user_map), "item_ids": _map_to_json(self.item_map),
            "history": self.history.to_dict(), "data_fingerprint": self.data_fingerprint, **extra_meta,
        }
        if getattr(self, "data_source", None) is not None:  # what it was trained on (a synthetic fallback shows)
            meta["data_source"] = self.data_source
        return save_model_files(path, arrays, meta, weights_format=weights_format)

    @classmethod
    def _user_width(cls, config: Any) -> int:
        """Width of a row of the saved user table (``config.factors``; a model whose user row holds
        several vectors, DPCML, says how wide it is): what :meth:`load` and the schema expect."""
        return int(config.factors)

    @classmethod
    def _expected_extra(cls, doc: dict[str, Any], config: Any, where: Any) -> dict[str, tuple[int, ...]]:
        """Shapes of the float arrays a model saves besides the tables, from its checked document
        (``{}``: none); :meth:`load` refuses a file whose arrays differ before reading them."""
        return {}

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu"):
        """Load a model written by :meth:`save` (on any device, e.g. a GPU-trained model on CPU).

        The document is checked as a schema and every array header against the shapes it implies
        before any array is read (:mod:`metricrec.models.schema`); anything wrong is one
        :class:`ModelFormatError` naming the file and the key or array. A table that holds NaN or
        infinite values or has collapsed (two rows or more, all one point: the rule training stops on,
        :func:`~metricrec.training.guards.table_state`) is refused too.
        """
        arrays, meta = load_model_files(path, expect=partial(check_model_arrays, cls))
        config, n_users, n_items = model_facts(cls, meta, path)
        try:
            history = History.from_dict(meta.get("history") or {})
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise ModelFormatError(f"{path}: invalid history ({type(exc).__name__}: {exc})") from None
        model = cls(config, device=device, show_progress=False, verbose=False)
        is_dir = Path(path).is_dir()
        weights = Path(path) / str(meta.get("weights", "weights.npz")) if is_dir else path
        model._user = _table(arrays, "user_embeddings", (n_users, cls._user_width(config)), path,
                             weights).to(model.device)
        model._item = _table(arrays, "item_embeddings", (n_items, config.factors), path, weights).to(model.device)
        doc_path = Path(path) / "config.json" if is_dir else path  # what errors below name
        model.user_map = _map_from_json(meta.get("user_ids"), n_users, "user_ids", doc_path)
        model.item_map = _map_from_json(meta.get("item_ids"), n_items, "item_ids", doc_path)
        model.user_items = _liked_from_arrays(arrays, (n_users, n_items), path)
        model.history = history
        fp = meta.get("data_fingerprint")
        if fp is not None and not isinstance(fp, dict):
            raise ModelFormatError(f"{doc_path}: invalid data_fingerprint (a {type(fp).__name__}, expected an object)")
        model.data_fingerprint = fp
        model.data_source = _data_source(meta.get("data_source"), path)
        model._load_extra(arrays, meta, path)
        return model


def load_model(path: str | Path, *, device: str = "cpu", index: bool = True) -> Any:
    """Load any metricrec model file, whatever its class (named in the file; only its document is
    read to find out).

    Parameters
    ----------
    path : path
        A model directory or a single ``.npz`` model file.
    device : str
    index : bool
        Attach the approximate-retrieval index saved beside the model by ``metricrec index``
        (``DIR/index/``, or ``FILE.index/``) when there is one; a stale index is refused
        (:class:`~metricrec.errors.ModelFileError`). Without faiss installed the model stays exact,
        with a warning.
    """
    _, meta = load_model_files(path, doc_only=True)
    _register_builtin_models()
    cls = MODELS.get(meta.get("model")) if isinstance(meta.get("model"), str) else None
    if cls is None:
        raise ModelFormatError(f"{path}: unknown model type {meta.get('model')!r} (known: {', '.join(MODELS)})")
    model = cls.load(path, device=device)
    if index:
        _attach_saved_index(model, path)
    return model


def _attach_saved_index(model: Any, path: str | Path) -> None:
    from ..serving.ann import index_dir_for, load_index_for

    if not os.path.lexists(index_dir_for(path) / "index.json"):  # a directory or a FIFO there: refused
        return
    try:
        model.attach_index(load_index_for(path, model.item_embeddings, model.distance))
    except ImportError as exc:
        warnings.warn(f"{path}: an ANN index is saved beside the model but cannot be used ({exc}); "
                      "retrieval stays exact", RuntimeWarning, stacklevel=3)


def _data_source(doc: Any, path: Any) -> dict[str, Any] | None:
    """The saved ``data_source`` (an object of plain values, or absent), checked."""
    if doc is None:
        return None
    if not isinstance(doc, dict) or any(isinstance(v, (dict, list)) for v in doc.values()):
        raise ModelFormatError(f"{path}: invalid data_source (expected an object of plain values)")
    return doc


def _table(arrays: dict[str, np.ndarray], name: str, shape: tuple[int, int], path: Any,
           weights: Any) -> torch.Tensor:
    """The saved table ``name`` (float32, CPU), refused unless it has ``shape``, is finite and has not
    collapsed (the training guard's rule, :func:`~metricrec.training.guards.table_state`: a model whose
    users or items are all one point scores every item alike)."""
    arr = arrays.get(name)
    if arr is None:
        raise ModelFormatError(f"{path}: array {name!r} is missing")
    if arr.shape != shape or arr.dtype.kind != "f":
        raise ModelFormatError(f"{path}: array {name!r} has shape {arr.shape} dtype {arr.dtype}, expected {shape} float")
    if not np.all(np.isfinite(arr)):
        raise ModelFormatError(f"{path}: array {name!r} contains NaN or infinite values")
    table = torch.from_numpy(np.array(arr, dtype=np.float32))
    state = table_state(table)
    if state is not None:
        side = name.removesuffix("_embeddings")
        rows = "zero" if state == "zero" else "equal"
        effect = "every user gets the same list" if side == "user" else "every item scores the same"
        raise ModelFormatError(f"{weights}: {side} table is collapsed (all {shape[0]:,} rows {rows}); "
                               f"the model is degenerate ({effect})")
    return table


def _map_to_json(index: IdIndex | None) -> dict[str, Any] | None:
    """The model file's id list (format unchanged since version 1: kind + values)."""
    return None if index is None else index.to_json()


def _map_from_json(doc: Any, n: int, name: str, path: Any) -> IdIndex | None:
    if doc is None:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("values"), list) and len(doc["values"]) != n:
        raise ModelFormatError(f"{path}: {name} has {len(doc['values'])} entries, expected {n}")
    try:
        return IdIndex.from_json(doc, n=n, where=f"{path}: invalid {name}", name=name.removesuffix("_ids"))
    except (ValueError, TypeError) as exc:
        raise ModelFormatError(str(exc)) from None


def _liked_from_arrays(arrays: dict[str, np.ndarray], shape: tuple[int, int], path: Any) -> sp.csr_matrix | None:
    """The saved training positives, checked (an older model file has none)."""
    indptr, indices = arrays.get("user_items.indptr"), arrays.get("user_items.indices")
    if indptr is None and indices is None:
        return None
    ok = (indptr is not None and indices is not None and indptr.ndim == 1 and indices.ndim == 1
          and indptr.dtype.kind in "iu" and indices.dtype.kind in "iu" and indptr.shape[0] == shape[0] + 1
          and indptr[0] == 0 and indptr[-1] == indices.shape[0] and np.all(np.diff(indptr) >= 0)
          and (indices.size == 0 or (indices.min() >= 0 and indices.max() < shape[1])))
    if not ok:
        raise ModelFormatError(f"{path}: the saved liked items (user_items.*) are inconsistent with "
                               f"{shape[0]} users x {shape[1]} items")
    m = sp.csr_matrix((np.ones(indices.shape[0], np.float32), indices, indptr), shape=shape)
    m.sum_duplicates()
    return m
