"""A target profile's ``[conflict]`` (status, code, holder, pattern) is the conflict answer
everywhere one is recognised: loaded strictly, read by the racers (the holder's id from the named
field, the body's text for the pattern), recorded in each trial's meta, and compared against by
the checkers: ``race/losers-409`` judges the answer, ``race/holder-named`` the holder it names. A
history without ``meta.conflict`` checks exactly as before (the protocol's 409
``A_RUN_ALREADY_ACTIVE`` naming the holder in ``activeRunId``).

The checker cases are hand-made histories: the model race of ``test_checkers`` (1×200 held and
stopped, 2 losers, ops 5 and 6), its losers answered as a deployment with another conflict
answer would answer them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import raceharness.net.target as target_module
from raceharness.adapters.aichat import AiChatAdapter
from raceharness.core.checks.base import (
    CONFLICT_HOLDER,
    CONFLICT_STATUS,
    RUN_ALREADY_ACTIVE,
    ConflictAnswer,
    conflict_answer,
)
from raceharness.core.history import Trial
from raceharness.core.properties import check_trial
from raceharness.net.http1 import Racer, Response
from raceharness.net.target import (
    Auth,
    ConfigError,
    Conflict,
    Paths,
    Profile,
    Service,
    Target,
    load_profile,
)
from tests.harness.core.test_checkers import (
    LOSER_A,
    LOSER_B,
    OK200,
    many_chats,
    model,
    patch,
    with_meta,
)
from tests.harness.core.test_scenario_checks import BLOCKED, crash_recovery

BUSY = {"status": 409, "code": "CHAT_BUSY", "holder": "holder"}
HOLDER = "race/holder-named"
LOSERS = (LOSER_A, LOSER_B)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profile.toml"
    path.write_text(text, encoding="utf-8")
    return path


def answered(trial: Trial, *indices: int, **value: Any) -> Trial:
    for index in indices:
        trial = patch(trial, index, **value)
    return trial


def busy_race(**conflict: Any) -> Trial:
    """The model race against a deployment answering conflicts ``CHAT_BUSY``, its profile's
    conflict answer in the meta (the racers already read the holder from its field)."""
    return with_meta(answered(model(), *LOSERS, code="CHAT_BUSY"), conflict={**BUSY, **conflict})


def result(trial: Trial, prop: str = "race/losers-409") -> tuple[str, str]:
    r = check_trial(trial, [prop])[prop]
    return r.verdict, r.reason


# -- the profile -----------------------------------------------------------------------------------

def test_the_protocols_conflict_answer_is_the_default() -> None:
    assert Profile().conflict == Conflict(409, "A_RUN_ALREADY_ACTIVE", "activeRunId", "")
    assert Conflict().meta() == {"status": CONFLICT_STATUS, "code": RUN_ALREADY_ACTIVE,
                                 "holder": CONFLICT_HOLDER}  # no pattern: none recorded
    assert conflict_answer({}) == ConflictAnswer(409, "A_RUN_ALREADY_ACTIVE", "activeRunId", "")
    assert Conflict(pattern="busy").meta()["pattern"] == "busy"
    assert conflict_answer({"conflict": Conflict(pattern="busy").meta()}).pattern == "busy"


def test_conflict_sets_status_code_and_holder(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, '[conflict]\nstatus = 423\ncode = "CHAT_BUSY"\n'
                                           'holder = "holder"\n'))
    assert profile.conflict == Conflict(423, "CHAT_BUSY", "holder")
    assert profile.conflict.meta() == {"status": 423, "code": "CHAT_BUSY", "holder": "holder"}
    assert load_profile(write(tmp_path, '[conflict]\ncode = ""\nholder = ""\n')).conflict == \
        Conflict(409, "", "")
    assert load_profile(write(tmp_path, '[conflict]\nholder = "busyWith"\n')).conflict == \
        Conflict(409, "A_RUN_ALREADY_ACTIVE", "busyWith")
    assert load_profile(write(tmp_path, '[conflict]\npattern = "already (running|busy)"\n')
                        ).conflict == Conflict(pattern="already (running|busy)")


def test_a_profile_whose_answer_names_no_holder_declares_holder_named_not_checkable(
        tmp_path: Path) -> None:
    silent = load_profile(write(tmp_path, '[conflict]\nholder = ""\n'))
    assert "race/holder-named" in silent.adapter.lacks
    assert silent.adapter.describe()["not_checkable"] == dict(silent.adapter.lacks)
    assert Profile().adapter.lacks == {}


@pytest.mark.parametrize(("text", "names"), [
    ("[conflict]\nholder = 1\n", ["conflict.holder", "expected str", "1"]),
    ("[conflict]\nholder = false\n", ["conflict.holder", "False"]),
    ("[conflict]\ncode = []\n", ["conflict.code", "[]"]),
    ("[conflict]\nstatus = 200\n", ["conflict.status", "4xx or 5xx", "200"]),
    ("[conflict]\nstatus = 999\n", ["conflict.status", "999"]),
    ('[conflict]\nholders = "x"\n', ["conflict.holders", "status, code, holder, pattern"]),
    ('[conflict]\npattern = "(unclosed"\n', ["conflict.pattern", "not a regular expression",
                                             "(unclosed"]),
    ("[conflict]\npattern = 1\n", ["conflict.pattern", "expected str", "1"]),
])
def test_a_bad_conflict_field_names_file_field_and_value(tmp_path: Path, text: str,
                                                         names: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    assert str(caught.value).startswith(f"{path}: ")
    for name in names:
        assert name in str(caught.value)


def test_the_documented_complete_profile_loads_to_the_protocols_values(tmp_path: Path) -> None:
    """The complete example of target.py's docstring is valid and spells out every default."""
    doc = target_module.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\n\n``[conflict]``", 1)[0]
    text = "\n".join(line[4:] for line in block.splitlines())
    profile = load_profile(write(tmp_path, text))
    assert profile == Profile(service=Service(provider_timeout_s=300, lease_s=30, heartbeat_s=5))
    assert (profile.paths, profile.auth, profile.conflict) == (Paths(), Auth(), Conflict())


def test_the_profiles_and_conformance_example_profiles_load(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[3]
    for doc in ("docs/profiles.md", "docs/conformance.md"):
        text = (root / doc).read_text(encoding="utf-8")
        examples = [m.group(1) for m in re.finditer(r"```toml\n(.*?)```", text, re.S)
                    if "[conflict]" in m.group(1)]
        assert examples, f"{doc}: no example profile with [conflict]"
        for example in examples:
            assert load_profile(write(tmp_path, example)).conflict != Conflict(), doc


# -- the racers read the holder from the configured field ------------------------------------------

def error_response(body: dict[str, Any] | str, holder_field: str | None = CONFLICT_HOLDER
                   ) -> dict[str, Any]:
    """A racer's summary of a 409 with ``body``, read by the ai-chat adapter of a profile whose
    holder is ``holder_field`` (None: no adapter, the protocol's reading)."""
    wire = None if holder_field is None else AiChatAdapter(Paths(), Conflict(holder=holder_field))
    resp = Response(status=409, wire=wire)
    resp.body += (body if isinstance(body, str) else json.dumps(body)).encode()
    return resp.summary()


def test_the_error_body_summary_reads_the_holder_from_the_named_field() -> None:
    protocol = {"message": "busy", "code": "A_RUN_ALREADY_ACTIVE", "activeRunId": "run-1"}
    renamed = {"message": "busy", "code": "CHAT_BUSY", "holder": "run-1"}
    assert error_response(protocol)["active_run_id"] == "run-1"
    assert error_response(protocol, None)["active_run_id"] == "run-1"  # no adapter: protocol's
    assert error_response(renamed)["active_run_id"] is None
    summary = error_response(renamed, "holder")
    assert (summary["code"], summary["json"], summary["active_run_id"]) == (
        "CHAT_BUSY", True, "run-1")
    assert error_response(protocol, "holder")["active_run_id"] is None
    assert error_response(protocol, "")["active_run_id"] is None  # the answer names no holder
    assert error_response({"holder": 7}, "holder")["active_run_id"] is None  # not a run id


def test_the_error_body_summary_records_the_body_text_for_the_pattern() -> None:
    """The pattern is matched against the recorded ``body``: JSON or not."""
    protocol = {"message": "chat already running", "code": "A_RUN_ALREADY_ACTIVE"}
    assert error_response(protocol)["body"] == json.dumps(protocol)
    plain = error_response("Conflict: thread already running")
    assert (plain["json"], plain["code"], plain["body"]) == (
        False, None, "Conflict: thread already running")


def test_the_targets_endpoint_carries_the_holder_field_to_every_racer() -> None:
    profile = Profile(conflict=Conflict(code="CHAT_BUSY", holder="holder"))
    endpoint = Target("http://example.test", token="t", profile=profile).endpoint()
    assert endpoint.wire is not None and endpoint.wire.conflict.holder == "holder"
    racer = Racer(endpoint, "POST", "/s", [], b"{}")
    assert racer.response.wire is endpoint.wire
    racer.response.status = 409
    racer.response.body += b'{"code": "CHAT_BUSY", "holder": "run-1", "activeRunId": "run-2"}'
    assert racer.response.summary()["active_run_id"] == "run-1"
    default = Target("http://example.test", token="t").endpoint()
    wire = Racer(default, "POST", "/s", [], b"{}").response.wire
    assert wire is not None and wire.conflict.holder == "activeRunId"


# -- race/losers-409 and race/holder-named against the meta's conflict answer ----------------------

def test_a_loser_answering_the_profiles_code_passes() -> None:
    assert result(busy_race()) == (
        "valid", "all 2 losers got 409 CHAT_BUSY while a run held the chat")
    assert result(busy_race(), HOLDER) == (
        "valid", "all 2 conflict answers named a run that held the chat (holder)")


def test_the_profiles_code_without_the_profile_fails() -> None:
    """What the issue was: a deployment answering its own code failed the catalogue."""
    verdict, reason = result(with_meta(busy_race(), conflict=None))
    assert verdict == "invalid"
    assert reason.startswith("2 of 2 losers not a JSON 409 A_RUN_ALREADY_ACTIVE: "
                             "op 5: 409 code=CHAT_BUSY json=True")


def test_the_protocols_code_under_a_profile_expecting_another_fails() -> None:
    verdict, reason = result(with_meta(model(), conflict=BUSY))
    assert verdict == "invalid"
    assert reason.startswith("2 of 2 losers not a JSON 409 CHAT_BUSY: "
                             "op 5: 409 code=A_RUN_ALREADY_ACTIVE json=True")


def test_another_status_is_the_conflict_when_the_profile_says_so() -> None:
    trial = answered(busy_race(status=423), *LOSERS, status=423)
    assert result(trial)[0] == "valid"
    assert result(busy_race(status=423)) == (
        "invalid", "2 of 2 losers not a JSON 423 CHAT_BUSY: op 5: 409 code=CHAT_BUSY json=True; "
        "op 6: 409 code=CHAT_BUSY json=True")


def test_the_holder_is_named_by_its_field_in_the_reasons() -> None:
    wrong = patch(busy_race(), LOSER_B, active_run_id="run-zz")
    verdict, reason = result(wrong, HOLDER)
    assert verdict == "invalid"
    assert "op 6: holder run-zz names no run that held the chat" in reason
    null = patch(busy_race(), LOSER_A, active_run_id=None)
    assert "op 5: holder null while run run-w was active" in result(null, HOLDER)[1]
    # the answers themselves were the conflict answer
    assert result(wrong)[0] == result(null)[0] == "valid"


def test_an_empty_holder_makes_holder_named_unknown_never_valid() -> None:
    """holder = "": the engine records conflict_holder_id false with it; either alone is
    enough for the checker. The id is not read, so a wrong one changes nothing; the answer
    itself is still judged by race/losers-409."""
    for trial in (busy_race(holder=""),
                  with_meta(busy_race(holder=""), conflict_holder_id=False),
                  patch(busy_race(holder=""), LOSER_A, active_run_id="run-zz"),
                  patch(busy_race(holder=""), LOSER_A, active_run_id=None)):
        verdict, reason = result(trial, HOLDER)
        assert verdict == "unknown", reason
        assert reason == ('the target\'s conflict answer names no holder (meta '
                          'conflict.holder: ""): nothing to check')
        assert result(trial) == ("valid", "all 2 losers got 409 CHAT_BUSY while a run held the "
                                          "chat")
    # the code is still checked
    assert result(answered(busy_race(holder=""), LOSER_A, code="OTHER"))[0] == "invalid"


def test_an_empty_code_checks_no_code_and_with_no_holder_reads_no_body() -> None:
    any_code = answered(busy_race(code=""), LOSER_A, code=None)
    assert result(any_code) == ("valid", "all 2 losers got 409 while a run held the chat")
    assert result(any_code, HOLDER)[0] == "valid"
    not_json = with_meta(answered(model(), *LOSERS, code=None, json=False, active_run_id=None),
                         conflict={"status": 409, "code": "", "holder": ""})
    assert result(not_json)[0] == "valid"  # a plain 409 is the answer
    assert result(not_json, HOLDER)[0] == "unknown"  # and it names no holder
    assert result(with_meta(not_json, conflict={"status": 409, "code": "", "holder": "h"}))[0] \
        == "invalid"  # a holder to read needs a JSON body


def test_a_pattern_is_matched_against_the_answers_body() -> None:
    """pattern: a target recognisable only by its message (LangGraph's plain 409)."""
    plain = {"status": 409, "code": "", "holder": "", "pattern": "already running"}
    trial = with_meta(answered(model(), *LOSERS, code=None, json=False, active_run_id=None,
                               body="Thread is already running a task."), conflict=plain)
    assert result(trial) == (
        "valid", "all 2 losers got 409 matching /already running/ while a run held the chat")
    other = answered(trial, LOSER_B, body="Internal error")
    assert result(other) == (
        "invalid", "1 of 2 losers not a 409 matching /already running/: op 6: 409 code=None "
        "json=False body='Internal error'")
    assert result(answered(trial, LOSER_B, body=None))[0] == "invalid"  # nothing to match
    # a body that matches but another status is still no conflict answer
    assert result(answered(trial, LOSER_A, status=503))[0] == "invalid"


def test_429_is_the_conflict_only_when_it_is_the_profiles_answer() -> None:
    limited = answered(busy_race(status=429), *LOSERS, status=429)
    assert result(limited)[0] == "valid"
    other = answered(limited, LOSER_A, code="SLOW_DOWN")  # a rate limit: undecided
    assert result(other)[0] == "unknown"
    assert result(answered(model(), LOSER_A, status=429, code=None))[0] == "unknown"


def test_a_history_without_the_conflict_meta_checks_exactly_as_before() -> None:
    default = {"status": 409, "code": "A_RUN_ALREADY_ACTIVE", "holder": "activeRunId"}
    for trial in (model(), patch(model(), LOSER_B, active_run_id="run-zz"),
                  answered(model(), LOSER_A, code="OTHER"), busy_race()):
        old = with_meta(trial, conflict=None)
        assert check_trial(old) == check_trial(with_meta(trial, conflict=default))


@pytest.mark.parametrize(("conflict", "message"), [
    ("409", "meta: conflict='409' is not a table"),
    ({"status": "409"}, "meta: conflict.status='409' is not an int"),
    ({"code": None}, "meta: conflict.code=None is not a string"),
    ({"holder": 1}, "meta: conflict.holder=1 is not a string"),
    ({"pattern": None}, "meta: conflict.pattern=None is not a string"),
])
def test_the_conflict_meta_is_read_strictly(conflict: object, message: str) -> None:
    with pytest.raises(TypeError, match=re.escape(message)):
        conflict_answer({"conflict": conflict})
    assert result(with_meta(model(), conflict=conflict))[0] == "unknown"


# -- the other checkers that recognise a conflict --------------------------------------------------

def test_chats_one_winner_each_expects_the_profiles_answer() -> None:
    trial = many_chats((OK200, ("ok", 409)), (OK200, ("ok", 409)))
    busy = answered(trial, 5, 7, code="CHAT_BUSY")
    prop = "chats/one-winner-each"
    assert result(trial, prop)[0] == "valid"
    assert result(with_meta(busy, conflict=BUSY), prop)[0] == "valid"
    assert result(busy, prop)[0] == "invalid"
    assert result(with_meta(trial, conflict=BUSY), prop) == (
        "invalid", "2 problem(s) across 2 chats: op 5: 409 code=A_RUN_ALREADY_ACTIVE; "
        "op 7: 409 code=A_RUN_ALREADY_ACTIVE")


def test_chats_independent_counts_the_profiles_status_as_a_false_conflict() -> None:
    trial = many_chats((("ok", 423),), (OK200,))
    prop = "chats/independent"
    assert result(with_meta(trial, conflict={**BUSY, "status": 423}), prop)[1].startswith(
        "false conflict: 1 of 2 turns on distinct chats got 423")
    assert result(trial, prop)[1].startswith("1 of 2 turns on distinct chats refused")


def test_lease_reclaims_expects_the_profiles_status_within_the_lease() -> None:
    prop = "recovery/lease-reclaims"
    trial = crash_recovery()
    assert result(trial, prop)[0] == "valid"
    assert result(with_meta(trial, conflict={**BUSY, "status": 423}), prop) == (
        "invalid", "within the lease of the dead owner's run a new turn got 409, not 423 (the "
        "chat must stay blocked until the lease expires)")
    locked = with_meta(patch(trial, BLOCKED, status=423), conflict={**BUSY, "status": 423})
    assert result(locked, prop)[0] == "valid"
