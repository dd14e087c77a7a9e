from __future__ import annotations

import anthropic
import openai

from tests.support import Accounts, ProxyServer


def test_chat_completion_through_proxy(proxy: ProxyServer, acct: Accounts) -> None:
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=acct.key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    record, body = proxy.record(raw.headers["x-request-id"])
    assert record.status == 200
    assert record.prompt_tokens == completion.usage.prompt_tokens
    client.close()


def test_anthropic_stream_through_proxy(proxy: ProxyServer, acct: Accounts) -> None:
    client = anthropic.Anthropic(base_url=proxy.base_url, api_key=acct.key, max_retries=0)
    with client.messages.stream(
        model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        message = stream.get_final_message()
    assert message.content[0].type == "text"
    client.close()
