"""Serving a trained model: approximate nearest-neighbour indexes (:mod:`.ann`, extra ``ann``) and
an HTTP service (:mod:`.app`, extra ``serve``).

Nothing here is imported by ``import metricrec``; faiss and FastAPI are imported only when used.
"""
