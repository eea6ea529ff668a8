"""Candidate 2b: polars for the hot path (named so as not to shadow the package).

``polars.read_csv`` reads the whole file (polars 2 removed ``read_csv_batched``),
every column as text; per slice of 50,000 rows, expressions do what ``arrow.py``
does with pyarrow's kernels, with the same regular expressions: the identity text
by ``concat_str`` with 0x1f and ``hashlib.md5`` per row in Python (polars has no
MD5 expression; its ``hash`` is not MD5), the ISO timestamps by ``str.replace``
with parse.py's pattern, the checks of integers and IPv4 addresses,
``rcpt_domain``, and the COPY text by ``write_csv`` (tab, never quote, no header).
The same limits as ``arrow.py``: no positions, rejects, headers in the middle,
``extra`` or other timestamp forms.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import time
from pathlib import Path
from typing import Any

from arrow import _BIGINT, _CANON, _INT, _IPV4
from common import SOURCE, Check, Timer, emit


def convert(frame: Any, pl: Any, fields: Any) -> tuple[list[str], Any, int]:
    """(record ids, the 42 columns of pmta.events as a frame, values left to Python)."""
    lower = {n.lower(): n for n in frame.columns}
    n = frame.height

    def col(name: str) -> Any:
        real = lower.get(name.lower())
        return pl.col(real) if real is not None else pl.lit("")

    known = [col(f.name) for f in fields.KNOWN_FIELDS]
    joined = frame.select(
        pl.concat_str([col("type"), col("timeLogged"), *known], separator="\x1f")
    ).to_series()
    md5 = hashlib.md5
    ids = [md5(s.encode(), usedforsecurity=False).hexdigest() for s in joined.to_list()]

    def iso(e: Any) -> Any:
        return e.str.replace(_CANON, "${1}T${2}:${3}:${4}${5}${6}:${7}").str.replace(
            "-00:00$", "+00:00"
        )

    exprs, checks = [], []
    for f, e in zip(fields.KNOWN_FIELDS, known, strict=True):
        present = f.name.lower() in lower
        if f.type == "time" and present:
            exprs.append(iso(e).alias(f.column))
            checks.append((e.str.contains(_CANON) | (e == "")).alias(f.column))
        elif f.type in ("int", "bigint", "inet") and present:
            pattern = {"int": _INT, "bigint": _BIGINT, "inet": _IPV4}[f.type]
            exprs.append(e.alias(f.column))
            checks.append(e.str.contains(pattern).alias(f.column))
        else:
            exprs.append(e.alias(f.column))
    tail = col("rcpt").str.extract(r"@([^@]*)$", 1)
    domain = tail.str.strip_chars().str.strip_chars(">").str.to_lowercase().alias("rcpt_domain")
    out = frame.select(
        iso(col("timeLogged")).alias("time_logged"),
        pl.Series("record_id", ids),
        col("type").alias("record_type"),
        pl.lit(SOURCE).alias("source"),
        *exprs,
        domain,
        pl.lit("").alias("extra"),
    )
    ok = frame.select(checks).sum().sum_horizontal().item() if checks else 0
    frame.select(col("timeLogged").str.to_datetime("%Y-%m-%d %H:%M:%S%z").dt.date())
    return ids, out, n * len(checks) - ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", type=Path)
    p.add_argument("--check", type=Path)
    a = p.parse_args()
    t0 = time.perf_counter()
    import polars as pl

    import_s = time.perf_counter() - t0
    from pmta_pipe import fields

    check = Check() if a.check else None
    records = left = 0
    with a.file.open(newline="") as f:
        header = next(csv.reader(f))
    with Timer() as t:
        whole = pl.read_csv(a.file, schema_overrides=dict.fromkeys(header, pl.String))
        whole = whole.with_columns(pl.all().fill_null(""))  # an empty field reads as null
        for start in range(0, whole.height, 50_000):
            for frame in (whole.slice(start, 50_000),):
                ids, out, n_left = convert(frame, pl, fields)
                buf = io.BytesIO()
                out.write_csv(buf, separator="\t", quote_style="never", include_header=False)
                records += len(ids)
                left += n_left
                if check is not None:
                    check.add(ids, buf.getvalue().decode())
    if check is not None and a.check:
        check.write(a.check)
    emit("polars", records=records, cpu_s=t.cpu, wall_s=t.wall, import_s=import_s,
         left_to_python=left)  # fmt: skip


if __name__ == "__main__":
    main()
