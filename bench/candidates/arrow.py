"""Candidate 2a: pyarrow's CSV reader and compute kernels for the hot path.

``pyarrow.csv.open_csv`` reads the file in blocks of about 2 MB (every column as
text, quoted line breaks allowed); per block, compute kernels do what parse.py does
for the common case:

* identity: ``binary_join_element_wise`` of type, timeLogged and the known fields
  with 0x1f; pyarrow has no MD5 kernel, so the digest is ``hashlib.md5`` per row in
  Python (over ``to_pylist()``);
* timestamps: PowerMTA's form checked by parse.py's regular expression and rewritten
  to parse.py's ISO text by ``replace_substring_regex`` (a zero offset as ``+00:00``);
  ``strptime`` for the UTC day;
* integers and IPv4 addresses checked by regular expressions (a value that fails,
  or an IPv6 address that Python would rewrite, would go back to Python: counted);
* ``rcpt_domain`` by ``extract_regex``, trims and ``utf8_lower``;
* the COPY text by ``pyarrow.csv.write_csv`` (tab, no quoting, no header).

What it cannot do as parse.py does: record positions, rejects (a malformed row
fails the block), header lines in the middle of the input, ``extra``, and the other
timestamp forms; those need the Python parser.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import time
from pathlib import Path
from typing import Any

from common import SOURCE, Check, Timer, emit

_CANON = (
    r"^(\d{4}-\d\d-\d\d)[ T]([01]\d|2[0-3]):([0-5]\d):([0-5]\d)([+-])([01]\d|2[0-3]):?([0-5]\d)$"
)
_INT = r"^(?:0|-?[1-9][0-9]{0,8})?$"
_BIGINT = r"^(?:0|-?[1-9][0-9]{0,17})?$"
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = rf"^(?:{_OCTET}(?:\.{_OCTET}){{3}})?$"


def convert(table: Any, pa: Any, pc: Any, fields: Any) -> tuple[list[str], Any, int]:
    """(record ids, the 42 columns of pmta.events as an arrow table, values left to Python)."""
    names = table.column_names
    lower = {n.lower(): i for i, n in enumerate(names)}
    n = table.num_rows
    empty = pa.scalar("", pa.string())
    cols = [table.column(i) for i in range(len(names))]
    known = [cols[lower[f.name.lower()]] if f.name.lower() in lower else empty
             for f in fields.KNOWN_FIELDS]  # fmt: skip
    types, logged = cols[0], cols[lower["timelogged"]]
    joined = pc.binary_join_element_wise(types, logged, *known, "\x1f")
    md5 = hashlib.md5
    ids = [md5(s.encode(), usedforsecurity=False).hexdigest() for s in joined.to_pylist()]
    left = 0

    def iso(col: Any) -> Any:
        nonlocal left
        ok = pc.or_(pc.match_substring_regex(col, _CANON), pc.equal(col, ""))
        left += n - pc.sum(ok.cast(pa.int64())).as_py()
        text = pc.replace_substring_regex(col, _CANON, r"\1T\2:\3:\4\5\6:\7")
        return pc.replace_substring_regex(text, r"-00:00$", "+00:00")

    def checked(col: Any, pattern: str) -> Any:
        nonlocal left
        ok = pc.match_substring_regex(col, pattern)
        left += n - pc.sum(ok.cast(pa.int64())).as_py()
        return col

    vals = []
    for f, col in zip(fields.KNOWN_FIELDS, known, strict=True):
        if col is empty:
            vals.append(pa.nulls(n, pa.string()))
        elif f.type == "time":
            vals.append(iso(col))
        elif f.type in ("int", "bigint"):
            vals.append(checked(col, _INT if f.type == "int" else _BIGINT))
        elif f.type == "inet":
            vals.append(checked(col, _IPV4))
        else:
            vals.append(col)
    logged_iso = iso(logged)
    pc.strptime(logged, format="%Y-%m-%d %H:%M:%S%z", unit="s")  # the UTC day, as parse.py
    rcpt = known[fields.KNOWN_INDEX["rcpt"]]
    tail = pc.struct_field(pc.extract_regex(rcpt, r"@(?P<d>[^@]*)$"), [0])
    domain = pc.utf8_lower(pc.utf8_trim(pc.utf8_trim_whitespace(tail), characters=">"))
    out = pa.table(
        [logged_iso, pa.array(ids), types, pa.repeat(pa.scalar(SOURCE), n), *vals, domain,
         pa.nulls(n, pa.string())],
        names=list(fields.EVENT_COLUMNS),
    )  # fmt: skip
    return ids, out, left


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", type=Path)
    p.add_argument("--check", type=Path)
    a = p.parse_args()
    t0 = time.perf_counter()
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    import_s = time.perf_counter() - t0
    from pmta_pipe import fields

    check = Check() if a.check else None
    records = left = 0
    read = pcsv.ReadOptions(block_size=2 << 20)
    parse = pcsv.ParseOptions(newlines_in_values=True)
    with a.file.open(newline="") as f:
        header = next(csv.reader(f))  # every column as text: its names come first
    conv = pcsv.ConvertOptions(
        column_types={name: pa.string() for name in header}, strings_can_be_null=False
    )
    write = pcsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    with Timer() as t, pcsv.open_csv(a.file, read_options=read, parse_options=parse,
                       convert_options=conv) as reader:  # fmt: skip
        for block in reader:
            table = pa.Table.from_batches([block])
            ids, out, n_left = convert(table, pa, pc, fields)
            sink = pa.BufferOutputStream()
            pcsv.write_csv(out, sink, write_options=write)
            data = sink.getvalue()
            records += len(ids)
            left += n_left
            if check is not None:
                check.add(ids, data.to_pybytes().decode())
    if check is not None and a.check:
        check.write(a.check)
    emit("pyarrow", records=records, cpu_s=t.cpu, wall_s=t.wall, import_s=import_s,
         left_to_python=left)  # fmt: skip


if __name__ == "__main__":
    main()
