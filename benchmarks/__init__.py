"""Benchmarks for metricrec: side-by-side quality, training speed, evaluation speed, CML+F.

Benchmark-only code (not installed with metricrec, never imported by it). Run each benchmark as a
module from the repository root, e.g. ``python -m benchmarks.compare``; see benchmarks/README.md.

Every method -- metricrec's CML and the peer libraries alike -- is driven through one protocol
(:mod:`benchmarks.peers`: ``partial_fit_epoch(train_csr) -> seconds`` and ``scorer()``) by one
loop (:func:`benchmarks.runner.run_peer`), and every score goes through
:func:`metricrec.metrics.evaluate_part` (docs/protocol.md).
"""
