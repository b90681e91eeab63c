"""Golden chat-template renderings from Hugging Face transformers, for engine/tests/chat_template_golden.rs.

Run from this directory: python3 make_golden.py  (writes golden.json). Needs `pip install transformers`
(no model download: the templates are the .jinja files here, copied from llama.cpp's
models/templates/, which copies them from the checkpoints on the Hub).
"""
import json
import transformers
from transformers.utils.chat_template_utils import render_jinja_template

TEMPLATES = {
    "Qwen-Qwen3-0.6B.jinja": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "Qwen3.5-4B.jinja": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
}

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "Name, e.g. “Zürich”"}},
                         "required": ["city"]}}}]

CONVERSATIONS = {
    "one_user": [{"role": "user", "content": "Hello! What is Rust?"}],
    "system_and_turns": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a borrow checker rule."},
        {"role": "assistant", "content": "One mutable reference or many shared ones."},
        {"role": "user", "content": "And lifetimes?\nKeep it short."},
    ],
    "history_with_thinking": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
        {"role": "user", "content": "  times 3?  "},
    ],
    "unicode_and_quotes": [{"role": "user", "content": "Écris «bonjour» — \"quoted\" 'single' {{ not jinja }} 日本語"}],
}

CASES = [
    # (template, conversation, add_generation_prompt, extra kwargs)
    *[(t, c, True, {}) for t in TEMPLATES for c in CONVERSATIONS],
    *[(t, c, False, {}) for t in TEMPLATES for c in ["system_and_turns", "history_with_thinking"]],
    ("Qwen-Qwen3-0.6B.jinja", "one_user", True, {"enable_thinking": False}),
    ("Qwen3.5-4B.jinja", "one_user", True, {"enable_thinking": False}),
    ("Qwen-Qwen3-0.6B.jinja", "one_user", True, {"tools": TOOLS}),
    ("Qwen3.5-4B.jinja", "one_user", True, {"tools": TOOLS}),
    ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "one_user", True, {"tools": TOOLS}),
]

out = []
for tname, cname, gen, extra in CASES:
    src = open(tname, encoding="utf-8").read()
    kwargs = dict(TEMPLATES[tname])
    kwargs.update({k: v for k, v in extra.items() if k != "tools"})
    rendered = render_jinja_template(
        conversations=[CONVERSATIONS[cname]], tools=extra.get("tools"), chat_template=src,
        add_generation_prompt=gen, **kwargs)[0][0]
    out.append({"template": tname, "conversation": cname, "messages": CONVERSATIONS[cname],
                "add_generation_prompt": gen, "special_tokens": TEMPLATES[tname], "extra": extra,
                "expected": rendered})

# A conversation the Mistral template refuses (roles must alternate).
bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
try:
    render_jinja_template(conversations=[bad], chat_template=open("mistralai-Mistral-Nemo-Instruct-2407.jinja").read(),
                          add_generation_prompt=True, **TEMPLATES["mistralai-Mistral-Nemo-Instruct-2407.jinja"])
    raise SystemExit("expected the Mistral template to refuse non-alternating roles")
except Exception as e:  # jinja2 TemplateError raised by raise_exception
    refused = {"template": "mistralai-Mistral-Nemo-Instruct-2407.jinja", "messages": bad,
               "special_tokens": TEMPLATES["mistralai-Mistral-Nemo-Instruct-2407.jinja"], "error": str(e)}

with open("golden.json", "w", encoding="utf-8") as f:
    json.dump({"transformers_version": transformers.__version__, "cases": out, "refused": refused},
              f, ensure_ascii=False, indent=1)
print(len(out), "cases written; refused:", refused["error"])
