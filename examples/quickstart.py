"""Stream an answer from a RiceBall assistant: python examples/quickstart.py ASSISTANT_ID API_KEY"""
import os
import sys

from openai import OpenAI

if len(sys.argv) != 3:
    sys.stderr.write(f"usage: python {sys.argv[0]} ASSISTANT_ID API_KEY\n"
                     "  (RICEBALL_URL sets the gateway, http://127.0.0.1:8000 by default)\n")
    sys.exit(2)
gateway = os.environ.get("RICEBALL_URL", "http://127.0.0.1:8000")
client = OpenAI(base_url=f"{gateway}/api/v1/assistants/{sys.argv[1]}/v1", api_key=sys.argv[2])
messages = [{"role": "user", "content": "Hello, RiceBall! Stream this back to me."}]
for chunk in client.chat.completions.create(model="any", messages=messages, stream=True):
    if chunk.choices:  # a usage chunk has none
        print(chunk.choices[0].delta.content or "", end="", flush=True)
print()
