"""Reading raw examples: local CSV/TSV/JSON/JSONL/Parquet files, Hugging Face Hub dataset ids and embedded
datasets, with clear errors for bad files; carving a seeded validation split; a tokenization cache."""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import functools
import json
import lzma
import re
import shutil
import sys
import tempfile
import zlib
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from datasets import Dataset, load_from_disk

from adapt import assets
from adapt.errors import AdaptError

TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def split_suffix(path: Path) -> tuple[str, str]:
    """('.tsv', '.gz') for data.tsv.gz; ('.tsv', '') for data.tsv."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _OPENERS:
        return (suffixes[-2] if len(suffixes) > 1 else ""), suffixes[-1]
    return (suffixes[-1] if suffixes else ""), ""


def read_text(path: Path) -> str:
    """Whole file as UTF-8 text (transparently decompressed).

    Raises:
        AdaptError: the file is missing, a folder, unreadable, truncated/corrupt compressed data, or not UTF-8
            (naming the line of the first bad byte)."""
    path = Path(path)
    if not path.exists():
        raise AdaptError(f"data file {path} does not exist; check the path (relative to {Path.cwd()})")
    if path.is_dir():
        raise AdaptError(f"{path} is a folder, not a data file; point at a file ({', '.join(TABLE_SUFFIXES)})")
    _, compression = split_suffix(path)
    opener = _OPENERS.get(compression, open)
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except PermissionError:
        raise AdaptError(f"{path}: permission denied; make the file readable (chmod u+r)") from None
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as err:
        reason = str(err) or type(err).__name__
        if compression:
            raise AdaptError(f"{path}: the {compression[1:]} data is truncated or corrupt ({reason}); "
                             "download the file again or re-compress it") from None
        raise AdaptError(f"{path}: cannot be read ({reason})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        if kind := _binary_kind(raw):
            raise AdaptError(f"{path}: {kind}, not UTF-8 text; export or re-save it as {', '.join(TABLE_SUFFIXES)}") from None
        line = raw[: err.start].count(b"\n") + 1
        raise AdaptError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{raw[err.start]:02x}); re-save the file as UTF-8"
        ) from None


def decoded_lines(handle: IO[bytes], name: str) -> Iterator[tuple[int, str]]:
    """(physical line number from 1, line without its line ending) of a binary stream of UTF-8 text, read one
    line at a time (a leading BOM dropped), for inputs too large to hold whole (`adapt predict`'s --file, stdin).
    `name` names the stream in errors.

    Raises:
        AdaptError: a line that is not UTF-8 (naming `name`, the line and what the bytes are when known, e.g.
            UTF-16 text or gzip data), or a truncated/unreadable stream."""
    number = 0
    try:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                kind = _binary_kind(raw) if number == 1 else None
                if kind:
                    raise AdaptError(f"{name}: {kind}, not UTF-8 text; re-save it as UTF-8 text, one input per "
                                     "line") from None
                raise AdaptError(f"{name}: line {number} is not valid UTF-8 (byte 0x{raw[err.start]:02x}); re-save "
                                 "the file as UTF-8") from None
            yield number, line.rstrip("\r\n")
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as err:
        where = f"after line {number}" if number else "from its start"
        raise AdaptError(f"{name}: cannot be read {where} ({str(err) or type(err).__name__}); the file is "
                         "truncated, corrupt or not what its name says: download or compress it again") from None


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """`decoded_lines` of a local text file, transparently decompressed (.gz, .bz2, .xz).

    Raises:
        AdaptError: the file is missing or a folder, or as `decoded_lines`."""
    path = Path(path)
    if not path.is_file():
        raise AdaptError(f"{path}: {'is a folder' if path.is_dir() else 'no such file'}; give a UTF-8 text file")
    _, compression = split_suffix(path)
    try:
        handle = _OPENERS.get(compression, open)(path, "rb")
    except OSError as err:
        raise AdaptError(f"{path}: cannot be read ({err.strerror or err}); make the file readable") from None
    with handle:
        yield from decoded_lines(handle, str(path))


def _jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(physical line number, line) of each non-blank line; lines end at '\\n' only (a JSON string may hold
    U+2028 and other characters that `str.splitlines` would split at)."""
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield number, line


def read_jsonl(path: Path, text: str | None = None) -> list[dict]:
    """One JSON object per non-blank line.

    Raises:
        AdaptError: a line is not valid JSON, not an object, or repeats a key (naming the physical line)."""
    text = read_text(path) if text is None else text
    rows = []
    for number, line in _jsonl_lines(text):
        try:
            row = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as err:
            raise AdaptError(f"{path}: line {number} is not valid JSON ({err.msg}); fix or remove that line") from None
        except _DuplicateKey as err:
            raise AdaptError(f"{path}: line {number} has the key '{err.key}' twice; keep one") from None
        if not isinstance(row, dict):
            raise AdaptError(f"{path}: line {number} is {_json_kind(row)}, not a JSON object; each line must be "
                             'an object like {"text": ..., "label": ...}')
        rows.append(row)
    return rows


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """json `object_pairs_hook`: a dict, refusing a key given twice (plain json keeps the last silently)."""
    row = dict(pairs)
    if len(row) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return row


def _json_kind(value: Any) -> str:
    """'a number', 'a string', ... for messages about JSON values."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


# csv's default limit (131,072 characters per field) is shorter than many documents
_CSV_FIELD_LIMIT = 2**31 - 1
_DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": ";", "|": "|"}


def _csv_records(path: Path, text: str, kind: str) -> Iterator[tuple[int, list[str]]]:
    """(physical line on which the record starts, fields) for each non-blank record of CSV/TSV text, header
    first. Quoted fields may span lines, so record numbers and line numbers differ; blank lines are skipped.

    Raises:
        AdaptError: the csv module cannot parse a record (naming its line)."""
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    delimiter = "\t" if kind == ".tsv" else ","
    # TSV files in NLP (GLUE) are unquoted; quotes inside sentences are literal characters
    quoting = csv.QUOTE_NONE if kind == ".tsv" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    ended = 0
    try:
        for row in reader:
            start, ended = ended + 1, reader.line_num
            if row and not (len(row) == 1 and not row[0].strip()):
                yield start, row
    except csv.Error as err:
        raise AdaptError(f"{path}: line {reader.line_num} cannot be parsed as {kind[1:].upper()} ({err}); "
                         "fix that line") from None


def _other_delimiter(kind: str, text: str) -> tuple[str, str] | None:
    """(separator, "looks ;-separated, not comma-separated (its first line has 3 ;-separated fields)") when the
    first line has no field separator of the file's type (`kind` .csv or .tsv) but another common one, else None."""
    first = next((line for line in text.split("\n") if line.strip()), "")
    ours = "\t" if kind == ".tsv" else ","
    if ours in first:
        return None
    for candidate in ("\t", ";", "|", ","):
        if candidate != ours and candidate in first:
            name = _DELIMITER_NAMES[candidate]
            return candidate, (f"looks {name}-separated, not {_DELIMITER_NAMES[ours]}-separated (its first line has "
                               f"{len(first.split(candidate))} {name}-separated fields)")
    return None


def _delimiter_hint(path: Path, kind: str, text: str) -> str | None:
    """'<path>: looks ;-separated ...; <fix>' when the file seems to use another separator (`_other_delimiter`),
    else None."""
    found = _other_delimiter(kind, text)
    if found is None:
        return None
    candidate, looks = found
    if candidate == "\t":
        fix = f"rename it to {path.name.replace(kind, '.tsv')} (tab-separated files must end in .tsv)"
    elif candidate == ",":
        fix = f"rename it to {path.name.replace(kind, '.csv')} (comma-separated files must end in .csv)"
    else:
        fix = "re-save it with commas as the separator (.csv) or tabs (.tsv)"
    return f"{path}: {looks}; {fix}"


# leading bytes of formats users save under a text name by mistake
_SIGNATURES = (
    (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx workbook or a zipped file)"),
    (b"\xd0\xcf\x11\xe0", "an old Excel/Office (.xls) file"),
    (b"\xff\xfe", "UTF-16 text"), (b"\xfe\xff", "UTF-16 text"),
    (b"PAR1", "a Parquet file"), (b"\x1f\x8b", "gzip-compressed data"),
    (b"BZh", "bz2-compressed data"), (b"\xfd7zXZ", "xz-compressed data"), (b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
)


def _binary_kind(raw: bytes) -> str | None:
    """What non-UTF-8 bytes really are, by their leading signature (None if unknown)."""
    return next((kind for magic, kind in _SIGNATURES if raw.startswith(magic)), None)


def _read_csv(path: Path, kind: str, text: str) -> Dataset:
    records = _csv_records(path, text, kind)
    first = next(records, None)
    if first is None:
        raise AdaptError(f"{path}: the file is empty; it needs a header line and at least one example")
    header_line, header = first
    if len(header) == 1 and (hint := _delimiter_hint(path, kind, text)):
        raise AdaptError(hint)
    unnamed = [position for position, h in enumerate(header, 1) if not h.strip()]
    header = [h.strip() or f"column_{position}" for position, h in enumerate(header, 1)]
    positions: dict[str, int] = {}
    for position, name in enumerate(header, 1):
        if name in positions:
            raise AdaptError(f"{path}: line {header_line}: the header names column '{name}' twice (columns "
                             f"{positions[name]} and {position}); rename or remove one")
        positions[name] = position
    columns: list[list[str]] = [[] for _ in header]
    spanning: list[tuple[int, list[str]]] = []  # records with a quoted field that runs over several lines
    for line, row in records:
        if any("\n" in field or "\r" in field for field in row):
            spanning.append((line, row))
        if len(row) != len(header):
            if unnamed and len(row) == len(header) - len(unnamed):  # the header, not this line, is off
                raise AdaptError(f"{path}: line {header_line}: header column {unnamed[0]} has no name (a stray "
                                 f"separator{' at the end of the line' if unnamed[-1] == len(header) else ''}); "
                                 "remove it or name the column")
            spans = next(
                (f" (a quoted field starting there runs on over several lines: check for an unclosed \")"
                 for field in row if "\n" in field), "")
            raise AdaptError(f"{path}: line {line} has {len(row)} fields but the header has {len(header)}"
                             f"{spans}; fix that line")
        for column, value in zip(columns, row):
            column.append(value)
    if spanning:
        _check_spanning_fields(path, spanning, columns)
    return Dataset.from_dict(dict(zip(header, columns)))


def _check_spanning_fields(path: Path, spanning: list[tuple[int, list[str]]], columns: list[list[str]]) -> None:
    """Refuse the signature of an unclosed quote among `spanning` (line, record) pairs, else print one note.

    Multi-line quoted fields are legal CSV (a review with a line break). An unclosed `"` instead swallows the
    following lines into one field until the next quote: the lines inside such a field each split into whole
    records again (the opening line into its remaining columns), with a value seen in that column of the file's
    other records (e.g. a label). `columns` holds every record's values, column by column.

    Raises:
        AdaptError: "<path>: line N: a quote opens here and runs over lines N-M ...", N being the line of the
            opening quote."""
    width = len(columns)
    seen = [{value.strip() for value in values if "\n" not in value and "\r" not in value} for values in columns]
    for line, row in spanning:
        opening = line
        for k, field in enumerate(row):
            pieces = field.replace("\r\n", "\n").replace("\r", "\n").split("\n")
            if len(pieces) < 2:
                continue
            inner = [(pieces[0], k)] + [(piece, 0) for piece in pieces[1:-1]]
            fits, matched = True, False
            for text, first_column in inner:
                parts = next(csv.reader([text]), [])
                if len(parts) != width - first_column:
                    fits = False
                    break
                matched = matched or any(parts[i - first_column].strip() in seen[i]
                                         for i in range(first_column, width) if i != k and parts[i - first_column].strip())
            if fits and matched:
                last = opening + len(pieces) - 1
                raise AdaptError(f"{path}: line {opening}: a quote (\") opens a field here that runs over lines "
                                 f"{opening}-{last}, whose lines look like separate records: the quote is probably "
                                 f"never closed; close it (or remove it) on line {opening}")
            opening += len(pieces) - 1
    many = len(spanning) > 1
    print(f"note: {path}: {len(spanning)} record{'s' if many else ''} {'have' if many else 'has'} a quoted field "
          f"running over several lines (first at line {spanning[0][0]}); {'each is' if many else 'it is'} read as one "
          "example", file=sys.stderr)


def _json_value_kind(value: Any) -> str | None:
    """The Arrow-relevant kind of a JSON value ('number', 'string', 'list of string', ...); None for null (and
    NaN, which Python's json reads and pandas writes for a missing value)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, list):
        inner = {_json_value_kind(v) for v in value} - {None}
        return "list" if not inner else f"list of {inner.pop()}" if len(inner) == 1 else "mixed list"
    return {"a number": "number", "true/false": "true/false", "a string": "string"}.get(_json_kind(value), "object")


def rows_to_dataset(path: Path, rows: list[dict]) -> Dataset:
    """A Dataset from JSON objects: columns are the union of all keys (missing values are null).

    Raises:
        AdaptError: a field holds values of different types in different rows (e.g. numbers and strings,
            which Arrow cannot store in one column), or a list mixes types; names the row's line."""
    kinds: dict[str, tuple[str, int]] = {}
    names: dict[str, None] = {}
    for index, row in enumerate(rows):
        for key, value in row.items():
            names.setdefault(key)
            kind = _json_value_kind(value)
            if kind is None:
                continue
            if "mixed list" in kind:
                raise AdaptError(f"{path}: {row_location(str(path), index)}: field '{key}' is a list mixing "
                                 "numbers, strings or other types; make its items all one type")
            first = kinds.setdefault(key, (kind, index))
            if first[0] == "list" and kind.startswith("list of"):  # an empty list says nothing of its items
                kinds[key] = (kind, index)
            elif first[0] != kind and not (kind == "list" and first[0].startswith("list")):
                raise AdaptError(
                    f"{path}: {row_location(str(path), index)}: field '{key}' is {kind} ({json.dumps(value)[:40]}) "
                    f"but {first[0]} on {row_location(str(path), first[1])}; give every row the same type "
                    f'(e.g. quote numbers: "1")')
    try:
        columns = {}
        for name in names:
            column = [row.get(name) for row in rows]
            if kinds.get(name, ("",))[0] != "number":  # NaN (a missing value) in a text column is null
                column = [None if isinstance(v, float) and v != v else v for v in column]
            columns[name] = column
        return Dataset.from_dict(columns)
    except Exception as err:  # pyarrow raises several types for values it cannot store together
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise AdaptError(f"{path}: its values cannot form a table ({reason}); give each field one type") from None


def _read_json(path: Path, text: str) -> Dataset:
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # one object per line: JSON Lines under a .json name
            return rows_to_dataset(path, read_jsonl(path, text))
        raise AdaptError(f"{path}: line {err.lineno} is not valid JSON ({err.msg}); fix that line") from None
    except _DuplicateKey as err:
        raise AdaptError(f"{path}: an object has the key '{err.key}' twice; keep one") from None
    if isinstance(data, dict) and "data" in data and isinstance(data["data"], list):
        data = data["data"]
    if not isinstance(data, list):
        raise AdaptError(f"{path}: expected a JSON list of objects (or JSON Lines, one object per line)")
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise AdaptError(f"{path}: {row_location(str(path), index)}: item {index + 1} of the JSON list is "
                             f"{_json_kind(item)} ({json.dumps(item)[:40]}), not an object; expected a list of "
                             'objects like {"text": ..., "label": ...}')
    return rows_to_dataset(path, data)


def _sniff(path: Path) -> str:
    """What a file that failed to parse as Parquet seems to hold, as advice."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.startswith(b"PAR1"):
        return "it starts like Parquet but is truncated or corrupt; export it again"
    if head[:2] == b"\x1f\x8b":
        return "it is gzip-compressed; decompress it (Parquet compresses internally)"
    try:
        text = head.decode("utf-8-sig").lstrip()
    except UnicodeDecodeError:
        return "export it again as Parquet"
    if text.startswith(("{", "[")):
        return "it holds JSON text; rename it to .json or .jsonl"
    if text:
        return "it holds text; rename it to its real type (.csv, .tsv, .jsonl)"
    return "the file is empty; export it again"


def _read_parquet(path: Path, compression: str) -> Dataset:
    if not path.exists() or path.is_dir():
        read_text(path)  # raises the standard missing-file / folder error
    if compression:
        raise AdaptError(f"{path}: Parquet files cannot be read {compression[1:]}-compressed; decompress it "
                         "(Parquet compresses internally)")
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow: ArrowInvalid, OSError, ...
        reason = (str(err).splitlines() or [type(err).__name__])[0].split("': ")[-1].split(". ")[0][:120]
        raise AdaptError(f"{path}: not a readable Parquet file ({reason}); {_sniff(path)}") from None
    names = table.column_names
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise AdaptError(f"{path}: column '{duplicates[0]}' appears twice; rename one and export again")
    return Dataset.from_pandas(table.to_pandas(), preserve_index=False)


def read_table(path: Path, delimiter: str | None = None, header_names: list[str] | None = None) -> Dataset:
    """A local tabular file (CSV, TSV, JSON list, JSON Lines, Parquet; optionally .gz/.bz2/.xz) as a Dataset,
    one row per example, every column as stored (CSV/TSV cells stay strings).

    CSV/TSV layout (recipe data.delimiter, data.header_names): `delimiter` "\t" reads the file as TSV (unquoted)
    and "," as CSV whatever its suffix (STS-B ships tab-separated `.csv` files); `header_names` names the fields
    of a file without a header line, in order: its first line is data, and fields after the last named one
    are ignored (STS-B's optional licence fields), while a line with fewer fields is refused.

    Raises:
        AdaptError: anything wrong with the file, in one line naming the file and, where known, the physical
            line, with the fix (wrong separator, duplicated header, fields of mixed types, ...)."""
    path = Path(path)
    kind, compression = split_suffix(path)
    if kind not in TABLE_SUFFIXES:
        raise AdaptError(f"{path}: unsupported file type '{kind or path.name}'; use one of {', '.join(TABLE_SUFFIXES)}")
    try:
        if kind == ".parquet":
            return _read_parquet(path, compression)
        text = read_text(path)
        if kind in (".csv", ".tsv"):
            kind = {"\t": ".tsv", ",": ".csv"}.get(delimiter or "", kind)
            if header_names is not None:
                table = _read_headerless(path, kind, text, header_names)
            else:
                table = _read_csv(path, kind, text)
            _TABLE_LAYOUTS[str(path.resolve())] = (kind, header_names is None)  # row_location counts lines alike
            return table
        if not text.strip():
            raise AdaptError(f"{path}: the file is empty; it needs at least one example (one JSON object per line)")
        if kind == ".json" and text.lstrip().startswith(("[", "{")):
            return _read_json(path, text)
        return rows_to_dataset(path, read_jsonl(path, text))
    except AdaptError:
        raise
    except Exception as err:  # a reader failing on a bad file in a way not foreseen above: still one line
        reason = str(err).splitlines()[0][:200] if str(err) else ""
        raise AdaptError(f"{path}: cannot be read as {kind[1:].upper()} ({type(err).__name__}: {reason}); "
                         "check that the file is complete and of the type its name says") from err


# CSV/TSV files as last read (data.delimiter, data.header_names): resolved path -> (kind read as, has a header line)
_TABLE_LAYOUTS: dict[str, tuple[str, bool]] = {}


def _read_headerless(path: Path, kind: str, text: str, names: list[str]) -> Dataset:
    """Records of a CSV/TSV file without a header line as columns `names` (see `read_table`).

    Raises:
        AdaptError: no names or duplicate names, an empty file, or a line with fewer fields than names (naming
            it)."""
    if not names:
        raise AdaptError(f"{path}: data.header_names is empty; name the file's fields in order, or leave it out when "
                         "the file has a header line")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise AdaptError(f"data.header_names names column '{duplicates[0]}' twice; give each field its own name")
    columns: list[list[str]] = [[] for _ in names]
    for line, row in _csv_records(path, text, kind):
        if len(row) < len(names):
            found = _other_delimiter(kind, text) if not columns[0] else None
            raise AdaptError(f"{path}: line {line} has {len(row)} field{'s' if len(row) != 1 else ''} but "
                             f"data.header_names names {len(names)}"
                             + (f" ({found[1]}; set data.delimiter)" if found else "")
                             + "; fix that line or data.header_names")
        for column, value in zip(columns, row):
            column.append(value)
    if not columns[0]:
        raise AdaptError(f"{path}: the file is empty; it needs at least one example")
    return Dataset.from_dict(dict(zip(names, columns)))


def row_location(source: str, index: int) -> str:
    """Where row `index` (0-based) of the examples read from the local file `source` sits, for error messages:
    "line 7" (1-based physical line on which the row starts: CSV/TSV records counted after quoted newlines and
    blank lines, JSON Lines, items of a top-level JSON list), else "record 8" (1-based: Parquet, Hub datasets,
    other formats). The index is into the split as read from the file, before a validation split is carved.

    Computed on demand by re-reading the file (cached per file version), so call it only to raise an error."""
    path = Path(source)
    try:
        stat = path.stat() if path.is_file() else None
    except OSError:
        stat = None
    if stat is not None:
        layout = _TABLE_LAYOUTS.get(str(path.resolve()))
        lines = _row_lines(str(path.resolve()), stat.st_size, stat.st_mtime_ns, *(layout or (None, True)))
        if lines is not None and 0 <= index < len(lines):
            return f"line {lines[index]}"
    return f"record {index + 1}"


@functools.lru_cache(maxsize=8)
def _row_lines(path_text: str, size: int, mtime_ns: int, read_as: str | None = None,
               header: bool = True) -> tuple[int, ...] | None:
    """The starting physical line of every row of a local table file (None where lines are unknowable).
    `size` and `mtime_ns` only key the cache; `read_as` (.csv/.tsv) and `header` say how a CSV/TSV file was read
    (data.delimiter, data.header_names)."""
    path = Path(path_text)
    kind, _ = split_suffix(path)
    try:
        if kind in (".csv", ".tsv"):
            records = _csv_records(path, read_text(path), read_as or kind)
            if header:
                next(records, None)  # the header
            return tuple(line for line, _ in records)
        if kind not in (".json", ".jsonl"):
            return None
        text = read_text(path)
        stripped = text.lstrip()
        if kind == ".json" and stripped.startswith("["):
            return _json_list_lines(text)
        if kind == ".json" and stripped.startswith("{"):
            try:
                json.loads(text)
                return None  # one object wrapping a list ({"data": [...]}): no line per row
            except json.JSONDecodeError:
                pass
        return tuple(number for number, _ in _jsonl_lines(text))
    except (AdaptError, ValueError):
        return None


_JSON_GAP = re.compile(r"[\s,]*")


def _json_list_lines(text: str) -> tuple[int, ...]:
    """Starting line of each item of a JSON text whose top level is a list."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line = text.count("\n", 0, pos) + 1
    lines = []
    while True:
        end = _JSON_GAP.match(text, pos).end()
        line += text.count("\n", pos, end)
        pos = end
        if pos >= len(text) or text[pos] == "]":
            return tuple(lines)
        lines.append(line)
        _, end = decoder.raw_decode(text, pos)
        line += text.count("\n", pos, end)
        pos = end


def read_parallel_lines(source_path: Path, source_lang: str | None, target_lang: str | None,
                        source_column: str, target_column: str) -> Dataset:
    """A parallel corpus in two plain line files: line i of `source_path` pairs with line i of the target file,
    whose name swaps the language suffix (train.en.gz -> train.de.gz, as Multi30k and WMT ship them).
    Returns the columns `source_column` and `target_column` (one row per line pair).

    Raises:
        AdaptError: no languages given, no `.source_lang` suffix in the file name, a missing target file, or
            files with different line counts.
    """
    if not (source_lang and target_lang):
        raise AdaptError(f"{source_path}: plain line files need task_options.source_lang and target_lang "
                         f"(e.g. en and de) to find the parallel target file; or give a CSV/JSONL file")
    suffix = re.compile(rf"\.{re.escape(source_lang)}(?=\.|$)")
    matches = list(suffix.finditer(source_path.name))
    if not matches:
        raise AdaptError(f"{source_path}: the file name has no '.{source_lang}' language suffix "
                         f"(task_options.source_lang); name it like train.{source_lang}.gz")
    last = matches[-1]
    target_path = source_path.with_name(
        source_path.name[:last.start()] + f".{target_lang}" + source_path.name[last.end():])
    sources = read_text(source_path).splitlines()
    targets = read_text(target_path).splitlines()
    if len(sources) != len(targets):
        raise AdaptError(f"{source_path} has {len(sources)} lines but {target_path} has {len(targets)}; "
                         "parallel files need one translation per line")
    return Dataset.from_dict({source_column: sources, target_column: targets})


def is_local(ref: str) -> bool:
    return Path(ref).exists() or any(s in TABLE_SUFFIXES for s in Path(ref).suffixes) or "/" in ref and ref.startswith((".", "/", "~"))


def is_plain_text_file(ref: str) -> bool:
    """A local file that is not a table (by suffix): plain text, which the language-modelling tasks read."""
    return is_local(ref) and split_suffix(Path(ref))[0] not in TABLE_SUFFIXES


def split_passages(text: str, min_chars: int) -> list[str]:
    """Cut text into passages of at least `min_chars` characters (the last may be shorter): after blank lines,
    or, in a text without blank lines (one sentence or document per line, as Penn Treebank files), after
    any line. The passages are exact substrings: joined, they give the text back."""
    lines = text.splitlines(keepends=True)
    blank_separated = any(not line.strip() for line in lines[:-1])
    passages, current, size = [], [], 0
    for line in lines:
        current.append(line)
        size += len(line)
        if size >= min_chars and (not line.strip() or not blank_separated):
            passages.append("".join(current))
            current, size = [], 0
    if current:
        passages.append("".join(current))
    return passages


def note_skipped_rows(source: str, rows: list[int], total: int, what: str, reason: str | None = None) -> None:
    """The stderr note of a task's task_options.drop_invalid_rows (the chat and DPO tasks): how many of the `total`
    rows of `source` were skipped (`rows`: 0-based indices; `what`: "pairs", "conversations"), where the first
    five sit (`row_location`) and, when given, why the first was (`reason`). Nothing when `rows` is empty."""
    if not rows:
        return
    where = ", ".join(row_location(source, i) for i in rows[:5]) + (", ..." if len(rows) > 5 else "")
    why = f"; the first: {reason}" if reason else ""
    print(f"note: {source}: skipped {len(rows)} of {total} {what} that cannot train ({where}; "
          f"task_options.drop_invalid_rows){why}", file=sys.stderr)


def document_column(ds: Dataset, column: str, source: str) -> Dataset:
    """The documents of a table for language modelling (the causal and masked LM tasks): `column` alone,
    renamed `text`, its blank rows (null, or only whitespace, e.g. the empty lines of Hub WikiText) dropped, as
    they are no documents. The caller has checked that `column` exists (its message names its own options).

    Raises:
        AdaptError: "<source>: line N: '<column>' is not text (...)" for the first value that is neither null
            nor a string."""
    ds = ds.select_columns([column])
    ds = ds.rename_column(column, "text") if column != "text" else ds
    for row, value in enumerate(ds["text"][:]):  # [:] reads the column at once
        if value is not None and not isinstance(value, str):
            raise AdaptError(f"{source}: {row_location(source, row)}: '{column}' is not text ({value!r:.40}); "
                             "give each document as a string")
    return ds.filter(lambda value: bool(value and value.strip()), input_columns="text")


def load_hub_split(ref: str, config: str | None, split: str) -> Dataset:
    """A split of a Hugging Face Hub dataset (needs network or a populated HF cache)."""
    from datasets import load_dataset

    try:
        return load_dataset(ref, config, split=split)
    except Exception as err:  # the Hub client raises many different types
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise AdaptError(
            f"could not load '{ref}' split '{split}' from the Hugging Face Hub ({reason}); "
            "check the dataset id and your connection, or point --data at a local file"
        ) from None


def check_not_empty(ds: Dataset, source: str) -> None:
    if len(ds) == 0:
        raise AdaptError(f"{source}: the split has no examples; give a file with at least one example")


# Raw columns that hold answers or bookkeeping rather than model input; every other text column is input.
NON_INPUT_COLUMNS = {"label", "labels", "tags", "target", "targets", "references", "answers", "id", "title"}


def _is_text(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def input_columns(ds: Dataset, group_column: str | None = None) -> list[str]:
    """Columns of text (or lists of words) that the model reads, in the order the task stores them (judged
    by the first row; `group_column`, e.g. a QA title, is bookkeeping)."""
    skip = NON_INPUT_COLUMNS | ({group_column} if group_column else set())
    first = ds[0]
    return [c for c in ds.column_names if c not in skip and _is_text(first[c])]


def check_texts(ds: Dataset, columns: list[str], source: str, shown: dict[str, str] | None = None) -> None:
    """Refuse the first example whose value in one of the input `columns` is null, not text, or only
    whitespace (a list of words counts as empty when it has no non-blank word). `shown` maps a column to
    the name the user gave it (data.columns), for the message.

    Raises:
        AdaptError: "<source>: line N: the 'text' column is empty; ..." (the row's physical line, see
            `row_location`)."""
    for column in columns:
        for index, value in enumerate(ds[column][:]):  # [:] reads the column at once
            if isinstance(value, list):
                empty = not any(isinstance(v, str) and v.strip() for v in value)
            elif value is None or isinstance(value, str):
                empty = value is None or not value.strip()
            else:
                name = (shown or {}).get(column, column)
                raise AdaptError(f"{source}: {row_location(source, index)}: the '{name}' column holds "
                                 f"{_json_kind(value)} ({value!r:.40}), not text; quote it as a string or map the "
                                 "text column with data.columns")
            if empty:
                name = (shown or {}).get(column, column)
                raise AdaptError(f"{source}: {row_location(source, index)}: the '{name}' column is empty; "
                                 "remove that row or fill it in (or map the right column with data.columns)")


def require_columns(ds: Dataset, names: list[str], source: str) -> None:
    for name in names:
        if name not in ds.column_names:
            raise AdaptError(
                f"{source}: no column '{name}' (columns: {', '.join(ds.column_names)}); "
                f"map it with data.columns (e.g. data.columns.text=sentence)"
            )


def carve_validation(ds: Dataset, fraction: float, seed: int, group_column: str | None = None,
                     source: str | None = None) -> tuple[Dataset, Dataset]:
    """Seeded train/validation split. With `group_column` whole groups (e.g. SQuAD articles) go to one side,
    so no group appears in both. `source` (the file or id the examples came from) names them in errors.

    Raises:
        AdaptError: fewer than 2 examples (or groups): "<source>: holds 1 example, too few ...", saying why when
            a plain-text file reads as one example because no blank line separates its lines."""
    where = source or "the training data"
    if len(ds) < 2:
        raise AdaptError(f"{where}: holds {len(ds)} example{'' if len(ds) == 1 else 's'}, too few to carve a "
                         f"validation split from (need at least 2){_one_block_cause(source) or '; add examples'} or "
                         "give --validation FILE")
    if group_column is None:
        parts = ds.train_test_split(test_size=fraction, seed=seed, shuffle=True)
        return parts["train"], parts["test"]
    import random

    groups = sorted(set(ds[group_column]))
    if len(groups) < 2:
        raise AdaptError(f"{where}: all {len(ds)} examples share one '{group_column}' ({str(groups[0])[:40]!r}), and "
                         "a validation split takes whole groups; give --validation FILE or examples of more groups")
    random.Random(seed).shuffle(groups)
    n_val = max(1, round(len(groups) * fraction))
    val_groups = set(groups[:n_val])
    membership = [g in val_groups for g in ds[group_column][:]]
    train_idx = [i for i, v in enumerate(membership) if not v]
    val_idx = [i for i, v in enumerate(membership) if v]
    return ds.select(train_idx), ds.select(val_idx)


def _one_block_cause(source: str | None) -> str:
    """' because ...' when `source` is a non-table text file (CoNLL, plain text) of several non-blank lines with
    no blank line between them, so the reader took it as one sentence/block; else ''."""
    path = Path(source) if source else None
    if path is None or not path.is_file() or split_suffix(path)[0] in TABLE_SUFFIXES:
        return ""
    try:
        lines = read_text(path).strip().splitlines()
    except AdaptError:
        return ""
    if len(lines) < 2 or any(not line.strip() for line in lines):
        return ""
    return (f": its {len(lines)} lines have no blank line between them, so they read as one sentence (CoNLL "
            "files separate sentences, and text files separate examples, with blank lines); add a blank line after "
            "each sentence")  # the caller appends " or give --validation FILE"


def fingerprint_source(ref: str) -> str:
    """Identity of a data source for the tokenization cache: path + size + mtime for files."""
    path = Path(ref)
    if path.exists():
        stat = path.stat()
        return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    if assets.is_embedded(ref):
        return f"{ref}:{assets.embedded_dataset_path(ref).stat().st_size}"
    return ref


def cached_map(key_parts: list[str], build: Callable[[], Dataset], enabled: bool = True) -> tuple[Dataset, bool]:
    """Return `build()`'s dataset, cached on disk under a hash of `key_parts`. Second identical runs load
    the tokenized features instead of re-tokenizing. Returns (dataset, was_cached)."""
    if not enabled:
        return build(), False
    digest = hashlib.sha256("\n".join(key_parts).encode()).hexdigest()[:24]
    target = assets.cache_dir() / "features" / digest
    if (target / "dataset_info.json").exists():
        return load_from_disk(str(target)), True
    ds = build()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{digest}-"))
    try:
        ds.save_to_disk(str(tmp))
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "dataset_info.json").exists():
            raise
    return load_from_disk(str(target)), False


def token_ids(features: Dataset, extra: list[int] = ()) -> "torch.Tensor":
    """The sorted distinct token ids of the features' `input_ids` (and other `*_input_ids` columns), plus `extra`
    (e.g. special tokens)."""
    import numpy as np
    import pyarrow.compute as pc
    import torch

    # every token-id column (`input_ids`, and e.g. DPO's `rejected_input_ids`); the arrow view honours a selection
    columns = [c for c in features.column_names if c == "input_ids" or c.endswith("_input_ids")]
    table = features.with_format("arrow")
    ids = np.unique(np.concatenate([pc.unique(pc.list_flatten(table[c])).to_numpy(zero_copy_only=False)
                                    for c in columns]))
    return torch.from_numpy(np.union1d(ids, np.asarray(list(extra), dtype=ids.dtype)).astype(np.int64))
