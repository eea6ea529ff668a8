"""Candidate 1, the baseline: today's pure-Python hot path.

Framing (``reader.iter_batches``), the pure-Python ``RecordParser.parse`` and
``load.render_copy`` per batch of 5,000 records, as ingest and import ran them before
the compiled parser (the rollups and the journal are not part of this measurement).

``--gc-threshold N``: the same code with the cyclic garbage collector's first
threshold raised to N (default 700): a batch makes about 5,000 row tuples and the
collector runs over them again and again, a cost no compiled parser would remove.
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

from common import RECEIVED_AT, SOURCE, Check, Timer, emit, record_batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", type=Path)
    p.add_argument("--check", type=Path)
    p.add_argument("--gc-threshold", type=int)
    a = p.parse_args()
    if a.gc_threshold:
        gc.set_threshold(a.gc_threshold, *gc.get_threshold()[1:])
    from pmta_pipe.load import render_copy
    from pmta_pipe.parse import RecordParser

    check = Check() if a.check else None
    parser = RecordParser(SOURCE, compiled=False)  # the pure-Python path, the reference
    records = rejects = 0
    csv_batches = 0
    with Timer() as t:
        for batch in record_batches(a.file):
            out = parser.parse(batch, RECEIVED_AT)
            fmt, data = render_copy(out.rows)
            records += len(out.rows)
            rejects += len(out.rejects)
            csv_batches += fmt == "csv"
            if check is not None:
                check.add([r[1] for r in out.rows], data)
    name = "baseline" + (f" gc{a.gc_threshold}" if a.gc_threshold else "")
    if check is not None and a.check:
        check.write(a.check, rejects=rejects, csv_batches=csv_batches)
    emit(name, records=records, cpu_s=t.cpu, wall_s=t.wall, import_s=0.0)


if __name__ == "__main__":
    main()
