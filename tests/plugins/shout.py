"""A plugin that rewrites answers to upper case: a stream transformer and a response transformer."""
from riceball_proxy import hookimpl


async def _upper(chunks):
    async for chunk in chunks:
        for choice in chunk.get("choices", []):
            content = choice.get("delta", {}).get("content")
            if content:
                choice["delta"]["content"] = content.upper()
        yield chunk


@hookimpl
def riceball_transform_stream(ctx):
    return _upper


@hookimpl
def riceball_transform_response(ctx, response):
    for choice in response["choices"]:
        if choice["message"].get("content"):
            choice["message"]["content"] = choice["message"]["content"].upper()
    return response
