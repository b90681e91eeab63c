#!/usr/bin/env python3
"""flashmoe vs llama.cpp (weights memory-mapped), same weights, same disk, same memory limit.

Subcommands (see README.md beside this file):
  prepare  HF checkpoint -> GGUF (bf16, then Q4_0 with --bits 4) and a flashmoe packed model
  check    same greedy tokens on the same weights (flashmoe `pack --bits 16` vs the bf16 GGUF)
  bench    the side-by-side table: all in RAM, and each engine alone in a cgroup-v1 memory cgroup
           (page cache counted) at shares of the expert bytes plus the dense weights, cold and steady

What is measured, per run (one process per run, 2 threads each unless --threads):
  prefill tok/s  prompt tokens / time of the prompt pass (llama.cpp: one batch; flashmoe: its
                 `prefill_tok_per_s`)
  decode tok/s   decode steps after the first generated token / their time (flashmoe's
                 `decode_tok_per_s`; greedy_ids counts the same way)
  disk B/tok     bytes the process read from the block device (wait4's ru_inblock x 512, the
                 counter /proc/PID/io read_bytes shows; model load included) / tokens run
                 (prompt + generated)
  peak RSS       wait4's ru_maxrss (VmHWM): mapped file pages count for llama.cpp
  cg peak        the cgroup's memory.max_usage_in_bytes (anonymous + page cache), limited rows
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CGROOT = Path("/sys/fs/cgroup/memory")
DEFAULT_PROMPT = "The Rust programming language helps you write faster, more reliable software. It"


class BenchError(Exception):
    """A step failed; the message names the command or file."""


# ---------------------------------------------------------------- processes, cgroups, caches

@dataclass
class Proc:
    """A finished child: its stdout, exit status and kernel accounting."""
    out: str
    err: str
    rc: int
    read_bytes: int
    maxrss: int
    wall_s: float
    cg_peak: int | None = None


def run_measured(cmd: list[str], env: dict | None = None, cgroup: Path | None = None) -> Proc:
    """Run cmd to completion; with cgroup, the child joins it before exec."""
    def join():
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    with tempfile.TemporaryFile("w+", errors="replace") as out, \
            tempfile.TemporaryFile("w+", errors="replace") as err:
        t0 = time.monotonic()
        try:
            p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, preexec_fn=join)
        except OSError as e:
            raise BenchError(f"cannot start {cmd[0]}: {e}") from e
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        return Proc(out.read(), err.read(), p.returncode, ru.ru_inblock * 512, ru.ru_maxrss * 1024, wall)


class MemCgroup:
    """A cgroup-v1 memory cgroup with a hard limit (page cache counted), removed on exit."""

    def __init__(self, name: str, limit: int):
        self.path = CGROOT / name
        if not CGROOT.is_dir():
            raise BenchError(f"{CGROOT}: no cgroup-v1 memory hierarchy on this machine")
        if self.path.exists():
            self._remove()
        try:
            self.path.mkdir()
            (self.path / "memory.limit_in_bytes").write_text(str(limit))
        except OSError as e:
            raise BenchError(f"{self.path}: cannot create a memory cgroup ({e}); run as root") from e
        self.limit = int((self.path / "memory.limit_in_bytes").read_text())

    def peak(self) -> int:
        return int((self.path / "memory.max_usage_in_bytes").read_text())

    def oom_kills(self) -> int:
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def reset_peak(self) -> None:
        (self.path / "memory.max_usage_in_bytes").write_text("0")

    def _remove(self) -> None:
        try:
            (self.path / "memory.force_empty").write_text("0")
        except OSError:
            pass
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._remove()


def evict(paths: list[Path], drop_caches: bool) -> None:
    """Cold start: the model files leave the page cache (all caches with drop_caches)."""
    os.sync()
    if drop_caches:
        Path("/proc/sys/vm/drop_caches").write_text("3")
        return
    for p in paths:
        files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
        for f in files:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def warm(paths: list[Path]) -> None:
    """All in RAM: read the model files once so the page cache holds them."""
    for p in paths:
        files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
        for f in files:
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass


# ---------------------------------------------------------------- the two engines

@dataclass
class Engines:
    flashmoe: Path
    greedy_ids: Path
    llama_bin: Path
    threads: int

    def flashmoe_cmd(self, packed: Path, prompt: str, n: int, budget: str, io: str | None) -> list[str]:
        cmd = [str(self.flashmoe), "generate", "--model", str(packed), "--prompt", prompt,
               "--max-tokens", str(n), "--ignore-eos", "--budget", budget, "--stats", "--json"]
        return cmd + (["--io-backend", io] if io else [])

    def flashmoe_env(self) -> dict:
        env = dict(os.environ)
        env["FLASHMOE_THREADS"] = str(self.threads)
        return env

    def llama_cmd(self, gguf: Path, prompt: str, n: int, repack: bool) -> list[str]:
        return [str(self.greedy_ids), "-m", str(gguf), "-n", str(n), "-t", str(self.threads)] + \
            ([] if repack else ["--no-repack"]) + [prompt]


@dataclass
class Sample:
    """One run of one engine, normalised."""
    prompt_ids: list[int]
    ids: list[int]
    prefill_tps: float
    decode_tps: float
    tokens: int
    proc: Proc
    extra: dict = field(default_factory=dict)

    @property
    def bytes_per_token(self) -> float:
        return self.proc.read_bytes / max(self.tokens, 1)


def run_flashmoe(e: Engines, packed: Path, prompt: str, n: int, budget: str, cgroup=None, io=None) -> Sample:
    p = run_measured(e.flashmoe_cmd(packed, prompt, n, budget, io), e.flashmoe_env(), cgroup)
    if p.rc != 0:
        raise BenchError(f"flashmoe generate exited {p.rc}: {p.err.strip()[-300:]}")
    try:
        j = json.loads(p.out)
        s = j["stats"]
        return Sample(j.get("prompt_ids", []), j["tokens"], s["prefill_tok_per_s"], s["decode_tok_per_s"],
                      s["prompt_tokens"] + s["generated_tokens"], p,
                      {"hit_rate": s.get("hit_rate"), "io_bytes": s.get("bytes_read"),
                       "expert_bytes": s.get("expert_bytes"), "budget_bytes": s.get("budget_bytes")})
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise BenchError(f"flashmoe --json output not understood ({err}): {p.out[:400]}") from err


def run_llama(e: Engines, gguf: Path, prompt: str, n: int, cgroup=None, repack: bool = True) -> Sample:
    p = run_measured(e.llama_cmd(gguf, prompt, n, repack), None, cgroup)
    if p.rc != 0:
        raise BenchError(f"greedy_ids exited {p.rc}: {p.err.strip()[-300:]}")
    try:
        j = json.loads(p.out.strip().splitlines()[-1])
        return Sample(j["prompt_ids"], j["ids"], j["prefill_tokens"] / j["prefill_s"],
                      j["decode_steps"] / j["decode_s"] if j["decode_s"] > 0 else 0.0,
                      j["prefill_tokens"] + len(j["ids"]), p,
                      {"read_bytes_decode": j["read_bytes_decode"], "decode_steps": j["decode_steps"]})
    except (json.JSONDecodeError, KeyError, IndexError, ZeroDivisionError) as err:
        raise BenchError(f"greedy_ids output not understood ({err}): {p.out[:400]}") from err


def engines_from(args) -> Engines:
    env = {}
    envfile = Path(args.llama_env)
    if envfile.is_file():
        for line in envfile.read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                env[k.strip()] = v.strip()
    bin_dir = Path(args.llama_bin or env.get("LLAMA_BIN", ""))
    greedy = Path(env.get("GREEDY_IDS", bin_dir / "greedy_ids"))
    for what, path in (("flashmoe binary", Path(args.flashmoe)), ("greedy_ids", greedy)):
        if not path.is_file():
            raise BenchError(f"{what} not found at {path} (build it: cargo build --release; setup_llama.sh)")
    return Engines(Path(args.flashmoe), greedy, bin_dir, args.threads)


# ---------------------------------------------------------------- prepare

def prepare(args) -> None:
    e = engines_from(args)
    hf, work = Path(args.hf), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    envfile = Path(args.llama_env)
    gguf_py = next((line.split("=", 1)[1] for line in envfile.read_text().splitlines()
                    if line.startswith("GGUF_PY=")), None) if envfile.is_file() else None
    if gguf_py:
        env["GGUF_PY"] = gguf_py
    half = work / f"{hf.name}-{args.outtype}.gguf"
    if not half.exists():
        sh([sys.executable, str(HERE / "hf_to_gguf.py"), str(hf), str(half), "--outtype", args.outtype], env)
    outs = {"gguf_16": str(half)}
    if args.bits == 4:
        q4 = work / f"{hf.name}-Q4_0.gguf"
        if not q4.exists():
            # --pure: every matrix Q4_0 (no Q6_K output / embeddings), the same bits per weight as
            # flashmoe's --bits 4 --dense-bits 4; llama-quantize leaves the routers and norms in F32.
            sh(["nice", "-n", "10", str(e.llama_bin / "llama-quantize"), "--pure", str(half), str(q4), "Q4_0",
                str(args.threads)], env)
        outs["gguf_q4_0"] = str(q4)
        if args.drop_16:
            half.unlink()
            outs.pop("gguf_16")
        packed = work / f"{hf.name}-flashmoe-q4-dense{args.dense_bits}"
        pack_args = ["--bits", "4", "--dense-bits", str(args.dense_bits)]
    else:
        packed = work / f"{hf.name}-flashmoe-16"
        pack_args = ["--bits", "16"]
    if not packed.exists():
        sh(["nice", "-n", "10", str(e.flashmoe), "pack", str(hf), str(packed)] + pack_args, env)
    outs["packed"] = str(packed)
    print(json.dumps(outs, indent=1))


def sh(cmd: list[str], env=None) -> None:
    print("+ " + " ".join(cmd), file=sys.stderr)
    r = subprocess.run(cmd, env=env)
    if r.returncode != 0:
        raise BenchError(f"{cmd[0]} exited {r.returncode}")


# ---------------------------------------------------------------- check

def check(args) -> int:
    """Greedy tokens of both engines on the same 16-bit weights, prompt by prompt."""
    e = engines_from(args)
    golden = json.loads((Path(args.hf) / "golden.json").read_text()) if (Path(args.hf) / "golden.json").is_file() else None
    if args.prompt:
        golden = None  # the golden outputs belong to the golden prompts only
    prompts = args.prompt or ([p["text"] for p in golden["prompts"]] if golden else [DEFAULT_PROMPT])
    failures = 0
    for i, prompt in enumerate(prompts):
        a = run_flashmoe(e, Path(args.packed), prompt, args.tokens, "100%")
        b = run_llama(e, Path(args.gguf), prompt, args.tokens)
        first = next((k for k, (x, y) in enumerate(zip(a.ids, b.ids)) if x != y), None)
        same = first is None and len(a.ids) == len(b.ids)
        failures += not same
        fm_prompt = a.tokens - len(a.ids)
        if fm_prompt != len(b.prompt_ids):
            failures += 1
        print(f"prompt {i}: {prompt[:50]!r}: prompt tokens flashmoe {fm_prompt}, llama.cpp {len(b.prompt_ids)}")
        if golden and i < len(golden["prompts"]):
            g = golden["prompts"][i]
            print(f"  prompt ids == golden input_ids: {b.prompt_ids == g['input_ids']}")
            for who, s in (("flashmoe", a), ("llama.cpp", b)):
                k = min(len(s.ids), len(g["greedy_ids"]))
                gf = next((j for j in range(k) if s.ids[j] != g["greedy_ids"][j]), None)
                print(f"  {who:9s} vs golden greedy_ids: " + ("same" if gf is None else f"first divergence at {gf}") + f" (over {k})")
        print("  flashmoe == llama.cpp: " + ("SAME " + str(len(a.ids)) + " tokens" if same else
              f"DIFFER at generated token {first}: flashmoe {a.ids[first:first + 5]} llama.cpp {b.ids[first:first + 5]}"
              if first is not None else f"lengths differ {len(a.ids)} vs {len(b.ids)}"))
    return 1 if failures else 0


# ---------------------------------------------------------------- bench

def median_spread(xs: list[float]) -> str:
    if not xs:
        return "-"
    m = statistics.median(xs)
    return f"{fmt(m)} [{fmt(min(xs))}-{fmt(max(xs))}]"


def fmt(x: float) -> str:
    if x >= 1e9:
        return f"{x / 1e9:.2f}G"
    if x >= 1e6:
        return f"{x / 1e6:.1f}M"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def packed_sizes(packed: Path) -> tuple[int, int]:
    """(expert bytes, dense bytes) of a flashmoe packed model."""
    experts = sum(f.stat().st_size for f in packed.glob("experts-*"))
    dense = sum(f.stat().st_size for f in packed.glob("dense*"))
    if experts == 0 or dense == 0:
        raise BenchError(f"{packed}: no experts-* / dense* files (not a flashmoe packed model?)")
    return experts, dense


ENGINES = ("flashmoe", "llama.cpp", "llama.cpp-mmap")
ENGINE_NOTES = {
    "flashmoe": "flashmoe generate --budget S% (RAM: 100%, --io-backend mmap)",
    "llama.cpp": "greedy_ids, llama.cpp defaults: load mode mmap, weight repacking on (Q4_0 on AVX2: the "
                 "matrices are copied to anonymous memory at load, only the rest stays mapped)",
    "llama.cpp-mmap": "greedy_ids --no-repack: every weight read through the mapping (trust the OS)",
}


def bench(args) -> None:
    e = engines_from(args)
    packed, gguf = Path(args.packed), Path(args.gguf)
    experts, dense = packed_sizes(packed)
    cases = [("RAM", None, None)]
    for share in args.shares:
        limit = int(experts * share / 100) + dense + args.slack_mib * (1 << 20)
        cases += [(f"{share}% cold", share, limit), (f"{share}% steady", share, limit)]
    engines = [x for x in ENGINES if x in args.engines]
    results: dict[tuple[str, str], list[Sample]] = {}
    failures: dict[tuple[str, str], str] = {}
    print(f"experts {fmt(experts)}B, dense {fmt(dense)}B (flashmoe packed); GGUF {fmt(gguf.stat().st_size)}B",
          file=sys.stderr)
    warm([packed, gguf])
    for who in engines:  # warm-up, not measured
        one(e, who, packed, gguf, args.prompt, 4, "100%", None, args.ram_io_backend)
    for rnd in range(args.rounds):
        order = engines if rnd % 2 == 0 else engines[::-1]
        for who in order:
            for name, share, limit in cases:
                if name.endswith("steady") or (name, who) in failures:
                    continue  # steady runs right after its cold run, in the same cgroup
                try:
                    if share is None:
                        warm([packed] if who == "flashmoe" else [gguf])
                        s = one(e, who, packed, gguf, args.prompt, args.tokens, "100%", None, args.ram_io_backend)
                        results.setdefault((name, who), []).append(s)
                        continue
                    with MemCgroup(f"flashmoe-peer-{os.getpid()}", limit) as cg:
                        evict([packed, gguf], args.drop_caches)
                        for phase in ("cold", "steady"):
                            cg.reset_peak()
                            try:
                                s = one(e, who, packed, gguf, args.prompt, args.tokens, f"{share}%", cg.path, None)
                            except BenchError as err:
                                raise BenchError(f"{err} [{cg.oom_kills()} OOM kills in the cgroup]") from err
                            s.proc.cg_peak = cg.peak()
                            results.setdefault((f"{share}% {phase}", who), []).append(s)
                except BenchError as err:
                    failures[(name, who)] = str(err)
                    failures[(name.replace("cold", "steady"), who)] = str(err)
                    print(f"round {rnd + 1}: {who} {name}: {err}", file=sys.stderr)
            print(f"round {rnd + 1}/{args.rounds}: {who} done", file=sys.stderr)
    table(cases, engines, results, failures, args, experts, dense)
    if args.raw:
        rows = [{"case": k[0], "engine": k[1], "round": i, "decode_tok_per_s": x.decode_tps,
                 "prefill_tok_per_s": x.prefill_tps, "tokens": x.tokens, "read_bytes": x.proc.read_bytes,
                 "maxrss": x.proc.maxrss, "cgroup_peak": x.proc.cg_peak, "wall_s": x.proc.wall_s,
                 "ids": x.ids, "extra": x.extra}
                for k, v in results.items() for i, x in enumerate(v)]
        Path(args.raw).write_text(json.dumps({"runs": rows, "failures": [
            {"case": k[0], "engine": k[1], "error": v} for k, v in failures.items()]}, indent=1))


def one(e: Engines, who: str, packed: Path, gguf: Path, prompt: str, n: int, budget: str, cg, io) -> Sample:
    if who == "flashmoe":
        return run_flashmoe(e, packed, prompt, n, budget, cg, io)
    return run_llama(e, gguf, prompt, n, cg, repack=(who == "llama.cpp"))


def table(cases, engines, results, failures, args, experts, dense) -> None:
    cols = ["decode tok/s", "prefill tok/s", "disk B/tok", "peak RSS", "cg peak"]
    getters = [lambda s: s.decode_tps, lambda s: s.prefill_tps, lambda s: s.bytes_per_token,
               lambda s: s.proc.maxrss, lambda s: s.proc.cg_peak]
    print(f"\n{args.rounds} rounds, engines interleaved; median [min-max]; {args.threads} threads each; "
          f"{args.tokens} generated tokens; limit = share x {fmt(experts)}B experts + {fmt(dense)}B dense + "
          f"{args.slack_mib} MiB")
    for who in engines:
        print(f"  {who}: {ENGINE_NOTES[who]}")
    print("\n| case | engine | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for name, share, limit in cases:
        meds: dict[str, list] = {}
        for who in engines:
            ss = results.get((name, who), [])
            lim = f" ({fmt(limit)}B)" if limit else ""
            if not ss:
                print(f"| {name}{lim} | {who} | " + failures.get((name, who), "no result")[:160] + " |")
                continue
            vals = []
            for g in getters:
                xs = [g(s) for s in ss if g(s) is not None]
                vals.append(median_spread(xs))
                meds.setdefault(who, []).append(statistics.median(xs) if xs else None)
            print(f"| {name}{lim} | {who} | " + " | ".join(vals) + " |")
        for peer in engines[1:]:
            if "flashmoe" in meds and peer in meds:
                ratios = [f"{a / b:.2f}x" if a is not None and b else "-" for a, b in zip(meds["flashmoe"], meds[peer])]
                print(f"| {name} | flashmoe / {peer} | " + " | ".join(ratios) + " |")
    firsts = {k: v[0].ids for k, v in results.items()}
    agree = []
    for name, _, _ in cases:
        for peer in engines[1:]:
            a, b = firsts.get((name, "flashmoe")), firsts.get((name, peer))
            if a is not None and b is not None:
                k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                agree.append(f"{name} vs {peer}: {k}/{len(a)}")
    print("\nleading generated tokens flashmoe shares with each peer (first round; equal weights only at 16 bits): "
          + ", ".join(agree))


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flashmoe", default=str(REPO / "target" / "release" / "flashmoe"))
    ap.add_argument("--llama-env", default=str(Path.home() / ".cache" / "flashmoe-peer" / "llama.env"),
                    help="the env file setup_llama.sh writes (LLAMA_BIN, GGUF_PY, GREEDY_IDS)")
    ap.add_argument("--llama-bin", help="llama.cpp's build/bin (overrides --llama-env)")
    ap.add_argument("--threads", type=int, default=2)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="HF checkpoint -> GGUF (+Q4_0) and a flashmoe packed model")
    p.add_argument("--hf", required=True)
    p.add_argument("--work", required=True, help="folder for the GGUF files and the packed model")
    p.add_argument("--bits", type=int, choices=[4, 16], default=16)
    p.add_argument("--dense-bits", type=int, choices=[4, 8, 16], default=4)
    p.add_argument("--outtype", choices=["bf16", "f16"], default="bf16")
    p.add_argument("--drop-16", action="store_true", help="delete the 16-bit GGUF once Q4_0 is written")
    c = sub.add_parser("check", help="same greedy tokens on the same 16-bit weights")
    c.add_argument("--hf", required=True, help="the checkpoint (its golden.json gives the prompts)")
    c.add_argument("--packed", required=True)
    c.add_argument("--gguf", required=True)
    c.add_argument("--tokens", type=int, default=40)
    c.add_argument("--prompt", action="append")
    b = sub.add_parser("bench", help="the side-by-side table")
    b.add_argument("--packed", required=True)
    b.add_argument("--gguf", required=True)
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument("--tokens", type=int, default=32)
    b.add_argument("--prompt", default=DEFAULT_PROMPT)
    b.add_argument("--shares", type=int, nargs="*", default=[25, 50])
    b.add_argument("--slack-mib", type=int, default=128,
                   help="added to every memory limit, for code, KV cache and buffers (same for both)")
    b.add_argument("--engines", nargs="*", default=list(ENGINES), choices=list(ENGINES),
                   help="llama.cpp: its defaults (weight repacking on); llama.cpp-mmap: --no-repack")
    b.add_argument("--ram-io-backend", default="mmap",
                   help="flashmoe's --io-backend in the all-in-RAM row (mmap: experts come from the warm page "
                        "cache; the default O_DIRECT backends would read the disk on each first touch)")
    b.add_argument("--raw", help="also write every run's figures to this JSON file")
    b.add_argument("--drop-caches", action="store_true",
                   help="cold start drops ALL page caches (echo 3 > drop_caches) instead of evicting the model files")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "prepare":
            prepare(args)
            return 0
        if args.cmd == "check":
            return check(args)
        bench(args)
        return 0
    except BenchError as err:
        print(f"run.py: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
