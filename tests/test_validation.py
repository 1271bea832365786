"""Request bodies of every shape: never a 5xx, always an OpenAI-shaped error that names the field."""
import asyncio
import json
import urllib.error
import urllib.request

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from riceball_proxy.validation import FIELD_TYPES, MAX_DEPTH, ROLES

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
LEAVES = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False,
                                                                              allow_infinity=False) | TEXT
VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                      max_leaves=12)


@st.composite
def nested(draw):
    """A value nested anywhere from a few to several hundred levels deep."""
    value = draw(LEAVES)
    for _ in range(draw(st.integers(1, 400))):
        value = [value] if draw(st.booleans()) else {draw(TEXT): value}
    return value


ANY = VALUES | nested()
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(sorted(ROLES)) | ANY},
    optional={"content": TEXT | ANY, "name": TEXT | ANY, "tool_calls": ANY, "tool_call_id": TEXT | ANY,
              "function_call": ANY, "audio": ANY},
)
BODY = st.fixed_dictionaries(
    {"messages": st.lists(MESSAGE | ANY, max_size=3) | ANY},
    optional={name: ANY for name in FIELD_TYPES} | {"stream": st.booleans(), "unknown_field": ANY},
) | st.dictionaries(TEXT, ANY, max_size=3)


def post(url: str, key: str, body) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_no_request_body_gets_a_server_error(configured):
    url = configured.gateway.base_url(configured.assistant.id) + "/chat/completions"
    seen: set[int] = set()

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(BODY)
    def check(body):
        status, raw = post(url, configured.key, body)
        seen.add(status)
        assert status < 500, (status, raw[:500])
        if status >= 400:
            error = json.loads(raw)["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]
            assert status != 400 or (isinstance(error["param"], str) and error["param"]), error

    await asyncio.to_thread(check)  # the gateway serves on this loop while Hypothesis posts from a thread
    assert {200, 400} <= seen


async def test_a_role_that_is_no_string_is_400(configured):
    for role in ([], {}, 1):
        status, raw = await asyncio.to_thread(
            post, configured.gateway.base_url(configured.assistant.id) + "/chat/completions", configured.key,
            {"messages": [{"role": role, "content": "hi"}]})
        error = json.loads(raw)["error"]
        assert (status, error["param"], error["code"]) == (400, "messages[0].role", "invalid_type")


async def test_a_field_nested_too_deep_is_400_naming_it(configured):
    deep = "leaf"
    for _ in range(300):
        deep = {"x": deep}
    status, raw = await asyncio.to_thread(
        post, configured.gateway.base_url(configured.assistant.id) + "/chat/completions", configured.key,
        {"messages": [{"role": "user", "content": "hi"}], "metadata": deep})
    error = json.loads(raw)["error"]
    assert (status, error["code"]) == (400, "too_deep")
    assert error["param"].startswith("metadata.x.x") and error["param"].count(".") == MAX_DEPTH - 1


BLOCK = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image", "tool_use", "tool_result", "document", "thinking", "redacted_thinking",
                              "server_tool_use", "search_result"]) | ANY},
    optional={"text": TEXT | ANY, "source": ANY | st.fixed_dictionaries({"type": st.sampled_from(
        ["base64", "url", "text"]), "data": TEXT | ANY, "url": TEXT | ANY, "media_type": TEXT | ANY}),
        "id": TEXT | ANY, "name": TEXT | ANY, "input": ANY, "tool_use_id": TEXT | ANY, "content": TEXT | ANY,
        "is_error": ANY, "signature": TEXT | ANY, "cache_control": ANY},
)
ANTHROPIC_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system"]) | ANY},
    optional={"content": TEXT | st.lists(BLOCK | ANY, max_size=4) | ANY},
)
MESSAGES_BODY = st.fixed_dictionaries(
    {"messages": st.lists(ANTHROPIC_MESSAGE | ANY, max_size=3) | ANY},
    optional={"max_tokens": st.integers(-5, 10**6) | ANY, "model": TEXT | ANY, "system": TEXT | st.lists(BLOCK | ANY,
              max_size=2) | ANY, "tools": st.lists(st.fixed_dictionaries({"name": TEXT | ANY}, optional={
                  "input_schema": ANY, "type": TEXT | ANY, "description": ANY}) | ANY, max_size=2) | ANY,
              "tool_choice": ANY | st.fixed_dictionaries({"type": st.sampled_from(["auto", "any", "tool", "none"]) |
                                                           ANY}, optional={"name": TEXT | ANY}),
              "thinking": ANY | st.fixed_dictionaries({"type": st.sampled_from(["enabled", "adaptive", "disabled"])},
                                                      optional={"budget_tokens": st.integers(-5, 10**6) | ANY}),
              "output_config": ANY, "metadata": ANY, "stop_sequences": ANY, "temperature": ANY, "top_p": ANY,
              "top_k": ANY, "stream": st.booleans() | ANY},
) | st.dictionaries(TEXT, ANY, max_size=3)


async def test_no_messages_request_body_gets_a_server_error(configured):
    """The Messages API of an assistant on an OpenAI-compatible provider (every request translated): any
    body is answered, and every refusal is in Anthropic's shape with the field first in its message."""
    url = configured.gateway.url(f"/api/v1/assistants/{configured.assistant.id}/v1/messages")
    seen: set[int] = set()

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(MESSAGES_BODY)
    @example({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    @example({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": "x"},
                                                                           {"type": "text", "text": "hi"}]}]})
    def check(body):
        status, raw = post(url, configured.key, body)
        seen.add(status)
        assert status < 500, (status, raw[:500])
        if status >= 400:
            error = json.loads(raw)
            assert error["type"] == "error" and set(error["error"]) == {"type", "message"}, error
            assert error["error"]["message"] and error["request_id"]

    await asyncio.to_thread(check)
    assert {200, 400} <= seen
