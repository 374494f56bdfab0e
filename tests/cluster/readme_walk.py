"""Run the README's "Install on Kubernetes" commands as they are written.

`Readme` splits the section's ```sh blocks into commands (continuation lines and quoted
newlines joined), and runs the ones a test names with bash, from the repository root, after
the substitutions of this cluster (namespace, node, local ports, images). It records what it
ran, so a test can check that every command the README shows was run.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ..conftest import free_port

__all__ = ["Readme", "commands", "free_port"]

REPO = Path(__file__).resolve().parents[2]
SECTION = "## Install on Kubernetes"


def _complete(text: str) -> bool:
    """Whether `text` is a whole shell command (no open quote, no trailing `\\` or `|`)."""
    if text.endswith(("\\", "|")):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:
        return False
    return True


def commands(readme: Path = REPO / "README.md") -> list[str]:
    """The commands of the section's sh blocks, in order, comments dropped."""
    body = readme.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    found: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", body, flags=re.S):
        pending = ""
        for line in block.splitlines():
            pending = f"{pending}\n{line}" if pending else line
            if _complete(pending):
                found.append(_strip_comment(pending).strip())
                pending = ""
        assert not pending, f"unterminated command in the README: {pending}"
    return [c for c in found if c]


def _strip_comment(command: str) -> str:
    """Drop a trailing `# ...` comment that is outside quotes."""
    in_single = in_double = False
    for i, ch in enumerate(command):
        if ch == "'" and not in_double:
            in_single = not in_single
        elif ch == '"' and not in_single and (i == 0 or command[i - 1] != "\\"):
            in_double = not in_double
        elif ch == "#" and not (in_single or in_double) and (i == 0 or command[i - 1] in " \t"):
            return command[:i].rstrip()
    return command


class Readme:
    """The README's commands with this cluster's substitutions; records each one run."""

    def __init__(self, env: dict[str, str], substitutions: list[tuple[str, str]]) -> None:
        self.all = commands()
        self.env = {**os.environ, **env}
        self.substitutions = substitutions
        self.walked: set[str] = set()
        self.background: list[subprocess.Popen[str]] = []

    def find(self, prefix: str) -> str:
        """The README command `prefix`, or the one command starting with it."""
        if prefix in self.all:
            return prefix
        found = {c for c in self.all if c.startswith(prefix)}  # a command may repeat
        assert len(found) == 1, f"README commands starting with {prefix!r}: {sorted(found)}"
        return found.pop()

    def adapt(self, command: str) -> str:
        for old, new in self.substitutions:
            command = command.replace(old, new)
        return command

    def script(
        self, *prefixes: str, extra: str = "", env: dict[str, str] | None = None,
        timeout: float = 300,
    ) -> str:  # fmt: skip
        """Run the named commands, in this order, as one bash script (then `extra`); its
        stdout. `env` adds variables (what a user's shell would still hold, e.g. ID)."""
        chosen = [self.find(p) for p in prefixes]
        text = "set -euo pipefail\n" + "\n".join(self.adapt(c) for c in chosen) + "\n" + extra
        proc = subprocess.run(
            ["bash", "-c", text],
            cwd=REPO,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, (
            f"README commands failed ({proc.returncode}):\n{text[:3000]}\n"
            f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}"
        )
        self.walked.update(chosen)
        return proc.stdout

    def start(
        self, prefix: str, port: int | None = None, timeout: float = 60
    ) -> subprocess.Popen[str]:
        """Start a README command in the background (a port-forward, a subscriber); with
        `port`, wait until something listens there. Its output is the process's stdout."""
        command = self.find(prefix)
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {self.adapt(command).removesuffix('&').rstrip()}"],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        self.background.append(proc)
        if port is None:
            self.walked.add(command)
            return proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"{command} exited: {proc.stdout and proc.stdout.read()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                self.walked.add(command)
                return proc
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"{command}: nothing listens on port {port} after {timeout} s")

    def poll(
        self, *prefixes: str, until: Callable[[str], bool], env: dict[str, str] | None = None,
        timeout: float = 300,
    ) -> str:  # fmt: skip
        """Run a script again and again until `until(stdout)`; the last stdout."""
        deadline, out = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            out = self.script(*prefixes, env=env)
            if until(out):
                return out
            time.sleep(2)
        raise AssertionError(f"{prefixes[-1]} never gave what was awaited; last:\n{out}")

    def stop_background(self) -> None:
        """Stop what `start` started (port-forwards follow one Pod: restart them after a
        rollout)."""
        for proc in self.background:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.background.clear()

    def not_walked(self) -> list[str]:
        return [c for c in self.all if c not in self.walked]
