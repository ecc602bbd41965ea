"""Text hygiene shared by the renderers (pure).

Every string in a report may come from the system under test (a run id, an error code, a reason
quoting either), so it is treated as hostile: characters XML 1.0 cannot carry (C0 controls except
tab, newline and carriage return; lone surrogates; U+FFFE/U+FFFF) become U+FFFD, and long
strings are cut, saying so. Escaping for the target format is each renderer's job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
REPLACEMENT = "\ufffd"


def clean(value: Any, limit: int | None = None) -> str:
    """``value`` as text safe for XML/HTML/Markdown (before escaping), cut at ``limit``."""
    text = _NOT_XML.sub(REPLACEMENT, value if isinstance(value, str) else str(value))
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"… ({len(text) - limit} more characters)"
    return text


def one_line(value: Any, limit: int | None = None) -> str:
    """:func:`clean`, with every run of whitespace (newlines included) one space."""
    return " ".join(clean(value, limit).split())


def ms(value: Any, digits: int = 3) -> str:
    """A millisecond figure (``None`` or a non-number as "n/a")."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "n/a"
    return f"{value:.{digits}f} ms"


def setting(config: Any, key: str) -> str:
    """A run setting for a config line: "n/a" when not recorded, "per scenario" when the run
    left it to each scenario (``None``)."""
    if not isinstance(config, Mapping) or key not in config:
        return "n/a"
    return "per scenario" if config[key] is None else str(config[key])


def verdict_word(verdict: Any) -> str:
    """The status word a reader scans for: PASSED, FAILED, INCONCLUSIVE."""
    return {"valid": "PASSED", "invalid": "FAILED", "unknown": "INCONCLUSIVE"}.get(
        str(verdict), "INCONCLUSIVE")


def shown(value: Any) -> str:
    """A value for a reader: a missing one (``None``) is "—", never the word "None"."""
    return "—" if value is None else clean(value)


def ops_text(ops: Any, limit: int = 20) -> str:
    """Offending op indices, e.g. "ops 5, 6" ("no op cited" when none; past ``limit``,
    "ops 1, 2, … (40 in all)")."""
    indices = [str(i) for i in ops] if isinstance(ops, list | tuple) else []
    if not indices:
        return "no op cited"
    more = f", … ({len(indices)} in all)" if len(indices) > limit else ""
    return f"op{'s' if len(indices) != 1 else ''} {', '.join(indices[:limit])}{more}"


# "op 5", "ops 3, 5" and "ops 1, 2, … (40 in all)" as the checkers write them (checks/base.py)
_CITED = re.compile(r"\bops? (\d+(?:, \d+)*)")


def cited_ops(text: Any) -> set[int]:
    """The op indices a reason already names ("op 5: …", "ops 3, 5", "call 2 ← op 7")."""
    return {int(i) for m in _CITED.finditer(clean(text)) for i in m.group(1).split(", ")}


def ops_note(reason: Any, ops: Any, limit: int = 20) -> str:
    """The offending ops a reason does not already list, so each op list is shown once: ""
    when the reason names them all, "ops 5, 6" when it names none, "other op 9" when it
    names some, and "no op cited" when there are none."""
    indices = [i for i in ops if isinstance(i, int)] if isinstance(ops, list | tuple) else []
    if not indices:
        return "no op cited"
    named = cited_ops(reason)
    rest = [i for i in indices if i not in named]
    if not rest:
        return ""
    return ops_text(rest, limit) if len(rest) == len(indices) else f"other {ops_text(rest, limit)}"
