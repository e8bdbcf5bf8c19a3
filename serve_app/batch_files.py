"""The two files of `rayruns batch`: requests read as a stream, results appended line by line.

An id is compared as its JSON text, so that `3` and `"3"` stay two ids, as they do in the files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import ValidationError

from rayruns.actors.batch import BatchItem, ItemId
from rayruns.actors.handle import RunResult
from rayruns.actors.spec import describe
from rayruns.serve_app.run_body import RunBody

# Records with these statuses are kept on a resume; any other record of an input id is re-run.
KEPT_STATUSES = frozenset({"completed", "failed"})


class BatchFileError(Exception):
    """An input or output file that the batch cannot use at all (a usage error)."""


def id_key(id: ItemId) -> str:
    return json.dumps(id)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their 1-based numbers, read one at a time."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                yield number, raw


def _split(number: int, raw: bytes) -> tuple[ItemId, dict[str, Any] | None, str]:
    """The line's id and the rest of its object, or its id and what is wrong with it."""
    try:
        data = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        return number, None, f"not JSON: {exc}"
    if not isinstance(data, dict):
        return number, None, f"not a JSON object but {type(data).__name__}"
    id = data.pop("id", number)
    if isinstance(id, bool) or not isinstance(id, str | int):
        return number, None, "id must be a string or an integer"
    return id, data, ""


def scan_ids(path: Path) -> set[str]:
    """Every input id (as `id_key`); raises BatchFileError listing duplicates."""
    first: dict[str, int] = {}
    duplicates: list[str] = []
    for number, raw in _lines(path):
        id, _, _ = _split(number, raw)
        key = id_key(id)
        if key in first:
            duplicates.append(f"id {key} on line {number} (first on line {first[key]})")
        else:
            first[key] = number
    if duplicates:
        shown = "; ".join(duplicates[:10])
        more = f"; and {len(duplicates) - 10} more" if len(duplicates) > 10 else ""
        raise BatchFileError(f"{path}: duplicate ids: {shown}{more}")
    return set(first)


def read_items(path: Path, skip: set[str]) -> Generator[BatchItem, None, None]:
    """The input's items in order, except those whose id is in `skip`. Each line is validated
    here, so a bad one never takes a run slot."""
    for number, raw in _lines(path):
        id, body, problem = _split(number, raw)
        if id_key(id) in skip:
            continue
        where = f"line {number}"
        if body is None:
            yield BatchItem(number, id, None, problem, where)
            continue
        try:
            spec = RunBody.model_validate(body).only_spec()
        except ValidationError as exc:
            yield BatchItem(number, id, None, describe(exc), where)
        else:
            yield BatchItem(number, id, spec, where=where)


class ResultLog:
    """OUT: one JSON line per ended run, each written whole and flushed as the run ends."""

    def __init__(self, path: Path, done: dict[str, str], dropped_tail: bool) -> None:
        self.path = path
        self.done = done  # id key -> status, of the records kept from an earlier invocation
        self.dropped_tail = dropped_tail
        self._file: BinaryIO = path.open("ab")

    @classmethod
    def open(cls, path: Path, input_ids: set[str]) -> ResultLog:
        """Repair OUT (a partial last line is cut off) and drop the records of input ids that
        will run again; raises BatchFileError if OUT is not a results file."""
        if not path.parent.is_dir():
            raise BatchFileError(f"{path.parent} is not a directory")
        path.touch()
        done: dict[str, str] = {}
        rerun = 0
        whole = 0  # bytes up to the end of the last complete line
        with path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                if not raw.endswith(b"\n"):
                    break
                whole += len(raw)
                if not raw.strip():
                    continue
                key, status = _record_key(path, number, raw)
                if status in KEPT_STATUSES:
                    done[key] = status
                elif key in input_ids:
                    rerun += 1
        dropped_tail = whole < path.stat().st_size
        if dropped_tail:
            os.truncate(path, whole)
        if rerun:
            _drop_records(path, input_ids)
        return cls(path, done, dropped_tail)

    def write(self, result: RunResult) -> None:
        line = result.model_dump_json(exclude={"error": {"detail"}}) + "\n"
        self._file.write(line.encode())
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _record_key(path: Path, number: int, raw: bytes) -> tuple[str, str]:
    try:
        record = json.loads(raw)
        return id_key(record["id"]), str(record["status"])
    except (ValueError, TypeError, KeyError):
        raise BatchFileError(f"{path} line {number} is not a result record") from None


def _drop_records(path: Path, input_ids: set[str]) -> None:
    """Rewrite OUT without the unfinished records of ids about to run again; atomic."""
    tmp = path.with_name(path.name + ".tmp")
    with path.open("rb") as src, tmp.open("wb") as dst:
        for number, raw in enumerate(src, start=1):
            if raw.strip():
                key, status = _record_key(path, number, raw)
                if status not in KEPT_STATUSES and key in input_ids:
                    continue
            dst.write(raw)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, path)
