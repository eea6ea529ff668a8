"""Candidate 4, finished: the compiled parser as the package builds it (``pmta_pipe/_fastpath.c``).

Framing (``reader.iter_batches``), ``RecordParser(compiled=True).parse`` and the
batch's COPY data (``"".join(parsed.lines)``, which the loader writes as it is) per
batch of 5,000 records: the same work as the baseline (``RecordParser.parse`` on the
pure path + ``load.render_copy``), with the split, identity, timestamps, typed
checks, domain, ``extra`` and COPY line of every ordinary record in C and every
other record read by the pure-Python parser in its place.

The extension is the one ``pip install -e .`` built in place (``make venv``); the
script stops when it is not built. The prototype that measured the split, identity
and COPY text alone in C (``bench/candidates/_fastpath.c`` until it became
``pmta_pipe/_fastpath.c``) is in the history at 0cdb7c8.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
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
    t0 = time.perf_counter()
    from pmta_pipe import fastpath

    import_s = time.perf_counter() - t0
    if not fastpath.available():
        raise SystemExit("the compiled parser is not built: run make venv (pip install -e .)")
    from pmta_pipe.parse import RecordParser

    check = Check() if a.check else None
    parser = RecordParser(SOURCE, compiled=True)
    records = rejects = csv_batches = 0
    with Timer() as t:
        for batch in record_batches(a.file):
            out = parser.parse(batch, RECEIVED_AT)
            data = "".join(out.lines)
            records += len(out.ids)
            rejects += len(out.rejects)
            csv_batches += out.copy_format == "csv"
            if check is not None:
                check.add(out.ids, data)
    if check is not None and a.check:
        check.write(a.check, rejects=rejects, csv_batches=csv_batches)
    name = "compiled parser" + (f" gc{a.gc_threshold}" if a.gc_threshold else "")
    emit(name, records=records, cpu_s=t.cpu, wall_s=t.wall, import_s=import_s)


if __name__ == "__main__":
    sys.exit(main())
