"""pmta-pipe: load PowerMTA accounting records into PostgreSQL.

The data flow, module by module (see docs/architecture.md):

    stdin / files -> ``reader`` + ``framing`` (record boundaries) -> ``spool`` (durable
        journal) -> ``parse`` + ``values`` + ``fields`` (header mapping, typing, identity)
        -> ``load`` (COPY + insert/upsert + rollups, one transaction per batch)
        -> PostgreSQL schema ``pmta`` (``sql/migrations``, ``sql/views``)

Commands: ``ingest`` (the pipe), ``importer`` (files; with ``inputs``,
``compression``, ``ledger``, ``progress``), ``replay`` and ``status`` (the spool),
``report`` (with ``table``), ``prune`` (retention). ``cli`` is a thin layer over these
modules; ``config`` resolves settings, ``db`` and ``embedded`` find the database,
``migrate`` keeps the schema current, ``errors`` holds the error hierarchy.
docs/architecture.md has one line per module.
"""

from __future__ import annotations

__version__ = "0.1.0"
