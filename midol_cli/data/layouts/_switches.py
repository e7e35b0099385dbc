"""Dataset switches (``LayoutOptions.extra``) for layouts that document them.

A layout declares its switches as ``{key: (default, allowed values)}``; a key
it does not know, or a value outside the allowed set, is a one-line
``UsageError`` (a typo must never silently fall back to the default). A layout
without switches passes ``{}`` and so rejects every key.
"""

from __future__ import annotations

from collections.abc import Mapping

from midol_cli.errors import UsageError

# Allowed values of an on/off switch; yes/no, on/off and 1/0 are accepted as spellings of them.
BOOL: tuple[str, ...] = ("true", "false")
_BOOL_SPELLINGS = {"yes": "true", "on": "true", "1": "true", "no": "false", "off": "false", "0": "false"}


def switches(
    extra: Mapping[str, str] | None,
    spec: Mapping[str, tuple[str, tuple[str, ...]]],
    layout: str,
) -> dict[str, str]:
    """Every switch of ``spec`` ({key: (default, allowed)}) with the user's ``extra`` applied.

    Keys and values match case-insensitively (surrounding spaces ignored); values come back
    spelled as in ``allowed``. Raises UsageError for an unknown key or a value not allowed.
    """
    out = {k: default for k, (default, _allowed) in spec.items()}
    for raw_key, raw_value in (extra or {}).items():
        key = str(raw_key).strip().lower()
        if key not in spec:
            known = ", ".join(sorted(spec)) or "none"
            raise UsageError(f"the {layout} layout has no option '{raw_key}' (options: {known})")
        allowed = spec[key][1]
        by_lower = {a.lower(): a for a in allowed}
        value = str(raw_value).strip().lower()
        if allowed == BOOL:
            value = _BOOL_SPELLINGS.get(value, value)
        if value not in by_lower:
            raise UsageError(
                f"option {key}='{raw_value}' of the {layout} layout must be one of {', '.join(allowed)}"
            )
        out[key] = by_lower[value]
    return out
