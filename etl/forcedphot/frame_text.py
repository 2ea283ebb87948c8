"""A query result of simple column types printed as Polars prints it, without importing Polars or pyarrow.

``forcedphot sql`` prints a result as a Polars table. Importing Polars and pyarrow costs ~0.4 s of CPU,
more than DuckDB and the whole query of ``SELECT 1``; so a result whose columns are all integers, text or
booleans is fetched from DuckDB as Python values (:func:`fetch_columns`, with the same row and byte limits
as the Arrow path: the bytes are those of the Arrow batches DuckDB would have made) and formatted here
(:func:`frame_text`) exactly as ``print(polars.DataFrame)`` with ``tbl_rows=max_rows, tbl_cols=-1,
tbl_width_chars=200``. Whatever this formatter does not reproduce exactly (a text value that is not
printable ASCII or longer than Polars shows, a name longer than that, a table wider than the terminal
width Polars wraps at) returns None, and the caller prints the same values through Polars.
tests/test_frame_text.py compares the two on random tables.
"""

from __future__ import annotations

from collections.abc import Callable

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


def arrow_nbytes(types, columns: list[list]) -> int:
    """Bytes of these rows as one DuckDB Arrow record batch (``RecordBatch.nbytes``): per column a validity
    bitmap, then the values (fixed width, a bitmap for booleans, int32 offsets and UTF-8 bytes for text)."""
    total = 0
    for t, values in zip(types, columns):
        n = len(values)
        bitmap = (n + 7) // 8
        width = SIMPLE_TYPES[str(t)][1]
        if width > 0:
            total += bitmap + n * width
        elif width < 0:
            total += 2 * bitmap
        else:
            total += bitmap + 4 * (n + 1) + sum(len(v.encode()) for v in values if v is not None)
    return total


def fetch_columns(cursor, types, *, batch_rows: int | Callable[[int], int], max_rows: int | None = None,
                  max_bytes: int | None = None) -> list[list]:
    """All rows of an executed query (``cursor.fetchmany``) of these simple DuckDB ``types``, as one list of
    Python values per column.

    Fetched in batches of the Arrow path's size, counted against the limits as it counts its batches
    (:func:`forcedphot.results.bounded_batches`): :class:`ResultTooLarge` at the first batch past a limit.
    """
    rows_per_batch = batch_rows(len(types)) if callable(batch_rows) else batch_rows
    columns: list[list] = [[] for _ in types]
    rows = n_bytes = 0
    while True:
        batch = cursor.fetchmany(rows_per_batch)
        if not batch:
            return columns
        batch_columns = [list(c) for c in zip(*batch)]
        rows += len(batch)
        n_bytes += arrow_nbytes(types, batch_columns)
        if max_rows is not None and rows > max_rows:
            raise ResultTooLarge("rows", max_rows, rows)
        if max_bytes is not None and n_bytes > max_bytes:
            raise ResultTooLarge("bytes", max_bytes, n_bytes)
        for column, values in zip(columns, batch_columns):
            column.extend(values)


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


def frame_text(names: list[str], dtypes: list[str], columns: list[list], *, max_rows: int = 40) -> str | None:
    """The text of ``print(polars.DataFrame)`` of these columns (``tbl_rows=max_rows``, -1: all), or None
    where it would not be exactly that (the caller then prints through Polars)."""
    names = unique_names(list(names))
    if not names or any(not name or not _printable(name) or len(name) > STR_LEN for name in names):
        return None
    height = len(columns[0]) if columns else 0
    if max_rows < 0 or height <= max_rows:
        shown, cut = list(range(height)), False
    else:
        head = (max_rows + 1) // 2
        shown, cut = list(range(head)) + list(range(height - (max_rows - head), height)), True
    cells = []
    for values, dtype in zip(columns, dtypes):
        column = [_cell(values[i], dtype) for i in shown]
        if any(c is None for c in column):
            return None
        if cut:
            column.insert((max_rows + 1) // 2, ELLIPSIS)
        cells.append(column)
    widths = [max([len(name), 3, len(dtype)] + [len(c) for c in column])
              for name, dtype, column in zip(names, dtypes, cells)]
    if sum(w + 3 for w in widths) + 1 > TABLE_WIDTH:
        return None

    def row(texts, left="│", sep="┆", right="│") -> str:
        return left + sep.join(f" {t:<{w}} " for t, w in zip(texts, widths)) + right

    def rule(left: str, fill: str, sep: str, right: str) -> str:
        return left + sep.join(fill * (w + 2) for w in widths) + right

    lines = [f"shape: ({height}, {len(names)})", rule("┌", "─", "┬", "┐"), row(names), row(["---"] * len(names)),
             row(dtypes), rule("╞", "═", "╪", "╡")]
    lines += [row(r) for r in zip(*cells)]
    lines.append(rule("└", "─", "┴", "┘"))
    return "\n".join(lines)
