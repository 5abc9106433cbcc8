"""`hpsearch dashboard` as a user starts it: a separate process on a free port, stopped by Ctrl-C."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT = 90  # seconds; imports alone take several on a loaded 2-core machine


@dataclass
class Dashboard:
    proc: subprocess.Popen
    url: str  # http://127.0.0.1:PORT/dashboard, as printed
    lines: list[str] = field(default_factory=list)  # everything it printed on stdout
    returncode: int | None = None
    stderr: str = ""

    @property
    def base(self) -> str:
        return self.url.removesuffix("/dashboard")

    def get_json(self, path: str, timeout: float = 30) -> dict:
        with urllib.request.urlopen(self.base + path, timeout=timeout) as resp:
            return json.loads(resp.read())


@contextmanager
def running_dashboard(storage_url: str, cwd: Path, *args: str) -> Iterator[Dashboard]:
    """Start `hpsearch dashboard --port 0`, wait for the URL it prints, stop it with SIGINT."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HPSEARCH_ARTIFACTS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpsearch.cli", "dashboard", "--storage", storage_url, "--port", "0", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    url = None
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while url is None:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"dashboard printed no URL in {START_TIMEOUT}s: {seen}") from None
            if line is None:
                raise AssertionError(f"dashboard exited: {seen} {proc.stderr.read() if proc.stderr else ''}")
            seen.append(line)
            found = re.search(r"open (http://\S+)", line)
            url = found.group(1) if found else None
        dash = Dashboard(proc, url, seen)
        yield dash
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        while True:
            try:
                line = lines.get(timeout=5)
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
    if url is not None:
        dash.returncode = proc.returncode
        dash.stderr = proc.stderr.read() if proc.stderr else ""
