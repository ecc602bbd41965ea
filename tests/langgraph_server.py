"""A real LangGraph Agent Server (`langgraph dev`, pinned in examples/langgraph/) for the tests.

``langgraph_server(provider_base_url, workdir_parent=...)`` copies the example graph package into
a fresh folder (the dev runtime pickles its state into ``.langgraph_api/`` next to
``langgraph.json`` and reloads it, retrying runs, on the next start: nothing may leak between
runs or into the checkout), starts the server offline on a free loopback port with a clean
environment, waits for ``GET /ok`` and, on exit, stops the whole process group.

The server lives in its own venv, ``.venv-langgraph`` (``./run.sh test`` installs it), or
wherever ``RACEHARNESS_LANGGRAPH_BIN`` points. A missing server fails the test, never skips it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "langgraph"
EXAMPLE_FILES = ("langgraph.json", "chat_graph.py")
BIN_VARIABLE = "RACEHARNESS_LANGGRAPH_BIN"
DEFAULT_BIN = ROOT / ".venv-langgraph" / "bin" / "langgraph"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.1
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Nothing leaves 127.0.0.1: no analytics, no version check, no LangSmith tracing.
OFFLINE_ENV = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "LANGGRAPH_NO_VERSION_CHECK": "true",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
}


@dataclass
class LangGraphServer:
    base_url: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)


def langgraph_bin() -> Path:
    """The ``langgraph`` command: ``$RACEHARNESS_LANGGRAPH_BIN`` or ``.venv-langgraph``'s."""
    configured = os.environ.get(BIN_VARIABLE)
    path = Path(configured) if configured else DEFAULT_BIN
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail("LangGraph server not installed: run ./run.sh test (it installs it) or set "
                    "RACEHARNESS_LANGGRAPH_BIN", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(provider_base_url: str) -> dict[str, str]:
    """A clean environment: PATH and HOME, the offline switches and the provider."""
    env = {"PATH": os.environ.get("PATH", os.defpath),
           "HOME": os.environ.get("HOME", str(Path.home()))}
    env.update(OFFLINE_ENV)
    env["PROVIDER_BASE_URL"] = provider_base_url
    env["PROVIDER_API_KEY"] = "dummy"
    return env


@contextmanager
def langgraph_server(provider_base_url: str, *, workdir_parent: Path,
                     port: int | None = None) -> Iterator[LangGraphServer]:
    """A ``langgraph dev`` serving the example ``chat`` graph on ``port`` (a free one when
    None), ready (``/ok`` is 200)."""
    command = langgraph_bin()
    workdir = Path(tempfile.mkdtemp(prefix="langgraph-", dir=workdir_parent))
    for name in EXAMPLE_FILES:
        shutil.copy2(EXAMPLE / name, workdir / name)
    port = free_port() if port is None else port
    log_path = workdir / "langgraph-dev.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(command), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1",
             "--port", str(port), "--n-jobs-per-worker", "64"],
            cwd=workdir, env=server_env(provider_base_url), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = LangGraphServer(base_url=f"http://127.0.0.1:{port}", port=port, log_path=log_path,
                             process=process)
    try:
        _wait_ready(server)
        yield server
    finally:
        _stop(process)


def _wait_ready(server: LangGraphServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(base_url=server.base_url, timeout=2.0, trust_env=False) as client:
        while True:
            code = server.process.poll()
            if code is not None:
                raise RuntimeError(f"langgraph dev exited with {code} before /ok answered; "
                                   f"log {server.log_path}:\n{server.log_tail()}")
            try:
                if client.get("/ok").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"langgraph dev: /ok not 200 within {START_TIMEOUT_S:.0f} s; "
                                   f"log {server.log_path}:\n{server.log_tail()}")
            time.sleep(POLL_INTERVAL_S)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the whole process group (the server, its spawned worker, the resource
    tracker), then SIGKILL when it has not ended within the bound."""
    pgid = process.pid  # start_new_session: the group is the server's own
    for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _group_alive(pgid):
            process.poll()  # reap the leader so it does not count as alive
            time.sleep(POLL_INTERVAL_S)
        if not _group_alive(pgid):
            break
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in the group: a worker orphaned by the
    server stays a zombie until PID 1 reaps it, and a container's PID 1 may never do."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    text = _ANSI.sub("", text)  # the server colours its log even into a file
    return "\n".join(text.splitlines()[-lines:])
