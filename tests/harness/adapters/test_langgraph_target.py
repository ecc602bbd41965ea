"""The harness against a real third-party server: the LangGraph Agent Server (``langgraph dev``,
pinned in examples/langgraph/), driven only through ``--adapter langgraph`` and the target flags.

The server's one-node graph streams a chat completion from the harness's fake provider, so every
provider call is attributed to the turn that caused it. The properties the adapter cannot give
evidence for (a holder id in LangGraph's 409, the protocol's tables, its frame grammar) are
reported as not checkable with their reasons, and never decide the exit code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from raceharness.commands.cli import main
from tests.langgraph_server import LangGraphServer, langgraph_server
from tests.refkit import free_ports


@pytest.fixture(scope="module")
def langgraph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LangGraphServer, int]]:
    provider_port, port = free_ports(2)  # distinct: both are bound by others later
    with langgraph_server(f"http://127.0.0.1:{provider_port}/v1", port=port,
                          workdir_parent=tmp_path_factory.mktemp("langgraph")) as server:
        yield server, provider_port


def _flags(langgraph: tuple[LangGraphServer, int]) -> list[str]:
    server, provider_port = langgraph
    return ["--adapter", "langgraph", "--target", server.base_url, "--token", "unused",
            "--provider-listen", f"127.0.0.1:{provider_port}"]


def _history(folder: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in
            (folder / "history.jsonl").read_text(encoding="utf-8").splitlines()]


def test_race_n50_one_winner_49_conflicts_one_provider_call_and_the_thread_released(
        langgraph: tuple[LangGraphServer, int], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["race", "--n", "50", "--json", "--report", str(tmp_path), *_flags(langgraph)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, (report["properties"], langgraph[0].log_tail())
    trial = report["trials"][0]
    assert trial["statuses"] == {"200": 1, "409": 49}
    assert trial["winners"] == 1
    for prop in ("race/one-winner", "race/losers-409", "race/no-loser-provider-call",
                 "race/winner-provider-call", "race/winner-stoppable", "race/released",
                 "race/no-untracked-run", "race/overlap-achieved"):
        assert report["properties"][prop]["verdict"] == "valid", (prop, report["properties"])
    # what the adapter cannot evidence is named, with why, and not checked
    assert set(report["not_checkable"]) == {"race/holder-named", "race/no-loser-writes",
                                            "stream/well-formed"}
    assert "names no holder" in report["not_checkable"]["race/holder-named"]
    assert "race/holder-named" not in report["properties"]
    assert report["adapter"]["server_version"] == "0.16.7"  # the pinned, tested release
    assert "warning" not in report["adapter"]
    # exactly one provider call among the 50 racers: the winner's, cancelled by the stop
    lines = _history(tmp_path)
    calls = [c for line in lines if line["kind"] == "provider"
             for c in line["calls"]]  # type: ignore[union-attr]
    racer_calls = [c for c in calls if re.search(r"-r\d+$", str(c.get("nonce")))]
    assert len(racer_calls) == 1, racer_calls
    assert racer_calls[0]["disconnected_ns"] is not None  # the cancel reached the provider
    # the thread was released: the next turn on it ran and called the provider
    assert [c for c in calls if str(c.get("nonce")).endswith("-released") and c["complete"]]
    ops = [line for line in lines if line["kind"] == "op"]
    stops = [o for o in ops if o["f"] == "stop" and o["type"] == "ok"]
    assert stops and stops[0]["value"]["status"] == 202  # type: ignore[index]
    # --strict: not checkable is not passed
    assert main(["race", "--n", "5", "--strict", *_flags(langgraph)]) == 3


def test_create_on_first_turn_race_is_decided_on_the_real_server(
        langgraph: tuple[LangGraphServer, int], capsys: pytest.CaptureFixture[str]) -> None:
    """N turns on a thread id nobody created (``if_not_exists: "create"``): one winner, and
    the thread records under that id are counted through the search route. The verdict is
    whatever the server does (it has been seen to leave duplicate rows); it must be decided,
    never unknown."""
    main(["run", "create-on-first-turn", "--trials", "2", "--json", *_flags(langgraph)])
    report = json.loads(capsys.readouterr().out)
    created = report["properties"]["chats/created-once"]
    assert created["unknown"] == 0, created
    assert created["valid"] + created["invalid"] == 2
    for prop in ("race/one-winner", "race/losers-409", "race/no-loser-provider-call"):
        assert report["properties"][prop]["verdict"] == "valid", report["properties"][prop]


def test_a_server_whose_wire_changed_fails_loudly(
        langgraph: tuple[LangGraphServer, int], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A run answer in a shape the adapter does not know (here the profile reads the run's
    status from a field LangGraph does not send, as if a release had renamed it) stops the
    run with exit 4 and says what is missing, instead of passing or reading as a bug of the
    service."""
    profile = tmp_path / "changed.toml"
    profile.write_text('adapter = "langgraph"\n[runs]\nstatus = "/state"\n', encoding="utf-8")
    server, provider_port = langgraph
    code = main(["race", "--n", "5", "--profile", str(profile), "--target", server.base_url,
                 "--token", "unused", "--provider-listen", f"127.0.0.1:{provider_port}"])
    err = capsys.readouterr().err
    assert code == 4, err
    assert "run status None is not in its runs.statuses" in err
    assert "has the server's wire changed?" in err
