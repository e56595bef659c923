"""`metricrec train` and `metricrec evaluate`: their flags, and the start of a run.

Parsing the flags and writing the run's first record (``RUN/run.json`` with the arguments, before
anything else: :func:`metricrec.cli.train_run.record_start`) import no torch, so a run killed in
its first second can be restarted by its folder; the work itself is :mod:`.train_exec`.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..errors import ConfigError
from ..limits import MAX_FACTORS, bounded_int, thread_count, widths
from ..models.bpr.config import BPRConfig
from ..models.cml.config import CMLConfig
from ..models.dpcml.config import NEGATIVE_MODES as DPCML_NEGATIVE_MODES, DPCMLConfig
from ..models.lrml.config import METRICS as LRML_METRICS, NEGATIVE_RELATIONS, LRMLConfig
from ..models.sfcml.config import WEIGHTINGS, SFCMLConfig
from ..models.sml.config import NEGATIVE_MODES, SMLConfig
from ..models.transcf.config import TransCFConfig
from ..training.backends import CHOICES as BACKEND_CHOICES
from ..training.config import DEFAULT_TIMEOUT_S
from .train_run import add_run_arguments, discard_early_record, record_start, resumed_args
from .sources import add_data_arguments, add_feature_arguments, add_split_arguments
from .commands import COMMANDS

#: The models ``metricrec train --model`` trains, by flag value, and their config classes (read without
#: torch: the model classes are :data:`metricrec.cli.train_exec.MODEL_CLASSES`).
MODEL_CONFIGS: dict[str, type] = {"cml": CMLConfig, "sml": SMLConfig, "dpcml": DPCMLConfig, "sfcml": SFCMLConfig,
                                  "transcf": TransCFConfig, "lrml": LRMLConfig, "bpr": BPRConfig}


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help=COMMANDS["train"].help)
    add_data_arguments(train)
    add_split_arguments(train)
    add_feature_arguments(train)
    train.add_argument("--model", choices=tuple(MODEL_CONFIGS), default="cml",
                       help="the model to train (default cml): CML (Hsieh et al., WWW 2017), SML (symmetric metric "
                            "learning with learned margins, Li et al., AAAI 2020), DPCML (several vectors per user, "
                            "Bao et al., NeurIPS 2022), SFCML (sampling-free, Bao et al., TPAMI 2023), TransCF (Park "
                            "et al., ICDM 2018), LRML (Tay et al., WWW 2018) or BPR matrix factorisation; each takes "
                            "the shared training flags and its own (docs/models.md)")
    _add_config_arguments(train, tuple(MODEL_CONFIGS))
    train.add_argument("--out", help="output folder (default runs/<data>)")
    train.add_argument("--final", action="store_true",
                       help="after the validated run, train a production model on EVERY interaction (train, valid "
                            "and test) for the validated run's best epoch count with its schedule, into OUT/final "
                            "(recommend/serve --model OUT/final); the test metrics stay the validated run's")
    train.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    train.add_argument("--threads", type=thread_count, help="torch CPU threads (default: torch's choice)")
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
def _add_config_arguments(p: argparse.ArgumentParser, models: tuple[str, ...] = ("cml",)) -> None:
    """One flag per config field of ``models`` (keys of :data:`MODEL_CONFIGS`; ``metricrec tune``: CML's
    only): the fields they all have in one group, each model's own in a group of its own. Every flag
    defaults to None, so that the chosen model's config supplies its own default (:func:`config_from_args`)."""
    groups: dict[tuple[str, ...], Any] = {}
    for name, (field, have) in _field_owners(models).items():
        key = have if len(have) < len(models) else models
        if key not in groups:
            groups[key] = p.add_argument_group(_group_title(key, models))
        flag, kwargs = _FLAGS.get(name, (None, {}))
        kwargs = dict(kwargs)
        if "action" not in kwargs:
            kwargs.setdefault("type", type(field.default) if field.default is not None else float)
        kwargs["help"] = kwargs.get("help", "default {default}").format(default=_defaults_text(name, have))
        groups[key].add_argument(_flag(name), dest=name, default=None, **kwargs)


def _field_owners(models: tuple[str, ...]) -> dict[str, tuple[dataclasses.Field, tuple[str, ...]]]:
    """Every config field of ``models``, in the order of their configs: (the field of the first config
    that has it, the models whose config has it)."""
    owners: dict[str, tuple[dataclasses.Field, tuple[str, ...]]] = {}
    for model in models:
        for f in dataclasses.fields(MODEL_CONFIGS[model]):
            field, have = owners.get(f.name, (f, ()))
            owners[f.name] = (field, (*have, model))
    return owners


def _model_label(model: str) -> str:
    return MODEL_CONFIGS[model].__name__.removesuffix("Config")


def _group_title(key: tuple[str, ...], models: tuple[str, ...]) -> str:
    configs = ", ".join(MODEL_CONFIGS[m].__name__ for m in key)
    if len(models) == 1:
        return f"{_model_label(models[0])} hyperparameters (defaults: {configs})"
    if key == models:
        return f"training hyperparameters of every --model (defaults: the model's config, {configs})"
    return f"{'/'.join(map(_model_label, key))} hyperparameters (--model {'/'.join(key)} only; defaults: {configs})"


def _shown(value: Any) -> Any:
    return (",".join(map(str, value)) or "0") if isinstance(value, tuple) else value


def _defaults_text(name: str, models: tuple[str, ...]) -> str:
    """The field's default, or each model's where they differ (``256 (cml), 128 (sml), 100 (bpr)``)."""
    by_value: dict[str, list[str]] = {}
    for m in models:
        default = next(f.default for f in dataclasses.fields(MODEL_CONFIGS[m]) if f.name == name)
        by_value.setdefault(str(_shown(default)), []).append(m)
    if len(by_value) == 1:
        return next(iter(by_value))
    return ", ".join(f"{value} ({', '.join(have)})" for value, have in by_value.items())


def _flag(name: str) -> str:
    """The flag of config field ``name``."""
    return _FLAGS.get(name, (None, {}))[0] or "--" + name.replace("_", "-")


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
    "factors": (None, {"type": bounded_int(1, MAX_FACTORS, "the widest embedding a model file may hold"),
                       "help": "embedding dimension d (default {default})"}),
    "feature_hidden": (None, {"type": widths, "metavar": "W[,W...]|0",
                              "help": "hidden widths of the feature MLP (0: linear); default {default}"}),
    "batch_size": (None, {"type": int, "help": "default: n_pairs / 8, at least 1000, at most max(50000, 5 x rows)"}),
    "n_negatives": (None, {"type": int, "help": "U, negatives sampled per positive (default {default}; None: 0.1 x "
                                                "items / positives per user, within [3, 20])"}),
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
    "margin_max": (None, {"help": "l, the bound of every learned margin: m_u and n_i stay in [0, l] (default {default})"}),
    "margin_init": (None, {"type": _float_or_none, "metavar": "X|none",
                           "help": "where every margin starts, in [0, l] (none: at --margin-max; default {default})"}),
    "item_weight": (None, {"help": "lambda, the weight of the item-centric hinge (0: CML's hinge with learned user "
                                   "margins; default {default})"}),
    "margin_reg": (None, {"help": "gamma, the weight of the margin regulariser -(mean m_u + mean n_i) "
                                  "(default {default})"}),
    "margin_lr": (None, {"help": "AdaGrad rate of the margins, constant (default {default})"}),
    "negatives": (None, {"type": str, "choices": tuple(dict.fromkeys((*NEGATIVE_MODES, *DPCML_NEGATIVE_MODES))),
                         "help": "all: every sampled negative forms a hinge (their mean); hardest: only the most "
                                 "violating one (SML: of each side; DPCML: CML's closest of U) (default {default})"}),
    "weighting": (None, {"type": str, "choices": WEIGHTINGS,
                         "help": "SFCML's normalisation of the all-negatives loss: per user or per pair (default "
                                 "{default})"}),
    "metric": (None, {"type": str, "choices": LRML_METRICS, "help": "LRML's distance, l2 or l1 (default {default})"}),
    "negative_relation": (None, {"type": str, "choices": NEGATIVE_RELATIONS,
                                 "help": "LRML: the relation a negative pair is scored with, its own or the positive's "
                                         "(default {default})"}),
    "regularization": (None, {"help": "L2 weight on the rows of each BPR triple (default {default})"}),
    "n_vectors": (None, {"type": int, "metavar": "C", "help": "DPCML: vectors per user, scored by the nearest (default "
                                                             "{default})"}),
    "diversity_weight": (None, {"help": "eta, the weight of DPCML's diversity regulariser (default {default})"}),
    "diversity_min": (None, {"help": "delta_1, the lower end of the band a user's vector spread is held in "
                                     "(default {default})"}),
    "diversity_max": (None, {"help": "delta_2, the upper end of that band (default {default})"}),
    "init_spread": (None, {"help": "DPCML: the seeded perturbation that separates a user's C start vectors (default "
                                   "{default})"}),
    "dist_reg": (None, {"help": "TransCF: weight of the distance regulariser d(u,i) on positives (default {default})"}),
    "nbr_reg": (None, {"help": "TransCF: weight of the neighbourhood regulariser |u - alpha_u|^2 + |v - beta_v|^2 "
                                "(default {default})"}),
    "memory_slots": (None, {"type": int, "help": "LRML: key/value slots of the relation memory (default {default})"}),
    "memory_lr": (None, {"help": "LRML: AdaGrad rate of the memory's keys and values (default {default})"}),
    "memory_init_std": (None, {"type": _float_or_none, "metavar": "X|none",
                               "help": "LRML: std of the memory's start (none: 1/sqrt(d); default {default})"}),
}


def config_from_args(args: argparse.Namespace) -> Any:
    """The config of the model ``args.model`` names (``metricrec tune``, which has no ``--model``: CML's),
    from its defaults and the flags given. A flag of another model's field is a :class:`ConfigError`
    naming the model it belongs to (``--margin-max`` with ``--model cml``), and so are item features for
    a model other than CML (CML+F is CML's)."""
    model = getattr(args, "model", None) or "cml"
    config_class = MODEL_CONFIGS[model]
    own = {f.name for f in dataclasses.fields(config_class)}
    changes: dict[str, Any] = {}
    foreign: list[str] = []
    for name, (_, have) in _field_owners(tuple(MODEL_CONFIGS)).items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if name not in own:
            foreign.append(f"{_flag(name)} is a setting of --model {'/'.join(have)}")
            continue
        changes[name] = None if value == "none" else value
    if foreign:
        raise ConfigError(f"--model {model} has no such setting: {'; '.join(foreign)}")
    if model != "cml" and getattr(args, "item_features", None):
        raise ConfigError(f"--item-features trains CML+F (--model cml); --model {model} takes no item features")
    return config_class().replace(**changes)




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
