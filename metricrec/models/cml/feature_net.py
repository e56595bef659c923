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

# The widest hidden layer and most layers a saved feature network may declare, and its largest size
# (parameters x 4 bytes): the one table of metricrec.limits, which --feature-hidden and CMLConfig check too.
from ...errors import ConfigError
from ...limits import MAX_HIDDEN_LAYERS as MAX_LAYERS, MAX_HIDDEN_WIDTH as MAX_WIDTH, MAX_MLP_BYTES, mlp_bytes

__all__ = ["FeatureMLP", "SparseRows", "feature_row_tensor", "mlp_from_arrays", "mlp_shapes", "mlp_to_arrays"]


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
    row_norm : bool
        Scale every input row to unit L2 norm first (``x / |x|``): an item's input is then the
        normalised mix of its features, whatever their number (an item with 40 tags and one with
        2 get inputs of the same size). Saved with the network.

    Parameter names (the ``state_dict`` keys saved with a model): ``input.weight`` of shape
    (n_features, width_1) -- rows are per-feature vectors, so a sparse row sums the rows of its
    features --, ``input.bias`` (width_1,), then ``layers.<k>.weight``/``layers.<k>.bias`` as in
    ``nn.Linear`` (shape (out, in)).
    """

    def __init__(self, n_features: int, out_dim: int, hidden: Sequence[int] = (256,), dropout: float = 0.1,
                 seed: int | None = None, row_norm: bool = False) -> None:
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if n_features < 1 or out_dim < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"FeatureMLP widths must be positive, got n_features={n_features}, out_dim={out_dim}, "
                             f"hidden={hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if mlp_bytes(int(n_features), hidden, int(out_dim)) > MAX_MLP_BYTES:  # what mlp_shapes would refuse
            raise ConfigError(f"feature_hidden {hidden!r}: a feature network over {n_features:,} features of "
                              f"{mlp_bytes(int(n_features), hidden, int(out_dim)):,} bytes, more than the "
                              f"{MAX_MLP_BYTES:,} a model file may hold (use narrower layers or fewer features)")
        self.n_features, self.out_dim, self.hidden, self.dropout_p = int(n_features), int(out_dim), hidden, float(dropout)
        self.row_norm = bool(row_norm)
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
            h = nn.functional.embedding_bag(idx, w, off, mode="sum", per_sample_weights=val)
        elif x.layout in (torch.sparse_csr, torch.sparse_coo):
            x = x.to_sparse_coo() if x.layout == torch.sparse_csr else x
            h = torch.sparse.mm(x, w)
        else:
            if x.shape[-1] != self.n_features:
                raise ValueError(f"expected {self.n_features} feature columns, got {x.shape[-1]}")
            x = x.to(w.dtype)
            h = x @ w
        if self.row_norm:
            h = h / _row_norms(x, h.shape[0]).clamp_min(1e-12)[:, None]
        h = h + b
        for lin in self.layers:
            h = lin(self.drop(torch.relu(h)))
        return h

    def shape_doc(self) -> dict[str, Any]:
        """The constructor arguments, JSON-able (saved next to the weights)."""
        return {"n_features": self.n_features, "out_dim": self.out_dim, "hidden": list(self.hidden),
                "dropout": self.dropout_p, "row_norm": self.row_norm}


def _row_norms(x: torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor], n_rows: int) -> torch.Tensor:
    """L2 norms of the rows of a feature batch in any of :meth:`FeatureMLP.forward`'s layouts."""
    if isinstance(x, tuple):
        _, val, off = x
        lengths = torch.diff(off, append=off.new_tensor([val.numel()]))
        rows = torch.repeat_interleave(torch.arange(n_rows, device=val.device), lengths, output_size=val.numel())
        return torch.zeros(n_rows, dtype=val.dtype, device=val.device).index_add_(0, rows, val * val).sqrt_()
    if x.layout == torch.sparse_coo:
        x = x.coalesce()
        sq = x.values().float() ** 2
        return torch.zeros(n_rows, dtype=sq.dtype, device=sq.device).index_add_(0, x.indices()[0], sq).sqrt_()
    return x.norm(dim=1)


def _uniform(shape: tuple[int, ...], bound: float, gen: torch.Generator | None) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) * 2.0 - 1.0) * bound


# ---------------------------------------------------------------------- model files and fold-in
def mlp_to_arrays(mlp: FeatureMLP, prefix: str) -> dict[str, np.ndarray]:
    """f's parameters as named float32 arrays (``prefix + state_dict key``) for a model file."""
    return {prefix + k: v.detach().cpu().numpy().astype(np.float32) for k, v in mlp.state_dict().items()}


def mlp_shapes(doc: Any, prefix: str, out_dim: int, where: Any) -> dict[str, tuple[int, ...]]:
    """The parameter shapes (``prefix + state_dict key``) the JSON ``doc`` saved with f describes,
    every field checked first (names, widths, dropout; sizes within :data:`MAX_WIDTH`,
    :data:`MAX_LAYERS`, :data:`MAX_MLP_BYTES`) so that nothing is allocated on its word.

    Raises :class:`~metricrec.serialization.ModelFormatError` naming ``where`` and the key.
    """
    from ...serialization import ModelFormatError

    def bad(key: str, why: str) -> ModelFormatError:
        return ModelFormatError(f"{where}: invalid item feature network description (key {key!r} {why})")

    if not isinstance(doc, dict) or not isinstance(doc.get("mlp"), dict) or not isinstance(doc.get("names"), list):
        raise bad("item_features", "must be an object with 'names' (a list) and 'mlp' (an object)")
    shape = doc["mlp"]
    n_features, hidden, dropout = shape.get("n_features"), shape.get("hidden"), shape.get("dropout")
    if isinstance(n_features, bool) or not isinstance(n_features, int) or not 1 <= n_features <= 2**31 - 1:
        raise bad("mlp.n_features", f"must be a positive integer, got {n_features!r}")
    if len(doc["names"]) != n_features:
        raise bad("names", f"has {len(doc['names'])} entries for {n_features} features")
    if shape.get("out_dim") != out_dim or isinstance(shape.get("out_dim"), bool):
        raise bad("mlp.out_dim", f"is {shape.get('out_dim')!r}, the model has {out_dim} factors")
    if not isinstance(hidden, list) or len(hidden) > MAX_LAYERS or any(
            isinstance(h, bool) or not isinstance(h, int) or not 1 <= h <= MAX_WIDTH for h in hidden):
        raise bad("mlp.hidden", f"must be a list of at most {MAX_LAYERS} widths in [1, {MAX_WIDTH}], got {hidden!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise bad("mlp.dropout", f"must be a number in [0, 1), got {dropout!r}")
    if not isinstance(shape.get("row_norm", False), bool):  # absent in files from before it existed
        raise bad("mlp.row_norm", f"must be true or false, got {shape.get('row_norm')!r}")
    widths = [*hidden, out_dim]
    shapes = {prefix + "input.weight": (n_features, widths[0]), prefix + "input.bias": (widths[0],)}
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        shapes[f"{prefix}layers.{k}.weight"], shapes[f"{prefix}layers.{k}.bias"] = (b, a), (b,)
    if 4 * sum(math.prod(s) for s in shapes.values()) > MAX_MLP_BYTES:
        raise bad("mlp", f"describes a network of more than {MAX_MLP_BYTES:,} bytes")
    return shapes


def mlp_from_arrays(arrays: dict[str, np.ndarray], doc: Any, prefix: str, out_dim: int,
                    where: Any) -> tuple[FeatureMLP, np.ndarray, dict[str, Any] | None]:
    """Rebuild f from :func:`mlp_to_arrays` arrays and the JSON ``doc`` saved with them.

    The description is checked (:func:`mlp_shapes`) and every array against it before f is built,
    so f never allocates more than the arrays already hold. Returns (f in eval mode, feature names,
    info). Raises :class:`~metricrec.serialization.ModelFormatError` naming ``where`` on anything
    inconsistent.
    """
    from ...serialization import ModelFormatError

    shapes = mlp_shapes(doc, prefix, out_dim, where)
    for name, shape in shapes.items():
        arr = arrays.get(name)
        if arr is None:
            raise ModelFormatError(f"{where}: array {name!r} is missing")
        if tuple(arr.shape) != shape or arr.dtype.kind != "f" or not np.all(np.isfinite(arr)):
            raise ModelFormatError(f"{where}: array {name!r} has shape {arr.shape} dtype {arr.dtype}, "
                                   f"expected {shape} finite float")
    try:
        names = np.asarray(doc["names"], dtype=str)
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f"{where}: invalid item feature names ({exc})") from None
    if names.shape != (len(doc["names"]),):
        raise ModelFormatError(f"{where}: invalid item feature names (expected a flat list)")
    mlp_doc = doc["mlp"]
    mlp = FeatureMLP(mlp_doc["n_features"], out_dim, tuple(mlp_doc["hidden"]), float(mlp_doc["dropout"]),
                     row_norm=mlp_doc.get("row_norm", False))
    mlp.load_state_dict({key[len(prefix):]: torch.from_numpy(np.array(arrays[key], dtype=np.float32))
                         for key in shapes})
    return mlp.eval(), names, doc.get("info")


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
