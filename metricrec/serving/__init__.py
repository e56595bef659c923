"""Serving a trained model: approximate nearest-neighbour indexes (:mod:`.ann`, extra ``ann``) and
an HTTP service (:mod:`.app`, extra ``serve``): its hot path (:mod:`.fastpath`), metrics
(:mod:`.metrics`), the serving cache of memory-mapped tables (:mod:`.snapshot`) and the worker
processes of ``metricrec serve`` (:mod:`.workers`).

Nothing here is imported by ``import metricrec``; faiss and FastAPI are imported only when used.
"""
