"""Stream an answer from a RiceBall assistant: python examples/quickstart.py ASSISTANT_ID API_KEY"""
import os
import sys

from openai import OpenAI

gateway = os.environ.get("RICEBALL_URL", "http://127.0.0.1:8000")
client = OpenAI(base_url=f"{gateway}/api/v1/assistants/{sys.argv[1]}/v1", api_key=sys.argv[2])
messages = [{"role": "user", "content": "Hello, RiceBall! Stream this back to me."}]
for chunk in client.chat.completions.create(model="any", messages=messages, stream=True):
    print(chunk.choices[0].delta.content or "", end="", flush=True)
print()
