"""A checkpointer whose process 'dies' after a number of batches: the kill that resume tests stand in
for (shared by tests/reliability/test_checkpoint.py and the models' resume tests)."""

from metricrec.training.checkpoint import Checkpointer


class Boom(Exception):
    """The crash the tests cause."""


class CrashAfter(Checkpointer):
    """A checkpointer whose process 'dies' after ``n`` batches (the exception stands for a kill)."""

    def __init__(self, folder, n, **kw):
        super().__init__(folder, **kw)
        self.n, self.seen = n, 0

    def after_batch(self, trainer, pair, loss, parts):
        super().after_batch(trainer, pair, loss, parts)
        self.seen += 1
        if self.seen == self.n:
            raise Boom
