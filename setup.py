"""The compiled parser: an optional C extension (see pmta_pipe/fastpath.py).

``optional=True``: where it cannot be built (no C compiler, no Python headers),
setuptools warns and installs the package without it; the pure-Python parser then
runs, with the same results. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O2", "-Wall", "-Wextra"]

setup(
    ext_modules=[
        Extension(
            "pmta_pipe._fastpath",
            sources=["pmta_pipe/_fastpath.c"],
            extra_compile_args=flags,
            optional=True,
        )
    ]
)
