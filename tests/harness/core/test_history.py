"""The history model and its JSON Lines form (pure): round trips, crash prefixes, bad files,
invoke/complete pairing."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raceharness.core.history import (
    OP_TYPES,
    SCHEMA_VERSION,
    DbSnapshot,
    HistoryError,
    HistoryWriter,
    MessageRow,
    Op,
    ProviderCall,
    RunRow,
    Trial,
    dumps_trials,
    loads_trials,
    validate_pairing,
)

# -- strategies ----------------------------------------------------------------------------------

ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
times = st.integers(min_value=0, max_value=2**63 - 1)
texts = st.text(max_size=12)
json_scalars = st.none() | st.booleans() | ints | texts | st.floats(allow_nan=False,
                                                                    allow_infinity=False)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=6)
json_dicts = st.dictionaries(texts, json_values, max_size=3)
# "kind" (every record) and "schema" (the run record) are the envelope's own keys
meta_keys = texts.filter(lambda k: k not in ("kind", "schema", "trial"))

ops = st.builds(Op, index=ints, type=st.sampled_from(OP_TYPES), f=texts, process=ints,
                time_ns=times, nonce=st.none() | texts, value=json_dicts)
calls = st.builds(ProviderCall, index=ints, nonce=st.none() | texts, arrival_ns=times,
                  tokens_sent=ints, first_token_ns=st.none() | times,
                  disconnected_ns=st.none() | times, completed_ns=st.none() | times, mode=texts,
                  complete=st.booleans())
snapshots = st.builds(
    DbSnapshot, label=texts, time_ns=times,
    runs=st.lists(st.builds(RunRow, id=texts, chat_id=texts, status=texts,
                            created_at_us=st.none() | ints), max_size=2).map(tuple),
    messages=st.lists(st.builds(MessageRow, id=texts, chat_id=texts, role=texts, status=texts,
                                content=texts), max_size=2).map(tuple))


@st.composite
def trial_lists(draw: st.DrawFn) -> list[Trial]:
    numbers = draw(st.lists(st.integers(0, 10_000), unique=True, max_size=3))
    ends = st.fixed_dictionaries({}, optional={"ended": st.just(True)})  # completed, or cut off
    return [Trial(meta={"trial": n, **draw(st.dictionaries(meta_keys, json_values, max_size=3)),
                        **draw(ends)},
                  ops=draw(st.lists(ops, max_size=4)),
                  provider=draw(st.none() | st.lists(calls, max_size=2)),
                  db=draw(st.none() | st.lists(snapshots, max_size=2)))
            for n in sorted(numbers)]


run_metas = st.dictionaries(meta_keys, json_values, max_size=3)
# whole histories are costly to generate; fewer, richer examples keep the file fast
whole_histories = settings(max_examples=40)


def as_loaded(trial: Trial, schema: int = SCHEMA_VERSION) -> Trial:
    """``trial`` as ``loads_trials`` returns it: since schema 2 a trial whose meta never said
    ``ended: true`` (and was not skipped) was cut off."""
    meta = dict(trial.meta)
    if schema >= 2 and meta.get("ended") is not True and not meta.get("skipped"):
        meta["interrupted"] = True
    return Trial(meta, trial.ops, trial.provider, trial.db)


# -- round trip ----------------------------------------------------------------------------------

@whole_histories
@given(trials=trial_lists(), meta=run_metas)
def test_jsonl_round_trip(trials: list[Trial], meta: dict[str, Any]) -> None:
    assert loads_trials(dumps_trials(trials, meta)) == (
        {"schema": SCHEMA_VERSION, **meta}, [as_loaded(t) for t in trials])


@whole_histories
@given(trials=trial_lists(), meta=run_metas, data=st.data())
def test_a_truncated_final_line_loads_the_prefix(trials: list[Trial], meta: dict[str, Any],
                                                 data: st.DataObject) -> None:
    text = dumps_trials(trials, meta)
    last_start = text.rstrip("\n").rfind("\n") + 1
    cut = data.draw(st.integers(last_start + 1, len(text) - 2), label="cut")  # inside the line
    if trials:  # the last line is the last trial's db record: that trial loads without it
        expected = trials[:-1] + [Trial(trials[-1].meta, trials[-1].ops, trials[-1].provider)]
        assert loads_trials(text[:cut]) == ({"schema": SCHEMA_VERSION, **meta},
                                            [as_loaded(t) for t in expected])
    else:  # the last line is the run header itself
        assert loads_trials(text[:cut]) == ({}, [])


def small_history() -> list[str]:
    trial = Trial(meta={"trial": 0, "seed": 7, "ended": True},
                  ops=[Op(0, "invoke", "turn", 1, 100, "n1", {"chat_id": "c"}),
                       Op(1, "ok", "turn", 1, 200, "n1", {"status": 200})],
                  provider=[ProviderCall(0, "n1", 150)], db=None)
    return dumps_trials([trial], {"target": "embedded"}).splitlines()


def test_small_history_layout() -> None:
    assert [json.loads(line)["kind"] for line in small_history()] == [
        "run", "trial", "op", "op", "provider", "db"]


@pytest.mark.parametrize(("lineno", "replacement", "message"), [
    (3, "{not json", "line 3: not valid JSON"),
    (3, "[1, 2]", "line 3: expected an object with 'kind'"),
    (3, '{"trial": 0}', "line 3: expected an object with 'kind'"),
    (2, '{"kind": "bogus", "trial": 0}', "line 2: unknown kind 'bogus'"),
    (1, '{"kind": "run", "schema": 3}', "line 1: schema 3 is not one of 1, 2"),
    (1, '{"kind": "run", "schema": true}', "line 1: schema True is not one of 1, 2"),
    (1, '{"kind": "run"}', "line 1: schema None is not one of 1, 2"),
    (2, '{"kind": "op", "trial": 0, "index": 0, "type": "invoke", "f": "turn", "process": 1, '
        '"time_ns": 1}', "line 2: trial 0 has no 'trial' record before it"),
    (3, '{"kind": "op", "trial": 0, "index": 0, "type": "done", "f": "turn", "process": 1, '
        '"time_ns": 1}', "line 3: type 'done' not one of ('invoke', 'ok', 'fail', 'info')"),
    (3, '{"kind": "op", "trial": 0, "index": 0, "type": "ok", "f": "turn"}',
     "line 3: bad 'op' record: Op.__init__() missing 2 required positional arguments: "
     "'process' and 'time_ns'"),
    (5, '{"kind": "provider", "trial": 9, "calls": null}',
     "line 5: trial 9 has no 'trial' record before it"),
    (5, '{"kind": "provider", "trial": 0}', "line 5: bad 'provider' record: 'calls'"),
    (2, '{"kind": "trial"}', "line 2: bad 'trial' record: 'trial'"),
])
def test_a_bad_line_before_the_last_names_its_number(lineno: int, replacement: str,
                                                     message: str) -> None:
    lines = small_history()
    lines[lineno - 1] = replacement
    with pytest.raises(HistoryError) as caught:
        loads_trials("\n".join(lines) + "\n")
    assert str(caught.value) == message


def test_schema_2_marks_a_trial_that_never_ended_interrupted() -> None:
    lines = [
        '{"kind": "run", "schema": 2}',
        '{"kind": "trial", "trial": 0, "n": 2}',                    # cut off: no ended
        '{"kind": "trial", "trial": 1, "n": 2}',
        '{"kind": "trial", "trial": 1, "n": 2, "ended": true}',     # the completed meta
        '{"kind": "trial", "trial": 2, "interrupted": true}',       # the engine said so
        '{"kind": "trial", "trial": 3, "skipped": "needs db-control"}',  # not a verdict
    ]
    _, trials = loads_trials("\n".join(lines))
    assert [(t.meta.get("ended"), t.meta.get("interrupted")) for t in trials] == [
        (None, True), (True, None), (None, True), (None, None)]


def test_schema_1_trials_load_as_they_are() -> None:
    _, trials = loads_trials('{"kind": "run", "schema": 1}\n{"kind": "trial", "trial": 0}\n'
                             '{"kind": "provider", "trial": 0, "calls": [{"index": 0, '
                             '"nonce": "n1", "arrival_ns": 5}]}\n')
    assert trials == [Trial(meta={"trial": 0}, provider=[ProviderCall(0, "n1", 5)])]
    assert trials[0].provider is not None and trials[0].provider[0].complete is True


def test_a_contact_round_trips_as_incomplete() -> None:
    contact = ProviderCall(3, None, 100, disconnected_ns=120, complete=False)
    trial = Trial(meta={"trial": 0, "ended": True}, provider=[contact])
    assert loads_trials(dumps_trials([trial]))[1] == [trial]


def test_blank_lines_are_skipped() -> None:
    lines = small_history()
    assert loads_trials("\n\n".join(lines) + "\n \n") == loads_trials("\n".join(lines))


def test_a_complete_but_invalid_last_line_still_raises() -> None:
    """Only a line that is not JSON can be a crash's partial write; a bad record is not."""
    lines = small_history()
    lines[-1] = '{"kind": "bogus"}'
    with pytest.raises(HistoryError) as caught:
        loads_trials("\n".join(lines))
    assert str(caught.value) == "line 6: unknown kind 'bogus'"


# -- pairing -------------------------------------------------------------------------------------

def op(index: int, type_: str, process: int, f: str = "turn") -> Op:
    return Op(index, type_, f, process, time_ns=index * 10)  # type: ignore[arg-type]


@st.composite
def well_formed_ops(draw: st.DrawFn) -> list[Op]:
    """Processes each doing invoke/complete pairs, interleaved; the last pair may stay open."""
    per_process = draw(st.lists(st.lists(st.tuples(st.sampled_from(["turn", "stop", "runs"]),
                                                   st.sampled_from(["ok", "fail", "info"])),
                                         max_size=4), max_size=5))
    queues = [[step for f, done in steps for step in ((f, "invoke"), (f, done))]
              for steps in per_process]
    queues = [q[:len(q) - draw(st.integers(0, 1))] if q else q for q in queues]  # maybe open
    out: list[Op] = []
    while any(queues):
        process = draw(st.sampled_from([p for p, q in enumerate(queues) if q]))
        f, type_ = queues[process].pop(0)
        out.append(op(len(out), type_, process, f))
    return out


@given(well_formed_ops())
def test_well_formed_histories_have_no_pairing_problems(ops_: list[Op]) -> None:
    assert validate_pairing(ops_) == []


@given(well_formed_ops())
def test_completions_pair_each_invoke_with_the_next_completion_of_its_process(
        ops_: list[Op]) -> None:
    expected: list[tuple[Op, Op | None]] = []
    for i, inv in enumerate(ops_):
        if inv.type == "invoke":
            done = next((o for o in ops_[i + 1:] if (o.process, o.f) == (inv.process, inv.f)),
                        None)
            expected.append((inv, done))
    assert Trial(meta={}, ops=ops_).completions() == expected


def test_validate_pairing_names_the_offending_op() -> None:
    assert validate_pairing([op(0, "ok", 1), op(1, "invoke", 2), op(2, "invoke", 2),
                             op(3, "info", 2), op(3, "invoke", 3), op(5, "fail", 4, "stop")]) == [
        "op 0: ok of 'turn' with no invoke",
        "op 2: process 2 invoked 'turn' twice",
        "op 3: index not increasing",
        "op 5: fail of 'stop' with no invoke",
    ]


def test_invokes_of_different_functions_by_one_process_pair_separately() -> None:
    ops_ = [op(0, "invoke", 1, "turn"), op(1, "invoke", 1, "stop"), op(2, "ok", 1, "stop"),
            op(3, "ok", 1, "turn")]
    assert validate_pairing(ops_) == []
    assert Trial(meta={}, ops=ops_).completions() == [(ops_[0], ops_[3]), (ops_[1], ops_[2])]


def test_completions_in_invoke_order_with_none_for_unfinished() -> None:
    ops_ = [op(0, "invoke", 0), op(1, "invoke", 1), op(2, "ok", 1), op(3, "invoke", 2, "stop"),
            op(4, "info", 0), op(5, "invoke", 3)]
    trial = Trial(meta={}, ops=ops_)
    assert trial.completions() == [(ops_[0], ops_[4]), (ops_[1], ops_[2]), (ops_[3], None),
                                   (ops_[5], None)]
    assert trial.completions("turn") == [(ops_[0], ops_[4]), (ops_[1], ops_[2]), (ops_[5], None)]
    assert trial.completions("stop") == [(ops_[3], None)]


def test_db_snapshot_by_label() -> None:
    before, after = DbSnapshot("before", 1), DbSnapshot("after", 2)
    assert [Trial(meta={}, db=[before, after]).db_snapshot(label) for label in
            ("after", "held")] == [after, None]
    assert Trial(meta={}).db_snapshot("before") is None


# -- the writer ----------------------------------------------------------------------------------

class FlushCounting(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushed_at: list[int] = []  # the text length at each flush

    def flush(self) -> None:
        self.flushed_at.append(len(self.getvalue()))
        super().flush()


@whole_histories
@given(trials=trial_lists(), meta=run_metas)
def test_the_writer_writes_what_dumps_writes_flushing_every_line(trials: list[Trial],
                                                                 meta: dict[str, Any]) -> None:
    stream = FlushCounting()
    writer = HistoryWriter(stream)
    writer.header(meta)
    for trial in trials:
        writer.trial_start(trial.meta)
        for op_ in trial.ops:
            writer.op(trial.meta["trial"], op_)
        writer.provider(trial.meta["trial"], trial.provider)
        writer.db(trial.meta["trial"], trial.db)
    text = stream.getvalue()
    assert text == dumps_trials(trials, meta)
    line_ends = [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    assert stream.flushed_at == line_ends  # one line per record, flushed as written
