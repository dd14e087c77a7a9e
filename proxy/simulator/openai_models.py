"""`GET /v1/models` and `GET /v1/models/{model}`: a fixed catalogue."""

from __future__ import annotations

from typing import Final

from .openai_prompt import not_found
from .reply import Call, Reply, json_reply

CREATED_AT: Final = 1_715_367_049
MODEL_IDS: Final = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "o4-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "omni-moderation-latest",
)


def _model_object(model_id: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": CREATED_AT, "owned_by": "system"}


def list_models(call: Call) -> Reply:
    """The catalogue as an OpenAI list object."""
    return json_reply({"object": "list", "data": [_model_object(m) for m in MODEL_IDS]})


def retrieve_model(call: Call) -> Reply:
    """One catalogue entry; 404 `model_not_found` for anything else."""
    model_id = call.params["model"]
    if model_id not in MODEL_IDS:
        error = not_found(f"The model '{model_id}' does not exist or you do not have access to it.")
        error.code = "model_not_found"
        raise error
    return json_reply(_model_object(model_id))
