"""``pmta-pipe ingest`` with parsing overlapped with loading, for the benchmark.

``python bench/pipelined_ingest.py DSN SOURCE [BATCH_ROWS] < acct.csv``

The same reader, parser and loader as ``pmta_pipe.ingest.run_ingest``, with one
difference: batches go to a ``load.PipelinedLoader`` (the loader in a thread of its
own behind a queue of one batch) instead of ``Loader.load``, so that the main
thread parses batch N+1 while batch N is loaded, and the reader may be at most
``RAW_BATCHES_AHEAD`` batches ahead (bounded memory). This is how ``run_ingest`` calls
the loader once it uses ``PipelinedLoader``; the benchmark measures both.
"""

from __future__ import annotations

import queue
import sys
import time
from datetime import datetime, timezone

from pmta_pipe.ingest import migrating_loader
from pmta_pipe.load import PipelinedLoader
from pmta_pipe.parse import RecordParser
from pmta_pipe.reader import RawBatch, StreamReader

#: raw batches the reader may read ahead of the parser (ingest.py allows 64): with
#: one parsed batch queued and one loading, this bounds memory whatever the input size
RAW_BATCHES_AHEAD = 4


def main() -> None:
    dsn, source = sys.argv[1], sys.argv[2]
    batch_rows = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    started = time.monotonic()
    pending: queue.Queue[RawBatch | None] = queue.Queue(maxsize=RAW_BATCHES_AHEAD)
    reader = StreamReader(0, pending.put, batch_rows=batch_rows, batch_seconds=1.0)
    reader.start()
    parser = RecordParser(source)
    loader = PipelinedLoader(migrating_loader(dsn), depth=1)
    try:
        while True:
            raw = pending.get()
            if raw is None:
                break
            batch = parser.parse(raw.records, raw.received_at or datetime.now(timezone.utc))
            if batch.records:
                loader.submit(batch, parser.header_line)
    finally:
        reader.request_stop()
        total = loader.close()
    reader.join()
    print(
        f"done: {total.records} records, {total.inserted} inserted, {total.duplicates} "
        f"duplicates, {total.rejected} rejected in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
