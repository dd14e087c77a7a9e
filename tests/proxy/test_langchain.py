"""LangChain's ``ChatOpenAI(use_responses_api=True)`` against the proxy: invoke and stream."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import RequestRecord
from tests.support import Accounts, ProxyServer, wait_for

if TYPE_CHECKING:
    from tests.proxy.conftest import SimControl

MODEL = "gpt-4o-mini"


def chat_model(proxy: ProxyServer, acct: Accounts, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model=MODEL,
        base_url=proxy.base_url + "/v1",
        api_key=SecretStr(acct.key),
        use_responses_api=True,
        max_retries=0,
        **options,
    )


def records_of(proxy: ProxyServer, key_id: int, count: int) -> list[RequestRecord]:
    def find() -> list[RequestRecord] | None:
        proxy.flush()
        with Session(proxy.state.engine, expire_on_commit=False) as session:
            rows = list(
                session.scalars(select(RequestRecord).where(RequestRecord.key_id == key_id))
            )
        return rows if len(rows) >= count else None

    rows = wait_for(find)
    assert len(rows) == count
    return rows


def test_invoke_and_stream_go_through_the_responses_route(
    proxy: ProxyServer, acct: Accounts, sim: SimControl
) -> None:
    model = chat_model(proxy, acct)
    messages = [SystemMessage("Answer in one line."), HumanMessage("What is a gateway?")]

    answer = model.invoke(messages)
    chunks = list(model.stream(messages))

    assert isinstance(answer.text, str) and answer.text
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] > 0
    streamed = sum(chunks[1:], chunks[0])
    assert isinstance(streamed, AIMessageChunk) and streamed.text == answer.text
    assert all(r["path"] == "/v1/responses" for r in sim.requests())
    assert sim.last_request()["body"]["stream"] is True
    records = records_of(proxy, acct.key_id, 2)
    assert {(r.endpoint, r.status) for r in records} == {("responses", 200)}
    assert sorted(r.is_stream for r in records) == [False, True]
    assert all(r.cost_usd > 0 and r.response_id for r in records)
    by_stream = {r.is_stream: r for r in records}
    assert by_stream[False].completion_tokens == answer.usage_metadata["output_tokens"]


def test_bound_tool_is_called_through_the_responses_route(
    proxy: ProxyServer, acct: Accounts
) -> None:
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    model = chat_model(proxy, acct).bind_tools([get_weather])
    answer = model.invoke([HumanMessage("Weather in Lima?")])

    (call,) = answer.tool_calls  # type: ignore[attr-defined]
    assert call["name"] == "get_weather" and "city" in call["args"]
    (record,) = records_of(proxy, acct.key_id, 1)
    assert record.endpoint == "responses" and record.completion_tokens > 0
