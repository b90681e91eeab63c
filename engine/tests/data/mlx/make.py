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
  tiny-qwen35-moe-4bit/                        from ../shared/fixtures/tiny-qwen35-moe (~9 MB: not committed;
                                               .ci/run regenerates it). mlx-lm reads Qwen3.5 only as the
                                               Hub ships it (`qwen3_5_moe` with `text_config`, experts
                                               fused as `experts.gate_up_proj` / `experts.down_proj`), so
                                               the fixture is first rewritten into that form (same values;
                                               `hub_form_qwen35`); mlx-lm's converter then moves the conv1d
                                               weights to [C, K, 1] and stores the RMSNorm weights as 1 + w
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
QWEN35 = os.path.abspath(os.path.join(ROOT, "../shared/fixtures/tiny-qwen35-moe"))
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


def hub_form_qwen35(hf):
    """Rewrites the text-only Qwen3.5 fixture in `hf` into the Hub's multimodal form, values unchanged:
    config `qwen3_5_moe` around a `text_config`, and each layer's experts fused into
    `mlp.experts.gate_up_proj` [E, 2I, H] (gate rows first) and `mlp.experts.down_proj` [E, H, I]."""
    cfg_path = os.path.join(hf, "config.json")
    with open(cfg_path) as f:
        text = json.load(f)
    hub = {
        "architectures": ["Qwen3_5MoeForConditionalGeneration"],
        "model_type": "qwen3_5_moe",
        "text_config": text,
        "tie_word_embeddings": text.get("tie_word_embeddings", False),
    }
    index_path = os.path.join(hf, "model.safetensors.index.json")
    with open(index_path) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    tensors = {}
    for s in shards:
        tensors.update(mx.load(os.path.join(hf, s)))  # bf16 as it is
        os.remove(os.path.join(hf, s))
    os.remove(index_path)
    for l in range(text["num_hidden_layers"]):
        p = f"model.layers.{l}.mlp.experts"
        experts = range(text["num_experts"])
        tensors[f"{p}.gate_up_proj"] = mx.stack(
            [
                mx.concatenate([tensors.pop(f"{p}.{e}.gate_proj.weight"), tensors.pop(f"{p}.{e}.up_proj.weight")])
                for e in experts
            ]
        )
        tensors[f"{p}.down_proj"] = mx.stack([tensors.pop(f"{p}.{e}.down_proj.weight") for e in experts])
    mx.save_safetensors(os.path.join(hf, "model.safetensors"), tensors, metadata={"format": "pt"})
    os.chmod(cfg_path, 0o644)
    with open(cfg_path, "w") as f:
        json.dump(hub, f, indent=2)


def build(name, src, bits, force, group=64):
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
        if src == QWEN35:
            hub_form_qwen35(hf)
        convert(hf, out, quantize=True, q_bits=bits, q_group_size=group)
    prompts = prompts_of(src)
    model, _ = load(out)
    golden = {
        "made_with": f"mlx {mx.__version__}, mlx-lm convert -q --q-bits {bits} --q-group-size {group}",
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
        # Group 32: the fixture's experts are 32 wide (moe_intermediate_size), and MLX leaves a
        # module whose input is not a multiple of the group unquantized (down_proj, at 64).
        ("tiny-qwen35-moe-4bit", QWEN35, 4, 32),
    ]
    for name, src, bits, *group in jobs:
        if args.only and args.only != name:
            continue
        if not os.path.exists(os.path.join(src, "config.json")):
            print(f"{name}: source {src} not found", file=sys.stderr)
            sys.exit(1)
        build(name, src, bits, args.force, *group)


if __name__ == "__main__":
    main()
