"""The feature network f of CML+F and its persistence.

:class:`FeatureMLP` maps a feature row x (sparse multi-hot tags/genres, or dense columns) to a
point f(x) in the embedding space R^d. Its first layer is a sum of per-feature weight rows
(``embedding_bag``), so a sparse input costs O(nnz x hidden) and never densifies.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

__all__ = ["FeatureMLP", "SparseRows", "feature_row_tensor", "mlp_from_arrays", "mlp_to_arrays"]


# ---------------------------------------------------------------------- feature rows on torch
class SparseRows:
    """A CSR feature matrix as torch tensors, with a vectorised row gather for minibatches.

    Parameters
    ----------
    matrix : scipy.sparse matrix, shape (n_rows, n_features)
    device : torch device
    """

    def __init__(self, matrix: sp.spmatrix, device: str | torch.device = "cpu") -> None:
        m = sp.csr_matrix(matrix, dtype=np.float32)
        self.shape = m.shape
        self.indptr = torch.from_numpy(m.indptr.astype(np.int64)).to(device)
        self.indices = torch.from_numpy(m.indices.astype(np.int64)).to(device)
        self.data = torch.from_numpy(m.data.astype(np.float32)).to(device)
        self.row_nnz = self.indptr[1:] - self.indptr[:-1]

    def gather(self, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(column indices, values, offsets) of ``rows`` (all rows when None), in the layout of
        ``torch.nn.functional.embedding_bag`` (``offsets`` has one entry per row)."""
        if rows is None:
            return self.indices, self.data, self.indptr[:-1]
        lengths = self.row_nnz.index_select(0, rows)
        offsets = torch.zeros_like(lengths)
        if lengths.numel() > 1:
            torch.cumsum(lengths[:-1], 0, out=offsets[1:])
        total = int(lengths.sum())
        # position of every gathered entry = start of its source row + its rank within the row
        starts = self.indptr.index_select(0, rows)
        src = torch.repeat_interleave(starts - offsets, lengths, output_size=total)
        src += torch.arange(total, device=src.device)
        return self.indices.index_select(0, src), self.data.index_select(0, src), offsets


class FeatureMLP(nn.Module):
    """f: feature vector -> R^d, an MLP with ReLU and dropout between layers.

    ``f(x) = W_L relu(... relu(x W_1 + b_1) ...) + b_L`` with ``dropout`` after every ReLU. With
    ``hidden=()`` it is the linear map ``x W_1 + b_1``.

    Parameters
    ----------
    n_features : int
        Input width (number of feature columns).
    out_dim : int
        Output width d (the embedding dimension).
    hidden : sequence of int
        Widths of the hidden layers.
    dropout : float in [0, 1)
    seed : int, optional
        Seed of the weight initialisation (uniform +-1/sqrt(fan_in), as ``nn.Linear``).

    Parameter names (the ``state_dict`` keys saved with a model): ``input.weight`` of shape
    (n_features, width_1) -- rows are per-feature vectors, so a sparse row sums the rows of its
    features --, ``input.bias`` (width_1,), then ``layers.<k>.weight``/``layers.<k>.bias`` as in
    ``nn.Linear`` (shape (out, in)).
    """

    def __init__(self, n_features: int, out_dim: int, hidden: Sequence[int] = (256,), dropout: float = 0.1,
                 seed: int | None = None) -> None:
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if n_features < 1 or out_dim < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"FeatureMLP widths must be positive, got n_features={n_features}, out_dim={out_dim}, "
                             f"hidden={hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.n_features, self.out_dim, self.hidden, self.dropout_p = int(n_features), int(out_dim), hidden, float(dropout)
        widths = hidden + (int(out_dim),)
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        bound = 1.0 / math.sqrt(n_features)
        self.input = nn.ParameterDict({
            "weight": nn.Parameter(_uniform((n_features, widths[0]), bound, gen)),
            "bias": nn.Parameter(_uniform((widths[0],), bound, gen)),
        })
        self.layers = nn.ModuleList()
        for a, b in zip(widths[:-1], widths[1:]):
            with torch.random.fork_rng(devices=[]):  # nn.Linear's own init would draw from the global RNG
                lin = nn.Linear(a, b)
            with torch.no_grad():
                lin.weight.copy_(_uniform((b, a), 1.0 / math.sqrt(a), gen))
                lin.bias.copy_(_uniform((b,), 1.0 / math.sqrt(a), gen))
            self.layers.append(lin)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """f(x) for a batch.

        Parameters
        ----------
        x : torch.Tensor of shape (b, n_features) (dense or sparse CSR/COO), or a tuple
            ``(indices, values, offsets)`` as returned by :meth:`SparseRows.gather`.

        Returns
        -------
        torch.Tensor, shape (b, out_dim)
        """
        w, b = self.input["weight"], self.input["bias"]
        if isinstance(x, tuple):
            idx, val, off = x
            h = nn.functional.embedding_bag(idx, w, off, mode="sum", per_sample_weights=val) + b
        elif x.layout == torch.sparse_csr:
            h = torch.sparse.mm(x.to_sparse_coo(), w) + b
        elif x.layout == torch.sparse_coo:
            h = torch.sparse.mm(x, w) + b
        else:
            if x.shape[-1] != self.n_features:
                raise ValueError(f"expected {self.n_features} feature columns, got {x.shape[-1]}")
            h = x.to(w.dtype) @ w + b
        for lin in self.layers:
            h = lin(self.drop(torch.relu(h)))
        return h

    def shape_doc(self) -> dict[str, Any]:
        """The constructor arguments, JSON-able (saved next to the weights)."""
        return {"n_features": self.n_features, "out_dim": self.out_dim, "hidden": list(self.hidden),
                "dropout": self.dropout_p}


def _uniform(shape: tuple[int, ...], bound: float, gen: torch.Generator | None) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) * 2.0 - 1.0) * bound


# ---------------------------------------------------------------------- model files and fold-in
def mlp_to_arrays(mlp: FeatureMLP, prefix: str) -> dict[str, np.ndarray]:
    """f's parameters as named float32 arrays (``prefix + state_dict key``) for a model file."""
    return {prefix + k: v.detach().cpu().numpy().astype(np.float32) for k, v in mlp.state_dict().items()}


def mlp_from_arrays(arrays: dict[str, np.ndarray], doc: Any, prefix: str, out_dim: int,
                    where: Any) -> tuple[FeatureMLP, np.ndarray, dict[str, Any] | None]:
    """Rebuild f from :func:`mlp_to_arrays` arrays and the JSON ``doc`` saved with them.

    Returns (f in eval mode, feature names, info). Raises
    :class:`~metricrec.serialization.ModelFormatError` naming ``where`` on anything inconsistent.
    """
    from ...serialization import ModelFormatError

    try:
        names = np.asarray(doc["names"], dtype=str)
        shape = doc["mlp"]
        mlp = FeatureMLP(int(shape["n_features"]), int(shape["out_dim"]), tuple(int(h) for h in shape["hidden"]),
                         float(shape["dropout"]))
        info = doc.get("info")
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFormatError(f"{where}: invalid item feature network description ({exc})") from None
    if names.ndim != 1 or names.shape[0] != mlp.n_features or mlp.out_dim != out_dim:
        raise ModelFormatError(f"{where}: item feature network has {mlp.n_features} inputs / {mlp.out_dim} outputs "
                               f"but {names.shape[0]} feature names / {out_dim} factors")
    state = {}
    for key, ref in mlp.state_dict().items():
        arr = arrays.get(prefix + key)
        if arr is None:
            raise ModelFormatError(f"{where}: array {prefix + key!r} is missing")
        if tuple(arr.shape) != tuple(ref.shape) or arr.dtype.kind != "f" or not np.all(np.isfinite(arr)):
            raise ModelFormatError(f"{where}: array {prefix + key!r} has shape {arr.shape} dtype {arr.dtype}, "
                                   f"expected {tuple(ref.shape)} finite float")
        state[key] = torch.from_numpy(np.array(arr, dtype=np.float32))
    mlp.load_state_dict(state)
    return mlp.eval(), names, info


def feature_row_tensor(row: Any, names: np.ndarray) -> torch.Tensor:
    """One feature row as a dense (1, n_features) float32 tensor.

    ``row``: a 1 x n_features sparse matrix, an array of shape (n_features,), or a dict
    ``{feature name: value}`` (unknown names raise ``KeyError``; values must be finite).
    """
    n = len(names)
    if isinstance(row, dict):
        index = {name: k for k, name in enumerate(names.tolist())}
        unknown = [k for k in row if str(k) not in index]
        if unknown:
            raise KeyError(f"unknown feature name(s): {', '.join(map(repr, unknown[:5]))} "
                           f"(the model knows {n} features)")
        dense = np.zeros(n, dtype=np.float64)
        for k, v in row.items():
            dense[index[str(k)]] = float(v)
    elif sp.issparse(row):
        if row.shape != (1, n):
            raise ValueError(f"the feature row must have shape (1, {n}), got {row.shape}")
        dense = np.asarray(row.toarray(), dtype=np.float64).ravel()
    else:
        dense = np.asarray(row, dtype=np.float64).ravel()
        if dense.shape != (n,):
            raise ValueError(f"the feature row must have {n} values, got shape {np.shape(row)}")
    if not np.all(np.isfinite(dense)):
        raise ValueError("the feature row contains NaN or infinite values")
    if not dense.any():
        raise ValueError("the feature row is empty: an item needs at least one feature to be placed by f")
    return torch.from_numpy(dense.astype(np.float32))[None, :]
