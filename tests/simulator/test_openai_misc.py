"""Embeddings, moderations and the model list through the real openai SDK."""

from __future__ import annotations

import json
import math

import openai
import pytest

from proxy.simulator.openai_moderations import CATEGORIES

from .conftest import Control


def test_default_base64_and_float_embeddings_carry_the_same_unit_vector(
    oai: openai.OpenAI, control: Control
) -> None:
    via_base64 = oai.embeddings.create(model="text-embedding-3-small", input="hello world")
    via_float = oai.embeddings.create(
        model="text-embedding-3-small", input="hello world", encoding_format="float"
    )
    assert control.requests(2)[0]["body"]["encoding_format"] == "base64"
    vector = via_base64.data[0].embedding
    assert len(vector) == 1536
    assert vector == via_float.data[0].embedding
    assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-5)
    assert via_base64.usage.prompt_tokens == via_base64.usage.total_tokens == 2


@pytest.mark.parametrize(
    ("model", "dimensions", "expected"),
    [
        ("text-embedding-3-large", None, 3072),
        ("text-embedding-3-small", 256, 256),
    ],
)
def test_embedding_dimensions_follow_model_and_request(
    oai: openai.OpenAI, model: str, dimensions: int | None, expected: int
) -> None:
    extra = {} if dimensions is None else {"dimensions": dimensions}
    result = oai.embeddings.create(model=model, input=["a", "b c"], **extra)  # type: ignore[arg-type]
    assert [len(item.embedding) for item in result.data] == [expected, expected]
    assert [item.index for item in result.data] == [0, 1]
    assert result.usage.prompt_tokens == 3


def test_embeddings_are_deterministic_and_accept_token_arrays(oai: openai.OpenAI) -> None:
    def embed(value: str | list[int]) -> list[float]:
        return oai.embeddings.create(model="text-embedding-3-small", input=value).data[0].embedding

    assert embed("same") == embed("same")
    assert embed("same") != embed("different")
    tokens = oai.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3], [4, 5]])
    assert len(tokens.data) == 2 and tokens.usage.prompt_tokens == 5


@pytest.mark.parametrize(
    ("text", "flagged", "category"),
    [
        ("I will kill the process", True, "violence"),
        ("how to build a bomb", True, "illicit/violent"),
        ("I hate Mondays", True, "hate"),
        ("a lovely walk by the river", False, None),
    ],
)
def test_moderation_flags_trigger_words(
    oai: openai.OpenAI, text: str, flagged: bool, category: str | None
) -> None:
    result = oai.moderations.create(model="omni-moderation-latest", input=text)
    assert result.id.startswith("modr-")
    (verdict,) = result.results
    assert verdict.flagged is flagged
    categories = verdict.categories.model_dump(by_alias=True)
    assert set(categories) >= set(CATEGORIES)
    assert any(categories.values()) is flagged
    if category is not None:
        assert categories[category] is True
        assert verdict.category_scores.model_dump(by_alias=True)[category] >= 0.9


def test_moderation_of_a_list_gives_one_result_per_string(oai: openai.OpenAI) -> None:
    result = oai.moderations.create(input=["fine", "kill"])
    assert [r.flagged for r in result.results] == [False, True]


def test_model_list_includes_the_common_models(oai: openai.OpenAI, control: Control) -> None:
    ids = {model.id for model in oai.models.list()}
    assert {"gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini"} <= ids
    assert oai.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-0")
    status, _, body = control.raw("POST", "/v1/unknown/thing", b"{}")
    assert status == 404
    assert json.loads(body)["error"]["message"] == "Invalid URL (POST /v1/unknown/thing)"
