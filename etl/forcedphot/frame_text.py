"""A query result of simple column types printed as Polars prints it, without importing Polars or pyarrow.

``forcedphot sql`` prints a result as a Polars table. Importing Polars and pyarrow costs ~0.4 s of CPU,
more than DuckDB and the whole query of ``SELECT 1``; so a result whose columns are all integers, text or
booleans is read from DuckDB as Python values, batch by batch, keeping only the rows the table shows
(:func:`fetch_shown`, with the same row and byte limits as the Arrow path: the bytes are those of the
Arrow batches DuckDB would have made) and formatted here (:func:`frame_text`) exactly as ``print(polars.DataFrame)`` with ``tbl_rows=max_rows, tbl_cols=-1,
tbl_width_chars=200``. Whatever this formatter does not reproduce exactly (a text value that is not
printable ASCII, a name longer than Polars shows, a table wider than the width Polars wraps at)
returns None, and the caller runs the query again through Arrow and Polars.
tests/test_startup.py compares the two on random tables.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from forcedphot.results import ResultTooLarge, unique_names

# DuckDB type -> (Polars dtype name, bytes per value in Arrow; 0: variable (text), -1: bit-packed)
SIMPLE_TYPES = {
    "TINYINT": ("i8", 1), "SMALLINT": ("i16", 2), "INTEGER": ("i32", 4), "BIGINT": ("i64", 8),
    "UTINYINT": ("u8", 1), "USMALLINT": ("u16", 2), "UINTEGER": ("u32", 4), "UBIGINT": ("u64", 8),
    "VARCHAR": ("str", 0), "BOOLEAN": ("bool", -1),
}
STR_LEN = 30  # Polars' fmt_str_lengths: longer text is cut to this many characters and "…"
TABLE_WIDTH = 200  # tbl_width_chars: a wider table is wrapped by Polars (not reproduced here)
ELLIPSIS = "…"


def simple_dtypes(types) -> list[str] | None:
    """The Polars dtype names of DuckDB column types, or None if one is not a simple type."""
    out = []
    for t in types:
        spec = SIMPLE_TYPES.get(str(t))
        if spec is None:
            return None
        out.append(spec[0])
    return out


def arrow_nbytes(types, rows: list[tuple]) -> int:
    """Bytes of these rows as one DuckDB Arrow record batch (``RecordBatch.nbytes``): per column a validity
    bitmap, then the values (fixed width, a bitmap for booleans, UTF-8 bytes and int32 offsets for text, which
    pyarrow counts as one per row). Only text values are looked at."""
    n = len(rows)
    bitmap = (n + 7) // 8
    total = 0
    for j, t in enumerate(types):
        width = SIMPLE_TYPES[str(t)][1]
        if width > 0:
            total += bitmap + n * width
        elif width < 0:
            total += 2 * bitmap
        else:
            total += bitmap + 4 * n + sum(len(v) if v.isascii() else len(v.encode())
                                          for v in (row[j] for row in rows) if v is not None)
    return total


class Shown(NamedTuple):
    """What the table of a result shows: its height, its first rows and its last rows (tuples)."""

    height: int
    head: list[tuple]
    tail: list[tuple]


def _split(max_rows: int) -> tuple[int | None, int]:
    """(head rows, tail rows) Polars shows of a taller result with ``tbl_rows=max_rows`` (None, 0: all)."""
    if max_rows < 0:
        return None, 0
    head = (max_rows + 1) // 2
    return head, max_rows - head


def fetch_shown(cursor, types, *, max_shown: int, batch_rows: int | Callable[[int], int],
                max_rows: int | None = None, max_bytes: int | None = None) -> Shown:
    """Read an executed query (``cursor.fetchmany``) of these simple DuckDB ``types`` whole, keeping only the
    rows a table of ``max_shown`` rows shows (all for -1): memory of one batch plus those rows.

    Fetched in batches of the Arrow path's size, counted against the limits as it counts its batches
    (:func:`forcedphot.results.bounded_batches`): :class:`ResultTooLarge` at the first batch past a limit.
    """
    rows_per_batch = batch_rows(len(types)) if callable(batch_rows) else batch_rows
    n_head, n_tail = _split(max_shown)
    head: list[tuple] = []
    tail: deque[tuple] = deque(maxlen=n_tail)
    rows = n_bytes = 0
    while True:
        batch = cursor.fetchmany(rows_per_batch)
        if not batch:
            return Shown(rows, head, list(tail) if n_tail else [])
        rows += len(batch)
        n_bytes += arrow_nbytes(types, batch)
        if max_rows is not None and rows > max_rows:
            raise ResultTooLarge("rows", max_rows, rows)
        if max_bytes is not None and n_bytes > max_bytes:
            raise ResultTooLarge("bytes", max_bytes, n_bytes)
        take = len(batch) if n_head is None else max(0, min(len(batch), n_head - len(head)))
        head.extend(batch[:take])
        if n_tail:
            tail.extend(batch[take:])


def _printable(text: str) -> bool:
    return text.isascii() and text.isprintable()


def _cell(value, dtype: str) -> str | None:
    if value is None:
        return "null"
    if dtype == "bool":
        return "true" if value else "false"
    if dtype == "str":
        if not _printable(value):
            return None
        return value if len(value) <= STR_LEN else value[:STR_LEN] + ELLIPSIS
    return str(value)


def names_printable(names: list[str]) -> bool:
    """Column names this formatter prints as Polars does (else the caller prints through Polars)."""
    return bool(names) and all(name and _printable(name) and len(name) <= STR_LEN for name in names)


def frame_text(names: list[str], dtypes: list[str], shown: Shown, *, max_rows: int = 40) -> str | None:
    """The text of ``print(polars.DataFrame)`` of the result (``tbl_rows=max_rows``, -1: all), or None where it
    would not be exactly that (the caller then prints through Polars)."""
    names = unique_names(list(names))
    if not names_printable(names) or max_rows == 0:  # tbl_rows=0: Polars sizes the columns otherwise
        return None
    rows = shown.head + shown.tail
    cut = 0 <= max_rows < shown.height
    cells = []
    for j, dtype in enumerate(dtypes):
        column = [_cell(row[j], dtype) for row in rows]
        if any(c is None for c in column):
            return None
        if cut:
            column.insert(len(shown.head), ELLIPSIS)
        cells.append(column)
    widths = [max([len(name), 3, len(dtype)] + [len(c) for c in column])
              for name, dtype, column in zip(names, dtypes, cells)]
    if sum(w + 3 for w in widths) + 1 > TABLE_WIDTH:
        return None

    def row(texts, left="│", sep="┆", right="│") -> str:
        return left + sep.join(f" {t:<{w}} " for t, w in zip(texts, widths)) + right

    def rule(left: str, fill: str, sep: str, right: str) -> str:
        return left + sep.join(fill * (w + 2) for w in widths) + right

    lines = [f"shape: ({shown.height:_}, {len(names)})", rule("┌", "─", "┬", "┐"), row(names),
             row(["---"] * len(names)), row(dtypes), rule("╞", "═", "╪", "╡")]
    lines += [row(r) for r in zip(*cells)]
    lines.append(rule("└", "─", "┴", "┘"))
    return "\n".join(lines)
