"""ClickHouse's own error codes, exception text and HTTP statuses, for the analyst interface.

Every failure an analyst sees looks like a ClickHouse server's: the body is
`Code: N. DB::Exception: <message>. (NAME) (version V)`, the header `X-ClickHouse-Exception-Code`
carries N, and the HTTP status is the one ClickHouse gives that code
(src/Server/HTTP/exceptionCodeToHTTPStatus.cpp). Errors the engine raises keep the engine's own
text; the interface's own refusals (authentication, settings, statements) use the codes below.
"""
from __future__ import annotations

import re

# The codes the interface raises itself; tests/unit/test_clickhouse_analyst.py checks each
# against chDB's errorCodeToName(), so a wrong number cannot slip in.
CODES: dict[str, int] = {
    "UNSUPPORTED_METHOD": 1,
    "CANNOT_PARSE_INPUT_ASSERTION_FAILED": 27,
    "CANNOT_READ_ALL_DATA": 33,
    "BAD_ARGUMENTS": 36,
    "TOO_LARGE_SIZE_COMPRESSED": 39,
    "CHECKSUM_DOESNT_MATCH": 40,
    "NOT_IMPLEMENTED": 48,
    "SYNTAX_ERROR": 62,
    "UNKNOWN_COMPRESSION_METHOD": 89,
    "UNKNOWN_SETTING": 115,
    "READONLY": 164,
    "TOO_MANY_SIMULTANEOUS_QUERIES": 202,
    "CANNOT_DECOMPRESS": 271,
    "INTO_OUTFILE_NOT_ALLOWED": 358,
    "TOO_MANY_ROWS_OR_BYTES": 396,
    "SETTING_CONSTRAINT_VIOLATION": 452,
    "ACCESS_DENIED": 497,
    "AUTHENTICATION_FAILED": 516,
    "UNKNOWN_EXCEPTION": 1002,
}

_STATUS_BY_NAME: dict[str, int] = {
    "REQUIRED_PASSWORD": 401,
    **dict.fromkeys(("UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE",
                     "ACCESS_DENIED"), 403),
    **dict.fromkeys((
        "BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT", "CANNOT_PARSE_ESCAPE_SEQUENCE",
        "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_DATE", "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER",
        "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING", "CANNOT_PARSE_IPV4", "CANNOT_PARSE_IPV6",
        "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN",
        "UNKNOWN_ELEMENT_IN_AST", "UNKNOWN_TYPE_OF_AST_NODE", "THERE_IS_NO_COLUMN", "TOO_DEEP_AST", "TOO_BIG_AST",
        "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA", "TYPE_MISMATCH",
        "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE"), 400),
    **dict.fromkeys((
        "UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE", "UNKNOWN_STORAGE",
        "UNKNOWN_DATABASE", "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING", "UNKNOWN_AGGREGATE_FUNCTION",
        "UNKNOWN_FORMAT", "UNKNOWN_DATABASE_ENGINE", "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE"), 404),
    "QUERY_IS_TOO_LARGE": 413,
    "NOT_IMPLEMENTED": 501,
    **dict.fromkeys(("SOCKET_TIMEOUT", "CANNOT_OPEN_FILE", "CANNOT_SCHEDULE_TASK"), 503),
    "HTTP_LENGTH_REQUIRED": 411,
    "TIMEOUT_EXCEEDED": 408,
    "UNSUPPORTED_MEDIA_TYPE": 415,
}

_CODE = re.compile(r"Code: (\d+)\.")
_NAME = re.compile(r"\(([A-Z][A-Z0-9_]*)\)(?: \(version [^)]*\))?\.?\s*$")
_VERSION = re.compile(r"\(version [^)]*\)")


def http_status(name: str) -> int:
    """The HTTP status ClickHouse answers an exception of this name with (500 for the rest)."""
    return _STATUS_BY_NAME.get(name, 500)


class ClickHouseError(Exception):
    """A refusal or failure in ClickHouse's terms: code, symbolic name and exception text."""

    def __init__(self, name: str, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.code = CODES[name] if code is None else code
        self.message = message

    @property
    def status(self) -> int:
        return http_status(self.name)

    def text(self, version: str) -> str:
        """The response body: what a ClickHouse server writes for this exception."""
        body = self.message.rstrip()
        if not body.startswith("Code: "):
            body = f"Code: {self.code}. DB::Exception: {body.rstrip('.')}. ({self.name})"
        if not _VERSION.search(body):
            body = f"{body} (version {version})"
        return body + "\n"

    @classmethod
    def from_engine(cls, text: str, user: str | None = None) -> ClickHouseError:
        """An exception the engine raised, its text kept (chDB's session user `default` becomes the
        analyst's name). Text that is not in ClickHouse's form becomes UNKNOWN_EXCEPTION."""
        text = text.strip()
        code_m, name_m = _CODE.search(text), _NAME.search(text)
        if code_m is None or name_m is None:
            return cls("UNKNOWN_EXCEPTION", text or "the engine failed without a message")
        if user:
            text = text.replace("DB::Exception: default: ", f"DB::Exception: {user}: ")
        return cls(name_m.group(1), text, code=int(code_m.group(1)))


def authentication_failed(user: str) -> ClickHouseError:
    return ClickHouseError("AUTHENTICATION_FAILED",
                           f"{user}: Authentication failed: password is incorrect, or there is no user with such name")


def readonly_refusal(user: str, what: str = "Cannot execute query in readonly mode") -> ClickHouseError:
    return ClickHouseError("READONLY", f"{user}: {what}")
