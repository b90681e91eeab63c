"""Writes tests/data/tiny-qwen3-next: a tiny random Qwen3-Next (fused in_proj_qkvz / in_proj_ba,
Gated DeltaNet + gated attention + shared expert) saved by transformers in bf16, and the golden
float32 logits of transformers' own forward on the saved weights (no cache, full recompute).

Run from engine/: python3 tests/data/make_tiny_qwen3_next.py   (needs torch, transformers, safetensors)
"""
import json
import os

import torch
from safetensors.torch import save_file
from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny-qwen3-next")
torch.manual_seed(1234)
cfg = Qwen3NextConfig(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    partial_rotary_factor=0.25,
    rope_theta=10000.0,
    linear_conv_kernel_dim=4,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    num_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=64,
    norm_topk_prob=True,
    decoder_sparse_step=1,
    full_attention_interval=2,
    max_position_embeddings=256,
    initializer_range=0.1,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
model = Qwen3NextForCausalLM(cfg).eval()
with torch.no_grad():
    # Non-trivial norm offsets / gates so the (1 + w) and gating paths matter.
    for name, p in model.named_parameters():
        if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
            p.add_(0.1 * torch.randn_like(p))
        if "A_log" in name or "dt_bias" in name:
            p.add_(0.2 * torch.randn_like(p))
model = model.to(torch.bfloat16)
model.save_pretrained(OUT, safe_serialization=True)

ref = Qwen3NextForCausalLM.from_pretrained(OUT, dtype=torch.float32).eval()
ids = torch.tensor([[(i * 37 + 11) % 256 for i in range(24)]])
with torch.no_grad():
    logits = ref(ids, use_cache=False).logits[0].float()
    out = ref(ids, use_cache=False, output_router_logits=True)
# Smallest routing margin p_k - p_(k+1) over every (position, layer), reported for the test.
margins = []
for rl in out.router_logits:
    p = torch.softmax(rl.float(), dim=-1)
    top = torch.topk(p, cfg.num_experts_per_tok + 1, dim=-1).values
    margins.append((top[:, -2] - top[:, -1]).min().item())
save_file(
    {"input_ids": ids[0].to(torch.int32).contiguous(), "logits": logits.contiguous()},
    os.path.join(OUT, "golden.safetensors"),
)
with open(os.path.join(OUT, "golden.json"), "w") as f:
    json.dump(
        {
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "what": "float32 logits of transformers' forward (no cache) on the saved bf16 weights",
            "min_routing_margin_per_layer": margins,
        },
        f,
        indent=1,
    )
print("wrote", OUT, "min routing margins", margins)
