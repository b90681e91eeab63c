"""Drives `flashmoe chat` through a pseudo-terminal (run by tests/chat_pty.rs).

Usage: python3 chat_pty.py FLASHMOE_BINARY MODEL_DIR
Checks: the prompt appears, an answer streams, /stats reports reuse on the second turn,
Ctrl-C stops a long answer without leaving, /reset clears, /quit exits 0.
"""
import os
import pty
import re
import select
import sys
import time

binary, model = sys.argv[1], sys.argv[2]
pid, fd = pty.fork()
if pid == 0:
    os.execv(binary, [binary, "chat", "--model", model, "--temperature", "0", "--max-tokens", "900",
                      "--ignore-eos"])

buf = b""


def read_until(pattern, limit=120.0):
    """Reads until `pattern` (bytes regex) matches the output after the last call."""
    global buf
    end = time.monotonic() + limit
    while True:
        m = re.search(pattern, buf, re.S)
        if m:
            out, buf = buf[:m.end()], buf[m.end():]
            return out
        left = end - time.monotonic()
        if left <= 0:
            raise SystemExit(f"FAILED: no {pattern!r} in {buf[-2000:]!r}")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                raise SystemExit(f"FAILED: chat exited; waiting for {pattern!r} in {buf[-2000:]!r}")
            buf += chunk


def send(text):
    os.write(fd, text.encode())


passed = 0
read_until(rb"/quit.*?\n> ")
send("/stats\n")
read_until(rb"no turn yet.*?\n> ")
passed += 1

# A long answer (900 tokens, end-of-sequence ignored): Ctrl-C once text has streamed.
send("What is Rust?\n")
read_until(rb"What is Rust\?\r?\n.{20}")
send("\x03")
out = read_until(rb"\(stopped\)\r?\n> ")
passed += 1

send("/stats\n")
out = read_until(rb"last turn: (\d+) prompt tokens \((\d+) reused.*?\n> ")
passed += 1

# The second turn re-sends the first (with its stopped answer): most of it is reused.
send("/stats\n")
read_until(rb"\n> ")
send("And Cargo?\n")
read_until(rb"And Cargo\?\r?\n.{10}")
send("\x03")
read_until(rb"\(stopped\)\r?\n> ")
send("/stats\n")
out = read_until(rb"last turn: (\d+) prompt tokens \((\d+) reused.*?\n> ")
m = re.search(rb"last turn: (\d+) prompt tokens \((\d+) reused", out)
prompt, reused = int(m.group(1)), int(m.group(2))
if not (reused > 0 and reused < prompt):
    raise SystemExit(f"FAILED: second turn reused {reused} of {prompt}")
passed += 1

send("/reset\n")
read_until(rb"\(conversation cleared\)\r?\n> ")
send("/quit\n")
_, status = os.waitpid(pid, 0)
if os.waitstatus_to_exitcode(status) != 0:
    raise SystemExit(f"FAILED: exit status {status}")
passed += 1
print(f"{passed} passed, 0 failed")
