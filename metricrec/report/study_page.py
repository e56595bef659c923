"""The report page of a ``metricrec tune`` folder (``study.json``): history, curves, importances."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import DataError
from . import figures
from .html import figure, kv_table, note, page, section, table
from .run_page import read_json

__all__ = ["render_study", "param_importances"]

#: Fewer complete trials than this: no importances (fANOVA on a handful of points is noise).
MIN_TRIALS_FOR_IMPORTANCE = 4
#: Fewer complete trials than this: importances are shown with a warning that they are a rough guide.
FEW_TRIALS_FOR_IMPORTANCE = 20


def param_importances(doc: Mapping[str, Any]) -> tuple[dict[str, float] | None, str]:
    """fANOVA importances of the tuned parameters over the study's complete trials, or (None, why not).

    The study is rebuilt in memory from ``study.json`` (params, distributions, values), so the
    SQLite file is not needed.
    """
    try:
        import optuna
    except ImportError:
        return None, "parameter importances need Optuna (pip install 'metricrec[tune]')"
    dists = {k: optuna.distributions.json_to_distribution(v) for k, v in (doc.get("distributions") or {}).items()}
    # the defaults' trial draws no parameter: it has no place in a fit of value against parameters
    complete = [t for t in doc.get("trials") or [] if t.get("state") == "COMPLETE" and t.get("value") is not None
                and not t.get("defaults") and set(dists) <= set(t.get("params") or {})]
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return None, (f"parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials "
                      f"({len(complete)} so far)")
    if len({t["value"] for t in complete}) < 2:
        return None, "every complete trial has the same value: no parameter importances"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for t in complete:
        params = {k: v for k, v in t["params"].items() if k in dists}
        study.add_trial(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params},
                                                  value=t["value"]))
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=32, seed=0)  # the same page every time
        scores = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except ImportError:
        return None, "parameter importances need scikit-learn (pip install 'metricrec[tune]')"
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        return None, f"parameter importances failed: {exc}"
    caveat = "" if len(complete) >= FEW_TRIALS_FOR_IMPORTANCE else (
        f"warning: fitted to only {len(complete)} complete trials (fewer than {FEW_TRIALS_FOR_IMPORTANCE}): a rough "
        "guide to what mattered, not a ranking to act on; run more trials before trusting it")
    return {k: float(v) for k, v in scores.items()}, caveat


def _trials_table(trials: Sequence[Mapping[str, Any]], names: Sequence[str]) -> str:
    rows = []
    for t in trials:
        inter = t.get("intermediate") or {}
        last = f"{list(inter.values())[-1]:.4f} @{list(inter)[-1]}" if inter and t["state"] == "PRUNED" else None
        rows.append([t["number"], t["state"], t.get("value"), last, t.get("epochs"), t.get("best_epoch"),
                     t.get("seconds")] + [t["params"].get(n) for n in names])
    return table(["trial", "state", "valid R@50", "pruned at", "epochs", "best epoch", "seconds", *names], rows, left=2)


def _summary(doc: Mapping[str, Any]) -> str:
    data = doc.get("data") or {}
    src = data.get("source") or {}
    best = doc.get("best") or {}
    secs = sum(t.get("seconds") or 0.0 for t in doc.get("trials") or [])
    return kv_table([("study", doc.get("study_name")), ("storage", doc.get("storage")),
                     ("data", src.get("name") or src.get("preset") or src.get("path") or "-"),
                     ("objective", doc.get("metric")), ("trials", doc.get("n_trials")),
                     ("states", ", ".join(f"{n} {s.lower()}" for s, n in (doc.get("states") or {}).items())),
                     ("seconds in trials", secs), ("best trial", best.get("number")),
                     ("best value", best.get("value"))])


def render_study(folder: Path) -> str:
    """The HTML page of a ``metricrec tune --out`` folder."""
    doc = read_json(folder / "study.json")
    trials = doc.get("trials")
    if doc.get("kind") != "metricrec.tune" or not isinstance(trials, list):
        raise DataError(f"{folder / 'study.json'}: not a study written by 'metricrec tune'")
    names = [p["name"] for p in doc.get("space") or []]
    sections = [section("Summary", _summary(doc))]
    if trials:
        sections.append(section("History", figure(figures.study_history(trials), "value of every trial and the best so far",
                                                  "blue: complete trials; green star: the defaults (trial 0); black "
                                                  "crosses: pruned trials at their last reported value; red: best so far"),
                                figure(figures.study_curves(trials), "per-epoch validation curves of the trials")))
    scores, why = param_importances(doc)
    if scores:
        shown = figure(figures.importances(scores), "parameter importances")
        sections.append(section("Parameter importances", note(why), shown) if why else
                        section("Parameter importances", shown))
    else:
        sections.append(section("Parameter importances", note(why)))
    best = doc.get("best")
    if best:
        sections.append(section(f"Best configuration (trial {best['number']})",
                                note(f"written to best.json: metricrec train --config {folder / 'best.json'} "
                                     f"{doc.get('data_flags', '')}"),
                                kv_table(sorted((best.get("config") or best["params"]).items()))))
    space = doc.get("space") or []
    sections.append(section("Search space", table(["parameter", "kind", "range", "what"],
                                                  [[p["name"], p["kind"], p["range"], p["why"]] for p in space], left=4)))
    sections.append(section("Trials", _trials_table(trials, names)))
    return page(f"metricrec tuning study: {doc.get('study_name')}", str(folder.resolve()), sections)
