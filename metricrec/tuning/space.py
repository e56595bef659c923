"""The search space of ``metricrec tune``: which CML settings a trial draws, and from where.

Every parameter is a field of :class:`~metricrec.models.cml.config.CMLConfig`. The ranges are
wide enough to hold every setting that won on the benchmarks (``benchmarks/results/tuning.md``)
and are documented in ``docs/tuning.md`` and ``metricrec tune --help`` (both built from
:data:`SEARCH_SPACE`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import ConfigError

__all__ = ["Param", "SEARCH_SPACE", "select", "suggest", "describe"]


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


def select(names: Sequence[str] | None, fixed: Sequence[str] = ()) -> tuple[Param, ...]:
    """The parameters to tune: ``names`` (all of :data:`SEARCH_SPACE` when None), less ``fixed``.

    Raises
    ------
    ConfigError
        A name that is not in the search space, or nothing left to tune.
    """
    known = {p.name: p for p in SEARCH_SPACE}
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
