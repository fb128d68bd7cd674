"""The versions every workaround in this package was written against; the worker refuses others."""
from __future__ import annotations

from importlib.metadata import version

PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0", "rocksdict": "0.3.29"}


class UnsupportedLibraryVersion(RuntimeError):
    pass


def require_pinned_versions() -> None:
    wrong = {name: version(name) for name, want in PINNED.items() if version(name) != want}
    if wrong:
        raise UnsupportedLibraryVersion(
            f"pipeline/faust_internals was written against {PINNED}, found {wrong}: re-check every "
            "workaround in that package against the new version, then update PINNED")
