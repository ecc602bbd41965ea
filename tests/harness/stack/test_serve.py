"""``harness serve-reference``'s hint for calling the server by hand: the variable it names is
the one the harness reads (``HARNESS_TOKEN``), and a token given with ``--token`` is never
printed. (The server itself is run end to end in tests/reference/test_settings_cli.py.)"""

from __future__ import annotations

import re
import subprocess

from raceharness.stack.serve import try_hint

URL = "http://127.0.0.1:8787"


def test_the_hint_names_the_variable_the_harness_reads_and_exports_a_generated_token() -> None:
    lines = try_hint(URL, "gen-Tok_123", generated=True, environ={})
    text = "\n".join(lines)
    assert not re.search(r"\$TOKEN\b", text)  # nothing sets $TOKEN
    assert lines[0] == "try:"
    assert lines[1] == "  export HARNESS_TOKEN=gen-Tok_123   # the generated token"
    assert lines[2].startswith('  curl -N -H "Authorization: Bearer $HARNESS_TOKEN" ')
    assert lines[2].endswith(f" {URL}/api/ai-chat/stream")


def test_the_hint_works_when_pasted_into_a_shell() -> None:
    token = "a'b c$d"  # quoted for the shell whatever it holds
    export, curl = try_hint(URL, token, generated=True, environ={})[1:]
    script = f"{export}\nprintf '%s' \"$HARNESS_TOKEN\"\n"
    assert subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                          check=True).stdout == token
    body = re.search(r"-d '([^']*)'", curl)
    assert body is not None and '"text":"hi"' in body.group(1)


def test_a_token_given_with_the_flag_is_never_printed() -> None:
    lines = try_hint(URL, "given-SECRET", generated=False, environ={})
    assert "given-SECRET" not in "\n".join(lines)
    assert lines[1] == "  # set HARNESS_TOKEN to the token given with --token (not printed)"
    # from the environment: the shell already holds it, nothing to set
    lines = try_hint(URL, "given-SECRET", generated=False,
                     environ={"HARNESS_TOKEN": "given-SECRET"})
    assert [line.split()[0] for line in lines] == ["try:", "curl"]
