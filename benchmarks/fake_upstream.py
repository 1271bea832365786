"""A fast fake OpenAI upstream for benchmarks, in a process of its own.

    python -m benchmarks.fake_upstream --port 9100 [--workers 2]

POST /v1/chat/completions answers a fixed completion, or a stream of 20 chunks. A model named
``delay-<seconds>`` waits that long between chunks (for slow, long-lived streams); the model
``realistic`` answers as a model does: its first chunk after 200 ms, then 50 chunks 20 ms apart.
POST /v1/messages answers as Anthropic's Messages API does: a fixed message, or a stream of 20 text
deltas in Anthropic's events; POST /v1/responses as OpenAI's Responses API does, the same way.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing

import orjson
from aiohttp import web

CHUNKS = 20
COMPLETION = orjson.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "bench",
    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                 "message": {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog."}}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22},
})


def _chunk(delta: dict, finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
                                     "model": "bench", "usage": None,
                                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + b"\n\n"


STREAM = [_chunk({"role": "assistant", "content": ""})]
STREAM += [_chunk({"content": f" word{n}"}) for n in range(CHUNKS - 2)]
STREAM += [_chunk({}, "stop")]
USAGE = b"data: " + orjson.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
                                  "model": "bench", "choices": [],
                                  "usage": {"prompt_tokens": 12, "completion_tokens": 18, "total_tokens": 30}}) + b"\n\n"
DONE = b"data: [DONE]\n\n"
#: The realistic answer: time to first token, then chunks at a model's pace.
REALISTIC_FIRST, REALISTIC_GAP = 0.2, 0.02
REALISTIC = [_chunk({"role": "assistant", "content": " word0"})]
REALISTIC += [_chunk({"content": f" word{n}"}) for n in range(1, 49)]
REALISTIC += [_chunk({}, "stop")]


def _event(kind: str, data: dict) -> bytes:
    return f"event: {kind}\ndata: ".encode() + orjson.dumps({"type": kind, **data}) + b"\n\n"


MESSAGE = orjson.dumps({
    "id": "msg_bench", "type": "message", "role": "assistant", "model": "bench", "stop_reason": "end_turn",
    "stop_sequence": None, "content": [{"type": "text", "text": "The quick brown fox jumps over the lazy dog."}],
    "usage": {"input_tokens": 12, "output_tokens": 10, "cache_read_input_tokens": 0,
              "cache_creation_input_tokens": 0}})
EVENTS = b"".join([
    _event("message_start", {"message": {"id": "msg_bench", "type": "message", "role": "assistant", "model": "bench",
                                         "content": [], "stop_reason": None, "stop_sequence": None,
                                         "usage": {"input_tokens": 12, "output_tokens": 1}}}),
    _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
    *[_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": f" word{n}"}})
      for n in range(CHUNKS)],
    _event("content_block_stop", {"index": 0}),
    _event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                             "usage": {"output_tokens": CHUNKS}}),
    _event("message_stop", {}),
])


RESPONSE = {"id": "resp_bench", "object": "response", "created_at": 1700000000, "status": "completed", "model": "bench",
            "output": [{"id": "msg_bench", "type": "message", "role": "assistant", "status": "completed", "content": [
                {"type": "output_text", "text": "The quick brown fox jumps over the lazy dog.", "annotations": []}]}],
            "usage": {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 10,
                      "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 22}}
RESPONSE_JSON = orjson.dumps(RESPONSE)
RESPONSE_EVENTS = b"".join(
    f"event: {kind}\ndata: ".encode() + orjson.dumps({"type": kind, **data, "sequence_number": n}) + b"\n\n"
    for n, (kind, data) in enumerate([
        ("response.created", {"response": {**RESPONSE, "status": "in_progress", "output": [], "usage": None}}),
        ("response.output_item.added", {"output_index": 0, "item": {**RESPONSE["output"][0], "content": []}}),
        *[("response.output_text.delta", {"item_id": "msg_bench", "output_index": 0, "content_index": 0,
                                          "delta": f" word{n}"}) for n in range(CHUNKS)],
        ("response.output_item.done", {"output_index": 0, "item": RESPONSE["output"][0]}),
        ("response.completed", {"response": RESPONSE}),
    ]))


def fixed_answer(whole: bytes, events: bytes):
    """A handler that answers ``whole``, or ``events`` at once when the request asks for a stream."""

    async def answer(request: web.Request) -> web.StreamResponse:
        if not orjson.loads(await request.read()).get("stream"):
            return web.Response(body=whole, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(events)
        return response

    return answer


responses = fixed_answer(RESPONSE_JSON, RESPONSE_EVENTS)
messages = fixed_answer(MESSAGE, EVENTS)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    if not body.get("stream"):
        return web.Response(body=COMPLETION, content_type="application/json")
    model = str(body.get("model", ""))
    delay = float(model.removeprefix("delay-")) if model.startswith("delay-") else 0.0
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    if model == "realistic":
        await asyncio.sleep(REALISTIC_FIRST)
        for n, chunk in enumerate(REALISTIC):
            if n:
                await asyncio.sleep(REALISTIC_GAP)
            await response.write(chunk)
    elif delay:
        for chunk in STREAM:
            await response.write(chunk)
            await asyncio.sleep(delay)
    else:
        await response.write(b"".join(STREAM))
    if (body.get("stream_options") or {}).get("include_usage"):
        await response.write(USAGE)
    await response.write(DONE)
    return response


def serve(port: int, reuse_port: bool) -> None:
    import uvloop

    app = web.Application(client_max_size=64 * 2**20)  # large prompts reach it (benchmarks.bodies)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/responses", responses)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, reuse_port=reuse_port,
                loop=uvloop.new_event_loop(), backlog=4096)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.workers == 1:
        serve(args.port, False)
        return
    processes = [multiprocessing.Process(target=serve, args=(args.port, True)) for _ in range(args.workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()


if __name__ == "__main__":
    main()
