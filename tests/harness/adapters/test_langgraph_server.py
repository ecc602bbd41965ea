"""A real LangGraph Agent Server starts offline and runs a turn through the fake provider.

The pinned ``langgraph dev`` (examples/langgraph/, installed by ``./run.sh test``) is started by
``tests.langgraph_server`` on a free loopback port, pointed at the harness's own fake provider
(trio, in a thread of its own). One thread, one streamed turn with the settings the adapter
sends (``reject``, ``on_disconnect: cancel``), and the run's record afterwards.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from raceharness.shell.fake_provider import FakeProvider
from tests.langgraph_server import langgraph_server

TOKENS = ("Hello", " world")
BOUND_S = 20.0  # every request and wait below; the whole test takes a few seconds more


@contextmanager
def fake_provider() -> Iterator[FakeProvider]:
    """The fake provider serving in a trio loop of its own thread, until the block ends."""
    provider = FakeProvider(tokens=TOKENS)
    ready = threading.Event()
    stop = threading.Event()

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(provider.serve, "127.0.0.1", 0)
            ready.set()
            await trio.to_thread.run_sync(stop.wait)
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True,
                              name="fake-provider")
    thread.start()
    try:
        assert ready.wait(10), "the fake provider did not start"
        yield provider
    finally:
        stop.set()
        thread.join(10)


def wait_until(check: Any, what: str) -> Any:
    """Poll ``check()`` until it returns something truthy, bounded by ``BOUND_S``."""
    deadline = time.monotonic() + BOUND_S
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result


def test_langgraph_dev_runs_a_turn_through_the_fake_provider(tmp_path: Path) -> None:
    with fake_provider() as provider, \
            langgraph_server(provider.base_url, workdir_parent=tmp_path) as server, \
            httpx.Client(base_url=server.base_url, timeout=BOUND_S, trust_env=False) as client:
        created = client.post("/threads", json={})
        assert created.status_code == 200, created.text
        tid = created.json()["thread_id"]
        assert str(uuid.UUID(tid)) == tid

        body = {"assistant_id": "chat",
                "input": {"messages": [{"role": "user", "content": "[race:abc] hello"}]},
                "multitask_strategy": "reject", "stream_mode": ["values"],
                "on_disconnect": "cancel"}
        with client.stream("POST", f"/threads/{tid}/runs/stream", json=body) as response:
            assert response.status_code == 200, response.read()
            location = response.headers["content-location"]
            assert location.startswith(f"/threads/{tid}/runs/")
            rid = location.rsplit("/", 1)[1]
            uuid.UUID(rid)
            stream = response.read().decode()  # to its end: the server closes it
        assert f'"run_id":"{rid}"' in stream  # event: metadata
        assert "event: values" in stream and "".join(TOKENS) in stream  # the final state

        assert [(c.nonce, c.tokens_sent, c.complete) for c in provider.calls] == [
            ("abc", len(TOKENS), True)]  # one call; its last user message carries [race:abc]

        def finished() -> list[dict[str, Any]] | None:
            runs = client.get(f"/threads/{tid}/runs")
            assert runs.status_code == 200, runs.text
            listed = runs.json()
            return listed if listed and listed[0]["status"] not in ("pending", "running") \
                else None

        runs = wait_until(finished, "the run to be recorded as ended")
        assert [(r["run_id"], r["status"]) for r in runs] == [(rid, "success")]
    assert server.process.poll() is not None  # the server is stopped once the block ends
