"""Candidate 4: a compiled extension for the inner loops (``_fastpath.c``, CPython API).

The profile of the baseline (``driver.py --profile``) puts most of the hot path in
the CSV split and the identity (about 9 of 21 µs a record with the collector off)
and in the row tuples and COPY text (about 4 µs). ``_fastpath.c`` does those two
in C; this script builds it into a temporary folder (``cc``, no setuptools) and
measures, on the same batches:

* ``part``: the split and identity alone, C against Python (decode, ``csv.reader``,
  ``zip``, identity join, ``md5``), and the COPY text alone, C from the columns
  against Python (row tuples, ``render_copy``);
* the whole hot path with those two parts in C and the rest (timestamps, typed
  checks, domains) in Python as parse.py does it: ``hybrid``. A batch the C code
  leaves records of (``slow``), or with values that need ``extra``, goes to
  ``RecordParser`` whole, so the output is always the parser's.

``--build-dir DIR`` reuses a build (the driver builds once for all rounds).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import subprocess
import sys
import sysconfig
import tempfile
import time
from itertools import chain
from operator import itemgetter
from pathlib import Path
from types import ModuleType
from typing import Any

from common import HERE, RECEIVED_AT, SOURCE, Check, Timer, emit, record_batches

SOURCE_C = HERE / "_fastpath.c"


def build(build_dir: Path) -> Path:
    """Compile ``_fastpath.c`` into ``build_dir``; return the shared object's path."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    target = build_dir / f"_fastpath{suffix}"
    if not target.exists() or target.stat().st_mtime < SOURCE_C.stat().st_mtime:
        include = sysconfig.get_paths()["include"]
        cmd = ["cc", "-O2", "-shared", "-fPIC", f"-I{include}", str(SOURCE_C)]
        subprocess.run([*cmd, "-o", str(target), "-lm"], check=True)
    return target


def load(target: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("_fastpath", target)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Hybrid:
    """The hot path with the split, identity and COPY text in C."""

    def __init__(self, fast: ModuleType) -> None:
        from pmta_pipe.parse import RecordParser

        self.fast = fast
        self.parser = RecordParser(SOURCE)  # the header, and every batch C cannot take
        self.fallback_batches = 0
        self._mapped: Any = None

    def _mapping(self) -> tuple[Any, ...]:
        h = self.parser.header
        if self._mapped is None or self._mapped[0] is not h:
            extras = tuple(sorted(((i, k.encode()) for i, k in h.extras), key=itemgetter(1)))
            self._mapped = (h, (h.width, h.time_logged, tuple(h.known), extras))
        return self._mapped[1]  # type: ignore[no-any-return]

    def batch(self, records: list[bytes]) -> tuple[list[str], bytes]:
        """(record ids, COPY text) of one batch."""
        from pmta_pipe.framing import is_header_record

        if records and is_header_record(records[0]):
            self.parser.parse(records[:1], RECEIVED_AT)  # a leading header: take it
            records = records[1:]
        columns, ids, slow = self.fast.split_identify(records, *self._mapping())
        out = None if slow else self._convert(columns, ids)
        if out is None:
            return self._python(records)
        return out

    def _python(self, records: list[bytes]) -> tuple[list[str], bytes]:
        from pmta_pipe.load import render_copy

        self.fallback_batches += 1
        parsed = self.parser.parse(records, RECEIVED_AT)
        fmt, data = render_copy(parsed.rows)
        assert fmt == "text", "a CSV batch: the check compares text only"
        return [r[1] for r in parsed.rows], data.encode()

    def _convert(self, columns: list[list[str]], ids: list[str]) -> tuple[list[str], bytes] | None:
        """parse.py's column pass for a batch that needs no ``extra``; None otherwise."""
        from pmta_pipe import values
        from pmta_pipe.parse import _CONVERTERS, _I_RCPT, _INT_COLUMN, _domain_of, _rpartition_at

        h = self.parser.header
        n = len(ids)
        if not n:
            return [], b""
        columns.append([""] * n)
        if any(any(columns[i]) for i, _ in h.extras):
            return None  # values for ``extra``: left to the parser
        times = list(map(values.parse_time, columns[h.time_logged]))
        if None in times:
            return None
        vals: list[Any] = [columns[i] for i in h.known]
        for k, _name, type_ in h.typed:
            column = vals[k]
            pattern = _INT_COLUMN.get(type_)
            if pattern is not None and pattern.fullmatch("\x00".join(column)):
                continue
            converted = list(map(_CONVERTERS[type_], column))
            if None in converted:
                return None
            vals[k] = converted
        domains = [_domain_of(p[2]) if p[1] else "" for p in map(_rpartition_at, vals[_I_RCPT])]
        logged = [t[0] for t in times]  # type: ignore[index]
        sources = [SOURCE] * n
        data = self.fast.render_columns(
            [logged, ids, columns[0], sources, *vals, domains, columns[-1]]
        )
        return (ids, data) if data is not None else None


def python_split_identify(records: list[bytes], h: Any) -> tuple[list[Any], list[str]]:
    """The same part in Python, as parse.py does it (decode, csv, zip, join, md5)."""
    texts = [r.decode("utf-8", "replace") for r in records]
    rows = [r for r in csv.reader(chain(texts, ("",))) if len(r) == h.width and r[0] != "type"]
    cols: list[Any] = list(zip(*rows, strict=True))
    cols.append(("",) * len(rows))
    known = [cols[i] for i in h.known]
    idents = map("\x1f".join, zip(cols[0], cols[h.time_logged], *known, strict=True))
    md5 = hashlib.md5
    return cols, [md5(s.encode(), usedforsecurity=False).hexdigest() for s in idents]


def measure_parts(fast: ModuleType, batches: list[list[bytes]]) -> dict[str, float]:
    """µs per record of each part, C and Python, on the same batches (best of 3 rounds).

    Each batch's output is dropped before the next one, as the pipeline does; only
    the clock runs across batches."""
    from pmta_pipe.load import render_copy
    from pmta_pipe.parse import Header

    h = Header(next(csv.reader([batches[0][0].decode()])))
    batches = [batches[0][1:], *batches[1:]]
    mapping = (h.width, h.time_logged, tuple(h.known), ())
    n = sum(map(len, batches))
    took: dict[str, float] = {}
    equal = {"split+identity equal": True, "COPY text equal": True}
    clock = time.process_time

    for _ in range(3):
        spent: dict[str, float] = {}
        for b in batches:
            t0 = clock()
            cols, ids, _slow = fast.split_identify(b, *mapping)
            t1 = clock()
            py_cols, py_ids = python_split_identify(b, h)
            t2 = clock()
            spent["split+identity C"] = spent.get("split+identity C", 0.0) + t1 - t0
            spent["split+identity Python"] = spent.get("split+identity Python", 0.0) + t2 - t1
            equal["split+identity equal"] &= ids == py_ids and all(
                list(p) == c for p, c in zip(py_cols, cols, strict=False)
            )
            del py_cols, py_ids
            empty = [""] * len(ids)
            known = [cols[i] if i < h.width else empty for i in h.known]
            table = [cols[1], ids, cols[0], [SOURCE] * len(ids), *known, cols[4], empty]
            t0 = clock()
            c_text = fast.render_columns(table)
            t1 = clock()
            py_text = render_copy(list(zip(*table, strict=True)))[1]
            t2 = clock()
            spent["COPY text C"] = spent.get("COPY text C", 0.0) + t1 - t0
            spent["COPY text Python"] = spent.get("COPY text Python", 0.0) + t2 - t1
            equal["COPY text equal"] &= c_text.decode() == py_text
        for name, seconds in spent.items():
            took[name] = min(took.get(name, seconds), seconds)
    best = {name: seconds / n * 1e6 for name, seconds in took.items()}
    return {**best, **{k: float(v) for k, v in equal.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", type=Path)
    p.add_argument("--check", type=Path)
    p.add_argument("--build-dir", type=Path)
    p.add_argument("--parts", action="store_true", help="measure the parts alone")
    a = p.parse_args()
    build_dir = a.build_dir or Path(tempfile.mkdtemp(prefix="pmta-fastpath-"))
    t0 = time.perf_counter()
    target = build(build_dir)
    t1 = time.perf_counter()
    fast = load(target)
    import_s = time.perf_counter() - t1
    if a.parts:
        emit("compiled parts", **measure_parts(fast, list(record_batches(a.file))))
        return
    check = Check() if a.check else None
    hybrid = Hybrid(fast)
    records = 0
    with Timer() as t:
        for batch in record_batches(a.file):
            ids, data = hybrid.batch(batch)
            records += len(ids)
            if check is not None:
                check.add(ids, data.decode())
    if check is not None and a.check:
        check.write(a.check, fallback_batches=hybrid.fallback_batches)
    emit(
        "compiled (C split+identity+COPY text)",
        records=records,
        cpu_s=t.cpu,
        wall_s=t.wall,
        import_s=import_s,
        build_s=t1 - t0,
        fallback_batches=hybrid.fallback_batches,
    )


if __name__ == "__main__":
    sys.exit(main())
