"""The SSE parser and the UI-stream checker: literal streams in, whole results out; Hypothesis
for chunking invariance, totality and the encode/parse round trip. Pure and fast."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raceharness.core.sse import DONE, Finding, Frame, SseParser, SseUsageError, encode_frame
from raceharness.core.ui_stream import FINDING_CODES, UiStream, parse_stream

RUN_ID = "8f14e45f-ceea-467f-a0e6-b4b2e1f2c0a1"
CHAT_ID = "c9f0f895-fb98-4b9c-8d5b-9ad6a0c7e6d2"
MESSAGE_ID = "45c48cce-2e2d-4fbd-aa1a-f0b2a1e0e0e3"

Obj = dict[str, Any] | None  # a frame's data; None is [DONE]

START: dict[str, Any] = {"type": "start", "messageId": MESSAGE_ID,
         "messageMetadata": {"chatId": CHAT_ID, "runId": RUN_ID}}
NORMAL_TURN: list[Obj] = [
    START,
    {"type": "start-step"},
    {"type": "text-start", "id": "t0"},
    {"type": "text-delta", "id": "t0", "delta": "Hel"},
    {"type": "text-delta", "id": "t0", "delta": "lo"},
    {"type": "text-end", "id": "t0"},
    {"type": "finish-step"},
    {"type": "finish"},
    None,
]


def ev(obj: Obj) -> bytes:
    """One event as the protocol writes it (``None`` is ``[DONE]``)."""
    return encode_frame(DONE if obj is None else Frame(obj))


def wire(objs: list[Obj]) -> bytes:
    return b"".join(ev(obj) for obj in objs)


def frames_of(objs: list[Obj]) -> list[Frame]:
    return [DONE if obj is None else Frame(obj) for obj in objs]


def offsets_of(objs: list[Obj]) -> list[int]:
    sizes = [len(ev(obj)) for obj in objs]
    return [sum(sizes[:i]) for i in range(len(sizes))]


def codes(findings: list[Finding]) -> list[tuple[str, int]]:
    return [(f.code, f.offset) for f in findings]


def feed_chunks(chunks: list[bytes],
                max_event_bytes: int | None = None) -> tuple[list[Frame], SseParser]:
    parser = SseParser() if max_event_bytes is None else SseParser(max_event_bytes=max_event_bytes)
    frames: list[Frame] = []
    for chunk in chunks:
        frames += parser.feed(chunk)
    frames += parser.close()
    return frames, parser


def at(*parts: bytes) -> int:
    return sum(map(len, parts))


@dataclass
class Outcome:
    """Everything observable about one parse, for whole-value comparison."""

    frames: list[Frame]
    offsets: list[int]
    parser_findings: list[Finding]
    comments: int
    stream: dict[str, Any]


def outcome(chunks: list[bytes], max_event_bytes: int | None = None) -> Outcome:
    frames, parser = feed_chunks(chunks, max_event_bytes)
    stream = UiStream()
    for frame in frames:
        stream.on_frame(frame, frame.offset)
    stream.close(end_offset=sum(map(len, chunks)))
    state = {k: getattr(stream, k) for k in ("findings", "run_id", "chat_id", "message_id",
                                             "terminal", "done", "types", "text", "error_text")}
    return Outcome(frames, [f.offset for f in frames], parser.findings, parser.comments, state)


def split(raw: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({min(p, len(raw)) for p in points})
    bounds = [0, *cuts, len(raw)]
    return [raw[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


# -- literal streams ---------------------------------------------------------------------------


def test_a_normal_turn_parses_to_its_frames_with_no_findings() -> None:
    raw = wire(NORMAL_TURN)
    frames, stream = parse_stream(raw)
    assert frames == frames_of(NORMAL_TURN)
    assert [f.offset for f in frames] == offsets_of(NORMAL_TURN)
    assert stream.findings == []
    assert (stream.run_id, stream.chat_id, stream.message_id) == (RUN_ID, CHAT_ID, MESSAGE_ID)
    assert (stream.terminal, stream.done, stream.text, stream.error_text) == (
        "finish", True, "Hello", None)
    assert stream.types == ["start", "start-step", "text-start", "text-delta", "text-delta",
                            "text-end", "finish-step", "finish", "[DONE]"]


def test_the_protocol_example_text_parses_as_written() -> None:
    raw = (b'data: {"type":"start","messageId":"m1",'
           b'"messageMetadata":{"chatId":"c1","runId":"r1"}}\n\n'
           b'data: {"type":"start-step"}\n\n'
           b'data: {"type":"text-start","id":"p1"}\n\n'
           b'data: {"type":"text-delta","id":"p1","delta":"Hel"}\n\n'
           b'data: {"type":"text-end","id":"p1"}\n\n'
           b'data: {"type":"finish-step"}\n\n'
           b'data: {"type":"finish"}\n\n'
           b"data: [DONE]\n\n")
    frames, stream = parse_stream(raw)
    assert [f.type for f in frames] == ["start", "start-step", "text-start", "text-delta",
                                        "text-end", "finish-step", "finish", "[DONE]"]
    assert (stream.findings, stream.run_id, stream.chat_id, stream.text) == ([], "r1", "c1", "Hel")


def test_an_error_turn_records_the_error_text() -> None:
    objs: list[Obj] = [START, {"type": "start-step"},
                       {"type": "error", "errorText": "provider said no"}, None]
    frames, stream = parse_stream(wire(objs))
    assert frames == frames_of(objs)
    assert (stream.findings, stream.terminal, stream.error_text, stream.done) == (
        [], "error", "provider said no", True)


def test_an_abort_turn() -> None:
    objs: list[Obj] = [START, {"type": "text-start", "id": "a"},
                       {"type": "text-delta", "id": "a", "delta": "par"}, {"type": "abort"}, None]
    frames, stream = parse_stream(wire(objs))
    assert frames == frames_of(objs)
    assert (stream.findings, stream.terminal, stream.text, stream.error_text) == (
        [], "abort", "par", None)


def test_pings_are_counted_and_change_nothing_else() -> None:
    raw = b": ping\n\n" + ev(START) + b": ping\n\n:\n\n" + wire(NORMAL_TURN[1:]) + b": ping\n\n"
    frames, parser = feed_chunks([raw])
    assert frames == frames_of(NORMAL_TURN)
    assert (parser.findings, parser.comments) == ([], 4)


def test_a_comment_line_inside_an_event_is_skipped() -> None:
    raw = b'data: {"type":\n: ping\ndata: "finish"}\n\n'
    frames, parser = feed_chunks([raw])
    assert frames == [Frame({"type": "finish"})]
    assert (parser.findings, parser.comments) == ([], 1)


@pytest.mark.parametrize("eol", [b"\r\n", b"\r", b"\n"])
def test_every_line_ending_style_gives_the_same_frames(eol: bytes) -> None:
    events = [ev(obj).replace(b"\n", eol) for obj in NORMAL_TURN]
    frames, stream = parse_stream(b"".join(events))
    assert frames == frames_of(NORMAL_TURN)
    assert [f.offset for f in frames] == [at(*events[:i]) for i in range(len(events))]
    assert stream.findings == []


def test_mixed_line_endings_in_one_stream() -> None:
    raw = b'data: {"type":"a"}\r\n\ndata: {"type":"b"}\r\rdata: {"type":"c"}\n\r\n'
    assert feed_chunks([raw])[0] == [
        Frame({"type": "a"}), Frame({"type": "b"}), Frame({"type": "c"})]


def test_crlf_split_across_chunks_is_one_line_ending() -> None:
    # Two data lines of one event. Were the "\n" opening the second chunk taken for an empty
    # line, the event would end early and both halves would be bad JSON.
    chunks = [b'data: {"type":"start",\r', b'\ndata: "x":1}\r', b"\n\r", b"\n"]
    frames, parser = feed_chunks(chunks)
    assert frames == [Frame({"type": "start", "x": 1})]
    assert frames[0].offset == 0
    assert parser.findings == []


def test_a_cr_ending_one_chunk_then_a_cr_opening_the_next_are_two_line_endings() -> None:
    frames, parser = feed_chunks([b'data: {"type":"a"}\r', b'\rdata: {"type":"b"}\r\r'])
    assert frames == [Frame({"type": "a"}), Frame({"type": "b"})]
    assert [f.offset for f in frames] == [0, 20]


def test_feed_returns_the_frames_each_chunk_completes() -> None:
    parser = SseParser()
    assert parser.feed(b'data: {"type":"a"}\n') == []
    assert parser.feed(b'\ndata: {"type":"b"}\n\ndata: [DO') == [Frame({"type": "a"}),
                                                                 Frame({"type": "b"})]
    assert parser.feed(b"NE]\n\n") == [DONE]
    assert (parser.close(), parser.findings) == ([], [])


def test_multi_line_data_is_joined_with_newlines() -> None:
    raw = b'data: {"type": "text-delta",\ndata:"delta":\ndata:  "x"}\n\n'
    assert feed_chunks([raw])[0] == [
        Frame({"type": "text-delta", "delta": "x"})]


def test_only_one_space_after_the_colon_is_stripped() -> None:
    frames, parser = feed_chunks([b"data:  [DONE]\n\ndata:[DONE]\n\n"])
    assert frames == [DONE]
    assert codes(parser.findings) == [("bad-json", 0)]


def test_event_id_and_retry_fields_are_ignored() -> None:
    raw = b'event: message\nid: 7\nretry: 1000\ndata: {"type":"finish"}\n\nid\n\n'
    frames, parser = feed_chunks([raw])
    assert (frames, parser.findings) == (
        [Frame({"type": "finish"})], [])


def test_an_event_without_data_dispatches_nothing() -> None:
    frames, parser = feed_chunks([b"event: x\n\n\n\n\r\n"])
    assert (frames, parser.findings) == ([], [])


def test_a_data_line_without_colon_is_an_empty_data_line() -> None:
    frames, parser = feed_chunks([b"data\n\n"])
    assert frames == []
    assert codes(parser.findings) == [("bad-json", 0)]


def test_a_leading_bom_is_skipped() -> None:
    frames, parser = feed_chunks([b"\xef\xbb", b'\xbfdata: {"type":"a"}\n\n'])
    assert (frames, parser.findings) == (
        [Frame({"type": "a"})], [])


def test_a_character_split_across_chunks_decodes_whole() -> None:
    raw = ev({"type": "text-delta", "delta": "é😀中"})
    middle = raw.index("😀".encode()) + 2
    frames, parser = feed_chunks([raw[:middle], raw[middle:middle + 1], raw[middle + 1:]])
    assert frames == [Frame({"type": "text-delta", "delta": "é😀中"})]
    assert parser.findings == []


def test_invalid_utf8_is_a_finding_and_the_event_still_parses() -> None:
    raw = b'data: {"type":"a","x":"\xff"}\n\n'
    frames, parser = feed_chunks([raw])
    assert frames == [Frame({"type": "a", "x": "\ufffd"})]
    assert codes(parser.findings) == [("bad-utf8", raw.index(b"\xff"))]


def test_bad_json_is_reported_at_its_event_and_parsing_goes_on() -> None:
    raw = ev(START) + b"data: {nope\n\n" + wire([{"type": "finish"}, None])
    frames, stream = parse_stream(raw)
    assert frames == frames_of([START, {"type": "finish"}, None])
    assert codes(stream.findings) == [("bad-json", len(ev(START)))]
    assert "data='{nope'" in stream.findings[0].message


@pytest.mark.parametrize("data", [b"NaN", b'{"type":"a","x":Infinity}', b"[" * 100_000,
                                  b"1" * 5000, b""])
def test_json_that_python_might_accept_or_choke_on_is_bad_json(data: bytes) -> None:
    frames, parser = feed_chunks([b"data: " + data + b"\n\n"])
    assert codes(parser.findings) == [("bad-json", 0)]


def test_an_oversize_event_is_dropped_and_reported_once() -> None:
    big = ev({"type": "text-delta", "delta": "x" * (1 << 20)})
    raw = ev({"type": "a"}) + big + ev({"type": "b"})
    for chunks in ([raw], split(raw, list(range(0, len(raw), 65_536)))):
        frames, parser = feed_chunks(chunks)
        assert frames == [Frame({"type": "a"}), Frame({"type": "b"})]
        assert codes(parser.findings) == [("oversize-event", len(ev({"type": "a"})))]


def test_an_event_just_under_the_cap_is_kept() -> None:
    line = b'data: {"type":"a","pad":"' + b"x" * 40 + b'"}'
    frames, parser = feed_chunks([line + b"\n\n"], max_event_bytes=len(line))
    assert (len(frames), parser.findings) == (1, [])
    frames, parser = feed_chunks([line + b"\n\n"], max_event_bytes=len(line) - 1)
    assert (frames, codes(parser.findings)) == (
        [], [("oversize-event", 0)])


def test_the_cap_counts_the_whole_event_not_each_line() -> None:
    raw = b"data: " + b" " * 30 + b"\ndata: " + b" " * 30 + b'\ndata: {"type":"a"}\n\n'
    frames, parser = feed_chunks([raw], max_event_bytes=60)
    assert (frames, codes(parser.findings)) == ([], [("oversize-event", 0)])
    frames, parser = feed_chunks([raw], max_event_bytes=len(raw))
    assert (frames, parser.findings) == ([Frame({"type": "a"})], [])


def test_a_trailing_partial_event_is_dropped_as_truncated() -> None:
    raw = wire([START, {"type": "finish"}]) + b"data: [DONE]\n"
    frames, stream = parse_stream(raw)
    assert frames == frames_of([START, {"type": "finish"}])
    start = len(wire([START, {"type": "finish"}]))
    assert codes(stream.findings) == [("truncated", start), ("no-done", len(raw))]


def test_the_parser_refuses_misuse_without_changing_state() -> None:
    parser = SseParser()
    parser.feed(b"data: [DONE]\n\n: ping\n")
    with pytest.raises(TypeError):
        parser.feed("data: x\n\n")  # type: ignore[arg-type]
    parser.close()
    with pytest.raises(SseUsageError):
        parser.feed(b"\n")
    assert (parser.close(), codes(parser.findings), parser.comments) == (
        [], [("truncated", 14)], 1)


def test_the_stream_refuses_frames_after_close() -> None:
    stream = UiStream()
    stream.close()
    with pytest.raises(SseUsageError):
        stream.on_frame(DONE, 0)
    stream.close()
    assert codes(stream.findings) == [("start-not-first", 0), ("no-terminal", 0), ("no-done", 0)]


def test_frame_rejects_inconsistent_values() -> None:
    with pytest.raises(ValueError):
        Frame(None)
    with pytest.raises(ValueError):
        Frame({"type": "a"}, done=True)
    with pytest.raises(ValueError):
        Frame({"kind": "a"})
    assert (DONE.type, Frame({"type": "x"}).type) == ("[DONE]", "x")


# -- one minimal stream per finding code ------------------------------------------------------

S = ev(START)
FIN = ev({"type": "finish"})
D = ev(None)
TS = ev({"type": "text-start", "id": "p"})


FINDING_CASES: list[tuple[str, bytes, list[tuple[str, int]]]] = [
    ("bad-json", S + b"data: {\n\n" + FIN + D, [("bad-json", at(S))]),
    ("not-an-object", S + b"data: [1]\n\n" + FIN + D, [("not-an-object", at(S))]),
    ("missing-type", S + b'data: {"typ":"x"}\n\n' + FIN + D, [("missing-type", at(S))]),
    ("unknown-field-line", S + b"dta: x\n\n" + FIN + D, [("unknown-field-line", at(S))]),
    ("bad-utf8", S + b": \xff ok in a comment\n\nevent: \xc3\n\n" + FIN + D,
     [("bad-utf8", at(S, b": \xff ok in a comment\n\nevent: "))]),
    ("oversize-event", S + b"data: " + b" " * (1 << 20) + b"\n\n" + FIN + D,
     [("oversize-event", at(S))]),
    ("truncated", S + FIN + D + b": pi", [("truncated", at(S, FIN, D))]),
    ("start-not-first", ev({"type": "start-step"}) + S + FIN + D, [("start-not-first", 0)]),
    ("start-missing-run-id", ev({"type": "start", "messageMetadata": {"chatId": "c"}}) + FIN + D,
     [("start-missing-run-id", 0)]),
    ("start-missing-chat-id", ev({"type": "start", "messageMetadata": {"runId": "r"}}) + FIN + D,
     [("start-missing-chat-id", 0)]),
    ("second-start", S + S + FIN + D, [("second-start", at(S))]),
    ("second-terminal", S + FIN + ev({"type": "abort"}) + D, [("second-terminal", at(S, FIN))]),
    ("no-terminal", S + D, [("done-before-terminal", at(S)), ("no-terminal", at(S, D))]),
    ("done-before-terminal", S + D + FIN, [("done-before-terminal", at(S)),
                                           ("frame-after-done", at(S, D)),
                                           ("no-terminal", at(S, D, FIN))]),
    ("frame-after-terminal", S + FIN + ev({"type": "finish-step"}) + D,
     [("frame-after-terminal", at(S, FIN))]),
    ("no-done", S + FIN, [("no-done", at(S, FIN))]),
    ("frame-after-done", S + FIN + D + D, [("frame-after-done", at(S, FIN, D))]),
    ("error-missing-text", S + ev({"type": "error"}) + D, [("error-missing-text", at(S))]),
    ("text-start-missing-id", S + ev({"type": "text-start"}) + FIN + D,
     [("text-start-missing-id", at(S))]),
    ("text-delta-unknown-part", S + TS + ev({"type": "text-delta", "id": "q", "delta": ""})
     + FIN + D, [("text-delta-unknown-part", at(S, TS))]),
    ("text-delta-not-string", S + TS + ev({"type": "text-delta", "id": "p", "delta": 1})
     + FIN + D, [("text-delta-not-string", at(S, TS))]),
    ("text-end-unknown-part", S + ev({"type": "text-end", "id": "p"}) + FIN + D,
     [("text-end-unknown-part", at(S))]),
]


@pytest.mark.parametrize(("code", "raw", "expected"), FINDING_CASES,
                         ids=[case[0] for case in FINDING_CASES])
def test_each_finding_code_on_a_minimal_stream(code: str, raw: bytes,
                                               expected: list[tuple[str, int]]) -> None:
    _, stream = parse_stream(raw)
    assert codes(stream.findings) == expected
    assert all(f.message for f in stream.findings)


def test_every_finding_code_has_a_minimal_stream() -> None:
    assert {case[0] for case in FINDING_CASES} == FINDING_CODES


def test_a_text_delta_after_its_part_ended_is_unknown() -> None:
    objs: list[Obj] = [START, {"type": "text-start", "id": "p"}, {"type": "text-end", "id": "p"},
                       {"type": "text-delta", "id": "p", "delta": "late"}, {"type": "finish"},
                       None]
    _, stream = parse_stream(wire(objs))
    assert codes(stream.findings) == [("text-delta-unknown-part", at(*map(ev, objs[:3])))]
    assert stream.text == "late"


def test_unknown_frame_types_pass_without_findings() -> None:
    objs: list[Obj] = [START, {"type": "data-weather", "data": {"c": 21}},
                       {"type": "reasoning-start", "id": "r"},
                       {"type": "finish", "finishReason": "stop"}, None]
    frames, stream = parse_stream(wire(objs))
    assert (frames, stream.findings) == (frames_of(objs), [])


def test_an_empty_stream_lacks_start_terminal_and_done() -> None:
    _, stream = parse_stream(b"")
    assert codes(stream.findings) == [("start-not-first", 0), ("no-terminal", 0), ("no-done", 0)]


# -- Hypothesis: generated well-formed streams -------------------------------------------------

ids = st.text(alphabet="0123456789abcdef-", min_size=1, max_size=36)


@st.composite
def well_formed_turns(draw: st.DrawFn) -> tuple[bytes, list[Obj], str, str]:
    """(raw bytes, the frames they encode, expected text, expected terminal)."""
    start = {"type": "start", "messageId": draw(ids),
             "messageMetadata": {"chatId": draw(ids), "runId": draw(ids)}}
    objs: list[Obj] = [start, {"type": "start-step"}]
    text = ""
    for n in range(draw(st.integers(0, 3))):
        objs.append({"type": "text-start", "id": f"p{n}"})
        for delta in draw(st.lists(st.text(), max_size=5)):
            objs.append({"type": "text-delta", "id": f"p{n}", "delta": delta})
            text += delta
        objs.append({"type": "text-end", "id": f"p{n}"})
    terminal = draw(st.sampled_from(["finish", "error", "abort"]))
    objs.append({"type": "error", "errorText": draw(st.text())} if terminal == "error"
                else {"type": terminal})
    objs.append(None)

    eol = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    prefix = draw(st.sampled_from(["data: ", "data:"]))
    ascii_only = draw(st.booleans())
    events: list[str] = []
    for obj in objs:
        if draw(st.booleans()):
            events.append(draw(st.sampled_from([":ping", ": ping", "event: message", "id: 1"])))
        if obj is None:
            body = "[DONE]"
        else:  # indent=n puts each member on its own line: one data line each
            indent = draw(st.sampled_from([None, 0, 2]))
            body = json.dumps(obj, ensure_ascii=ascii_only, indent=indent)
        events.append(eol.join(prefix + line for line in body.split("\n")))
    raw = "".join(event + eol + eol for event in events).encode()
    return raw, objs, text, terminal


@settings(max_examples=80)
@given(turn=well_formed_turns(), data=st.data())
def test_generated_turns_parse_cleanly_under_any_chunking(
        turn: tuple[bytes, list[Obj], str, str], data: st.DataObject) -> None:
    raw, objs, text, terminal = turn
    whole = outcome([raw])
    assert whole.frames == frames_of(objs)
    assert whole.parser_findings == []
    assert whole.stream["findings"] == []
    assert (whole.stream["text"], whole.stream["terminal"], whole.stream["done"]) == (
        text, terminal, True)
    points = data.draw(st.lists(st.integers(0, len(raw)), max_size=40), label="split points")
    assert outcome(split(raw, points)) == whole


def test_byte_at_a_time_feeding_matches_one_piece() -> None:
    raw = wire(NORMAL_TURN).replace(b"\n", b"\r\n") + b": ping\r\n\r\n"
    assert outcome([raw[i:i + 1] for i in range(len(raw))]) == outcome([raw])


# -- Hypothesis: arbitrary bytes ---------------------------------------------------------------

TOKENS = [b"data:", b"data: ", b" ", b":", b"\r", b"\n", b"\r\n", b"\n\n", b"{", b"}", b"[", b"]",
          b'"type"', b'"start"', b'"finish"', b'"text-delta"', b'"id"', b",", b"[DONE]", b"event:",
          b"id:", b"retry:", b"bogus", b"\xef\xbb\xbf", b"\xf0\x9f", b"\x98\x80", b"\xff", b"1"]
sse_like = st.lists(st.sampled_from(TOKENS), max_size=60).map(b"".join)
any_bytes = st.one_of(st.binary(max_size=300), sse_like)


@settings(max_examples=150)
@given(raw=any_bytes, cap=st.one_of(st.none(), st.integers(1, 40)), data=st.data())
def test_any_bytes_never_raise_and_chunking_never_matters(raw: bytes, cap: int | None,
                                                          data: st.DataObject) -> None:
    whole = outcome([raw], cap)
    assert {f.code for f in whole.parser_findings + whole.stream["findings"]} <= FINDING_CODES
    points = data.draw(st.lists(st.integers(0, len(raw)), max_size=30), label="split points")
    assert outcome(split(raw, points), cap) == whole


# -- Hypothesis: round trip and totality -------------------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63)
                | st.floats(allow_nan=False, allow_infinity=False)
                | st.text(max_size=10)
                | st.sampled_from(["\ud800", "a\udfffb", "\r\n", "\u2028😀"]))  # lone surrogates
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=6)
frame_types = st.sampled_from(["start", "start-step", "text-start", "text-delta", "text-end",
                               "finish-step", "finish", "error", "abort", "future-thing"])
json_frames = st.builds(lambda kind, rest: Frame({"type": kind, **rest}), frame_types,
                        st.dictionaries(st.sampled_from(["id", "delta", "errorText",
                                                         "messageId", "messageMetadata", "x"]),
                                        json_values, max_size=4))
any_frames = st.lists(st.one_of(json_frames, st.just(DONE)), max_size=8)


@settings(max_examples=60)
@given(frames=any_frames)
def test_parse_of_encode_is_the_identity(frames: list[Frame]) -> None:
    raw = b"".join(map(encode_frame, frames))
    frames, parser = feed_chunks([raw])
    assert frames == frames
    assert parser.findings == []


@settings(max_examples=60)
@given(frames=any_frames)
def test_the_stream_checker_is_total(frames: list[Frame]) -> None:
    stream = UiStream()
    for offset, frame in enumerate(frames):
        stream.on_frame(frame, offset)
    stream.close()
    assert stream.types == [f.type for f in frames]
    assert {f.code for f in stream.findings} <= FINDING_CODES
    assert (stream.terminal is None) == ("no-terminal" in {f.code for f in stream.findings})
