"""The command line as a whole: help, settings, one-line errors, the embedded default."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pmta_pipe.cli import build_parser
from pmta_pipe.config import OPTIONS, resolve
from pmta_pipe.errors import ConfigError
from tests.conftest import ROOT, run_cli
from tests.helpers import clean_env


def _subcommands() -> dict[str, object]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return dict(action.choices)  # type: ignore[arg-type]


def test_every_command_and_option_has_help_and_is_documented() -> None:
    reference = (ROOT / "docs" / "reference.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for name, sub in _subcommands().items():
        assert f"pmta-pipe {name}" in reference, f"{name} missing from docs/reference.md"
        assert f"pmta-pipe {name}" in readme, f"{name} missing from README.md"
        for action in sub._actions:  # type: ignore[attr-defined]
            if action.dest == "help":
                continue
            assert action.help, f"{name} {action.dest} has no help"
            for flag in action.option_strings:
                assert flag in reference, f"{flag} of {name} missing from docs/reference.md"
    for opt in OPTIONS:
        assert opt.env in reference, f"{opt.env} missing from docs/reference.md"


def test_bad_flag_is_one_line_with_hint(cli_env: dict[str, str]) -> None:
    proc = run_cli(["ingest", "--batch-rows", "zero"], cli_env)
    assert proc.returncode == 2
    assert proc.stderr.decode() == (
        "error: argument --batch-rows: expected a whole number, got 'zero'"
        " (hint: run 'pmta-pipe ingest --help')\n"
    )


def test_bad_environment_setting_is_one_line_with_hint(cli_env: dict[str, str]) -> None:
    env = dict(cli_env, PMTA_PIPE_BATCH_SECONDS="-1")
    proc = run_cli(["ingest"], env, input=b"")
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert err.count("\n") == 1
    assert err.startswith("error: invalid PMTA_PIPE_BATCH_SECONDS='-1': must be more than 0")
    assert "(hint: --batch-seconds SECONDS" in err


def test_unreachable_database_for_migrate_is_one_line(cli_env: dict[str, str]) -> None:
    env = dict(cli_env, PMTA_PIPE_DSN="postgresql://nobody:s3cret@127.0.0.1:1/nowhere")
    proc = run_cli(["migrate"], env)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    last = err.splitlines()[-1]
    assert last.startswith("error: cannot use the database: connection failed:")
    assert last.endswith("(hint: check --dsn / PMTA_PIPE_DSN and that PostgreSQL is running)")
    assert "Traceback" not in err and "s3cret" not in err


def test_settings_precedence_flag_over_env_over_default() -> None:
    assert resolve({}, {}).batch_rows == 5000
    assert resolve({}, {"PMTA_PIPE_BATCH_ROWS": "50"}).batch_rows == 50
    assert resolve({"batch_rows": 7}, {"PMTA_PIPE_BATCH_ROWS": "50"}).batch_rows == 7
    assert resolve({}, {"PMTA_PIPE_SPOOL_MAX_BYTES": "2G"}).spool_max_bytes == 2 << 30
    with pytest.raises(ConfigError):
        resolve({}, {"PMTA_PIPE_LOG_LEVEL": "loud"})


def test_embedded_default_end_to_end(tmp_path: Path) -> None:
    """No database configured: an embedded PostgreSQL is started, reused, and stopped."""
    data = tmp_path / "pg"
    env = clean_env()
    env.update(PMTA_PIPE_DATA_DIR=str(data), PMTA_PIPE_SPOOL_DIR=str(tmp_path / "spool"))
    tmp_path.chmod(0o755)
    sample = (ROOT / "samples" / "acct-sample.csv").read_bytes()
    try:
        proc = run_cli(["ingest", "--source", "demo"], env, input=sample)
        assert proc.returncode == 0, proc.stderr.decode()
        assert f"embedded PostgreSQL in {data}" in proc.stderr.decode()
        uri = run_cli(["db", "uri"], env).stdout.decode().strip()
        assert uri.startswith("postgresql://")
        status = run_cli(["db", "status"], env)
        assert status.returncode == 0
        assert json.loads(status.stdout)["running"] is True
        counted = subprocess.run(
            [sys.executable, str(ROOT / "samples" / "count_types.py")],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert "total       2000" in counted.stdout
    finally:
        stop = run_cli(["db", "stop"], env)
    assert stop.stdout == b"stopped\n"
    assert json.loads(run_cli(["db", "status"], env).stdout)["running"] is False
