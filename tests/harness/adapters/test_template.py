"""Declared adapters (profile v2): strict loading, templates, the run-event stream reader, and
the runs answer mapped onto the protocol's statuses (the provider mocked with respx: only the
target's HTTP answers are faked here; the real server is in test_langgraph_target.py)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import respx
import trio

from raceharness.adapters.base import AdapterError
from raceharness.adapters.template import RunEventStream, StreamSpec, fill, fill_json
from raceharness.core.sse import Frame, SseParser
from raceharness.net.target import ConfigError, load_profile


def _profile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("text", "message"), [
    ('adapter = "template"\n[routes]\nturn = "FETCH /x/{chat_id}"\n',
     'routes.turn: expected "METHOD /path", got \'FETCH /x/{chat_id}\''),
    ('adapter = "template"\n[routes]\nturn = "POST /x/{chat_id}"\n[bodies]\nturn = "{nope"\n',
     "bodies.turn: not JSON"),
    ('adapter = "template"\n[routes]\nturn = "POST /x/{chat_id}"\n[bodies]\nturn = "{}"\n',
     'bodies.turn: must place the turn\'s text as "{text}"'),
    ('adapter = "langgraph"\n[runs.statuses]\npaused = "held"\n',
     "runs.statuses.paused: expected one of pending, running, succeeded, failed, aborted, "
     "got 'held'"),
    ('adapter = "langgraph"\n[not_checkable]\n"race/nope" = "why"\n',
     "not_checkable.race/nope: unknown property"),
    ('adapter = "langgraph"\n[stream]\nend = "eventually"\n',
     'stream.end: expected "frame" or "status", got \'eventually\''),
    ('adapter = "langgraph"\nprovides = ["teleport"]\n', "provides: unknown capability"),
    ('adapter = "mystery"\n', "adapter: unknown adapter 'mystery'"),
    ('[routes]\nturn = "POST /x"\n', '[routes] needs adapter = "template"'),
    ('adapter = "langgraph"\n[paths]\nstream = "/x"\n', "[paths] is for the ai-chat adapter"),
    ('[conflict]\npattern = "(unclosed"\n', "conflict.pattern: not a regular expression"),
])
def test_a_bad_profile_names_the_file_the_field_and_the_value(
        tmp_path: Path, text: str, message: str) -> None:
    path = _profile(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_a_profile_overrides_a_builtin_field_by_field(tmp_path: Path) -> None:
    path = _profile(tmp_path, 'adapter = "langgraph"\n[bodies]\nturn = \'{"assistant_id": '
                    '"mine", "input": {"messages": [{"role": "user", "content": "{text}"}]}}\'\n')
    adapter = load_profile(path).adapter
    method, route, _, body = adapter.turn_request('say "hi"\n', "t-1")
    assert (method, route) == ("POST", "/threads/t-1/runs/stream")
    assert json.loads(body) == {"assistant_id": "mine", "input": {"messages": [
        {"role": "user", "content": 'say "hi"\n'}]}}
    assert adapter.conflict.pattern == "already running"  # the built-in's, kept
    assert "race/holder-named" in adapter.lacks


def test_templates_quote_ids_in_paths_and_escape_text_in_bodies() -> None:
    assert fill("/threads/{chat_id}/runs/{run_id}", {"chat_id": "a/b", "run_id": "r 1"}) == \
        "/threads/a%2Fb/runs/r%201"
    body = fill_json('{"x": ["{text}", "id={chat_id}"], "n": 1}', {"text": '"}\\', "chat_id": "c"})
    assert json.loads(body) == {"x": ['"}\\', "id=c"], "n": 1}
    with pytest.raises(AdapterError, match="needs {run_id}"):
        fill("/runs/{run_id}", {})


def test_a_run_event_stream_reads_the_run_id_from_the_header_and_checks_the_event() -> None:
    spec = StreamSpec(run_id_header="content-location", run_id_pattern="/runs/([^/]+)",
                      run_id_event="metadata", run_id_pointer="/run_id")
    parser = SseParser(event_typed=True)
    stream = RunEventStream(spec, "t-1", "r-1")
    assert stream.started  # known with the headers: the racer counts as answered at once
    raw = (b"event: metadata\r\ndata: {\"run_id\": \"r-2\"}\r\n\r\n"
           b"event: values\r\ndata: {\"messages\": []}\r\n\r\n"
           b"event: error\r\ndata: {\"message\": \"boom\"}\r\n\r\n")
    for frame in parser.feed(raw):
        stream.on_frame(frame, 0)
    stream.close()
    assert stream.types == ["metadata", "values", "error"]
    assert stream.terminal == "error" and stream.done
    assert [f.code for f in stream.findings] == ["run-id-mismatch"]
    assert stream.run_id == "r-1"
    assert parser.findings == []  # typed events need no "type" field


def test_a_run_event_stream_without_a_header_starts_with_its_run_event() -> None:
    stream = RunEventStream(StreamSpec(run_id_event="metadata", run_id_pointer="/run_id"),
                            None, None)
    assert not stream.started
    stream.on_frame(Frame({"type": "metadata", "data": {"run_id": "r-9"}}), 0)
    assert stream.started and stream.run_id == "r-9"


@respx.mock
def test_runs_are_mapped_onto_protocol_statuses_and_an_unknown_one_fails_loudly() -> None:
    trio.run(_runs_are_mapped)


async def _runs_are_mapped() -> None:
    adapter = load_profile(None, "langgraph").adapter
    route = respx.get("http://lg/threads/t-1/runs").mock(return_value=httpx.Response(200, json=[
        {"run_id": "r-2", "status": "interrupted"}, {"run_id": "r-1", "status": "success"}]))
    async with httpx.AsyncClient(base_url="http://lg") as client:
        status, runs, truncated = await adapter.runs_page(client, {}, "t-1")
        assert (status, runs, truncated) == (200, [{"id": "r-2", "status": "aborted"},
                                                   {"id": "r-1", "status": "succeeded"}], False)
        assert route.calls[0].request.url.params["limit"] == "200"
        route.mock(return_value=httpx.Response(200, json=[{"run_id": "r-3",
                                                           "status": "paused"}]))
        with pytest.raises(AdapterError, match="run status 'paused' is not in its"):
            await adapter.runs_page(client, {}, "t-1")


@respx.mock
def test_a_stop_of_an_ended_run_reads_as_nothing_stopped() -> None:
    trio.run(_stop_of_an_ended_run)


async def _stop_of_an_ended_run() -> None:
    adapter = load_profile(None, "langgraph").adapter
    respx.post("http://lg/threads/t-1/runs/r-1/cancel").mock(
        return_value=httpx.Response(404, json={"detail": "No matching runs to cancel."}))
    respx.post("http://lg/threads/t-1/runs/r-2/cancel").mock(return_value=httpx.Response(202))
    async with httpx.AsyncClient(base_url="http://lg") as client:
        assert await adapter.stop(client, {}, run_id="r-1", chat_id="t-1") == (404, False)
        assert await adapter.stop(client, {}, run_id="r-2", chat_id="t-1") == (202, True)


@respx.mock
def test_a_server_version_the_profile_was_not_tested_against_is_reported() -> None:
    trio.run(_server_version)


async def _server_version() -> None:
    adapter = load_profile(None, "langgraph").adapter
    route = respx.get("http://lg/info").mock(
        return_value=httpx.Response(200, json={"version": "0.16.7"}))
    async with httpx.AsyncClient(base_url="http://lg") as client:
        assert await adapter.server_version(client) == ("0.16.7", None)
        route.mock(return_value=httpx.Response(200, json={"version": "0.17.0"}))
        version, warning = await adapter.server_version(client)
        assert version == "0.17.0"
        assert warning is not None and "tested against 0.16.7; this server is 0.17.0" in warning
