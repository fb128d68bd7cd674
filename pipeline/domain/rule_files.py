"""The head every rules file shares (risk rules, refund rules, state transitions): YAML text,
a mapping of known top-level keys, a positive integer `version`. Each file's own body is parsed
by its module; errors are raised as that module's error class, so callers catch one type."""
from __future__ import annotations

import yaml


def versioned_mapping(text: str | bytes, what: str, top_keys: frozenset[str] | set[str],
                      error: type[Exception], expected: str) -> tuple[dict, int, str]:
    """(the parsed mapping, its version, the text as str); `what` names the file in messages, `expected` says what
    the mapping should hold (e.g. "'version' and 'rules'")."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(f"{what} is not UTF-8: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{what} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{what} must be a YAML mapping with {expected}")
    unknown = set(data) - set(top_keys)
    if unknown:
        raise error(f"{what}: unknown top-level keys {sorted(unknown)} (allowed: {sorted(top_keys)})")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise error(f"{what}: 'version' must be a positive integer, got {version!r}")
    return data, version, text
