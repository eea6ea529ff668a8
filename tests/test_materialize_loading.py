"""The background step while a load is busy: one hour per step, then in full."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

from pmta_pipe import materialize
from tests.helpers import stream
from tests.test_materialize import assert_exact, do_import, write

Conn = psycopg.Connection[tuple[Any, ...]]


def _state(conn: Conn) -> tuple[Any, Any]:
    row = conn.execute("SELECT watermark, threshold FROM pmta.rollup_state").fetchone()
    assert row is not None
    return row[0], row[1]


def test_background_step_counts_one_hour_while_batches_commit(
    conn: Conn, dsn: str, tmp_path: Path
) -> None:
    data = stream(3000, days=1, seed=5, start="2026-02-01")
    assert do_import(dsn, write(tmp_path, "a.csv", data)) == 3000  # batches committed now
    row = conn.execute("SELECT date_trunc('hour', min(time_logged)) FROM pmta.events").fetchone()
    assert row is not None
    oldest = row[0]
    bg = materialize.Background(dsn, interval=5.0, grace=0.0)
    try:
        bg.tick()
        assert bg.loading() and bg.error is None
        watermark, threshold = _state(conn)
        assert watermark == oldest + timedelta(hours=1) < threshold
        assert_exact(conn, data)
        # no batch for longer than two intervals: a step counts everything up to the threshold
        conn.execute("UPDATE pmta.ingest_batches SET committed_at = now() - interval '1 minute'")
        assert not bg.loading()
        bg.tick()
        watermark, threshold = _state(conn)
        assert watermark == threshold
        assert_exact(conn, data)
    finally:
        bg.stop()
        if bg._conn is not None:
            bg._conn.close()
