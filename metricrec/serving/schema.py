"""The service's request and response schemas (pydantic, extra ``serve``): what ``/openapi.json``
and ``/docs`` show.

FastAPI validates every request against these models (the query parameters are declared on the
routes); the routes build their JSON responses themselves (no validation pass per response), and the
response models document them. Ids are JSON strings in every response: the raw id's text (an integer id ``196`` is
``"196"``). Requests may send an id as a string or as a JSON number, which stands for its decimal
text (see :func:`metricrec.serving.service.request_id`).
"""

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

__all__ = ["BatchRequest", "BatchResponse", "ERROR_RESPONSES", "ErrorBody", "Health", "MAX_ID_LENGTH", "NewUserRequest",
           "NewUserResponse", "RawId", "RecommendResponse", "SimilarItemsResponse"]

#: Longest raw id a request may send (characters).
MAX_ID_LENGTH = 1000
#: A raw id in a request body: a string, or a JSON number standing for its decimal text (a whole number
#: up to 2**53; :func:`metricrec.serving.service.request_id` applies the rule). Strict: ``true`` is no id.
RawId = Union[StrictInt, StrictFloat, StrictStr]
_ID_TEXT = ("Raw ids: strings, or JSON numbers standing for their decimal text (172 is the id \"172\"; "
            "\"0172\" is another id).")

_ITEMS = "Recommended raw item ids, as strings, best first (shorter than n when fewer are left)."
_SCORES = ("The model's score of each item, same order (negative Euclidean distances for CML, higher is "
           "better); null only where the model gives a non-finite score.")


def _example(doc: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [doc]})


class RecommendResponse(BaseModel):
    """GET /recommend: the top n items of a known user, its training items left out."""

    model_config = _example({"user": "196", "items": ["216", "70", "65"], "scores": [-0.982758, -0.989788, -0.998367]})
    user: str = Field(description="The user's raw id, as a string.")
    items: list[str] = Field(description=_ITEMS)
    scores: list[Optional[float]] = Field(description=_SCORES)


class SimilarItemsResponse(BaseModel):
    """GET /similar-items: the n items nearest to an item, the item itself left out."""

    model_config = _example({"item": "50", "items": ["1", "100", "181"], "scores": [-0.204547, -0.221767, -0.227339]})
    item: str = Field(description="The query item's raw id, as a string.")
    items: list[str] = Field(description="The nearest raw item ids, as strings, nearest first.")
    scores: list[Optional[float]] = Field(description=_SCORES)


class NewUserResponse(BaseModel):
    """POST /recommend: a new user folded in from its liked items, and its top n unliked items."""

    model_config = _example({"liked": ["50", "172", "181"], "items": ["222", "258", "117"],
                             "scores": [-0.827616, -0.848222, -0.848798]})
    liked: list[str] = Field(description="The liked items as understood: raw ids as strings, duplicates removed.")
    items: list[str] = Field(description=_ITEMS)
    scores: list[Optional[float]] = Field(description=_SCORES)


class NewUserRequest(BaseModel):
    """The POST /recommend body."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"items": ["50", 172, "181"], "n": 5}]})
    items: list[RawId] = Field(min_length=1, description="The items the new user likes. " + _ID_TEXT)
    n: StrictInt = Field(10, ge=1, description="How many items to recommend (at most the server's --max-n).")
    include: Optional[list[RawId]] = Field(None, description="Only these items may be recommended.")
    exclude: Optional[list[RawId]] = Field(None, description="These items are never recommended (besides `items`).")


class BatchRequest(BaseModel):
    """The POST /recommend/batch body: several known users, one scoring call."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"users": ["196", 186], "n": 5,
                                                                               "exclude": ["50"]}]})
    users: list[RawId] = Field(min_length=1, description="Known users (at most the server's --max-users). " + _ID_TEXT)
    n: StrictInt = Field(10, ge=1, description="How many items per user (at most the server's --max-n).")
    include: Optional[list[RawId]] = Field(None, description="Only these items may be recommended, to every user.")
    exclude: Optional[list[RawId]] = Field(None, description="These items are never recommended (besides each "
                                                             "user's liked items).")


class BatchResponse(BaseModel):
    """POST /recommend/batch: one GET /recommend document per user, in the order of the request."""

    model_config = _example({"results": [{"user": "196", "items": ["216", "70"], "scores": [-0.98, -0.99]},
                                         {"user": "186", "items": ["302", "258"], "scores": [-0.91, -0.93]}]})
    results: list[RecommendResponse]


class Health(BaseModel):
    """GET /health and POST /reload: the loaded model."""

    status: str = Field(description='"ok".')
    model: str = Field(description="The model folder.")
    model_type: str
    distance: str = Field(description='"euclidean" or "dot".')
    n_users: int
    n_items: int
    factors: int
    loaded_at: str = Field(description="When the model was loaded, ISO 8601 in UTC.")
    load_seconds: float
    generation: int = Field(description="Successful loads so far (1 at start).")
    index: Optional[str] = Field(description='The ANN index kind ("hnsw", "ivf", "flat"), or null: exact.')
    pid: int
    data_source: Optional[dict[str, Any]] = Field(None, description=(
        'What the model was trained on, as saved with it (e.g. {"kind": "dataset", "name": "ml-100k", ...}; '
        '"fallback_for" names the data set that synthetic data stood in for); null if the model does not say.'))


class ErrorBody(BaseModel):
    """Every refused request (4xx) and unexpected failure (500)."""

    model_config = _example({"error": "unknown_id", "detail": "the model's users: 1 unknown user id(s): '0196'"})
    error: str = Field(description="A short code: unknown_id, invalid_n, missing_user, ...")
    detail: str = Field(description="One line saying what was wrong.")


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "Malformed JSON body", 404: "Unknown id", 409: "The new model could not be loaded",
            413: "Body too large", 415: "Body not sent as application/json",
            422: "Invalid request (missing or invalid parameter)", 500: "Internal error"}
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


#: ``responses=`` of each route: the error statuses it may answer with, all with :class:`ErrorBody`.
ERROR_RESPONSES = {
    "get": _errors(404, 422, 500), "post": _errors(400, 404, 413, 415, 422, 500), "health": _errors(500),
    "reload": _errors(409, 500),
}
