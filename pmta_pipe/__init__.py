"""pmta-pipe: load PowerMTA accounting records into PostgreSQL.

The data flow, module by module (see docs/architecture.md):

    stdin / files -> ``reader`` (record boundaries) -> ``spool`` (durable journal)
        -> ``parse`` (header mapping, typing, identity) -> ``load`` (COPY + upsert)
        -> PostgreSQL schema ``pmta`` (``sql/migrations``, ``sql/views``)

``cli`` is a thin layer over these modules; ``config`` resolves settings,
``db`` and ``embedded`` find the database, ``migrate`` keeps the schema current.
"""

from __future__ import annotations

__version__ = "0.1.0"
