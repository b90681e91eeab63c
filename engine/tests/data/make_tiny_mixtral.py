"""Builds the tiny Mixtral test fixture in engine/tests/data/tiny-mixtral (test data only).

A randomly initialised (seeded) MixtralForCausalLM with tiny dims, saved by HF transformers in
bf16 as sharded safetensors with model.safetensors.index.json, plus golden.safetensors holding
the float32 logits of HF transformers (bf16 weights upcast, eager attention) at every position
of a fixed id sequence, and its 16-token greedy continuation.

Usage: python make_tiny_mixtral.py   (needs torch, transformers, safetensors from PyPI)
"""

import json
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import MixtralConfig, MixtralForCausalLM

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny-mixtral")
SEED = 1234
SEQ = 24
GREEDY = 16


def main():
    torch.manual_seed(SEED)
    cfg = MixtralConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = MixtralForCausalLM(cfg).eval()
    # Random weights large enough that every op matters: unit-variance-preserving projections,
    # norm weights around 1, routers spread enough that routing is not uniform.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    model = model.to(torch.bfloat16)
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    model.save_pretrained(OUT, max_shard_size="150KB")

    # Golden: reload the saved bf16 checkpoint, upcast to float32, eager attention.
    ref = MixtralForCausalLM.from_pretrained(OUT, dtype=torch.float32, attn_implementation="eager").eval()
    gen = torch.Generator().manual_seed(SEED + 1)
    ids = torch.randint(3, cfg.vocab_size, (1, SEQ), generator=gen)
    with torch.no_grad():
        logits = ref(ids).logits[0].float().contiguous()
        # The reload must have mapped the saved per-expert tensors back correctly. Compare with a
        # fresh float32 model given the in-memory weights (a fresh one: `.to(bfloat16)` also
        # rounded the RoPE inv_freq buffer, which is not saved).
        fresh = MixtralForCausalLM(cfg).eval()
        fresh.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
        direct = fresh(ids).logits[0]
        diff = (direct - logits).abs().max().item()
        print("reload max diff", diff, "logit scale", logits.abs().max().item())
        assert diff < 1e-4 * max(1.0, logits.abs().max().item()), "reloaded model disagrees with the saved one"
        seq = ids.clone()
        for _ in range(GREEDY):  # full recompute each step, no cache
            nxt = ref(seq).logits[0, -1].argmax().view(1, 1)
            seq = torch.cat([seq, nxt], dim=1)
    save_file(
        {
            "input_ids": ids[0].to(torch.int32).contiguous(),
            "logits": logits,
            "greedy_ids": seq[0, SEQ:].to(torch.int32).contiguous(),
        },
        os.path.join(OUT, "golden.safetensors"),
        metadata={"seed": str(SEED), "compute": "float32 CPU, bf16 weights upcast, eager attention"},
    )
    names = sorted(json.load(open(os.path.join(OUT, "model.safetensors.index.json")))["weight_map"])
    print("tensors:", len(names), names[:12])
    print("files:", sorted(os.listdir(OUT)))
    print("size:", sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT)))


if __name__ == "__main__":
    main()
