"""Security properties of pmta-pipe (see docs/security.md), checked on the code and on a real run.

* No SQL text is built from data: every ``execute``/``executemany``/``copy`` gets a
  constant, a module constant, a ``psycopg.sql`` composition, or one of a short list
  of reviewed expressions (an AST check over ``pmta_pipe/*.py``).
* Passwords are never printed: not by ``db.describe``, not on stderr of a failing run.
* The spool is private: a 0700 folder of 0600 files, whatever the umask.
* Hostile accounting lines (SQL text, NUL bytes, invalid UTF-8, huge records, CSV
  formulas) are stored as data and never stop the stream.
"""

from __future__ import annotations

import ast
import csv
import importlib.util
import io
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pmta_pipe import db
from pmta_pipe.errors import ConfigError
from tests.conftest import ROOT, count, run_cli

Conn = psycopg.Connection[tuple[object, ...]]

PACKAGE = ROOT / "pmta_pipe"
SQL_METHODS = {"execute", "executemany", "copy"}
#: reviewed first arguments that are not constants: (file, expression) -> why it is safe
REVIEWED = {
    ("migrate.py", "mig.sql.encode()"): "migration files shipped inside the package",
    ("migrate.py", "sql.encode()"): "view files shipped inside the package",
    (
        "load.py",
        "_copy_statement('batch_inserted', fmt)",
    ): "constant COPY text; fmt is 'text' or 'csv'",
    (
        "load.py",
        "_copy_statement('batch_stage', fmt)",
    ): "constant COPY text; fmt is 'text' or 'csv'",
    (
        "load.py",
        "_copy_statement('batch_rollups', fmt, rollups.COLUMNS)",
    ): "constant COPY text; the column list is a constant of rollups.py",
    ("load.py", "rollups.APPLY"): "constant SQL text of rollups.py",
    ("prune.py", "f'SET LOCAL lock_timeout = {int(LOCK_TIMEOUT_MS)}'"): "an int constant",
    ("prune.py", "statement"): "sql.Composed of sql.Identifier partition names from the catalog",
    ("report.py", "build_query(kind, filters).encode()"): (
        "view and column names from fixed tables in report.py; every value is a parameter"
    ),
}
_CONSTANT_NAME = re.compile(r"_?[A-Z][A-Z0-9_]*")
_COMPOSABLE = {"SQL", "Identifier", "Literal", "Placeholder", "Composed"}


class _Module:
    """Module-level constants of one file, and the safe-expression rule."""

    def __init__(self, tree: ast.Module) -> None:
        self.constants: dict[str, ast.expr] = {}
        for node in tree.body:
            targets: list[ast.expr] = []
            value: ast.expr | None = None
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign):
                targets, value = [node.target], node.value
            for t in targets:
                if isinstance(t, ast.Name) and _CONSTANT_NAME.fullmatch(t.id) and value:
                    self.constants[t.id] = value

    def composable(self, expr: ast.expr) -> bool:
        """A ``psycopg.sql`` object: it quotes what it holds."""
        if isinstance(expr, ast.Name) and expr.id in self.constants:
            return self.composable(self.constants[expr.id])
        if not isinstance(expr, ast.Call):
            return False
        func = expr.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in _COMPOSABLE:
            return True
        return (
            isinstance(func, ast.Attribute)
            and name in ("format", "join")
            and self.composable(func.value)
        )

    def safe(self, expr: ast.expr, scope: ast.AST | None, depth: int = 0) -> bool:
        if depth > 20:
            return False
        if isinstance(expr, ast.Constant):
            return isinstance(expr.value, (str, bytes))
        if isinstance(expr, ast.JoinedStr):
            return all(
                not isinstance(v, ast.FormattedValue) or self.safe(v.value, scope, depth + 1)
                for v in expr.values
            )
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
            return self.safe(expr.left, scope, depth + 1) and self.safe(
                expr.right, scope, depth + 1
            )
        if isinstance(expr, ast.IfExp):
            return self.safe(expr.body, scope, depth + 1) and self.safe(
                expr.orelse, scope, depth + 1
            )
        if isinstance(expr, ast.Name):
            if expr.id in self.constants:
                return True
            return scope is not None and self._safe_local(expr.id, scope, depth)
        if self.composable(expr):
            return True
        if (
            isinstance(expr, ast.Call)
            and isinstance(expr.func, ast.Attribute)
            and expr.func.attr == "encode"
            and not expr.args
        ):
            return self.safe(expr.func.value, scope, depth + 1)
        return False

    def _safe_local(self, name: str, scope: ast.AST, depth: int) -> bool:
        """A local variable is safe when every value ever bound to it is safe."""
        bound: list[ast.expr] = []
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign):
                if any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                    bound.append(node.value)
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                if isinstance(node.target, ast.Name) and node.target.id == name:
                    if node.value is None:
                        continue
                    bound.append(node.value)
            elif isinstance(node, ast.For):
                if isinstance(node.target, ast.Name) and node.target.id == name:
                    # iterating over a module constant (a tuple of statements) is safe
                    if not (isinstance(node.iter, ast.Name) and node.iter.id in self.constants):
                        return False
                    bound.append(ast.Constant(""))
            elif isinstance(node, ast.arg) and node.arg == name:
                return False  # a parameter: could be anything
        return bool(bound) and all(self.safe(v, None, depth + 1) for v in bound)


def sql_calls() -> Iterator[tuple[str, int, str, bool]]:
    """(file, line, first argument, safe?) for every SQL call in pmta_pipe."""
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module = _Module(tree)
        scopes: list[tuple[ast.AST, ast.AST]] = []
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                scopes.extend((node, fn) for node in ast.walk(fn))
        scope_of = {id(node): fn for node, fn in scopes}  # innermost wins (walk order)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr not in SQL_METHODS or not node.args:
                continue
            arg = node.args[0]
            text = ast.unparse(arg)
            ok = (path.name, text) in REVIEWED or module.safe(arg, scope_of.get(id(node)))
            yield path.name, node.lineno, text, ok


def test_no_sql_is_built_from_data() -> None:
    calls = list(sql_calls())
    assert len(calls) >= 10  # the check sees the loader and migrations
    unsafe = [f"{f}:{line}: {text}" for f, line, text, ok in calls if not ok]
    assert unsafe == [], (
        "SQL built from a variable: pass data as parameters (%s) or compose with "
        "psycopg.sql.Identifier/Literal; if the text is really a constant, add it to "
        "REVIEWED with the reason"
    )


def test_the_sql_check_catches_data_in_sql() -> None:
    bad = ast.parse(
        "def f(conn, name):\n"
        "    conn.execute(f\"SELECT * FROM t WHERE a = '{name}'\")\n"
        "    q = 'SELECT ' + name\n"
        "    conn.execute(q)\n"
        "    conn.execute('SELECT %s' % name)\n"
        "    conn.execute('SELECT {}'.format(name))\n"
        "    conn.execute(name.encode())\n"
        "def g(conn):\n"
        "    conn.execute('SELECT 1')\n"
        "    conn.execute(sql.SQL('SELECT {}').format(sql.Identifier('x')))\n"
    )
    module = _Module(bad)
    f, g = bad.body
    assert isinstance(f, ast.FunctionDef) and isinstance(g, ast.FunctionDef)
    verdicts = [
        module.safe(call.args[0], fn)
        for fn in (f, g)
        for call in ast.walk(fn)
        if isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == "execute"
    ]
    assert verdicts == [False, False, False, False, False, True, True]


# -- passwords -------------------------------------------------------------------


def test_describe_never_shows_the_password() -> None:
    for dsn in (
        "postgresql://ingest:s3cr3t-pw@db.example:6432/mail",
        "host=db.example port=6432 dbname=mail user=ingest password=s3cr3t-pw",
        "postgresql://ingest@db.example/mail?password=s3cr3t-pw",
    ):
        text = db.describe(dsn)
        assert "s3cr3t-pw" not in text
        assert text == "ingest@db.example:6432/mail" or text == "ingest@db.example:5432/mail"


def _env(tmp_path: Path) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMTA_PIPE_", "PG"))}
    env["PMTA_PIPE_SPOOL_DIR"] = str(tmp_path / "spool")
    env["PMTA_PIPE_DATA_DIR"] = str(tmp_path / "data")
    return env


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:secret@127.0.0.1:5432/x",
        "postgresql://u:secret@127.0.0.1:1/x",  # nothing listens: connection refused
        "host=127.0.0.1 port=1 user=u password=secret",
        "postgresql://u:secret@127.0.0.1:5432/x?sslmode=bogus",
        "host=127.0.0.1 password=secret oops",
    ],
)
@pytest.mark.parametrize("level", ["info", "debug"])
def test_a_failing_run_never_prints_the_password(dsn: str, level: str, tmp_path: Path) -> None:
    proc = run_cli(["migrate", "--dsn", dsn, "--log-level", level], _env(tmp_path), timeout=60)
    assert proc.returncode != 0
    assert b"secret" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    "dsn", ["postgresql://u:secret@[::1/x", "postgresql://u:sec%zzret@127.0.0.1/x"]
)
def test_a_malformed_dsn_never_prints_the_password(dsn: str, tmp_path: Path) -> None:
    proc = run_cli(["migrate", "--dsn", dsn], _env(tmp_path), timeout=60)
    assert proc.returncode != 0
    assert b"secret" not in proc.stderr and b"sec%zzret" not in proc.stderr


def test_describe_of_a_malformed_dsn_raises_a_config_error() -> None:
    with pytest.raises(ConfigError):
        db.describe("host=127.0.0.1 password='unterminated")


# -- the spool ---------------------------------------------------------------------


def _modes(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode)
        for p in [folder, *folder.rglob("*")]
    }


@pytest.mark.skipif(
    importlib.util.find_spec("pmta_pipe.spool") is None, reason="pmta_pipe.spool not present"
)
def test_spool_is_private_whatever_the_umask(tmp_path: Path) -> None:
    env = _env(tmp_path)
    env["PMTA_PIPE_DSN"] = "postgresql://nobody@127.0.0.1:1/none"  # unreachable: records stay
    env["PMTA_PIPE_DRAIN_TIMEOUT"] = "0"
    env["PMTA_PIPE_BATCH_SECONDS"] = "0.2"
    data = (ROOT / "tests" / "data" / "pmta-samples.txt").read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "pmta_pipe", "ingest"],
        input=data, env=env, capture_output=True, timeout=120, check=False, umask=0,
    )  # fmt: skip
    spool = tmp_path / "spool"
    modes = _modes(spool)
    assert len(modes) > 1, f"nothing was spooled: {proc.stderr.decode()}"
    for name, mode in modes.items():
        path = spool / name if name != "." else spool
        want = 0o700 if path.is_dir() else 0o600
        assert mode == want, f"{name}: {oct(mode)}"


# -- hostile accounting lines ----------------------------------------------------------

HEADER = b"type,timeLogged,orig,rcpt,dsnStatus,dsnDiag,jobId,vmta\n"
INJECTION = b"x'); DROP TABLE pmta.events; --@evil.example"


def _record(n: int, rcpt: bytes = b"", diag: bytes = b"smtp;250 ok", job: bytes = b"j") -> bytes:
    rcpt = rcpt or b"user%d@example.com" % n
    return b"d,2026-01-01 00:00:%02d+0000,o@example.com,%s,2.0.0 (success),%s,%s,vmta1\n" % (
        n % 60, rcpt, diag, job,
    )  # fmt: skip


def test_hostile_fields_are_stored_as_data(cli_env: dict[str, str], conn: Conn) -> None:
    formula = b'"=HYPERLINK(""http://evil.example/"",""x"")"'
    data = b"".join(
        [
            HEADER,
            _record(1, rcpt=INJECTION),
            _record(2, diag=b"smtp;550 '; DELETE FROM pmta.rejects; --"),
            _record(3, diag=b"smtp;550 nul\x00byte"),
            _record(4, diag=b"smtp;550 bad \xff\xfe utf-8"),
            _record(5, job=formula),
            _record(6, job=b"@SUM(1+1)"),
            _record(7, diag=b"$(reboot) `reboot` \\\\x00 %s %(x)s {0}"),
        ]
    )
    proc = run_cli(["ingest"], cli_env, input=data)
    assert proc.returncode == 0, proc.stderr.decode()
    assert count(conn, "SELECT count(*) FROM pmta.events") == 7
    assert count(conn, "SELECT count(*) FROM pmta.rejects") == 0
    got = dict(conn.execute("SELECT rcpt, dsn_diag FROM pmta.events").fetchall())
    assert INJECTION.decode() in got
    assert got["user2@example.com"] == "smtp;550 '; DELETE FROM pmta.rejects; --"
    assert got["user3@example.com"] == "smtp;550 nul\ufffdbyte"
    assert got["user4@example.com"] == "smtp;550 bad \ufffd\ufffd utf-8"
    assert got["user7@example.com"] == "$(reboot) `reboot` \\\\x00 %s %(x)s {0}"
    jobs = {r[0] for r in conn.execute("SELECT job_id FROM pmta.events").fetchall()}
    assert '=HYPERLINK("http://evil.example/","x")' in jobs and "@SUM(1+1)" in jobs


def test_a_huge_unbalanced_record_costs_only_itself(cli_env: dict[str, str], conn: Conn) -> None:
    # an opening quote that never closes, on a 3 MiB line: cut into 1 MiB pieces, each
    # rejected (two distinct raw texts: the first piece and the all-"A" pieces), the rest loads
    huge = b'd,2026-01-01 00:00:00+0000,o@example.com,"' + b"A" * (3 << 20) + b"\n"
    data = HEADER + _record(1) + huge + _record(2) + _record(3)
    proc = run_cli(["ingest"], cli_env, input=data, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    rcpts = {r[0] for r in conn.execute("SELECT rcpt FROM pmta.events").fetchall()}
    assert rcpts == {"user1@example.com", "user2@example.com", "user3@example.com"}
    assert count(conn, "SELECT count(*) FROM pmta.rejects") == 2


def test_one_endless_line_is_cut_at_the_record_limit() -> None:
    from pmta_pipe.framing import DEFAULT_MAX_RECORD_BYTES, ChunkSplitter

    splitter = ChunkSplitter()
    out: list[bytes] = []
    for _ in range(12):  # 3 MiB without a line break
        splitter.feed(b"A" * (1 << 18), out)
    splitter.finish(out)
    assert out and max(len(r) for r in out) <= DEFAULT_MAX_RECORD_BYTES


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("kind", ["jobs", "bounces", "deferrals", "patterns"])
def test_csv_reports_cannot_carry_spreadsheet_formulas(kind: str, cli_env: dict[str, str]) -> None:
    data = HEADER + b"".join(
        b"b,2026-01-01 00:00:%02d+0000,o@example.com,u%d@example.com,5.1.1 (bad),"
        b"=1+2 smtp;550 x,=HYPERLINK(1),vmta1\n" % (i, i)
        for i in range(3)
    )
    assert run_cli(["ingest"], cli_env, input=data).returncode == 0
    proc = run_cli(
        ["report", kind, "--format", "csv", "--since", "2025-12-01", "--until", "2026-02-01"],
        cli_env,
    )
    if proc.returncode != 0:
        pytest.skip(f"report {kind} is not available: {proc.stderr.decode().strip()[:120]}")
    cells = [c for row in csv.reader(io.StringIO(proc.stdout.decode())) for c in row]
    risky = [c for c in cells if c.startswith(_FORMULA_START) and not _is_number(c)]
    assert risky == []
