"""Run a tuning study to its target and keep ``study.json`` / ``best.json`` current."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

from ..errors import TrainingDivergedError
from ..serialization import atomic_write_json
from .objective import DEFAULTS_ATTR, METRIC, Objective
from .study import best_config_document, open_study, require_optuna, study_document

__all__ = ["run_study", "write_results", "trial_line"]


def write_results(study: Any, out: Path, storage: str, objective: Objective,
                  extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``out/study.json`` and, once a trial completed, ``out/best.json``; return the study doc."""
    doc = study_document(study, storage, objective.space, objective.base, extra)
    atomic_write_json(out / "study.json", doc)
    if doc["best"] is not None:
        atomic_write_json(out / "best.json", best_config_document(objective.base, doc["best"]["params"]))
    return doc


def trial_line(t: Any, best: Any) -> str:
    """One line on a finished trial: number, state, value, best so far, seconds, epochs, params."""
    value = "-" if t.value is None else f"{t.value:.4f}"
    last = max(t.intermediate_values.items(), default=None)
    if t.state.name == "PRUNED" and last is not None:
        value = f"({last[1]:.4f} at epoch {last[0]})"
    best_text = "" if best is None else f" | best {best.value:.4f} (#{best.number})"
    seconds = t.user_attrs.get("seconds")
    secs = "" if seconds is None else f" {seconds:.1f} s"
    epochs = t.user_attrs.get("epochs")
    ep = "" if epochs is None else f" {epochs} epochs"
    params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
    if t.user_attrs.get(DEFAULTS_ATTR):
        params = "the defaults (no parameter drawn)"
    why = f" ({t.user_attrs['failed_because']})" if t.state.name == "FAIL" and "failed_because" in t.user_attrs else ""
    return f"trial {t.number:>3} {t.state.name:<8} valid {METRIC} {value}{why}{secs}{ep}{best_text} | {params}"


def _finished(study: Any) -> int:
    optuna = require_optuna()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def run_study(objective: Objective, *, storage: str, name: str, trials: int, timeout: float | None, seed: int,
              pruner: Any, out: Path, identity: Mapping[str, Any], extra: Mapping[str, Any] | None = None,
              log: TextIO | None = None, on_trial: Callable[[Any, Any], None] | None = None) -> Any:
    """Open or resume the study and run trials until it has ``trials`` finished ones (COMPLETE or
    PRUNED, earlier runs included) or ``timeout`` seconds have passed.

    ``out/study.json`` and ``out/best.json`` are rewritten after every trial and when the run ends,
    interrupted or not. Returns the study.
    """
    log = log if log is not None else sys.stderr
    study, failed = open_study(storage, name, seed=seed, pruner=pruner, identity=identity)
    if failed:
        print(f"TUNE: marked FAIL (left RUNNING by an interrupted run): trial {', '.join(map(str, failed))}", file=log)
    if not study.trials:  # a new study: its first trial is the defaults, the bar every drawn trial must pass
        study.enqueue_trial({}, user_attrs={DEFAULTS_ATTR: True})
    done = _finished(study)
    todo = max(0, trials - done)
    print(f"TUNE: study {name!r} in {storage}: {len(study.trials)} trials stored ({done} finished); "
          f"running {todo} more" + (f" (timeout {timeout:g} s)" if timeout else ""), file=log)

    def after_trial(st: Any, t: Any) -> None:
        best = st.best_trial if any(x.state.name == "COMPLETE" for x in st.get_trials(deepcopy=False)) else None
        print(trial_line(t, best), file=log, flush=True)
        write_results(st, out, storage, objective, extra)
        if on_trial is not None:
            on_trial(st, t)

    try:
        if todo:
            study.optimize(objective, n_trials=todo, timeout=timeout, catch=(TrainingDivergedError,),
                           callbacks=[after_trial], gc_after_trial=False, show_progress_bar=False)
    except KeyboardInterrupt:
        last = study.trials[-1] if study.trials else None
        failed = f"; trial {last.number} marked FAIL" if last is not None and last.state.name == "FAIL" else ""
        print(f"TUNE: interrupted{failed}. Run the same command to resume.", file=log)
        raise
    finally:
        write_results(study, out, storage, objective, extra)
    return study

