"""Builds the MLX test checkpoints of engine/tests/mlx_*.rs with mlx-lm's own converter (test data only).

For each source model it runs `mlx_lm.convert(..., quantize=True, q_bits=B, q_group_size=64)` (the same
function as `mlx_lm.convert -q --q-bits B --q-group-size 64`), then records mlx-lm's own forward pass and
greedy generation on that converted checkpoint into `mlx_golden.json` beside it:

- `f32`: the converted model with every bf16 array (norms, scales, biases) upcast to float32 (exact), so
  mlx-lm computes in float32 like flashmoe: last-position logits (all of the vocabulary), top-1 id at every
  prompt position, and the greedy continuation of `mlx_lm.generate.generate_step` (argmax, KV cache).
- `bf16`: the same, run as converted (bfloat16 activations, what an mlx-lm user gets): top-1 per position
  and the greedy continuation, for information (flashmoe computes in float32).

Outputs (under this directory):
  tiny-qwen3-moe-4bit/, tiny-qwen3-moe-8bit/   from ../shared/fixtures/tiny-qwen3-moe (~16 / ~30 MB:
                                               not committed; .ci/run regenerates them)
  tiny-mixtral-4bit/                           from engine/tests/data/tiny-mixtral (small: committed; the
                                               fixture has no tokenizer, so the qwen3 fixture's is added,
                                               and its rope_theta is repeated at the top level of the
                                               config, the only place mlx-lm's mixtral.py reads it)

Usage: pip install "mlx[cpu]" mlx-lm; python3 engine/tests/data/mlx/make.py [--only NAME] [--force]
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

import mlx.core as mx
from mlx.utils import tree_map
from mlx_lm.convert import convert
from mlx_lm.generate import generate_step
from mlx_lm.utils import load

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "../../../.."))
QWEN3 = os.path.abspath(os.path.join(ROOT, "../shared/fixtures/tiny-qwen3-moe"))
MIXTRAL = os.path.join(ROOT, "engine/tests/data/tiny-mixtral")
GREEDY = 40


def prompts_of(src):
    """Prompt id lists: the fixture's golden prompts (qwen3) or its fixed id sequence (mixtral)."""
    golden = os.path.join(src, "golden.json")
    if os.path.exists(golden):
        with open(golden) as f:
            return [p["input_ids"] for p in json.load(f)["prompts"]]
    st = mx.load(os.path.join(src, "golden.safetensors"))
    return [[int(x) for x in st["input_ids"].tolist()]]


def run(model, prompts, full_logits):
    out = []
    for ids in prompts:
        logits = model(mx.array([ids]))[0].astype(mx.float32)
        mx.eval(logits)
        entry = {
            "input_ids": ids,
            "top1": [int(x) for x in mx.argmax(logits, axis=-1).tolist()],
        }
        if full_logits:
            entry["last_logits"] = [float(x) for x in logits[-1].tolist()]
        greedy = []
        for tok, _ in generate_step(mx.array(ids), model, max_tokens=GREEDY):
            greedy.append(int(tok))
        entry["greedy_ids"] = greedy
        out.append(entry)
    return out


def upcast(model):
    model.update(
        tree_map(lambda p: p.astype(mx.float32) if p.dtype == mx.bfloat16 else p, model.parameters())
    )
    return model


def build(name, src, bits, force):
    out = os.path.join(HERE, name)
    if os.path.exists(out):
        if not force:
            print(f"{name}: exists (pass --force to rebuild)")
            return
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory() as tmp:
        hf = os.path.join(tmp, "hf")
        shutil.copytree(src, hf)
        if not os.path.exists(os.path.join(hf, "tokenizer.json")):
            for f in ["tokenizer.json", "tokenizer_config.json"]:
                shutil.copy(os.path.join(QWEN3, f), hf)
        # mlx-lm's mixtral.py reads only a top-level `rope_theta` (default 1e6), not
        # transformers 5's `rope_parameters`: state the same value at the top level.
        cfg_path = os.path.join(hf, "config.json")
        with open(cfg_path) as f:
            cfg = json.load(f)
        theta = (cfg.get("rope_parameters") or {}).get("rope_theta")
        if theta is not None and "rope_theta" not in cfg:
            cfg["rope_theta"] = theta
            os.chmod(cfg_path, 0o644)
            with open(cfg_path, "w") as f:
                json.dump(cfg, f, indent=2)
        convert(hf, out, quantize=True, q_bits=bits, q_group_size=64)
    prompts = prompts_of(src)
    model, _ = load(out)
    golden = {
        "made_with": f"mlx {mx.__version__}, mlx-lm convert -q --q-bits {bits} --q-group-size 64",
        "source": os.path.relpath(src, ROOT),
        "bf16": run(model, prompts, full_logits=False),
    }
    model, _ = load(out)
    golden["f32"] = run(upcast(model), prompts, full_logits=True)
    with open(os.path.join(out, "mlx_golden.json"), "w") as f:
        json.dump(golden, f)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"{name}: {size} bytes")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    jobs = [
        ("tiny-qwen3-moe-4bit", QWEN3, 4),
        ("tiny-qwen3-moe-8bit", QWEN3, 8),
        ("tiny-mixtral-4bit", MIXTRAL, 4),
    ]
    for name, src, bits in jobs:
        if args.only and args.only != name:
            continue
        if not os.path.exists(os.path.join(src, "config.json")):
            print(f"{name}: source {src} not found", file=sys.stderr)
            sys.exit(1)
        build(name, src, bits, args.force)


if __name__ == "__main__":
    main()
