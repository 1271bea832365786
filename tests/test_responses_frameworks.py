"""Frameworks whose default is the Responses API, through an assistant bridged to a Chat Completions
provider: the OpenAI Agents SDK's default model (a tool-using run) and LangChain's ``ChatOpenAI`` with
``use_responses_api=True``."""
import json

import pytest

FINAL = "It is sunny in Paris."


@pytest.fixture
async def assistant_url(start_gateway, settings, fake_openai):
    gateway = await start_gateway(settings)
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url), system_prompt="Be helpful.")
    return gateway.base_url(assistant.id), await gateway.key(), gateway


def weather_model(body):
    """A model that asks for the weather tool, then answers from its result."""
    last = body["messages"][-1]
    if last["role"] == "tool":
        return FINAL if "sunny" in last["content"] else "No weather.", []
    if body.get("tools"):
        return "", [("get_weather", json.dumps({"city": "Paris"}))]
    return "Hello from LangChain's model", []


async def test_the_agents_sdk_runs_a_tool_with_its_default_model(assistant_url, fake_openai):
    import openai
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)  # its traces would go to OpenAI
    base_url, key, gateway = assistant_url
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"{city}: sunny, 24 C"

    fake_openai.responder = weather_model
    async with openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
        agent = Agent(name="Weather", instructions="Answer with the weather.", tools=[get_weather],
                      model=OpenAIResponsesModel(model="gpt-4o", openai_client=client))
        result = await Runner.run(agent, "What is the weather in Paris?")
    assert asked == ["Paris"] and result.final_output == FINAL
    assert {row["api"] for row in await gateway.usage_rows(2)} == {"responses"}
    sent = fake_openai.last["messages"]
    assert sent[0] == {"role": "system", "content": "Be helpful."}
    assert sent[1] == {"role": "system", "content": "Answer with the weather."}
    assert sent[-1]["role"] == "tool" and "sunny" in sent[-1]["content"]


async def test_langchain_with_the_responses_api(assistant_url, fake_openai):
    import httpx
    from langchain_openai import ChatOpenAI

    base_url, key, _ = assistant_url
    fake_openai.responder = weather_model
    async with httpx.AsyncClient() as http:  # its own would be left open
        await _langchain_calls(ChatOpenAI(model="gpt-4o", base_url=base_url, api_key=key, use_responses_api=True,
                                          max_retries=0, http_async_client=http))


async def _langchain_calls(model) -> None:
    answer = await model.ainvoke("Hi")
    assert answer.text == "Hello from LangChain's model"
    streamed = "".join([chunk.text async for chunk in model.astream("Hi")])
    assert streamed == "Hello from LangChain's model"

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    call = await model.bind_tools([get_weather]).ainvoke("Weather in Paris?")
    assert call.tool_calls[0]["name"] == "get_weather" and call.tool_calls[0]["args"] == {"city": "Paris"}


VERCEL_SCRIPT = """
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText } from "ai";

const openai = createOpenAI({ baseURL: process.env.BASE_URL, apiKey: process.env.API_KEY });
const model = openai("gpt-4o");  // the Responses API: the AI SDK's default for OpenAI models
const { text } = await generateText({ model, prompt: "Hi" });
let streamed = "";
for await (const piece of streamText({ model, prompt: "Hi" }).textStream) streamed += piece;
console.log(JSON.stringify({ text, streamed }));
"""


@pytest.mark.agents
async def test_vercels_ai_sdk_with_openai_models(assistant_url, fake_openai, tmp_path):
    import asyncio
    import os

    from tests.support import AGENTS, installed_agent

    installed_agent("@ai-sdk/openai", "the AI SDK")
    (tmp_path / "node_modules").symlink_to(AGENTS)  # where the script's imports are found
    (tmp_path / "probe.mjs").write_text(VERCEL_SCRIPT)
    base_url, key, gateway = assistant_url
    process = await asyncio.create_subprocess_exec(
        "node", "probe.mjs", cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ["PATH"], "BASE_URL": base_url, "API_KEY": key, "NO_PROXY": "127.0.0.1"})
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()[-2000:]
    said = json.loads(out.decode().strip().splitlines()[-1])
    assert said == {"text": "Hello from the fake upstream", "streamed": "Hello from the fake upstream"}
    assert [request["body"]["messages"][0]["content"] for request in fake_openai.requests] == ["Be helpful."] * 2
    assert [row["api"] for row in await gateway.usage_rows(2)] == ["responses", "responses"]
