"""The search spaces of ``metricrec tune``: which settings a trial draws, and from where, per model.

:data:`SEARCH_SPACE` is CML's: every parameter a field of :class:`~metricrec.models.cml.config.CMLConfig`,
the ranges wide enough to hold every setting that won on the benchmarks (``benchmarks/results/tuning.md``).
:data:`SPACES` holds each model's (``metricrec tune --model NAME``): the training settings every model
shares (rate, negatives, batch, width) and the model's own. All are documented in ``docs/tuning.md``
and ``metricrec tune --help`` (built from these tables).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import ConfigError

__all__ = ["Param", "SEARCH_SPACE", "SPACES", "select", "space_of", "suggest", "describe"]


@dataclass(frozen=True)
class Param:
    """One tuned setting.

    Attributes
    ----------
    name : str
        The :class:`CMLConfig` field.
    kind : {"float", "int", "categorical"}
    low, high : float
        Range of a float or int parameter (both ends included).
    log : bool
        Draw uniformly in log space.
    choices : tuple
        Values of a categorical parameter.
    why : str
        One line on what it does (shown in ``--help``).
    """

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()
    why: str = ""

    def range_text(self) -> str:
        """``[low, high]`` (with ``log``) or ``{a, b, c}``."""
        if self.kind == "categorical":
            return "{" + ", ".join(map(str, self.choices)) + "}"
        fmt = "{:g}" if self.kind == "float" else "{:d}"
        text = f"[{fmt.format(self.low if self.kind == 'float' else int(self.low))}, " \
               f"{fmt.format(self.high if self.kind == 'float' else int(self.high))}]"
        return text + (" log" if self.log else "")


#: The default search space, in the order trials draw it.
SEARCH_SPACE: tuple[Param, ...] = (
    Param("margin", "float", 0.25, 2.5, why="hinge margin m (squared distances in the unit ball lie in [0, 4])"),
    Param("learning_rate", "float", 0.01, 0.5, log=True, why="AdaGrad step size"),
    Param("n_negatives", "int", 2, 30, log=True, why="negatives sampled per positive (U)"),
    Param("batch_size", "int", 1000, 50_000, log=True, why="positive pairs per step"),
    Param("cov_weight", "float", 1e-3, 1e3, log=True, why="lambda_c of the covariance regulariser"),
    Param("factors", "categorical", choices=(32, 64, 100, 128, 200, 256), why="embedding dimension d"),
    Param("negative_group", "categorical", choices=(1, 4, 16), why="positives sharing one negative draw"),
)


_SHARED = {p.name: p for p in SEARCH_SPACE if p.name in ("learning_rate", "n_negatives", "batch_size", "factors")}

#: Each model's search space by ``--model`` name: the shared training settings, then the model's own.
SPACES: dict[str, tuple[Param, ...]] = {
    "cml": SEARCH_SPACE,
    "sml": (
        _SHARED["learning_rate"], _SHARED["n_negatives"], _SHARED["batch_size"], _SHARED["factors"],
        Param("margin_max", "float", 0.25, 2.5, why="l, the bound of every learned margin"),
        Param("item_weight", "float", 0.0, 1.0, why="lambda, weight of the item-centric hinge"),
        Param("margin_reg", "float", 1e-3, 0.5, log=True, why="gamma, weight of the margin regulariser"),
        Param("margin_lr", "float", 0.01, 0.5, log=True, why="AdaGrad rate of the margins"),
    ),
    "dpcml": (
        _SHARED["learning_rate"], _SHARED["n_negatives"], _SHARED["batch_size"], _SHARED["factors"],
        Param("margin", "float", 0.25, 2.5, why="hinge margin lambda"),
        Param("n_vectors", "categorical", choices=(1, 2, 3, 5), why="C, vectors per user"),
        Param("diversity_weight", "float", 1e-2, 10.0, log=True, why="eta, weight of the diversity regulariser"),
    ),
    "sfcml": (
        _SHARED["learning_rate"], _SHARED["factors"],
        Param("margin", "float", 0.5, 3.0, why="m, the target of d(u,j) - d(u,i)"),
        Param("weighting", "categorical", choices=("user", "pair"), why="per-user or per-pair normalisation"),
    ),
    "transcf": (
        _SHARED["learning_rate"], _SHARED["n_negatives"], _SHARED["batch_size"], _SHARED["factors"],
        Param("margin", "float", 0.25, 2.0, why="hinge margin gamma"),
        Param("nbr_reg", "float", 1e-3, 1.0, log=True, why="weight of the neighbourhood regulariser"),
    ),
    "lrml": (
        _SHARED["learning_rate"], _SHARED["n_negatives"], _SHARED["batch_size"], _SHARED["factors"],
        Param("margin", "float", 0.25, 2.0, why="hinge margin"),
        Param("memory_slots", "categorical", choices=(5, 10, 20, 50), why="key/value slots of the memory"),
        Param("memory_lr", "float", 1e-3, 0.2, log=True, why="AdaGrad rate of the memory"),
    ),
    "bpr": (
        Param("learning_rate", "float", 1e-3, 0.3, log=True, why="AdaGrad step size"),
        _SHARED["batch_size"], _SHARED["factors"],
        Param("regularization", "float", 1e-5, 0.1, log=True, why="L2 weight on the rows of each triple"),
    ),
}


def space_of(model: str) -> tuple[Param, ...]:
    """The search space of ``--model model``; :class:`ConfigError` for a model without one."""
    if model not in SPACES:
        raise ConfigError(f"metricrec tune has no search space for --model {model} (it tunes "
                          f"{', '.join(SPACES)})")
    return SPACES[model]


def select(names: Sequence[str] | None, fixed: Sequence[str] = (), model: str = "cml") -> tuple[Param, ...]:
    """The parameters to tune: ``names`` (all of the model's space, :data:`SPACES`, when None), less ``fixed``.

    Raises
    ------
    ConfigError
        A name that is not in the search space, or nothing left to tune.
    """
    known = {p.name: p for p in space_of(model)}
    wanted = list(known) if not names else [n.strip().replace("-", "_") for n in names if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ConfigError(f"--params: {', '.join(unknown)} not in the search space ({', '.join(known)})")
    chosen = tuple(known[n] for n in wanted if n not in set(fixed))
    if not chosen:
        raise ConfigError("nothing to tune: every parameter of --params is fixed by a flag")
    return chosen


def suggest(trial: Any, space: Sequence[Param]) -> dict[str, Any]:
    """Draw one value of each parameter through an Optuna ``trial``; return them by name."""
    values: dict[str, Any] = {}
    for p in space:
        if p.kind == "float":
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
        elif p.kind == "int":
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
        else:
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
    return values


def describe(space: Sequence[Param] = SEARCH_SPACE) -> str:
    """One line per parameter: name, range, what it does (for ``--help`` and the docs)."""
    width = max(len(p.name) for p in space)
    span = max(len(p.range_text()) for p in space)
    return "\n".join(f"  {p.name:<{width}}  {p.range_text():<{span}}  {p.why}" for p in space)
