#!/usr/bin/env python3
"""Convert a Hugging Face Qwen3-MoE or Mixtral checkpoint to GGUF with numpy alone.

llama.cpp's own convert_hf_to_gguf.py needs torch (and transformers for the tokenizer); this
writes the same GGUF (tensor names and metadata keys of llama.cpp's `qwen3moe` / `llama`
architectures) with only the `gguf` package from llama.cpp's `gguf-py` and numpy, so the
peer benchmark can run on a machine without torch.

What it writes:
  * every matrix as BF16 (bit-exact copy of a bf16 checkpoint) or F16 (`--outtype f16`);
  * 1-D tensors (norms) and the routers (`ffn_gate_inp`) as F32, as convert_hf_to_gguf.py does
    (an exact upcast of bf16);
  * the experts of a layer stacked into one 3-D tensor per projection
    (`blk.N.ffn_{gate,up,down}_exps.weight`), from per-expert tensors
    (`mlp.experts.E.{gate,up,down}_proj`, Mixtral `block_sparse_moe.experts.E.w{1,3,2}`) or fused
    ones (`mlp.experts.gate_up_proj` [E, 2F, H] / `mlp.experts.down_proj` [E, H, F]);
  * the tokenizer from tokenizer.json (byte-level BPE: tokens, types, merges, special ids,
    add_bos from tokenizer_config.json), pre-tokenizer detected from tokenizer.json (GPT-2's
    regex: `gpt-2`; Qwen2's: `qwen2`) or given with `--tokenizer-pre`.

Memory stays bounded: tensors are memory-mapped from the safetensors shards and written one
at a time (tensor infos first, then data in the same order), so the peak is about one layer's
stacked projection (E x F x H x 2 bytes), not the checkpoint.

Usage: hf_to_gguf.py HF_DIR OUT.gguf [--outtype bf16|f16] [--tokenizer-pre auto]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import struct
import sys
from pathlib import Path

import numpy as np


def _import_gguf():
    """The gguf package: from $GGUF_PY (llama.cpp's gguf-py folder) if set, else installed."""
    extra = os.environ.get("GGUF_PY")
    if extra:
        sys.path.insert(0, extra)
    import gguf  # noqa: E402

    return gguf


gguf = _import_gguf()


class ConvertError(Exception):
    """Bad input: names the file or tensor at fault."""


# ---------------------------------------------------------------- safetensors (numpy only)

_ST_DTYPES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}


class Checkpoint:
    """The tensors of a (sharded) safetensors checkpoint, memory-mapped, by name."""

    def __init__(self, root: Path):
        self.root = root
        self.index: dict[str, tuple[Path, str, list[int], int]] = {}
        shards = sorted(root.glob("*.safetensors"))
        shards = [s for s in shards if s.name.startswith("model")] or shards
        if not shards:
            raise ConvertError(f"{root}: no model*.safetensors files")
        for shard in shards:
            with open(shard, "rb") as f:
                head = f.read(8)
                if len(head) != 8:
                    raise ConvertError(f"{shard}: shorter than a safetensors header")
                (n,) = struct.unpack("<Q", head)
                if n > 100 * 1024 * 1024:
                    raise ConvertError(f"{shard}: header length {n} is implausible")
                try:
                    header = json.loads(f.read(n))
                except json.JSONDecodeError as e:
                    raise ConvertError(f"{shard}: header is not JSON: {e}") from e
            size = shard.stat().st_size
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                dtype = info.get("dtype")
                if dtype not in _ST_DTYPES:
                    raise ConvertError(f"{shard}: tensor {name} has dtype {dtype}; only BF16, F16, F32 are read")
                start, end = info["data_offsets"]
                if 8 + n + end > size or start > end:
                    raise ConvertError(f"{shard}: tensor {name} lies past the end of the file")
                self.index[name] = (shard, dtype, list(info["shape"]), 8 + n + start)
        self._maps: dict[Path, np.memmap] = {}

    def names(self) -> list[str]:
        return list(self.index)

    def dtype(self, name: str) -> str:
        return self.index[name][1]

    def shape(self, name: str) -> list[int]:
        return self.index[name][2]

    def raw(self, name: str) -> np.ndarray:
        """The tensor as stored (bf16 as uint16 bit patterns), a read-only memory map."""
        shard, dtype, shape, off = self.index[name]
        count = int(np.prod(shape)) if shape else 1
        return np.memmap(shard, dtype=_ST_DTYPES[dtype], mode="r", offset=off, shape=(count,)).reshape(shape)


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def to_f32(ck: Checkpoint, name: str) -> np.ndarray:
    a = ck.raw(name)
    return bf16_to_f32(a) if ck.dtype(name) == "BF16" else a.astype(np.float32)


def to_half(ck: Checkpoint, name: str, outtype: str) -> np.ndarray:
    """A matrix in the output half type: bf16 bits (uint16) or float16."""
    a = ck.raw(name)
    if outtype == "bf16":
        if ck.dtype(name) == "BF16":
            return np.ascontiguousarray(a)
        f = a.astype(np.float32)
        # round to nearest even, as torch does
        u = f.view(np.uint32)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return to_f32(ck, name).astype(np.float16)


# ---------------------------------------------------------------- the model families

EXPERT_PATTERNS = [
    # (regex on the HF name, GGUF projection)
    (re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$"), None),
    (re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w1|w3|w2)\.weight$"),
     {"w1": "gate", "w3": "up", "w2": "down"}),
]
FUSED_GATE_UP = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.gate_up_proj(\.weight)?$")
FUSED_DOWN = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.down_proj(\.weight)?$")


def family(config: dict) -> tuple[str, object]:
    arch = (config.get("architectures") or [None])[0]
    mt = config.get("model_type")
    if arch == "Qwen3MoeForCausalLM" or mt == "qwen3_moe":
        return "qwen3moe", gguf.MODEL_ARCH.QWEN3MOE
    if arch == "MixtralForCausalLM" or mt == "mixtral":
        return "llama", gguf.MODEL_ARCH.LLAMA
    raise ConvertError(f"config.json: architecture {arch!r} / model_type {mt!r} is not Qwen3-MoE or Mixtral")


def need(config: dict, *keys: str):
    for k in keys:
        if config.get(k) is not None:
            return config[k]
    raise ConvertError(f"config.json: missing {' / '.join(keys)}")


def write_metadata(w, config: dict, arch_name: str, n_layer: int, outtype: str) -> None:
    w.add_block_count(n_layer)
    w.add_context_length(int(config.get("max_position_embeddings", 4096)))
    hidden = int(need(config, "hidden_size"))
    w.add_embedding_length(hidden)
    w.add_head_count(int(need(config, "num_attention_heads")))
    w.add_head_count_kv(int(need(config, "num_key_value_heads")))
    rope = config.get("rope_parameters") or {}
    theta = config.get("rope_theta", rope.get("rope_theta"))
    if theta is not None:
        w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(float(need(config, "rms_norm_eps")))
    n_expert = int(need(config, "num_experts", "num_local_experts"))
    w.add_expert_count(n_expert)
    w.add_expert_used_count(int(need(config, "num_experts_per_tok")))
    head_dim = config.get("head_dim") or hidden // int(config["num_attention_heads"])
    w.add_key_length(int(head_dim))
    w.add_value_length(int(head_dim))
    w.add_rope_dimension_count(int(head_dim))
    if arch_name == "qwen3moe":
        w.add_feed_forward_length(int(config.get("intermediate_size", need(config, "moe_intermediate_size"))))
        w.add_expert_feed_forward_length(int(need(config, "moe_intermediate_size")))
        if config.get("norm_topk_prob") is False:
            raise ConvertError("config.json: norm_topk_prob false is not what llama.cpp's qwen3moe computes")
    else:
        w.add_feed_forward_length(int(need(config, "intermediate_size")))
        w.add_vocab_size(int(need(config, "vocab_size")))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if outtype == "bf16" else gguf.LlamaFileType.MOSTLY_F16)


QWEN2_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
               "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def detect_pre(tok: dict, path: Path) -> str:
    """llama.cpp's pre-tokenizer name for tokenizer.json's pre_tokenizer (GPT-2 or Qwen2 regex)."""
    pt = tok.get("pre_tokenizer") or {}
    if pt.get("type") == "ByteLevel" and pt.get("use_regex", True):
        return "gpt-2"
    if pt.get("type") == "Sequence":
        for p in pt.get("pretokenizers", []):
            if p.get("type") == "Split" and p.get("pattern", {}).get("Regex") == QWEN2_REGEX:
                return "qwen2"
    raise ConvertError(f"{path}: pre_tokenizer {json.dumps(pt)[:200]} is neither GPT-2's nor Qwen2's; "
                       "pass --tokenizer-pre NAME (a llama.cpp pre-tokenizer)")


def write_tokenizer(w, root: Path, vocab_size: int, pre: str) -> None:
    path = root / "tokenizer.json"
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConvertError(f"{path}: {e}") from e
    if pre == "auto":
        pre = detect_pre(tok, path)
    model = tok.get("model", {})
    if model.get("type") != "BPE":
        raise ConvertError(f"{path}: model type {model.get('type')!r}; only byte-level BPE is converted")
    by_id: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    special: set[int] = set()
    for added in tok.get("added_tokens", []):
        by_id[int(added["id"])] = added["content"]
        if added.get("special"):
            special.add(int(added["id"]))
    if by_id and max(by_id) >= vocab_size:
        raise ConvertError(f"{path}: token id {max(by_id)} >= config vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    sv = gguf.SpecialVocab(root, load_merges=True, n_vocab=vocab_size)
    if "bos" not in sv.add_special_token:
        sv.add_special_token["bos"] = False
    sv.add_to_gguf(w, quiet=True)


def plan_tensors(ck: Checkpoint, arch, n_layer: int, n_expert: int, outtype: str):
    """[(gguf name, shape (numpy order), dtype, produce())] in file order."""
    tmap = gguf.get_tensor_name_map(arch, n_layer)
    half_np = np.uint16 if outtype == "bf16" else np.float16
    half_raw = gguf.GGMLQuantizationType.BF16 if outtype == "bf16" else gguf.GGMLQuantizationType.F16
    experts: dict[tuple[int, str], dict[int, str]] = {}
    fused: dict[tuple[int, str], str] = {}
    plan = []
    for name in ck.names():
        m = None
        for pat, rename in EXPERT_PATTERNS:
            m = pat.match(name)
            if m:
                proj = rename[m.group(3)] if rename else m.group(3)
                experts.setdefault((int(m.group(1)), proj), {})[int(m.group(2))] = name
                break
        if m:
            continue
        fm = FUSED_GATE_UP.match(name)
        if fm:
            fused[(int(fm.group(1)), "gate_up")] = name
            continue
        fm = FUSED_DOWN.match(name)
        if fm:
            fused[(int(fm.group(1)), "down")] = name
            continue
        if name.endswith("rotary_emb.inv_freq"):
            continue
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ConvertError(f"{ck.root}: tensor {name} has no GGUF name for this architecture")
        shape = ck.shape(name)
        if len(shape) == 1 or ".ffn_gate_inp." in new:
            plan.append((new, shape, np.float32, None, lambda n=name: to_f32(ck, n)))
        else:
            plan.append((new, shape, half_np, half_raw, lambda n=name: to_half(ck, n, outtype)))
    suffix = {"gate": "ffn_gate_exps", "up": "ffn_up_exps", "down": "ffn_down_exps"}
    for (layer, proj), by_e in sorted(experts.items()):
        if sorted(by_e) != list(range(n_expert)):
            missing = sorted(set(range(n_expert)) - set(by_e))
            raise ConvertError(f"{ck.root}: layer {layer} {proj}_proj lacks experts {missing[:8]}")
        names = [by_e[e] for e in range(n_expert)]
        shape = [n_expert] + ck.shape(names[0])
        for n in names:
            if ck.shape(n) != shape[1:]:
                raise ConvertError(f"{ck.root}: tensor {n} has shape {ck.shape(n)}, expected {shape[1:]}")
        plan.append((f"blk.{layer}.{suffix[proj]}.weight", shape, half_np, half_raw,
                     lambda ns=names: np.stack([to_half(ck, n, outtype) for n in ns])))
    for (layer, kind), name in sorted(fused.items()):
        shape = ck.shape(name)
        if len(shape) != 3:
            raise ConvertError(f"{ck.root}: fused expert tensor {name} has shape {shape}, expected 3-D")
        if kind == "down":
            plan.append((f"blk.{layer}.ffn_down_exps.weight", shape, half_np, half_raw,
                         lambda n=name: to_half(ck, n, outtype)))
        else:
            if shape[1] % 2:
                raise ConvertError(f"{ck.root}: {name} has odd gate_up rows {shape[1]}")
            f = shape[1] // 2
            for i, proj in enumerate(("gate", "up")):
                plan.append((f"blk.{layer}.{suffix[proj]}.weight", [shape[0], f, shape[2]], half_np, half_raw,
                             lambda n=name, i=i, f=f: np.ascontiguousarray(to_half(ck, n, outtype)[:, i * f:(i + 1) * f, :])))
    return plan


def convert(root: Path, out: Path, outtype: str, pre: str) -> int:
    try:
        config = json.loads((root / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConvertError(f"{root / 'config.json'}: {e}") from e
    config = config.get("text_config", config) if "num_hidden_layers" not in config else config
    arch_name, arch = family(config)
    n_layer = int(need(config, "num_hidden_layers"))
    n_expert = int(need(config, "num_experts", "num_local_experts"))
    ck = Checkpoint(root)
    plan = plan_tensors(ck, arch, n_layer, n_expert, outtype)
    tmp = out.with_name(out.name + ".partial")
    w = gguf.GGUFWriter(tmp, arch_name)
    w.add_name(root.name)
    write_metadata(w, config, arch_name, n_layer, outtype)
    write_tokenizer(w, root, int(need(config, "vocab_size")), pre)
    itemsize = {np.uint16: 2, np.float16: 2, np.float32: 4}
    for name, shape, dtype, raw, _ in plan:
        nbytes = int(np.prod(shape)) * itemsize[dtype]
        w.add_tensor_info(name, shape, np.dtype(dtype), nbytes, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    total = 0
    tty = sys.stderr.isatty()
    for i, (name, shape, dtype, _, produce) in enumerate(plan):
        data = produce()
        if list(data.shape) != list(shape) or data.dtype != np.dtype(dtype):
            raise ConvertError(f"internal: {name} produced {data.shape} {data.dtype}, planned {shape} {dtype}")
        w.write_tensor_data(data)
        total += data.nbytes
        if tty:
            print(f"\r[{i + 1}/{len(plan)}] {name:40s} {total / 1e9:7.2f} GB", end="", file=sys.stderr, flush=True)
        elif (i + 1) % 32 == 0 or i + 1 == len(plan):
            print(f"[{i + 1}/{len(plan)}] {total / 1e9:.2f} GB written", file=sys.stderr, flush=True)
    if tty:
        print(file=sys.stderr)
    w.close()
    os.replace(tmp, out)
    return len(plan)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("hf_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--outtype", choices=["bf16", "f16"], default="bf16")
    ap.add_argument("--tokenizer-pre", default="auto",
                    help="llama.cpp pre-tokenizer name; auto: gpt-2 for a ByteLevel (GPT-2 regex) "
                         "pre-tokenizer, qwen2 for Qwen2's Split regex")
    args = ap.parse_args(argv)
    try:
        n = convert(args.hf_dir, args.out, args.outtype, args.tokenizer_pre)
    except ConvertError as e:
        print(f"hf_to_gguf: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} tensors to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
