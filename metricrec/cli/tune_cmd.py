"""`metricrec tune`: search a model's settings (CML by default) with Optuna on the validation part; resumable (SQLite)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..fingerprint import fingerprint
from ..limits import thread_count
from ..models.cml.feature_reg import DEFAULT_FEATURE_WEIGHT
from ..tuning.objective import METRIC, Objective
from ..tuning.space import SPACES, describe, select
from ..tuning.study import PRUNERS
from ..training.backends import CHOICES as BACKEND_CHOICES
from .sources import (add_data_arguments, add_feature_arguments, add_split_arguments, describe_args, load_data,
                      load_item_features, make_split, note, rebuild)
from .train_cmd import MODEL_CONFIGS, _add_config_arguments, config_from_args
from .commands import COMMANDS

_SPACES_TEXT = "\n".join(f"--model {name}:\n{describe(space)}" for name, space in SPACES.items())
_EPILOG = f"""\
search spaces (one trial draws each of the model's; a hyperparameter flag fixes that setting instead):
{_SPACES_TEXT}

Each trial fits the model (--model, default cml) on the training part with early stopping on the validation part (never test)
and scores its best validation {METRIC}; a trial behind the others at the same epoch is pruned.
The study is stored in --storage after every trial: run the same command again to resume it.
Writes OUT/study.json (every trial) and OUT/best.json (for 'metricrec train --config OUT/best.json').
See docs/tuning.md.
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``tune`` subcommand."""
    p = sub.add_parser("tune", help=COMMANDS["tune"].help,
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p)
    add_split_arguments(p)
    add_feature_arguments(p)
    tuned = tuple(m for m in MODEL_CONFIGS if m in SPACES)
    p.add_argument("--model", choices=tuned, default="cml",
                   help="the model to tune (default cml); each has its own search space, below")
    _add_config_arguments(p, tuned)
    g = p.add_argument_group("study")
    g.add_argument("--trials", type=int, default=30,
                   help="finished trials (complete or pruned) the study should have, earlier runs included (default 30)")
    g.add_argument("--timeout", type=float, metavar="SECONDS", help="start no new trial after this many seconds")
    g.add_argument("--storage", default="sqlite:///runs/tune.db", help="Optuna storage URL (default %(default)s)")
    g.add_argument("--study-name", help="default: <model>-<data name> (cml-ml-100k)")
    g.add_argument("--out", metavar="DIR", help="where study.json and best.json go (default runs/tune-<study name>)")
    g.add_argument("--params", metavar="NAME[,NAME...]", help="tune only these (default: the whole search space)")
    g.add_argument("--pruner", choices=PRUNERS, default="median",
                   help="median: MedianPruner; halving: successive halving; none (default %(default)s)")
    g.add_argument("--prune-warmup", type=int, default=5, metavar="EPOCHS",
                   help="never prune before this epoch (default %(default)s)")
    g.add_argument("--sampler-seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--threads", type=thread_count, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--kernel", choices=BACKEND_CHOICES, default="auto", help="training step backend (as 'metricrec train')")
    p.set_defaults(func=cmd_tune)


def _data_flags(args: argparse.Namespace) -> str:
    """The data and split flags of this run as command-line text (for the printed train command)."""
    words: list[str] = []
    defaults = vars(rebuild({}))
    for key, value in describe_args(args).items():
        flag = "--" + key.replace("_", "-")
        if value == defaults.get(key):
            continue
        if value is True:
            words.append(flag)
        elif value is not False:
            words += [flag, str(value)]
    if getattr(args, "item_features", None):
        words += ["--item-features", args.item_features]
    return shlex.join(words)


def _objective(args: argparse.Namespace) -> tuple[Objective, dict[str, Any], dict[str, Any]]:
    """The trial function for the flags, what identifies the study, and the data description."""
    base = config_from_args(args)
    fixed = [f.name for f in dataclasses.fields(base) if getattr(args, f.name, None) is not None]
    space = select(args.params.split(",") if args.params else None, fixed, model=args.model)
    if args.trials < 1:
        raise ValueError(f"--trials must be >= 1, got {args.trials}")
    if args.timeout is not None and not args.timeout > 0:  # NaN too
        raise ConfigError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    data, desc = load_data(args)
    split = make_split(args, data)
    sizes = split.sizes()
    note(f"DATA: {desc.get('name') or desc.get('preset') or desc.get('path') or desc.get('train')} | "
         f"{split.train.n_users:,} users x {split.train.n_items:,} items | train {sizes['train']:,} / "
         f"valid {sizes['valid']:,} pairs (test {sizes['test']:,} is not used)")
    features, feature_doc = load_item_features(args, split.train)
    if features is not None and base.feature_weight == 0:
        base = base.replace(feature_weight=DEFAULT_FEATURE_WEIGHT)
    from .train_exec import MODEL_CLASSES

    objective = Objective(split, base, space, model_kw={"device": args.device, "num_threads": args.threads,
                                                        "kernel": args.kernel},
                          fit_kw={} if features is None else {"item_features": features},
                          model_class=MODEL_CLASSES[args.model])
    identity = {"train_fingerprint": fingerprint(split.train.matrix, split.train.user_ids, split.train.item_ids),
                "params": [p.name for p in space], "metric": METRIC, "base_config": base.to_dict()}
    if args.model != "cml":  # a CML study's identity as before, so that earlier studies still resume
        identity["model"] = args.model
    data_doc = {"source": desc, "args": describe_args(args), "sizes": sizes, "features": feature_doc or None}
    return objective, identity, data_doc


def cmd_tune(args: argparse.Namespace) -> int:
    """Run (or resume) the study, then print the best trial and where its configuration went."""
    from ..tuning.study import make_pruner, require_optuna
    from ..tuning.run import run_study

    require_optuna()
    pruner = make_pruner(args.pruner, args.prune_warmup)
    objective, identity, data_doc = _objective(args)
    src = data_doc["source"]
    name = args.study_name or f"{args.model}-" + str(src.get("name") or src.get("preset") or Path(str(src.get("path", "data"))).stem)
    out = Path(args.out or Path("runs") / f"tune-{name}")
    if os.path.lexists(out) and not out.is_dir():  # found now, not after the first trial
        raise ConfigError(f"--out {out}: exists and is not a folder; choose another --out")
    extra = {"data": data_doc, "data_flags": _data_flags(args), "out": str(out.resolve())}
    study = run_study(objective, storage=args.storage, name=name, trials=args.trials, timeout=args.timeout,
                      seed=args.sampler_seed, pruner=pruner, out=out, identity=identity, extra=extra)
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    if "COMPLETE" not in counts:
        print(f"no trial completed yet ({summary}); study -> {out / 'study.json'}")
        return 1
    best = study.best_trial
    print(f"best trial {best.number}: valid {METRIC} {best.value:.4f} ({len(study.trials)} trials: {summary})")
    print(f"best config -> {out / 'best.json'}; study -> {out / 'study.json'}")
    model = "" if args.model == "cml" else f"--model {args.model} "
    print(f"train it: metricrec train {model}--config {shlex.quote(str(out / 'best.json'))} {extra['data_flags']}")
    return 0
