#!/usr/bin/env python3
"""Round trip of hf_to_gguf.py on the tiny-qwen3-moe fixture, read back with gguf-py's reader.

Asserts: every checkpoint tensor lands in the GGUF under llama.cpp's qwen3moe name with the
same bytes (bf16 matrices bit for bit, experts stacked in expert order, norms and routers as
their exact f32 upcast); the token list, merges and special ids come from tokenizer.json; a
checkpoint missing an expert is refused naming the layer.

  GGUF_PY=/path/to/llama.cpp/gguf-py python3 benches/peer/test_hf_to_gguf.py
Skips (exit 0, with the reason) when the fixture or gguf-py is absent, unless
FLASHMOE_REQUIRE_FIXTURES=1.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURE = HERE.parent.parent.parent / "shared" / "fixtures" / "tiny-qwen3-moe"


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("FLASHMOE_REQUIRE_FIXTURES") == "1":
        raise SystemExit(f"FAIL: {reason} (FLASHMOE_REQUIRE_FIXTURES=1)")
    print(f"skipped: {reason}")
    raise SystemExit(0)


if not FIXTURE.is_dir():
    _skip_or_fail(f"fixture {FIXTURE} absent")
try:
    sys.path.insert(0, str(HERE))
    import hf_to_gguf  # noqa: E402
    import numpy as np  # noqa: E402
except ImportError as e:
    _skip_or_fail(f"gguf-py not importable ({e}); set GGUF_PY")
gguf = hf_to_gguf.gguf


class RoundTrip(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp())
        cls.out = cls.tmp / "tiny.gguf"
        hf_to_gguf.convert(FIXTURE, cls.out, "bf16", "auto")
        cls.reader = gguf.GGUFReader(cls.out)
        cls.tensors = {t.name: t for t in cls.reader.tensors}
        cls.ck = hf_to_gguf.Checkpoint(FIXTURE)
        cls.cfg = json.loads((FIXTURE / "config.json").read_text())

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def field(self, key):
        return self.reader.fields[key].contents()

    def test_metadata(self):
        c = self.cfg
        self.assertEqual(self.field("general.architecture"), "qwen3moe")
        self.assertEqual(self.field("qwen3moe.block_count"), c["num_hidden_layers"])
        self.assertEqual(self.field("qwen3moe.expert_count"), c["num_experts"])
        self.assertEqual(self.field("qwen3moe.expert_used_count"), c["num_experts_per_tok"])
        self.assertEqual(self.field("qwen3moe.expert_feed_forward_length"), c["moe_intermediate_size"])
        self.assertEqual(self.field("qwen3moe.attention.key_length"), c["head_dim"])
        self.assertEqual(self.field("qwen3moe.attention.head_count_kv"), c["num_key_value_heads"])
        self.assertAlmostEqual(self.field("qwen3moe.rope.freq_base"), c["rope_theta"])
        self.assertFalse(self.field("tokenizer.ggml.add_bos_token"))
        self.assertEqual(self.field("tokenizer.ggml.pre"), "gpt-2")

    def test_tokenizer(self):
        tok = json.loads((FIXTURE / "tokenizer.json").read_text())
        tokens = self.field("tokenizer.ggml.tokens")
        self.assertEqual(len(tokens), self.cfg["vocab_size"])
        for text, i in list(tok["model"]["vocab"].items())[:500]:
            self.assertEqual(tokens[i], text)
        self.assertEqual(tokens[0], "<|endoftext|>")
        self.assertEqual(self.field("tokenizer.ggml.token_type")[0], gguf.TokenType.CONTROL)
        self.assertEqual(len(self.field("tokenizer.ggml.merges")), len(tok["model"]["merges"]))
        self.assertEqual(self.field("tokenizer.ggml.eos_token_id"), 0)

    def test_dense_bytes_exact(self):
        pairs = {
            "model.embed_tokens.weight": "token_embd.weight",
            "lm_head.weight": "output.weight",
            "model.layers.3.self_attn.q_proj.weight": "blk.3.attn_q.weight",
            "model.layers.7.self_attn.o_proj.weight": "blk.7.attn_output.weight",
        }
        for hf, g in pairs.items():
            t = self.tensors[g]
            self.assertEqual(t.tensor_type, gguf.GGMLQuantizationType.BF16, g)
            got = np.asarray(t.data).view(np.uint16).reshape(-1)
            self.assertTrue(np.array_equal(got, self.ck.raw(hf).reshape(-1)), g)

    def test_norms_and_router_f32(self):
        for hf, g in (("model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"),
                      ("model.layers.5.self_attn.k_norm.weight", "blk.5.attn_k_norm.weight"),
                      ("model.layers.2.mlp.gate.weight", "blk.2.ffn_gate_inp.weight")):
            t = self.tensors[g]
            self.assertEqual(t.tensor_type, gguf.GGMLQuantizationType.F32, g)
            want = hf_to_gguf.to_f32(self.ck, hf).reshape(-1)
            self.assertTrue(np.array_equal(np.asarray(t.data).reshape(-1), want), g)

    def test_experts_stacked_in_order(self):
        e, f, h = self.cfg["num_experts"], self.cfg["moe_intermediate_size"], self.cfg["hidden_size"]
        for proj, g in (("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"), ("down_proj", "ffn_down_exps")):
            t = self.tensors[f"blk.4.{g}.weight"]
            want_shape = [h, f, e] if proj != "down_proj" else [f, h, e]  # GGML ne order
            self.assertEqual([int(x) for x in t.shape], want_shape, g)
            data = np.asarray(t.data).view(np.uint16).reshape(e, -1)
            for x in (0, 17, e - 1):
                want = self.ck.raw(f"model.layers.4.mlp.experts.{x}.{proj}.weight").reshape(-1)
                self.assertTrue(np.array_equal(data[x], want), f"{g} expert {x}")

    def test_every_tensor_accounted(self):
        n_layers, n_exp = self.cfg["num_hidden_layers"], self.cfg["num_experts"]
        per_expert = 3 * n_layers * n_exp
        self.assertEqual(len(self.tensors), len(self.ck.names()) - per_expert + 3 * n_layers)
        total = sum(int(np.asarray(t.data).nbytes) for t in self.reader.tensors)
        src = 0
        for n in self.ck.names():
            shape = self.ck.shape(n)
            nbytes = int(np.prod(shape)) * 2
            src += nbytes * (2 if len(shape) == 1 or n.endswith("mlp.gate.weight") else 1)
        self.assertEqual(total, src)

    def test_missing_expert_is_refused(self):
        broken = self.tmp / "broken"
        broken.mkdir()
        for f in FIXTURE.iterdir():
            (broken / f.name).symlink_to(f)
        ck = hf_to_gguf.Checkpoint(broken)
        ck.index.pop("model.layers.6.mlp.experts.9.up_proj.weight")
        with self.assertRaises(hf_to_gguf.ConvertError) as cm:
            hf_to_gguf.plan_tensors(ck, gguf.MODEL_ARCH.QWEN3MOE, 8, 32, "bf16")
        self.assertIn("layer 6 up_proj lacks experts [9]", str(cm.exception))


def write_safetensors(path: Path, tensors: dict) -> None:
    """A bf16 safetensors file from float32 arrays (truncated to bf16), numpy only."""
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        bits = (np.ascontiguousarray(a, dtype=np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [off, off + len(bits)]}
        blobs.append(bits)
        off += len(bits)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))


class Mixtral(unittest.TestCase):
    """A random 2-layer Mixtral checkpoint: block_sparse_moe names map to llama's MoE tensors."""

    def test_names_and_stacking(self):
        rng = np.random.default_rng(7)
        hd, ff, ne, nl, vocab = 64, 96, 4, 2, 4096
        t = {"model.embed_tokens.weight": rng.standard_normal((vocab, hd)),
             "lm_head.weight": rng.standard_normal((vocab, hd)), "model.norm.weight": np.ones(hd)}
        for l in range(nl):
            p = f"model.layers.{l}."
            t[p + "input_layernorm.weight"] = np.ones(hd)
            t[p + "post_attention_layernorm.weight"] = np.ones(hd)
            for n, rows in (("q_proj", hd), ("k_proj", 32), ("v_proj", 32), ("o_proj", hd)):
                t[p + f"self_attn.{n}.weight"] = rng.standard_normal((rows, hd))
            t[p + "block_sparse_moe.gate.weight"] = rng.standard_normal((ne, hd))
            for e in range(ne):
                t[p + f"block_sparse_moe.experts.{e}.w1.weight"] = rng.standard_normal((ff, hd))
                t[p + f"block_sparse_moe.experts.{e}.w3.weight"] = rng.standard_normal((ff, hd))
                t[p + f"block_sparse_moe.experts.{e}.w2.weight"] = rng.standard_normal((hd, ff))
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            write_safetensors(d / "model.safetensors", t)
            cfg = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": hd,
                   "intermediate_size": ff, "num_hidden_layers": nl, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "num_local_experts": ne, "num_experts_per_tok": 2,
                   "rms_norm_eps": 1e-5, "rope_theta": 1e6, "vocab_size": vocab, "max_position_embeddings": 512}
            (d / "config.json").write_text(json.dumps(cfg))
            for f in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(FIXTURE / f, d / f)
            hf_to_gguf.convert(d, d / "m.gguf", "bf16", "gpt-2")
            r = gguf.GGUFReader(d / "m.gguf")
            names = {x.name: x for x in r.tensors}
            self.assertEqual(r.fields["general.architecture"].contents(), "llama")
            self.assertEqual(r.fields["llama.expert_count"].contents(), ne)
            self.assertEqual(r.fields["llama.feed_forward_length"].contents(), ff)
            self.assertEqual(names["blk.1.ffn_gate_inp.weight"].tensor_type, gguf.GGMLQuantizationType.F32)
            up = np.asarray(names["blk.1.ffn_up_exps.weight"].data).view(np.uint16).reshape(ne, -1)
            ck = hf_to_gguf.Checkpoint(d)
            self.assertTrue(np.array_equal(up[3], ck.raw("model.layers.1.block_sparse_moe.experts.3.w3.weight").reshape(-1)))
            self.assertEqual([int(x) for x in names["blk.0.ffn_down_exps.weight"].shape], [ff, hd, ne])
            self.assertEqual(len(names), 3 + nl * (2 + 4 + 1 + 3))


if __name__ == "__main__":
    unittest.main()
