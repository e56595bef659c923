"""A run of each family model stopped mid-epoch and resumed from its checkpoint is bitwise the run
that was never stopped (the same kernels with the same thread count in one process; what each step
keeps beside the tables -- LRML's memory, SML's margins -- is tested in its own module)."""

import numpy as np
import pytest

from crash_checkpointer import Boom, CrashAfter
from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate
from metricrec.models import DPCML, SFCML, TransCF
from metricrec.training.checkpoint import Checkpointer


@pytest.fixture(scope="module")
def split():
    return ratio_split(generate(preset="small", seed=2), seed=0)


@pytest.mark.parametrize("cls", [DPCML, SFCML, TransCF], ids=lambda c: c.__name__)
def test_a_run_resumed_mid_epoch_is_bitwise_the_uninterrupted_one(cls, split, tmp_path):
    kw = dict(factors=8, batch_size=300, epochs=3, eval_every=1, patience=0, lr_schedule="linear",
              show_progress=False, verbose=False, num_threads=1)
    reference = cls(**kw).fit(split.train, split.valid)
    with pytest.raises(Boom):
        cls(**kw).fit(split.train, split.valid, callbacks=[CrashAfter(tmp_path / "ck", 14, every_minutes=1e-9)])
    resumed = Checkpointer(tmp_path / "ck", resume=True)
    again = cls(**kw).fit(split.train, split.valid, callbacks=[resumed])
    assert resumed.resumed_from["epoch"] >= 1
    assert np.array_equal(again.user_embeddings, reference.user_embeddings)
    assert np.array_equal(again.item_embeddings, reference.item_embeddings)
    assert [e.loss for e in again.history.epochs] == [e.loss for e in reference.history.epochs]
