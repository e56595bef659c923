"""A worker's heap is frozen out of the cyclic collector's reach (``metricrec.serving.workers.freeze_heap``):
what was alive at start-up or came with a reloaded model is not walked by the full collections that
otherwise paused the event loop for 40-120 ms."""

import gc
import weakref

import pytest

from metricrec.serving.workers import RunDir, SharedModelHolder, freeze_heap


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the suite runs with the collector as it found it


def _tracked(obj) -> bool:
    # gc.get_objects() lists the three generations the collector walks, never the frozen objects
    return any(o is obj for o in gc.get_objects())


def test_freeze_heap_takes_live_objects_out_of_the_collectors_generations(unfrozen):
    cycle = []
    cycle.append(cycle)
    assert _tracked(cycle) and gc.get_freeze_count() == 0
    freeze_heap(collect=False)
    assert not _tracked(cycle) and gc.get_freeze_count() > 0
    after = []
    assert _tracked(after)  # what is allocated later is collected as before


class _Node:
    pass


def test_freeze_heap_collects_garbage_first(unfrozen):
    def unreachable_cycle():
        node = _Node()
        node.self = node
        return weakref.ref(node)

    dropped = unreachable_cycle()
    freeze_heap()  # a full collection first: the cycle is freed, not frozen for good
    assert dropped() is None
    kept = unreachable_cycle()
    freeze_heap(collect=False)  # the reload's form: frozen as it is, garbage included
    assert kept() is not None


def test_a_worker_model_and_its_reload_are_frozen(unfrozen, tiny_model, tmp_path):
    tiny_model.save(tmp_path / "m")
    run = RunDir.create({"cache_dir": str(tmp_path / "cache")})
    holder = SharedModelHolder(run, tmp_path / "m", exact=True, warm_up=False)
    first = holder.current.model
    assert not _tracked(first) and not _tracked(first.config)
    frozen = gc.get_freeze_count()
    tiny_model.save(tmp_path / "m")  # the folder re-saved: a reload loads a new model object
    snap = holder.reload()
    assert snap.model is not first and not _tracked(snap.model) and gc.get_freeze_count() > frozen
