"""`metricrec train` and `metricrec evaluate`: their flags, and the start of a run.

Parsing the flags and writing the run's first record (``RUN/run.json`` with the arguments, before
anything else: :func:`metricrec.cli.train_run.record_start`) import no torch, so a run killed in
its first second can be restarted by its folder; the work itself is :mod:`.train_exec`.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..models.cml.config import CMLConfig
from ..training.backends import CHOICES as BACKEND_CHOICES
from ..training.config import DEFAULT_TIMEOUT_S
from .train_run import add_run_arguments, discard_early_record, record_start, resumed_args
from .sources import add_data_arguments, add_feature_arguments, add_split_arguments
from .commands import COMMANDS

def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help=COMMANDS["train"].help)
    add_data_arguments(train)
    add_split_arguments(train)
    add_feature_arguments(train)
    _add_config_arguments(train)
    train.add_argument("--out", help="output folder (default runs/<data>)")
    train.add_argument("--final", action="store_true",
                       help="after the validated run, train a production model on EVERY interaction (train, valid "
                            "and test) for the validated run's best epoch count with its schedule, into OUT/final "
                            "(recommend/serve --model OUT/final); the test metrics stay the validated run's")
    train.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    train.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    train.add_argument("--kernel", choices=BACKEND_CHOICES, default="auto",
                       help="training step backend (auto: the compiled numba kernel on CPU when installed)")
    train.add_argument("--weights-format", choices=("npz", "safetensors"), default="npz")
    train.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                       help="under torchrun: give up when another rank is silent this long (default %(default)g)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (off anyway when stderr is not a terminal)")
    train.add_argument("--no-fallback", action="store_true",
                       help="fail instead of training on synthetic data (into OUT-synthetic-fallback) when --dataset "
                            "files are not in the default data folder and cannot be downloaded")
    add_run_arguments(train)  # --resume, --checkpoint-every (last: records the defaults --resume checks)
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help=COMMANDS["evaluate"].help)
    ev.add_argument("--model", required=True, help="a folder written by 'metricrec train'")
    ev.add_argument("--part", choices=("test", "valid"), default="test")
    ev.add_argument("--json", metavar="FILE", help="also write the metrics to FILE")
    add_data_arguments(ev)
    add_split_arguments(ev)
    ev.set_defaults(func=cmd_evaluate)


# ---------------------------------------------------------------------- hyperparameter flags
def _add_config_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("CML hyperparameters (defaults: CMLConfig)")
    for f in dataclasses.fields(CMLConfig):
        flag, kwargs = _FLAGS.get(f.name, (None, {}))
        kwargs = dict(kwargs)
        if "action" not in kwargs:
            kwargs.setdefault("type", type(f.default) if f.default is not None else float)
        shown = (",".join(map(str, f.default)) or "0") if isinstance(f.default, tuple) else f.default
        kwargs["help"] = kwargs.get("help", "default {default}").format(default=shown)
        g.add_argument(flag or "--" + f.name.replace("_", "-"), dest=f.name, default=None, **kwargs)


def _int_or_none(text: str) -> int | str:
    if text.strip().lower() in ("all", "none"):
        return "none"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of users or 'all', got {text!r}") from None


def _knots(text: str) -> tuple[tuple[float, float], ...]:
    try:
        return tuple((float(e), float(m)) for e, m in (p.split(":") for p in text.split(",") if p.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epoch:multiplier pairs like 0:1,20:0.05, got {text!r}") from None


def _int_list(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("0", "none", ""):
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 256 or 256,128 (0 for none), got {text!r}") from None


def _float_or_none(text: str) -> float | str:
    return "none" if text.lower() == "none" else float(text)


#: CMLConfig fields whose flag is not the plain ``--field-name TYPE`` (flag None: the plain name).
_FLAGS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "use_rank_weight": ("--no-rank-weight", {"action": "store_false",
                                             "help": "plain triplet loss instead of the WARP-style rank weight"}),
    "feature_row_norm": ("--no-feature-row-norm", {"action": "store_false",
                                                   "help": "feed feature rows to f as they are (default: scaled to unit "
                                                           "L2 norm)"}),
    "init_from_features": ("--init-from-features", {"action": "store_true",
                                                    "help": "start item vectors at f(x) of the untrained feature network"}),
    "feature_hidden": (None, {"type": _int_list, "metavar": "W[,W...]|0",
                              "help": "hidden widths of the feature MLP (0: linear); default {default}"}),
    "batch_size": (None, {"type": int, "help": "default: n_pairs / 8, at least 1000, at most max(50000, 5 x rows)"}),
    "n_negatives": (None, {"type": int, "help": "default: 0.1 x items / positives per user, within [3, 20]"}),
    "valid_users": (None, {"type": _int_or_none, "metavar": "N|all",
                           "help": "validation users ranked each epoch for early stopping (default {default}; all: "
                                   "every one)"}),
    "epochs": (None, {"type": int, "help": "the most epochs the run takes (default {default}); the adaptive budget "
                                           "(--lr-schedule adaptive) decides how many it needs"}),
    "patience": (None, {"type": int, "help": "epochs without a better valid Recall@50 before stopping, for the "
                                             "non-adaptive schedules (default {default})"}),
    "decay_knots": (None, {"type": _knots, "metavar": "E:M[,E:M...]",
                           "help": "adaptive budget: replay this decay (epoch:multiplier points) instead of deciding "
                                   "by validation (what --final does)"}),
    "valid_pairs": (None, {"type": _int_or_none, "metavar": "N|none",
                           "help": "grow the validation sample to hold about N validation pairs (default {default}; "
                                   "none: keep --valid-users)"}),
    "horizon_epochs": (None, {"type": int, "help": "first decay horizon of the adaptive budget (default {default}; "
                                                   "--epochs is the most the run takes)"}),
    "lr_floor": (None, {"type": float, "help": "adaptive budget: the rate the decay ends at and the tail keeps, as a "
                                               "share of the peak (default {default})"}),
    "budget_z": (None, {"type": float, "help": "adaptive budget: standard errors a validation gain must exceed to "
                                               "extend the decay (default {default})"}),
    "max_norm": (None, {"type": _float_or_none, "metavar": "X|none", "help": "default {default}"}),
    "init_std": (None, {"type": _float_or_none, "metavar": "X|none", "help": "default {default}"}),
}


def config_from_args(args: argparse.Namespace) -> CMLConfig:
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(CMLConfig):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        changes[f.name] = None if value == "none" else value
    return CMLConfig().replace(**changes)




def cmd_train(args: argparse.Namespace) -> int:
    """``metricrec train``: ``--resume RUN_DIR`` continues a stopped run with its own arguments,
    starts it again when it has no checkpoint, or reports it finished (:mod:`.train_run`,
    :mod:`.run_folder`); a new run with ``--out`` records its arguments first, then trains
    (:func:`metricrec.cli.train_exec.run_train`)."""
    if args.resume:
        args = resumed_args(args)
        if args is None:  # a finished run: said so, nothing to train
            return 0
    config_from_args(args)  # the flags are checked before anything is written
    record_start(args)
    from .train_exec import run_train

    try:
        return run_train(args)
    except Exception:
        discard_early_record(args)
        raise


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``metricrec evaluate`` (:func:`metricrec.cli.train_exec.cmd_evaluate`)."""
    from .train_exec import cmd_evaluate as evaluate

    return evaluate(args)
