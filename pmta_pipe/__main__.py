"""``python -m pmta_pipe``: the same as the ``pmta-pipe`` console script."""

from __future__ import annotations

from pmta_pipe.cli import main

raise SystemExit(main())
