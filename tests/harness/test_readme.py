"""The README runs as written: every `harness` command in it either runs here (and succeeds) or
is left out with its reason and at least parsed by the real command line; every flag of a
usage synopsis exists; every link stays inside the repository and points at a file that is
there. A README command this test does not know fails it, so a new one gets classified."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from raceharness.commands.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")

# Commands run here, as written (the "./run.sh" prefix is the venv bootstrap: the test is
# already inside it).
RUN = {
    "./run.sh harness race --n 50",
    "harness scenarios",
}
# Commands not run, with the reason; each is still parsed by the real command line.
LEFT_OUT = {
    "./run.sh test": "the test suite itself",
    "./run.sh harness race --n 50 --target https://staging.example.com --provider-listen "
    "0.0.0.0:9099 --dsn \"$READONLY_DSN\" --report reports/staging":
        "needs a deployment of yours",
    "./run.sh harness race --n 50 --adapter langgraph --target http://127.0.0.1:2024 "
    "--token unused --provider-listen 127.0.0.1:9099":
        "needs a LangGraph server started by hand; tests/harness/adapters/"
        "test_langgraph_target.py runs the same race against one it starts",
    "./run.sh harness conformance --faults all --matrix-dir reports/conformance":
        "about 4 minutes, and it rewrites the committed matrix",
    "./run.sh harness bench": "about 15 minutes",
}


def _blocks() -> list[tuple[str, str]]:
    """(info string, body) of every fenced block."""
    return re.findall(r"(?ms)^```(\w*)\n(.*?)^```", README)


def _commands() -> tuple[list[str], list[str]]:
    """(concrete commands, usage synopses) from the shell blocks: continuation lines joined,
    comments dropped; a line with [optional] parts is a synopsis."""
    concrete, synopses = [], []
    for info, body in _blocks():
        if info not in ("", "sh", "bash", "console"):
            continue
        text = re.sub(r"\\\n\s*", " ", body)
        for line in text.splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if not re.match(r"(\./run\.sh |harness )", line):
                continue
            (synopses if "[" in line or "..." in line else concrete).append(
                " ".join(line.split()))
    return concrete, synopses


def _argv(command: str) -> list[str]:
    words = shlex.split(command.replace('"$READONLY_DSN"', "postgresql://ro@db/app"))
    if words[:2] == ["./run.sh", "harness"]:
        return words[2:]
    assert words[0] == "harness", command
    return words[1:]


def test_every_readme_command_is_run_or_left_out_with_a_reason() -> None:
    concrete, _ = _commands()
    assert concrete, "no command found: the extraction is broken"
    unknown = [c for c in concrete if c not in RUN and c not in LEFT_OUT]
    assert unknown == [], "classify these README commands in RUN or LEFT_OUT"
    assert set(RUN) | set(LEFT_OUT) <= set(concrete), "a classified command left the README"


@pytest.mark.parametrize("command", sorted(c for c in LEFT_OUT if c != "./run.sh test"))
def test_a_command_left_out_still_parses(command: str) -> None:
    build_parser().parse_args(_argv(command))


def test_every_flag_of_every_usage_synopsis_exists() -> None:
    _, synopses = _commands()
    assert synopses
    parser = build_parser()
    subcommands = next(a for a in parser._actions  # noqa: SLF001
                       if a.__class__.__name__ == "_SubParsersAction").choices
    for line in synopses:
        words = line.split()
        sub = words[2] if words[0] == "./run.sh" else words[1]
        known = {opt for action in subcommands[sub]._actions  # noqa: SLF001
                 for opt in action.option_strings}
        named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line))
        assert named - known == set(), f"{line!r}: not flags of harness {sub}"


def test_the_links_stay_inside_the_repository_and_resolve() -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local, "no link found: the extraction is broken"
    assert [link for link in local if link.startswith("..")] == []
    assert [link for link in local if not (ROOT / link).exists()] == []
    assert "../shared" not in README


def test_the_quick_start_race_runs_as_written(pg_empty_dsn: str,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HARNESS_PG_DSN", pg_empty_dsn)
    assert main(_argv("./run.sh harness race --n 50")) == 0
    assert "verdict: valid" in capsys.readouterr().out
    assert main(_argv("harness scenarios")) == 0
    assert "same-chat-burst" in capsys.readouterr().out


def test_run_sh_keeps_the_callers_folder(tmp_path: Path) -> None:
    """`./run.sh harness ... --report DIR` writes DIR where the caller is, not in the checkout
    (run.sh used to change into the checkout first)."""
    import subprocess

    script = ROOT / "run.sh"
    done = subprocess.run(["bash", "-c", f'"{script}" harness check missing.jsonl'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "harness check: missing.jsonl: no such file" in done.stderr
    (tmp_path / "missing.jsonl").write_text("")  # now it is there, in the caller's folder
    done = subprocess.run(["bash", "-c", f'"{script}" harness check missing.jsonl'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "the file is empty" in done.stderr
