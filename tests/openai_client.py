"""Drives `flashmoe serve` with the official `openai` Python client (run by tests/serve_openai.rs).

Usage: python3 openai_client.py BASE_URL EXPECTED_GREEDY_TEXT_FILE
Checks: models list, completions (streamed = non-streamed = `generate`'s text), several chat
turns streamed and not, `stop`, `seed` reproducibility, usage counts, an error surfaced as the
client's exception. Prints "N passed, 0 failed" on success.
"""
import sys

import openai

base, expected_file = sys.argv[1], sys.argv[2]
expected = open(expected_file, encoding="utf-8").read()
client = openai.OpenAI(base_url=base, api_key="sekret", max_retries=0)
passed = 0


def check(cond, what):
    global passed
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    passed += 1


models = client.models.list()
check([m.id for m in models.data] == ["tiny"], f"models {models}")

prompt = "The Rust programming language"
c = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=0)
check(c.choices[0].text == expected, f"completion {c.choices[0].text!r} != generate {expected!r}")
check(c.usage.prompt_tokens > 0 and c.usage.completion_tokens > 0, f"usage {c.usage}")
streamed = "".join(ch.choices[0].text for ch in client.completions.create(
    model="tiny", prompt=prompt, max_tokens=24, temperature=0, stream=True))
check(streamed == expected, f"streamed {streamed!r}")

# Chat: several turns, streamed and not, the same text either way.
messages = [{"role": "system", "content": "You know Rust."}, {"role": "user", "content": "What is a crate?"}]
for turn in range(3):
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    text = r.choices[0].message.content
    s = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    parts, usage = [], None
    for ch in s:
        if ch.usage is not None:
            usage = ch.usage
        for choice in ch.choices:
            parts.append(choice.delta.content or "")
    check("".join(parts) == text, f"turn {turn}: streamed {''.join(parts)!r} != {text!r}")
    check(usage is not None and usage.completion_tokens == r.usage.completion_tokens, f"usage {usage}")
    if turn > 0:
        check(r.usage.prompt_tokens_details.cached_tokens > 0, f"turn {turn} reused nothing: {r.usage}")
    messages += [{"role": "assistant", "content": text}, {"role": "user", "content": f"And then {turn}?"}]

# Seeds reproduce.
a = client.completions.create(model="tiny", prompt="fn main() {", max_tokens=16, temperature=1.0, seed=3)
b = client.completions.create(model="tiny", prompt="fn main() {", max_tokens=16, temperature=1.0, seed=3)
check(a.choices[0].text == b.choices[0].text, "seeded completions differ")

# Stop.
stop = expected[len(expected) // 2:][:3]
cut = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=0, stop=[stop])
check(cut.choices[0].text == expected[:expected.find(stop)], f"stop {stop!r}: {cut.choices[0].text!r}")
check(cut.choices[0].finish_reason == "stop", "finish_reason")

# Errors arrive as the client's exceptions with OpenAI's error body.
try:
    client.completions.create(model="nope", prompt="x", max_tokens=2)
    check(False, "unknown model accepted")
except openai.BadRequestError as e:
    check("nope" in str(e), f"error {e}")
bad = openai.OpenAI(base_url=base, api_key="wrong", max_retries=0)
try:
    bad.models.list()
    check(False, "wrong key accepted")
except openai.AuthenticationError:
    check(True, "")

print(f"{passed} passed, 0 failed")
