"""The search space, the pruning callback, one trial, and best.json as a train config."""

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

optuna = pytest.importorskip("optuna")

from metricrec.cli.config_file import apply_config_file
from metricrec.cli.main import build_parser
from metricrec.cli.train_cmd import config_from_args
from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate
from metricrec.errors import ConfigError
from metricrec.models.cml.config import CMLConfig
from metricrec.training.history import EpochRecord
from metricrec.tuning import SEARCH_SPACE, Objective, PruningCallback, describe, select, suggest
from metricrec.tuning.study import best_config_document

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_space_fields_exist_and_ranges_are_documented():
    fields = {f.name for f in dataclasses.fields(CMLConfig)}
    assert {p.name for p in SEARCH_SPACE} <= fields
    text = describe()
    for p in SEARCH_SPACE:
        assert p.name in text and p.range_text() in text
    assert "[0.01, 0.5] log" in text  # learning_rate


def test_select_drops_fixed_and_refuses_unknown_or_empty():
    assert [p.name for p in select(["margin", "learning-rate"])] == ["margin", "learning_rate"]
    assert "factors" not in [p.name for p in select(None, fixed=["factors"])]
    with pytest.raises(ConfigError, match="marginn"):
        select(["marginn"])
    with pytest.raises(ConfigError, match="nothing to tune"):
        select(["margin"], fixed=["margin"])


def test_suggest_draws_inside_the_ranges():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        values = suggest(trial, SEARCH_SPACE)
        for p in SEARCH_SPACE:
            v = values[p.name]
            if p.kind == "categorical":
                assert v in p.choices
            else:
                assert p.low <= v <= p.high and (p.kind == "float" or isinstance(v, int))
        CMLConfig().replace(**values)  # every draw is a valid configuration
        study.tell(trial, 0.0)


class _FakeTrial:
    def __init__(self, prune_at):
        self.reported, self.prune_at = [], prune_at

    def report(self, value, step):
        self.reported.append((step, value))

    def should_prune(self):
        return self.reported[-1][0] >= self.prune_at


def test_pruning_callback_reports_best_so_far_and_stops_when_told():
    trial = _FakeTrial(prune_at=3)
    cb = PruningCallback(trial)
    assert cb(EpochRecord(1, 1.0, 0.1, valid={"recall@50": 0.2}), None) is False
    assert cb(EpochRecord(2, 1.0, 0.1, valid={}), None) is False  # not validated: nothing reported
    assert cb(EpochRecord(3, 1.0, 0.1, valid={"recall@50": 0.1}), None) is True
    assert trial.reported == [(1, 0.2), (3, 0.2)] and cb.pruned_at == 3


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


@pytest.fixture(scope="module")
def split():
    return ratio_split(generate(preset="small", seed=0), (0.6, 0.2, 0.2), seed=0)


def test_objective_completes_and_prunes(split):
    base = CMLConfig(epochs=4, factors=8, patience=0, eval_every=1)  # a value to report every epoch
    objective = Objective(split, base, select(["margin"]), model_kw={"num_threads": 1})
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=1)
    done = study.trials[0]
    assert done.state.name == "COMPLETE" and 0 < done.value <= 1
    assert done.value == pytest.approx(max(done.intermediate_values.values()))
    assert done.user_attrs["epochs"] == 4 and sorted(done.intermediate_values) == [1, 2, 3, 4]

    pruned = optuna.create_study(direction="maximize", pruner=_AlwaysPrune())
    pruned.optimize(objective, n_trials=1)
    t = pruned.trials[0]
    assert t.state.name == "PRUNED" and t.user_attrs["epochs"] == 1  # the fit stopped after epoch 1


def test_objective_needs_a_valid_part(split):
    empty = dataclasses.replace(split, valid=split.valid.with_matrix(sp.csr_matrix(split.valid.shape, dtype=np.float32)))
    with pytest.raises(ConfigError, match="validation part"):
        Objective(empty, CMLConfig(), SEARCH_SPACE)


def test_best_config_document_reads_back_through_train_flags():
    base = CMLConfig(epochs=7, factors=16, max_norm=None, feature_hidden=(32, 8), use_rank_weight=False)
    doc = best_config_document(base, {"margin": 0.8, "learning_rate": 0.07, "batch_size": 1234})
    assert "batch_size" in doc and "valid_users" in doc and "init_std" not in doc  # None by default: left out
    parser = build_parser()
    train = next(a for a in parser._actions if hasattr(a, "choices") and a.choices and "train" in a.choices)
    apply_config_file(train.choices["train"], doc, "best.json")
    args = parser.parse_args(["train", "--synthetic", "small"])
    assert config_from_args(args) == base.replace(margin=0.8, learning_rate=0.07, batch_size=1234)


@pytest.mark.parametrize("model", ["sml", "dpcml", "sfcml", "transcf", "lrml", "bpr"])
def test_every_models_space_draws_valid_configurations_of_that_model(model):
    from metricrec.cli.train_cmd import MODEL_CONFIGS
    from metricrec.tuning.space import space_of

    space = space_of(model)
    fields = {f.name for f in dataclasses.fields(MODEL_CONFIGS[model])}
    assert {p.name for p in space} <= fields  # every tuned setting is a field of that model's config
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(10):
        trial = study.ask()
        MODEL_CONFIGS[model]().replace(**suggest(trial, space))  # a valid configuration every time
        study.tell(trial, 0.0)
