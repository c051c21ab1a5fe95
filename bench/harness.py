"""What the benchmark scripts share: free ports, the machine's description, a quiet machine to measure on, stopping
the servers they start, percentiles, Markdown tables."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    """A port free on 127.0.0.1 now (the kernel's pick), for a server about to bind it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    cpu = "n/a"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, Python {platform.python_version()}"


def wait_for_quiet_machine(limit: float = 600.0) -> tuple[float, bool]:
    """Wait while another engineer's bench/run.py runs (polled every 30 s, at most ``limit``).

    Returns the seconds waited and whether it was still running when we gave up."""
    start = time.monotonic()
    while True:
        busy = subprocess.run(["pgrep", "-f", "bench/run.py"], capture_output=True, text=True).stdout.split()
        if not [p for p in busy if int(p) != os.getpid()]:
            return time.monotonic() - start, False
        if time.monotonic() - start >= limit:
            return time.monotonic() - start, True
        print("bench/run.py is running; waiting 30 s", file=sys.stderr)
        time.sleep(30)


def waited_note(waited: float, busy: bool) -> str:
    """What the wait for a quiet machine came to, for a report's introduction."""
    if busy:
        return f" bench/run.py was still running after {waited:.0f} s of waiting: measured alongside it."
    return f" Waited {waited:.0f} s for bench/run.py to finish." if waited > 1 else ""


def stop(proc: subprocess.Popen, *, group: bool = False, grace: float = 15.0) -> None:
    """SIGTERM (to its whole process group with ``group``: a server started in a new session), then SIGKILL after
    ``grace`` seconds."""
    if proc.poll() is not None:
        return
    send = (lambda sig: os.killpg(proc.pid, sig)) if group else proc.send_signal
    send(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table and the blank line after it; nothing without rows."""
    if not rows:
        return []
    return [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows],
        "",
    ]
