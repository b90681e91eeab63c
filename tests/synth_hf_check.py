#!/usr/bin/env python3
"""Loads a `flashmoe synth --hf` checkpoint with Hugging Face transformers and prints, as JSON,
the greedy continuation of a prompt and the top-1 id after every prompt position.

A data script, not a test the Rust suite runs: it shows that transformers reads the generated
checkpoint (config, sharded safetensors, tokenizer) and lets the engine's greedy tokens be
compared with HF's on the same weights:

    flashmoe synth --hf --preset qwen3-30b-a3b --layers 2 --set hidden_size=64 ... --out DIR
    python3 tests/synth_hf_check.py DIR --prompt "The Rust programming language" --tokens 8
"""

import argparse
import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--prompt", default="The Rust programming language")
    ap.add_argument("--tokens", type=int, default=8)
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(a.dir)
    model = AutoModelForCausalLM.from_pretrained(a.dir, dtype=torch.float32)
    model.eval()
    ids = tok.encode(a.prompt, add_special_tokens=False)
    with torch.no_grad():
        x = torch.tensor([ids])
        logits = model(x).logits[0]
        top1 = logits.argmax(-1).tolist()
        out = list(ids)
        for _ in range(a.tokens):
            nxt = int(model(torch.tensor([out])).logits[0, -1].argmax())
            out.append(nxt)
    print(json.dumps({
        "model": type(model).__name__,
        "params": sum(p.numel() for p in model.parameters()),
        "prompt_ids": ids,
        "top1": top1,
        "greedy": out[len(ids):],
        "round_trip": tok.decode(ids) == a.prompt,
    }))


if __name__ == "__main__":
    main()
