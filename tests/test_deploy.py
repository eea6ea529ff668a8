"""The deployment files in ``deploy/``: PowerMTA config, wrapper, systemd units, settings.

* The environment example lists exactly the settings of ``config.OPTIONS``.
* The PowerMTA snippet uses only directives of PowerMTA's guide (``<acct-file>``
  section of the reference) and has no space after ``|``.
* The systemd units pass ``systemd-analyze verify`` (when it is installed) and keep
  their hardening.
* The wrapper takes settings from the environment file as data, and runs a real
  ``pmta-pipe ingest`` into a real database.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pmta_pipe.config import OPTIONS
from tests.conftest import ROOT, count
from tests.helpers import clean_env, stream, type_counts

DEPLOY = ROOT / "deploy"
ENV_EXAMPLE = DEPLOY / "systemd" / "pmta-pipe.env.example"
PMTA_CONF = DEPLOY / "pmta" / "acct-pmta-pipe.conf"
WRAPPER = DEPLOY / "pmta" / "pmta-pipe-wrapper.sh"
UNITS = sorted((DEPLOY / "systemd").glob("*.service")) + sorted(
    (DEPLOY / "systemd").glob("*.timer")
)

#: <acct-file> sub-directives of PowerMTA's User's Guide v5.0 §3.3.11 (reference §5.2)
ACCT_FILE_DIRECTIVES = {
    "records", "record-fields", "map-header-to-field", "move-to", "move-interval",
    "max-size", "delete-after", "world-readable", "sync", "count-moved-records",
    "queue-filter", "iso-times", "user-string", "privacy-policy", "retry-interval",
    "write-timeout",
}  # fmt: skip
RECORD_TYPES = {"d", "b", "t", "tq", "r", "f", "rb", "rs"}


def env_example_names() -> list[str]:
    names = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"#?(PMTA_PIPE_[A-Z_]+)=", line)
        if m:
            names.append(m.group(1))
    return names


def test_env_example_lists_exactly_the_settings() -> None:
    names = env_example_names()
    assert sorted(names) == sorted(o.env for o in OPTIONS)
    assert len(names) == len(set(names))


def test_env_example_holds_no_password() -> None:
    text = ENV_EXAMPLE.read_text()
    settings = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert not any(re.search(r"password|:[^@/]*@", ln, re.IGNORECASE) for ln in settings)
    assert "PGPASSFILE=" in text and "PGSERVICEFILE=" in text


# -- PowerMTA --------------------------------------------------------------------------


def pmta_blocks() -> list[tuple[str, list[tuple[str, str]]]]:
    """The <acct-file> blocks of the snippet: (target, [(directive, arguments)])."""
    blocks: list[tuple[str, list[tuple[str, str]]]] = []
    inside = False
    for raw in PMTA_CONF.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"<acct-file (.+)>", line)
        if m:
            assert not inside, f"nested <acct-file>: {line}"
            blocks.append((m.group(1), []))
            inside = True
            continue
        if line == "</acct-file>":
            assert inside
            inside = False
            continue
        assert inside, f"directive outside <acct-file>: {line}"
        name, _, args = line.partition(" ")
        blocks[-1][1].append((name, args.strip()))
    assert not inside, "unclosed <acct-file>"
    return blocks


def test_pmta_snippet_uses_only_powermta_directives() -> None:
    blocks = pmta_blocks()
    assert [target.split()[0] for target, _ in blocks] == [
        "|/usr/local/bin/pmta-pipe-wrapper",
        "/var/log/pmta/acct.csv",
    ]
    for target, directives in blocks:
        for name, args in directives:
            assert name in ACCT_FILE_DIRECTIVES, f"{target}: unknown directive {name}"
            assert args, f"{target}: {name} without a value"
            if name in ("record-fields", "map-header-to-field"):
                assert args.split()[0] in RECORD_TYPES, f"{name} {args}"
        names = [n for n, _ in directives]
        assert names.count("records") == 1  # "only once per block"
        records = dict(directives)["records"].split(",")
        assert set(records) == RECORD_TYPES
        pipe_only = {"write-timeout", "retry-interval"} & set(names)
        assert not pipe_only or target.startswith("|"), f"{target}: {pipe_only}"


def test_pmta_pipe_has_no_space_after_the_bar() -> None:
    text = PMTA_CONF.read_text()
    assert "<acct-file |/" in text
    assert not re.search(r"<acct-file\s+\|\s", text)
    assert not re.search(r"\|\s+/", text)
    _pipe, directives = pmta_blocks()[0]
    assert {n for n, _ in directives} >= {"write-timeout", "retry-interval"}


def test_pmta_snippet_and_wrapper_keep_passwords_off_the_command_line() -> None:
    for target, _ in pmta_blocks():
        assert "--dsn" not in target and "password" not in target.lower()


# -- systemd ---------------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, list[str]]:
    got: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            got.setdefault(key.strip(), []).append(value.strip())
    return got


def test_units_are_hardened() -> None:
    spool = next(
        ln.split("=", 1)[1]
        for ln in ENV_EXAMPLE.read_text().splitlines()
        if ln.startswith("PMTA_PIPE_SPOOL_DIR=")
    )
    services = [u for u in UNITS if u.suffix == ".service"]
    assert {u.name for u in services} == {
        "pmta-pipe-replay.service", "pmta-pipe-prune.service", "pmta-pipe-serve.service",
        "pmta-pipe-alerts.service",
    }  # fmt: skip
    for unit in services:
        s = unit_settings(unit)
        assert s["User"] == ["pmta"] and s["Group"] == ["pmta"], unit.name
        assert s["EnvironmentFile"] == ["/etc/pmta-pipe/env"]
        for key, value in {
            "NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
            "ProtectHome": "yes", "PrivateDevices": "yes", "UMask": "0077",
            "CapabilityBoundingSet": "", "RestrictSUIDSGID": "yes",
        }.items():  # fmt: skip
            assert s.get(key) == [value], f"{unit.name}: {key}"
        assert "--dsn" not in " ".join(s["ExecStart"])
    assert unit_settings(DEPLOY / "systemd" / "pmta-pipe-replay.service")["ReadWritePaths"] == [
        spool
    ]
    serve = unit_settings(DEPLOY / "systemd" / "pmta-pipe-serve.service")
    assert serve["ReadWritePaths"] == [spool]
    assert serve["ExecStart"][0].split()[1:3] == ["serve", "--auth-file"]
    assert unit_settings(DEPLOY / "systemd" / "pmta-pipe-replay.timer")["OnUnitActiveSec"] == [
        "5min"
    ]
    alerts = unit_settings(DEPLOY / "systemd" / "pmta-pipe-alerts.service")
    assert alerts["ExecStart"][0].split()[1:] == ["alerts", "--since", "2h"]
    assert alerts["SuccessExitStatus"] == ["3"] and "ReadWritePaths" not in alerts
    assert unit_settings(DEPLOY / "systemd" / "pmta-pipe-alerts.timer")["OnUnitActiveSec"] == [
        "5min"
    ]
    prune = unit_settings(DEPLOY / "systemd" / "pmta-pipe-prune.service")
    assert prune["ExecStart"][0].split()[1:3] == ["prune", "--keep-days"]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    system = next(
        (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
        None,
    )
    if analyze is None or system is None:
        pytest.skip("systemd-analyze or systemd's units are not installed")
    # an image of the target host: systemd's own units, ours, and the program
    root = tmp_path / "root"
    shutil.copytree(system, root / "usr/lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(unit, units / unit.name)
    program = root / "usr/local/bin/pmta-pipe"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    proc = subprocess.run(
        [analyze, "verify", f"--root={root}", *(f"/etc/systemd/system/{u.name}" for u in UNITS)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # unknown keys are only warnings


# -- the wrapper -----------------------------------------------------------------------


def run_wrapper(
    args: list[str], env_file: Path, extra: dict[str, str], data: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    env = clean_env()
    env.update(PMTA_PIPE_ENV_FILE=str(env_file), **extra)
    return subprocess.run(
        ["/bin/sh", str(WRAPPER), *args],
        input=data, env=env, capture_output=True, timeout=120, check=False,
    )  # fmt: skip


def test_wrapper_reads_settings_as_data(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    env_file = tmp_path / "env"
    env_file.write_text(
        "# comment\n"
        "PMTA_PIPE_SOURCE=mta7\n"
        "PGSERVICE=pmta\n"
        f"PMTA_PIPE_DSN=service=pmta $(touch {marker})\n"
        f"`touch {marker}`\n"
        "PATH=/nowhere\n"
        "LD_PRELOAD=/tmp/evil.so\n"
        "PMTA_PIPE_BAD-NAME=x\n"
        "PMTA_PIPE_LOG_LEVEL=debug"  # no final newline
    )
    program = tmp_path / "fake-pmta-pipe"
    program.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\nenv | sort\n')
    program.chmod(0o755)
    proc = run_wrapper(
        ["--batch-rows", "5"], env_file,
        {"PMTA_PIPE_PROGRAM": str(program), "PMTA_PIPE_WRAPPER_LOG_TO": "stderr"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode().splitlines()
    assert out[:3] == ["ingest", "--batch-rows", "5"]
    assert "PMTA_PIPE_SOURCE=mta7" in out and "PGSERVICE=pmta" in out
    assert f"PMTA_PIPE_DSN=service=pmta $(touch {marker})" in out
    assert "PMTA_PIPE_LOG_LEVEL=debug" in out
    assert not any(ln.startswith(("LD_PRELOAD=", "PMTA_PIPE_BAD")) for ln in out)
    assert "PATH=/nowhere" not in out
    assert not marker.exists()

    proc = run_wrapper(["import", "/var/log/pmta/acct-*.csv"], env_file,
                       {"PMTA_PIPE_PROGRAM": str(program)})  # fmt: skip
    assert proc.stdout.decode().splitlines()[:2] == ["import", "/var/log/pmta/acct-*.csv"]


def test_wrapper_runs_ingest_into_the_database(
    tmp_path: Path, dsn: str, conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    env_file = tmp_path / "env"
    env_file.write_text(
        f"PMTA_PIPE_DSN={dsn}\n"
        f"PMTA_PIPE_SPOOL_DIR={tmp_path / 'spool'}\n"
        "PMTA_PIPE_SOURCE=wrapped-host\n"
        "PMTA_PIPE_BATCH_SECONDS=0.2\n"
        f"PMTA_PIPE_WRAPPER_LOG_FILE={tmp_path / 'ingest.log'}\n"
    )
    program = Path(sys.executable).parent / "pmta-pipe"
    data = stream(2000, days=2, seed=11)
    proc = run_wrapper([], env_file, {"PMTA_PIPE_PROGRAM": str(program),
                                      "PMTA_PIPE_WRAPPER_LOG_TO": "file"}, data)  # fmt: skip
    log = (tmp_path / "ingest.log").read_text()
    assert proc.returncode == 0, log
    assert proc.stdout == b"" and proc.stderr == b""  # everything went to the log file
    assert "done: 2000 records" in log
    got = dict(conn.execute("SELECT record_type, count(*) FROM pmta.events GROUP BY 1").fetchall())
    assert got == dict(type_counts(data))
    assert count(conn, "SELECT count(*) FROM pmta.events WHERE source = 'wrapped-host'") == 2000
