"""Input files -> raw rows, and rows -> deterministic Parquet. Pure pyarrow/csv/json: no ray import.

Every raw row is {raw: str, source: "path:line", error: str}: JSONL lines as they are, CSV and Parquet
rows re-encoded as JSON objects. A line that is not UTF-8 or a CSV row with the wrong number of fields
becomes a row with `error` set, so it is rejected with a reason rather than lost.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from app.config import UserError
from app.runinfo import sha256_file

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def input_files(path: str, fmt: str | None) -> tuple[list[str], str | None]:
    """Expand a file, folder or glob (local, or a URI that pyarrow's filesystems understand) into
    (files, format). Every file is read, each by the format its extension names (`file_format`);
    `fmt` (input.format) covers files whose extension names none. A folder's files of unknown
    extensions, and files whose extension contradicts an explicit `fmt`, stop the job with their list:
    nothing in the input is skipped without a word."""
    if "://" in path:
        from pyarrow import fs
        filesystem, root = fs.FileSystem.from_uri(path)
        info = filesystem.get_file_info(root)
        infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True)) \
            if info.type == fs.FileType.Directory else [info]
        scheme = path.split("://")[0]
        files = sorted(f"{scheme}://{i.path}" for i in infos if i.type == fs.FileType.File)
    elif any(ch in path for ch in "*?["):
        files = sorted(glob.glob(path, recursive=True))
    elif os.path.isdir(path):
        files = sorted(str(p) for p in Path(path).rglob("*") if p.is_file() and not p.name.startswith("."))
    elif os.path.isfile(path):
        files = [path]
    else:
        raise UserError(f"input path not found: {path}")
    if not files:
        raise UserError(f"no input files in {path}")
    unknown = [f for f in files if Path(f).suffix not in FORMATS]
    if unknown and fmt is None:
        raise UserError(f"cannot tell the format of {len(unknown)} file(s) in {path}: {unknown[:5]}; set "
                        "input.format (jsonl, csv or parquet) or remove them")
    if fmt is not None and (other := [f for f in files if FORMATS.get(Path(f).suffix, fmt) != fmt]):
        raise UserError(f"input.format is {fmt} but {len(other)} file(s) in {path} are not: {other[:5]}; "
                        "remove input.format to read each file by its extension")
    return files, fmt


def file_format(path: str, fmt: str | None) -> str:
    """The parser for one file: its extension's format, else input.format."""
    return FORMATS.get(Path(path).suffix) or fmt


def _row(raw: str, source: str, error: str = "") -> dict:
    return {"raw": raw, "source": source, "error": error}


def jsonl_rows(data: bytes, path: str) -> list[dict]:
    rows = []
    for i, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue  # blank lines are not records
        try:
            rows.append(_row(line.decode("utf-8").strip(), f"{path}:{i:09d}"))
        except UnicodeDecodeError as exc:
            rows.append(_row(line.decode("utf-8", "replace").strip(), f"{path}:{i:09d}",
                             f"undecodable: not UTF-8 at byte {exc.start}"))
    return rows


def csv_rows(data: bytes, path: str) -> list[dict]:
    text = data.decode("utf-8", "replace")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    rows = []
    for row in reader:
        line = reader.line_num
        source = f"{path}:{line:09d}"
        if not any(cell.strip() for cell in row):
            continue
        if header is None or len(row) != len(header):
            rows.append(_row(json.dumps(row, ensure_ascii=False), source,
                             f"malformed: {len(row)} fields, header has {len(header or [])}"))
        else:
            rows.append(_row(json.dumps(dict(zip(header, row)), ensure_ascii=False), source,
                             "undecodable: not UTF-8" if "\ufffd" in "".join(row) else ""))
    return rows


def parquet_rows(data: bytes, path: str) -> list[dict]:
    table = pq.read_table(pa.BufferReader(data))
    return [_row(json.dumps(r, ensure_ascii=False, default=str), f"{path}:{i:09d}")
            for i, r in enumerate(table.to_pylist(), 1)]


PARSERS = {"jsonl": jsonl_rows, "csv": csv_rows, "parquet": parquet_rows}

def write_parquet(rows: list[dict], schema: pa.Schema, folder: Path, rows_per_file: int = 100_000) -> list[Path]:
    """Rows (already in their final order) -> folder/part-00000.parquet...; same rows, same bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, start in enumerate(range(0, max(len(rows), 1), rows_per_file)):
        path = folder / f"part-{k:05d}.parquet"
        table = pa.Table.from_pylist(rows[start:start + rows_per_file], schema=schema)
        pq.write_table(table, path, compression="zstd", write_statistics=False)
        paths.append(path)
    return paths


def file_hashes(paths: list[Path], root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in paths}
