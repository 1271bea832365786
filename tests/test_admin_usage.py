"""The admin usage page and its CSV export, over usage rows of known values."""
import csv
import datetime
import io
import re
import uuid
from decimal import Decimal

import pytest

from riceball_proxy.db import api_keys, assistants, providers, usage_events
from riceball_proxy.db.usage_events import UsageEvent

NOW = datetime.datetime.now(datetime.timezone.utc).replace(minute=30, second=0, microsecond=0)


async def seed(pool):
    """Two assistants, one key, and rows: 3 ok + 1 error today for A, 2 ok yesterday for B, 1 long ago."""
    provider = await providers.create(pool, name="p", type="openai", base_url="http://127.0.0.1:9/v1")
    a = await assistants.create(pool, name="Alpha", provider_id=provider.id, model="=cmd|calc")
    b = await assistants.create(pool, name="Beta", provider_id=provider.id, model="m")
    key = await api_keys.create(pool, name="ci", key_hash=b"k" * 32, prefix="sk-ci")

    def event(assistant, when, status=200, latency=100.0, tokens=(10, 20)):
        # Alpha's calls cost a cent each; Beta's model has no known price.
        cost = Decimal("0.01") if assistant is a and status < 400 else None
        return UsageEvent(created_at=when, request_id=f"req_{uuid.uuid4().hex}", status=status, api_key_id=key.id,
                          assistant_id=assistant.id, provider_id=provider.id, upstream_model=assistant.model,
                          prompt_tokens=tokens[0], completion_tokens=tokens[1], total_tokens=sum(tokens),
                          latency_ms=latency, error_type=None if status < 400 else "api_error", cost_usd=cost)

    await usage_events.insert_many(pool, [
        event(a, NOW, latency=100), event(a, NOW, latency=200), event(a, NOW, latency=300),
        event(a, NOW, status=502, latency=50, tokens=(0, 0)),
        event(b, NOW - datetime.timedelta(days=1)), event(b, NOW - datetime.timedelta(days=1)),
        event(b, NOW - datetime.timedelta(days=40)),
    ])
    return a, b, key


def stat(text: str, label: str) -> str:
    return re.search(rf"<header>{label}</header><p class=\"big\">([^<]+)</p>", text).group(1).strip()


async def test_the_usage_page_sums_the_last_seven_days(panel):
    await seed(panel.pool)
    _, text = await panel.get("/admin/usage")
    assert stat(text, "Requests") == "6" and stat(text, "Errors") == "1" and stat(text, "Tokens") == "150"
    assert "Requests per day" in text and "<svg" in text and text.count('fill="#c62828"') == 1
    # Alpha: 4 requests, 1 error, 30/60 tokens; latencies 50, 100, 200, 300 ms: p50 100, p95 300 (the ranks'
    # calls), read from the hourly histograms: within the bucket (a third of a power of two) of each.
    alpha = re.search(r"<td>Alpha</td>\s*<td>4</td><td>1</td><td>30</td><td>60</td>\s*<td>\$0.0300</td>\s*"
                      r"<td>([\d.]+) ms</td><td>([\d.]+) ms</td>", text)
    assert alpha, text
    for shown, exact in zip(map(float, alpha.groups()), (100, 300)):
        bucket = usage_events.latency_bucket(exact)
        assert 2 ** (bucket / 3) - 1 <= shown <= 2 ** ((bucket + 1) / 3) + 1, (shown, exact)  # shown to 1 ms
    assert re.search(r"<td>Beta</td>\s*<td>2</td><td>0</td><td>20</td><td>40</td>\s*<td>- <small[^>]*>\+2 unpriced", text)
    assert stat(text, "Cost") == "$0.0300" and "2 calls of unknown price not counted" in text
    assert "ci (sk-ci…)" in text


async def test_calls_whose_usage_the_gateway_estimated_are_shown_and_exported_as_such(panel):
    a, _, key = await seed(panel.pool)
    await usage_events.insert_many(panel.pool, [UsageEvent(
        created_at=NOW, request_id="req_estimated", status=499, api_key_id=key.id, assistant_id=a.id,
        prompt_tokens=7, completion_tokens=34, total_tokens=41, cost_usd=Decimal("0.02"), usage_estimated=True)])
    _, text = await panel.get("/admin/usage")
    assert "1 calls estimated (their upstream reported no usage)" in text
    assert re.search(r"<td>Alpha</td>.*?1 estimated</small>", text, re.S)
    response = await panel.client.get("/admin/usage.csv")
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert {row["request_id"]: row["usage_estimated"] for row in rows}["req_estimated"] == "True"


async def test_cache_reads_writes_and_reasoning_are_shown_and_exported(panel):
    a, _, key = await seed(panel.pool)
    await usage_events.insert_many(panel.pool, [UsageEvent(
        created_at=NOW, request_id="req_cached", status=200, api_key_id=key.id, assistant_id=a.id,
        prompt_tokens=3000, cached_tokens=2000, cache_write_tokens=900, cache_write_1h_tokens=100,
        completion_tokens=70, reasoning_tokens=40, total_tokens=3070, cost_usd=Decimal("0.005"))])
    _, text = await panel.get("/admin/usage")
    assert ("3050 prompt (2000 read from the provider cache, 900 written to it), 170 completion (40 reasoning)"
            in text)
    response = await panel.client.get("/admin/usage.csv")
    row = next(row for row in csv.DictReader(io.StringIO(await response.text())) if row["request_id"] == "req_cached")
    assert (row["cached_tokens"], row["cache_write_tokens"], row["cache_write_1h_tokens"], row["reasoning_tokens"]) == (
        "2000", "900", "100", "40")


async def test_calls_are_told_apart_by_the_api_they_came_in_by(panel):
    a, _, key = await seed(panel.pool)
    await usage_events.insert_many(panel.pool, [UsageEvent(
        created_at=NOW, request_id=f"req_messages_{n}", status=200, api_key_id=key.id, assistant_id=a.id,
        prompt_tokens=5, completion_tokens=5, total_tokens=10, api="messages") for n in range(2)])
    _, text = await panel.get("/admin/usage")
    assert re.search(r"<h2>Per API</h2>.*?<td>Chat Completions</td>\s*<td>6</td>.*?<td>Anthropic Messages</td>\s*"
                     r"<td>2</td>", text, re.S)
    response = await panel.client.get("/admin/usage.csv")
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert sorted(row["api"] for row in rows) == ["chat"] * 6 + ["messages"] * 2


async def test_filters_by_assistant_key_and_dates(panel):
    a, b, key = await seed(panel.pool)
    _, text = await panel.get(f"/admin/usage?assistant={b.id}")
    assert stat(text, "Requests") == "2"
    long_ago = (NOW - datetime.timedelta(days=40)).date().isoformat()
    _, text = await panel.get(f"/admin/usage?from={long_ago}&to={long_ago}&key={key.id}")
    assert stat(text, "Requests") == "1" and "Requests per hour" in text
    _, text = await panel.get(f"/admin/usage?key={uuid.uuid4()}")
    assert "No API calls in this range" in text
    _, text = await panel.get("/admin/usage?from=&to=&assistant=&key=")  # blank fields: the defaults
    assert stat(text, "Requests") == "6"


@pytest.mark.parametrize("query", ["from=garbage", "to=9999-12-31", "from=0001-01-01", "to=0001-01-01",
                                   "assistant=nope", "key=12", "from=2026-02-30"])
@pytest.mark.parametrize("page", ["/admin/usage", "/admin/usage.csv"])
async def test_a_filter_that_names_no_real_date_or_id_is_400(panel, page, query):
    response, text = await panel.get(f"{page}?{query}")
    assert response.status == 400 and "Invalid filter" in text


@pytest.mark.parametrize("path", ["/admin/providers/99999999999999999999/edit",
                                  "/admin/providers/9223372036854775808/delete"])
async def test_an_id_past_bigint_is_404(panel, path):
    response, _ = await panel.get(path)
    assert response.status == 404


async def test_the_csv_export_has_every_row_of_the_filter(panel):
    a, b, key = await seed(panel.pool)
    response, text = await panel.get(f"/admin/usage.csv?assistant={a.id}")
    assert response.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 4 and {r["assistant_id"] for r in rows} == {str(a.id)}
    assert sorted(r["status"] for r in rows) == ["200", "200", "200", "502"]
    assert {r["upstream_model"] for r in rows} == {"'=cmd|calc"}  # never a formula in a spreadsheet
    assert sorted(r["cost_usd"] for r in rows) == ["", "0.0100000000", "0.0100000000", "0.0100000000"]
    _, text = await panel.get("/admin/usage.csv")
    assert len(list(csv.DictReader(io.StringIO(text)))) == 6


async def test_the_keys_page_shows_real_last_use(panel, fake_openai):
    from riceball_proxy import appkeys, crypto

    provider = await providers.create(panel.pool, name="up", type="openai", base_url=fake_openai.base_url)
    assistant = await assistants.create(panel.pool, name="a", provider_id=provider.id, model="m")
    secret = crypto.generate_api_key()
    await api_keys.create(panel.pool, name="used", key_hash=crypto.hash_api_key(secret),
                          prefix=crypto.display_prefix(secret))
    response = await panel.client.post(f"/api/v1/assistants/{assistant.id}/v1/chat/completions",
                                        json={"messages": [{"role": "user", "content": "hi"}]},
                                        headers={"Authorization": f"Bearer {secret}"})
    assert response.status == 200
    await panel.app[appkeys.LAST_USED].flush()
    _, text = await panel.get("/admin/keys")
    used_row = re.search(r">used</a></td>.*?</tr>", text, flags=re.S).group(0)
    assert "never</td>" not in used_row.split("<td>", 6)[5]  # the "last used" cell has a time
