"""The read-only SQL console (`selectit sql`): which statements and functions may run, and a
sealed connection to run them on.

    >>> check_console_sql("SELECT * FROM ranking LIMIT 5")
    ['SELECT * FROM ranking LIMIT 5']
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import duckdb

from selectit.fusion.errors import FusionError, ReadOnlyError
from selectit.fusion.store_attach import one_line

if TYPE_CHECKING:
    import pyarrow as pa

#: Statement types the console runs; all others (COPY, EXPORT, CALL, SET, ATTACH, LOAD, PRAGMA
#: settings, transactions, …) are refused. Writes to `store.*` fail: it is attached READ_ONLY.
_ALLOWED_STATEMENTS = {"SELECT", "EXPLAIN", "CREATE", "INSERT", "UPDATE", "DELETE", "DROP", "ALTER"}
#: Functions the console refuses wherever they are called: they run SQL given as a string (past
#: this check), send raw SQL to the server, or read files through the extensions' own I/O.
_REFUSED_FUNCTIONS = {"query", "query_table", "json_execute_serialized_sql", "enable_logging",
                      "disable_logging", "truncate_duckdb_logs", "getenv", "glob", "sniff_csv",
                      "checkpoint", "force_checkpoint"}
_REFUSED_PREFIXES = ("postgres_", "sqlite_", "read_", "parquet_")
READ_ONLY_MESSAGE = "the curation database is read-only here"


_NAME = re.compile(r'"(?:[^"]|"")*"|[\w$]+')


def _function_calls(sql: str) -> list[str]:
    """Names called as functions in `sql`, lower-case: every name token followed by `(`.

    DuckDB's own tokenizer is used, so a name inside a string literal, a quoted alias or a
    comment is not a call, and `"QUERY" /* x */ (…)` or `system.main.query(…)` are.
    """
    tokens = duckdb.tokenize(sql)
    names = []
    for (start, kind), nxt in zip(tokens, tokens[1:] + [(len(sql), None)]):
        if kind not in (duckdb.token_type.identifier, duckdb.token_type.keyword):
            continue
        after = nxt[0]
        if nxt[1] != duckdb.token_type.operator or not sql[after:after + 1] == "(":
            continue
        found = _NAME.match(sql, start)
        if found is None:
            continue
        name = found.group(0)
        if name.startswith('"'):
            name = name[1:-1].replace('""', '"')
        names.append(name.lower())
    return names


_PARSER: duckdb.DuckDBPyConnection | None = None


def _sealed_parser() -> duckdb.DuckDBPyConnection:
    """A sealed in-memory DuckDB that only parses: DuckDB expands some statements while parsing
    them (`IMPORT DATABASE 'dir'` reads dir/schema.sql), so the check must open no file either."""
    global _PARSER
    if _PARSER is None:
        parser = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
        seal(parser)
        _PARSER = parser
    return _PARSER


def _explained(query: str) -> str:
    """The statement an `EXPLAIN [ANALYZE] [(options)] …` statement explains (and may run)."""
    tokens = [(start, kind) for start, kind in duckdb.tokenize(query) if kind != duckdb.token_type.comment]
    i = 1  # past EXPLAIN
    while i < len(tokens):
        start, kind = tokens[i]
        word = query[start:].split(None, 1)[0].upper() if kind == duckdb.token_type.keyword else ""
        if word in ("ANALYZE", "ANALYSE", "VERBOSE"):
            i += 1
        elif query[start] == "(" and kind == duckdb.token_type.operator:
            depth = 0
            while i < len(tokens):
                text = query[tokens[i][0]] if tokens[i][1] == duckdb.token_type.operator else ""
                depth += (text == "(") - (text == ")")
                i += 1
                if depth == 0:
                    break
        else:
            return query[start:]
    return ""


def _check_statement(parser: duckdb.DuckDBPyConnection, statement: Any) -> None:
    kind = str(statement.type).rsplit(".", 1)[-1].upper()
    if kind not in _ALLOWED_STATEMENTS:
        if kind == "???":  # e.g. UPDATE EXTENSIONS
            kind = " ".join(statement.query.split()[:2]).upper()
        raise ReadOnlyError(f"{READ_ONLY_MESSAGE}: {kind} statements are not allowed in `selectit sql`")
    if kind == "EXPLAIN":  # EXPLAIN ANALYZE runs the statement: the same rules apply to it
        explained = _explained(statement.query)
        inner = _parse(parser, explained) if explained.strip() else []
        if not inner:
            raise ReadOnlyError(f"{READ_ONLY_MESSAGE}: the console cannot tell what this EXPLAIN explains")
        for one in inner:
            _check_statement(parser, one)


def _parse(parser: duckdb.DuckDBPyConnection, sql: str) -> list[Any]:
    try:
        return parser.extract_statements(sql)
    except duckdb.PermissionException as exc:
        raise ReadOnlyError(f"{READ_ONLY_MESSAGE}, and the console reads and writes no files: "
                            f"{one_line(exc)}") from None
    except duckdb.Error as exc:
        raise FusionError(f"SQL error: {one_line(exc)}") from None


def check_console_sql(sql: str) -> list[str]:
    """The statements of `sql`, or a `ReadOnlyError` for anything the console refuses.

    Parsed on a sealed connection (nothing is read while checking); an `EXPLAIN` is checked by
    the statement it explains.
    """
    parser = _sealed_parser()
    statements = _parse(parser, sql)
    if not statements:
        raise FusionError("no SQL statement given; e.g. `selectit sql \"SELECT * FROM ranking LIMIT 5\"`")
    for statement in statements:
        _check_statement(parser, statement)
    for name in _function_calls(sql):
        if name in _REFUSED_FUNCTIONS or name.startswith(_REFUSED_PREFIXES):
            raise ReadOnlyError(
                f"{READ_ONLY_MESSAGE}: {name}() is not allowed in `selectit sql` (it reads files or runs SQL "
                f"the console cannot check); query the views and store.<table> instead"
            )
    return [s.query for s in statements]


def seal(con: duckdb.DuckDBPyConnection) -> None:
    """No file at all from here on (not even the store's own), and no setting can change again."""
    if con.execute("SELECT current_setting('lock_configuration')").fetchone()[0]:
        return
    con.execute("SET enable_external_access = false")
    con.execute("SET disabled_filesystems = 'LocalFileSystem'")
    con.execute("SET lock_configuration = true")


def run_sql(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run ad-hoc SQL on a fusion connection: (column names, rows) of the last statement.

    Only queries and statements on one's own temporary tables run: writes to `store.*` fail
    (attached READ_ONLY), and the connection is sealed first — no file can be read or written,
    no setting changed. Statements that load code, attach, copy or export, and the functions
    that read files or send raw SQL to the server (`query()`, `postgres_*`, `sqlite_*`, `read_*`),
    are refused by parsing the SQL, never by matching its text.
    """
    if not isinstance(sql, str):  # the Python API's argument: DuckDB would raise a bare TypeError
        raise FusionError(f"the SQL must be a string; got {sql!r}")
    check_console_sql(sql)
    seal(con)
    try:
        cursor = con.execute(sql)
        columns = [d[0] for d in cursor.description] if cursor.description else []
        rows = cursor.fetchall() if columns else []
    except duckdb.Error as exc:
        message = one_line(exc)
        if "read-only" in message or "read only" in message:
            raise ReadOnlyError(f"{READ_ONLY_MESSAGE}: {message}") from exc
        if isinstance(exc, duckdb.PermissionException):
            raise ReadOnlyError(f"{READ_ONLY_MESSAGE}, and the console reads and writes no files: {message}") from exc
        raise FusionError(f"SQL error: {message}") from exc
    return columns, rows


def _arrow_column(values: list[Any]) -> pa.Array:
    """An Arrow array of one result column; integers beyond 64 bits (DuckDB's HUGEINT) as decimals."""
    import decimal

    import pyarrow as pa

    try:
        return pa.array(values)
    except (OverflowError, pa.ArrowInvalid):
        if all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in values):
            return pa.array([None if v is None else decimal.Decimal(v) for v in values], type=pa.decimal256(76, 0))
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def as_arrow(columns: list[str], rows: list[tuple[Any, ...]]) -> pa.Table:
    """A console result as a `pyarrow.Table`, by position: a query may name two columns alike
    (SELECT 1 AS a, 2 AS a)."""
    import pyarrow as pa

    return pa.Table.from_arrays([_arrow_column([r[i] for r in rows]) for i in range(len(columns))], names=columns)
