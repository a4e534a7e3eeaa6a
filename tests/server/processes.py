"""Server processes for tests that send signals: start, read the JSON log, find the address."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    """``python -m <module> <args>`` with JSON logs on stderr, collected on a thread."""

    def __init__(self, module: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CBPT_")}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args], stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env
        )
        self.lines: list[dict] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if line.startswith("{"):
                with self._changed:
                    self.lines.append(json.loads(line))
                    self._changed.notify_all()

    def wait_for(self, message: str, timeout: float = 120) -> dict:
        """The first log line with this message, waiting for it (AssertionError if the process ends)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if line["message"] == message:
                        return line
                if self.process.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"the server exited ({self.process.returncode}) before {message!r}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {message!r} within {timeout} s; saw {self.messages()}")
                self._changed.wait(min(remaining, 0.5))

    def wait_for_passes(self, count: int, timeout: float = 120) -> None:
        """Until the slow server has run ``count`` more forward passes than when called."""
        start = self.passes()
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.passes() < start + count:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise AssertionError(f"the engine ran {self.passes() - start} of {count} passes")
                self._changed.wait(0.5)

    def wait_for_more(self, message: str, count: int, timeout: float = 120) -> None:
        """Until ``count`` more lines with this message are logged than when called."""
        start = self.count(message)
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.count(message) < start + count:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise AssertionError(f"{self.count(message) - start} of {count} more {message!r} lines")
                self._changed.wait(0.5)

    def count(self, message: str) -> int:
        return sum(line["message"] == message for line in self.lines)

    def passes(self) -> int:
        steps = [line["steps"] for line in self.lines if line["message"] == "forward pass"]
        return max(steps, default=0)

    def messages(self) -> list[str]:
        return [line["message"] for line in self.lines]

    def address(self) -> str:
        return self.wait_for("serving")["address"]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
