"""Request bodies of every shape: never a 5xx, always an OpenAI-shaped error that names the field."""
import asyncio
import json
import urllib.error
import urllib.request

from hypothesis import HealthCheck, given, settings
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
