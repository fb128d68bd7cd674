"""Which statements an analyst may run, decided on the engine's own parse of them.

readonly=1 refuses writes, DDL, settings changes and most table functions, but measured on chDB
26.9 it lets through: `SELECT file('/etc/passwd')` (reads any file), `... INTO OUTFILE 'path'`
(writes one), `KILL QUERY` (could kill the sink's inserts), the chDB-only `python()` table function
(reads objects of the sink's Python process), and anything of s3()/iceberg()/gcs() whose URL
parses. So before a statement runs:

1. The engine parses the text and prints it back (`formatQuerySingleLine`, the text passed as a
   query parameter, so nothing of it is executed): one statement or a syntax error, exactly as
   ClickHouse reads it. What then runs is that printed statement, so what was checked is what runs.
2. The engine prints that statement's syntax tree (`EXPLAIN AST`, which only parses), and the
   tree is checked: its kind (SELECT, SHOW, DESCRIBE, EXISTS, EXPLAIN of a SELECT, USE, SET),
   no INTO OUTFILE, and no function that is a table function other than the few that only
   generate or read local data (the list of table functions comes from the engine itself).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ClickHouseError, readonly_refusal

# kinds of statement an analyst may run (the first word of EXPLAIN AST's first line)
READ_STATEMENTS = frozenset({
    "SelectWithUnionQuery", "SelectIntersectExceptQuery",
    "ShowTables", "ShowColumns", "ShowFunctions", "ShowEngineQuery", "ShowIndexes", "ShowSetting",
    "ShowCreateTableQuery", "ShowCreateDatabaseQuery", "ShowCreateViewQuery", "ShowCreateDictionaryQuery",
    "DescribeQuery", "ExistsTableQuery", "ExistsDatabaseQuery", "ExistsViewQuery", "ExistsDictionaryQuery",
    "Explain",
})
SESSION_STATEMENTS = frozenset({"UseQuery", "Set"})  # produce no result; SET is refused by readonly=1
SELECTS = frozenset({"SelectWithUnionQuery", "SelectIntersectExceptQuery"})
# kinds whose direct Identifier child is the FORMAT clause (elsewhere it may name a table)
FORMAT_CHILD = frozenset({"SelectWithUnionQuery", "SelectIntersectExceptQuery", "Explain", "DescribeQuery",
                          "ShowTables"})

# table functions that only generate rows or read this engine's own tables (casefolded)
LOCAL_TABLE_FUNCTIONS = frozenset({"numbers", "numbers_mt", "zeros", "zeros_mt", "generaterandom",
                                   "generateseries", "generate_series", "primes", "values", "view",
                                   "viewifpermitted", "merge"})
# scalar functions that reach beyond the query's data (file() is also a table function)
OUTSIDE_FUNCTIONS = frozenset({"file", "catboostevaluate"})

# the grant ClickHouse would ask for, for the message
_SOURCE_GRANTS = {"file": "FILE", "url": "URL", "remote": "REMOTE", "remotesecure": "REMOTE", "s3": "S3",
                  "hdfs": "HDFS", "mysql": "MYSQL", "postgresql": "POSTGRES", "sqlite": "SQLITE",
                  "odbc": "ODBC", "jdbc": "JDBC", "mongodb": "MONGO", "redis": "REDIS",
                  "azureblobstorage": "AZURE", "executable": "SOURCES", "python": "SOURCES"}


@dataclass
class Node:
    kind: str
    name: str
    depth: int
    children: list[Node] = field(default_factory=list)


@dataclass(frozen=True)
class Statement:
    """A checked statement: its kind, the format its FORMAT clause names (None: the request's
    default), and whether it answers with a result."""
    kind: str
    output_format: str | None
    has_result: bool


def parse_tree(text: str) -> Node:
    """EXPLAIN AST's indented dump as nodes. Each line is `<indent><Kind> [<name>] [(alias a)]
    [(children n)]`; string literals are escaped in it, so a line is a line."""
    root: Node | None = None
    stack: list[Node] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip(" "))
        words = line.strip().split(" ")
        node = Node(words[0], words[1] if len(words) > 1 else "", depth)
        if root is None:
            if depth != 0:
                raise ClickHouseError("UNKNOWN_EXCEPTION", f"unexpected syntax tree: {line!r}")
            root = node
            stack = [node]
            continue
        while stack and stack[-1].depth >= depth:
            stack.pop()
        if not stack or depth != stack[-1].depth + 1:
            raise ClickHouseError("UNKNOWN_EXCEPTION", f"unexpected syntax tree at {line!r}")
        stack[-1].children.append(node)
        stack.append(node)
    if root is None:
        raise ClickHouseError("UNKNOWN_EXCEPTION", "the engine printed no syntax tree")
    return root


def walk(node: Node):
    yield node
    for child in node.children:
        yield from walk(child)


def check_statement(canonical: str, tree_text: str, table_functions: frozenset[str], user: str) -> Statement:
    """Refuse what an analyst may not run; `canonical` is the engine's one-line print of it."""
    if identifier_breaks_lines(canonical):
        # EXPLAIN AST prints identifiers unescaped: a line break in one would split the tree's lines
        raise ClickHouseError("BAD_ARGUMENTS", "Identifiers with line breaks are not supported here")
    root = parse_tree(tree_text)
    if root.kind not in READ_STATEMENTS | SESSION_STATEMENTS:
        raise readonly_refusal(user)
    if root.kind == "Explain":
        inner = [c for c in root.children if c.kind not in ("Literal", "Identifier")]
        if not inner or inner[0].kind not in SELECTS:
            raise readonly_refusal(user, "only EXPLAIN of a SELECT is allowed")
    if any(c.kind == "Literal" for c in root.children):
        raise ClickHouseError("INTO_OUTFILE_NOT_ALLOWED", "INTO OUTFILE is not allowed")
    for node in walk(root):
        if node.kind != "Function":
            continue
        fn = node.name.casefold()
        if fn in OUTSIDE_FUNCTIONS or (fn in table_functions and fn not in LOCAL_TABLE_FUNCTIONS):
            grant = _SOURCE_GRANTS.get(fn)
            why = f"the grant {grant} ON *.*" if grant else f"access to {node.name}()"
            raise ClickHouseError("ACCESS_DENIED",
                                  f"{user}: Not enough privileges. To execute this query, it's necessary to have "
                                  f"{why}, which reaches files, the network or other processes: analysts read "
                                  f"this engine's own tables only")
    fmt = None
    if root.kind in FORMAT_CHILD:
        formats = [c.name for c in root.children if c.kind == "Identifier"]
        fmt = formats[-1] if formats else None
    return Statement(root.kind, fmt, root.kind not in SESSION_STATEMENTS)


def identifier_breaks_lines(canonical: str) -> bool:
    """True when a quoted identifier of the engine's one-line print holds a line break (raw or as
    an escape). That print quotes strings '...' and identifiers `...` or "...", with backslash
    escapes, and has no comments, so a scan of its quotes is exact."""
    if "\n" in canonical or "\r" in canonical:  # raw, which a one-line print keeps only in identifiers
        return True
    quote, i = None, 0
    while i < len(canonical):
        ch = canonical[i]
        if quote is None:
            if ch in "'`\"":
                quote = ch
        elif ch == "\\":
            if quote != "'" and canonical[i + 1:i + 2] in ("n", "r"):
                return True
            i += 1
        elif ch == quote:
            quote = None
        i += 1
    return False


def strip_wrapper(err: ClickHouseError) -> ClickHouseError:
    """A syntax error found by formatQuerySingleLine names our wrapper (`In scope SELECT
    formatQuerySingleLine('...')`); the analyst's own text is already quoted before it."""
    marker = ": In scope SELECT formatQuerySingleLine("
    at = err.message.find(marker)
    if at < 0:
        return err
    tail = err.message.rstrip()
    name_at = tail.rfind(f"({err.name})")
    message = err.message[:at].rstrip(" .") + ". " + (tail[name_at:] if name_at > at else f"({err.name})")
    return ClickHouseError(err.name, message, code=err.code)
