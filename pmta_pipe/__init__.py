"""pmta-pipe: load PowerMTA accounting records into PostgreSQL.

The data flow, module by module (see docs/architecture.md):

    stdin / files / spool -> ``reader`` + ``framing`` (record boundaries) -> ``spool``
        (durable journal, for the pipe) -> ``pipeline`` (parse with ``parse`` +
        ``values`` + ``fields``; count ``rollups``; hand to a loader thread;
        acknowledge) -> ``load`` (COPY + rollups + rejects + bookkeeping, one
        transaction per batch; ``faults`` decides what an error means)
        -> PostgreSQL schema ``pmta`` (``sql/migrations``, ``sql/views``)

Commands, each feeding the one ``pipeline``: ``ingest`` (the pipe), ``importer``
(files; with ``inputs``, ``compression``, ``ledger``, ``progress``), ``replay`` (the
spool), ``rejects`` (retry); and ``status`` (health), ``report`` (with ``table``),
``prune`` (retention). ``cli`` is a thin layer over these modules and the only one
that prints; ``config`` resolves settings, ``db`` and ``embedded`` find the database,
``migrate`` keeps the schema current, ``errors`` holds the error hierarchy and exit
codes.
docs/architecture.md has one line per module.
"""

from __future__ import annotations

__version__ = "0.1.0"
