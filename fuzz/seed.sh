#!/usr/bin/env bash
# Seeds fuzz/corpus/TARGET/ from the fixtures (../shared/fixtures beside the clone, when
# present) and the repository's own model, test data and presets. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
root=..
fx=${FLASHMOE_FIXTURES:-$root/../shared/fixtures}
seed() { # seed TARGET FILE...
  local t=$1; shift
  mkdir -p "corpus/$t"
  for f in "$@"; do
    [ -f "$f" ] && cp "$f" "corpus/$t/seed-$(echo "$f" | tr '/' '_' | tr -cd 'A-Za-z0-9._-')"
  done
  return 0
}
mix=$root/engine/tests/data/tiny-mixtral
model=$root/models/tiny-qwen3-moe-q4
seed safetensors "$mix"/model-0000{1,4}-of-00004.safetensors "$mix/golden.safetensors"
seed index "$mix/model.safetensors.index.json" "$fx/tiny-qwen3-moe/model.safetensors.index.json" \
  "$fx/tiny-qwen35-moe/model.safetensors.index.json"
seed config "$mix/config.json" "$model/config.json" "$fx/tiny-qwen3-moe/config.json" \
  "$fx/tiny-qwen35-moe/config.json" $root/engine/tests/data/*.json
seed tokenizer "$model/tokenizer.json" "$fx/tiny-qwen35-moe/tokenizer.json"
seed manifest "$model/manifest.json"
# Packed-experts files and traces small enough to mutate, made by the CLI when it is built.
bin=$root/target/release/flashmoe
if [ -x "$bin" ]; then
  tmp=$(mktemp -d)
  "$bin" synth --layers 2 --experts 3 --k 1 --expert-bytes 4096 --out "$tmp/m" --quiet >/dev/null
  # The packfile target's input is a mode byte, then the file(s) (src/packfile.rs): 0 keeps
  # the stored checksums, 7 recomputes record, table and header checksums, 15 the same over
  # two files.
  mkdir -p corpus/packfile
  for l in 0 1; do
    { printf '\007'; cat "$tmp/m/experts-layer-000$l.fmoe"; } >"corpus/packfile/seed-layer$l"
  done
  { printf '\000'; cat "$tmp/m/experts-layer-0000.fmoe"; } >corpus/packfile/seed-nofix-layer0
  "$bin" synth --layers 1 --experts 4 --k 1 --expert-bytes 5000 --out "$tmp/one" --quiet >/dev/null
  { printf '\007'; cat "$tmp"/one/experts-layer-0000.fmoe; } >corpus/packfile/seed-one-layer
  # Mode 6 keeps the record checksums: one flipped payload byte reaches verify's mismatch.
  perl -e 'local $/; my $d = <STDIN>; substr($d, 4106, 1) ^= "\x40"; print "\x06", $d' \
    <"$tmp"/one/experts-layer-0000.fmoe >corpus/packfile/seed-bad-record
  # Layer 0 twice: the layout join's "stored in both".
  { printf '\017'; perl -e 'print pack("V", -s $ARGV[0])' "$tmp/m/experts-layer-0000.fmoe"
    cat "$tmp"/m/experts-layer-000{0,0}.fmoe; } >corpus/packfile/seed-layer-twice
  { printf '\017'; perl -e 'print pack("V", -s $ARGV[0])' "$tmp/m/experts-layer-0000.fmoe"
    cat "$tmp"/m/experts-layer-000{0,1}.fmoe; } >corpus/packfile/seed-two-files
  "$bin" generate --max-tokens 3 --ignore-eos --trace "$tmp/s.trace" --trace-far "$tmp/f.trace" \
    >/dev/null 2>&1 || true
  seed trace "$tmp/s.trace" "$tmp/f.trace"
  rm -rf "$tmp"
fi
seed trace "$fx/tiny-qwen3-moe/routing_trace.safetensors"
seed device $root/sim/presets/devices/*.json
# HTTP bodies: the route byte (0 completions, 1 chat), then the JSON.
mkdir -p corpus/http_request
printf '\000{"model":"m","prompt":"Hello","max_tokens":8,"temperature":0.7,"stop":["\\n"],"stream":true,"stream_options":{"include_usage":true}}' \
  >corpus/http_request/seed-completion
printf '\000{"prompt":[1,2,3],"seed":7,"top_p":0.9}' >corpus/http_request/seed-completion-tokens
printf '\001{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"}]}],"chat_template_kwargs":{"enable_thinking":false}}' \
  >corpus/http_request/seed-chat
printf '\001{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"tool","content":"c"}],"max_completion_tokens":4}' \
  >corpus/http_request/seed-chat-roles
