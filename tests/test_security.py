"""Security properties of pmta-pipe (see docs/security.md), checked on the code and on a real run.

* No SQL text is built from data: the SQL argument of every ``execute``/``executemany``/
  ``copy`` in ``pmta_pipe/*.py`` must be provably made of literals and module-level
  constants (of any pmta_pipe module), through f-strings, ``%``, ``+``, ``.format``,
  ``.join``, local names, the package's own helper functions (their parameters bound
  to the call's arguments, or for a private helper to every caller's) and
  ``psycopg.sql`` composition. Decided from the syntax tree (``ast``), with no list
  of exempted call sites; a test shows it flags a planted example of each form.
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
from tests.helpers import clean_env

Conn = psycopg.Connection[tuple[object, ...]]

PACKAGE = ROOT / "pmta_pipe"
SQL_METHODS = {"execute", "executemany", "copy"}
#: calls whose result is a number or a truth value: nothing of their argument reaches the text
_NUMERIC = {"int", "len", "bool", "float"}
#: calls and methods that give back text made only of what they were given
_PASS_THROUGH = {"str", "tuple", "list", "sorted", "reversed", "frozenset", "set", "dict"}
_STR_METHODS = {"encode", "decode", "strip", "lstrip", "rstrip", "lower", "upper"}
_QUOTING = {"Identifier", "Literal", "Placeholder"}  # psycopg.sql: quotes what it holds
#: functions whose result is SQL the package ships (sql/migrations, sql/views: files of the
#: wheel, checksummed into pmta.schema_migrations), never data: (module, function)
_PACKAGED_SQL = {("migrate", "load_migrations"), ("migrate", "load_views")}


class _Scope:
    """A function being analysed: its node, its enclosing scope, and bound parameters."""

    def __init__(
        self,
        fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | None,
        parent: _Scope | None,
        args: dict[str, tuple[_Module, ast.expr, _Scope | None]] | None = None,
    ) -> None:
        self.fn, self.parent, self.args = fn, parent, args
        self.bindings: dict[str, list[tuple[str, ast.AST]]] = {}
        if fn is not None and not isinstance(fn, ast.Lambda):
            for node in ast.walk(fn):
                self._collect(node)

    def _bind(self, target: ast.expr, how: str, value: ast.AST) -> None:
        if isinstance(target, ast.Name):
            self.bindings.setdefault(target.id, []).append((how, value))
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:  # an element of the value
                self._bind(elt.value if isinstance(elt, ast.Starred) else elt, "part", value)
        elif isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
            self._bind(target.value, "part", value)  # x[k] = v puts v in x

    def _collect(self, node: ast.AST) -> None:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                self._bind(t, "value", node.value)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and node.value:
            self._bind(node.target, "value", node.value)
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            self._bind(node.target, "part", node.iter)
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            self._bind(node.optional_vars, "value", node.context_expr)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            self.bindings.setdefault(node.name, []).append(("unknown", node))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                name = alias.asname or alias.name.split(".")[0]
                self.bindings.setdefault(name, []).append(("unknown", node))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.attr in ("append", "extend", "add", "insert", "update", "setdefault")
        ):
            for arg in node.args:  # x.append(v) puts v in x
                self._bind(node.func.value, "part", arg)

    def params(self) -> set[str]:
        if self.fn is None:
            return set()
        a = self.fn.args
        every = [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]
        return {p.arg for p in every if p is not None}


class _Module:
    """One file of pmta_pipe: its module-level constants, functions, classes and imports.

    ``safe(expr, scope)`` decides from the syntax alone whether the text ``expr``
    evaluates to can hold anything but literals: it follows names to every value
    ever bound to them, module constants (of this file or another pmta_pipe file),
    the return values of this package's functions with the call's arguments bound,
    and ``psycopg.sql`` composition. Anything it cannot follow (a parameter, data
    read at run time, an unknown call) is not safe.
    """

    def __init__(
        self, tree: ast.Module, package: dict[str, _Module] | None = None, name: str = ""
    ) -> None:
        self.tree = tree
        self.name = name
        self.package = package if package is not None else {}
        self.top = _Scope(None, None)
        self.functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        self.classes: set[str] = set()
        self.modules: dict[str, str] = {}  # local name -> pmta_pipe module
        self.imported: dict[str, tuple[str, str]] = {}  # local name -> (module, name)
        rebound = {
            name
            for node in ast.walk(tree)
            if isinstance(node, (ast.Global, ast.Nonlocal))
            for name in node.names
        }
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions[node.name] = node
            elif isinstance(node, ast.ClassDef):
                self.classes.add(node.name)
            elif isinstance(node, ast.ImportFrom) and node.module == "pmta_pipe":
                for alias in node.names:
                    self.modules[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pmta_pipe."):
                for alias in node.names:
                    module = (node.module or "").split(".", 1)[1]
                    self.imported[alias.asname or alias.name] = (module, alias.name)
            elif isinstance(node, ast.ImportFrom) and node.module == "psycopg":
                for alias in node.names:
                    if alias.name == "sql":
                        self.modules[alias.asname or "sql"] = "psycopg.sql"
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                self.top._collect(node)
        for name in rebound:
            self.top.bindings.setdefault(name, []).append(("unknown", tree))
        self._busy: set[tuple[int, int]] = set()
        self._scopes: dict[int, _Scope] = {}

    # -- entry points ------------------------------------------------------------------
    def scope(self, fn: ast.AST | None, parent: _Scope | None = None) -> _Scope | None:
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return None
        if id(fn) not in self._scopes:
            self._scopes[id(fn)] = _Scope(fn, parent)
        return self._scopes[id(fn)]

    def safe(self, expr: ast.AST, scope: _Scope | None, depth: int = 0) -> bool:
        key = (id(expr), id(scope))
        if key in self._busy:
            return True  # a cycle (x = x + ...): decided by the other values bound
        if depth > 40:
            return False
        self._busy.add(key)
        try:
            return self._safe(expr, scope, depth + 1)
        finally:
            self._busy.discard(key)

    # -- the rules ---------------------------------------------------------------------
    def _safe(self, e: ast.AST, scope: _Scope | None, d: int) -> bool:
        ok = self.safe
        if isinstance(e, ast.Constant):
            return True  # text, bytes, a number, None
        if isinstance(e, ast.JoinedStr):
            return all(ok(v, scope, d) for v in e.values)
        if isinstance(e, ast.FormattedValue):
            return ok(e.value, scope, d) and (e.format_spec is None or ok(e.format_spec, scope, d))
        if isinstance(e, ast.BinOp) and isinstance(e.op, (ast.Add, ast.Mod, ast.Mult)):
            return ok(e.left, scope, d) and ok(e.right, scope, d)
        if isinstance(e, ast.IfExp):  # the condition picks, it adds no text
            return ok(e.body, scope, d) and ok(e.orelse, scope, d)
        if isinstance(e, ast.BoolOp):  # a or b: one of the values
            return all(ok(v, scope, d) for v in e.values)
        if isinstance(e, (ast.Tuple, ast.List, ast.Set)):
            return all(ok(v, scope, d) for v in e.elts)
        if isinstance(e, ast.Starred):
            return ok(e.value, scope, d)
        if isinstance(e, ast.Dict):
            return all(ok(v, scope, d) for v in [*e.values, *(k for k in e.keys if k)])
        if isinstance(e, ast.Subscript):  # an element of a safe container is safe
            return ok(e.value, scope, d)
        if isinstance(e, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            inner = _Scope(None, scope)
            for gen in e.generators:
                inner._bind(gen.target, "part", gen.iter)
            elts = [e.key, e.value] if isinstance(e, ast.DictComp) else [e.elt]
            return all(ok(x, inner, d) for x in elts)
        if isinstance(e, ast.Name):
            return self._name(e.id, scope, d)
        if isinstance(e, ast.Attribute):
            if isinstance(e.value, ast.Name) and e.value.id in self.modules:
                return self._constant_of(self.modules[e.value.id], e.attr, d)
            return ok(e.value, scope, d)  # an attribute of a safe object
        if isinstance(e, ast.Call):
            return self._call(e, scope, d)
        return False

    def _name(self, name: str, scope: _Scope | None, d: int) -> bool:
        s = scope
        while s is not None:
            if s.args is not None and name in s.args:
                module, expr, caller = s.args[name]  # a parameter bound to a call's argument
                return module.safe(expr, caller, d)
            if name in s.bindings:
                return all(
                    how != "unknown" and self.safe(value, s, d) for how, value in s.bindings[name]
                )
            if name in s.params():
                return self._private_param(s, name, d)
            s = s.parent
        if name in self.top.bindings:
            return all(
                how != "unknown" and self.safe(value, None, d)
                for how, value in self.top.bindings[name]
            )
        if name in self.imported:
            return self._constant_of(*self.imported[name], d)
        return name in self.functions or name in self.classes

    def _private_param(self, scope: _Scope, name: str, d: int) -> bool:
        """A parameter of a private module-level function: safe when every call passes safe."""
        fn = scope.fn
        if not (
            isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            and fn.name.startswith("_")
            and self.functions.get(fn.name) is fn
        ):
            return False  # a public function or a nested one: the caller could pass anything
        a = fn.args
        positional = [p.arg for p in [*a.posonlyargs, *a.args]]
        default = dict(zip(positional[::-1], a.defaults[::-1], strict=False))
        default.update({p.arg: v for p, v in zip(a.kwonlyargs, a.kw_defaults, strict=True) if v})
        sites = [(c, sc) for c, sc in _all_calls(self.tree, None) if _calls_name(c, fn.name)]
        if not sites:
            return False
        for call, caller in sites:
            if any(isinstance(x, ast.Starred) for x in call.args) or any(
                k.arg is None for k in call.keywords
            ):
                return False
            given = {k.arg: k.value for k in call.keywords if k.arg}
            given.update(dict(zip(positional, call.args, strict=False)))
            value = given.get(name, default.get(name))
            if value is None or not self.safe(value, caller, d):
                return False
        return True

    def _constant_of(self, module: str, name: str, d: int) -> bool:
        other = self.package.get(module)
        if other is None:
            return False
        return other._name(name, None, d)

    def _call(self, e: ast.Call, scope: _Scope | None, d: int) -> bool:
        ok = self.safe
        func = e.func
        args_ok = all(ok(a, scope, d) for a in [*e.args, *(k.value for k in e.keywords)])
        if isinstance(func, ast.Name):
            if func.id in _NUMERIC:
                return True
            if (self.name, func.id) in _PACKAGED_SQL or self.imported.get(func.id) in _PACKAGED_SQL:
                return True
            if func.id in _PASS_THROUGH:
                return args_ok
            if func.id in self.classes:  # a constructor: its attributes are its arguments
                return args_ok
            if func.id in self.functions:
                return self._returns(self, self.functions[func.id], e, scope, d)
            if func.id in self.imported:
                module, name = self.imported[func.id]
                other = self.package.get(module)
                if other and name in other.functions:
                    return other._returns(self, other.functions[name], e, scope, d)
            return False
        if not isinstance(func, ast.Attribute):
            return False
        on = func.value
        if isinstance(on, ast.Name) and self.modules.get(on.id) == "psycopg.sql":
            if func.attr in _QUOTING:
                return True  # quoted by psycopg, whatever it holds
            return func.attr in ("SQL", "Composed") and args_ok
        if isinstance(on, ast.Name) and on.id in self.modules:
            other = self.package.get(self.modules[on.id])
            if other and func.attr in other.functions:
                return other._returns(self, other.functions[func.attr], e, scope, d)
            return False
        if isinstance(on, ast.Name) and on.id == "re" and func.attr == "sub":
            return args_ok  # text made of the pattern, the replacement and the input
        if func.attr in _STR_METHODS:
            return ok(on, scope, d)
        if func.attr in ("format", "join", "replace"):
            return ok(on, scope, d) and args_ok
        if func.attr == "get":  # an element of a safe mapping, or the default given
            return ok(on, scope, d) and args_ok
        return False

    def _returns(
        self,
        caller: _Module,
        fn: ast.FunctionDef | ast.AsyncFunctionDef,
        call: ast.Call,
        scope: _Scope | None,
        d: int,
    ) -> bool:
        """Every value ``fn`` returns is safe, with its parameters bound to ``call``'s arguments."""
        if any(isinstance(a, ast.Starred) for a in call.args) or any(
            k.arg is None for k in call.keywords
        ):
            return False
        a = fn.args
        positional = [*a.posonlyargs, *a.args]
        bound: dict[str, tuple[_Module, ast.expr, _Scope | None]] = {}
        if len(call.args) > len(positional):
            if a.vararg is None:
                return False
            rest = ast.Tuple(elts=call.args[len(positional) :], ctx=ast.Load())
            bound[a.vararg.arg] = (caller, rest, scope)  # *names: the extra arguments
        for p, arg in zip(positional, call.args, strict=False):
            bound[p.arg] = (caller, arg, scope)
        for k in call.keywords:
            assert k.arg is not None
            bound[k.arg] = (caller, k.value, scope)
        defaults = dict(zip([p.arg for p in positional][::-1], a.defaults[::-1], strict=False))
        defaults.update(
            {p.arg: v for p, v in zip(a.kwonlyargs, a.kw_defaults, strict=True) if v is not None}
        )
        for name, value in defaults.items():
            bound.setdefault(name, (self, value, None))
        inner = _Scope(fn, None, bound)
        returns = [n.value for n in ast.walk(fn) if isinstance(n, ast.Return)]
        return bool(returns) and all(r is not None and self.safe(r, inner, d) for r in returns)


def _package() -> dict[str, _Module]:
    package: dict[str, _Module] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package[path.stem] = _Module(tree, package, path.stem)
    return package


def _all_calls(node: ast.AST, scope: _Scope | None) -> Iterator[tuple[ast.Call, _Scope | None]]:
    """Every call under ``node``, with the scope it is made in."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _all_calls(child, _Scope(child, scope))
            continue
        if isinstance(child, ast.Call):
            yield child, scope
        yield from _all_calls(child, scope)


def _calls_name(call: ast.Call, name: str) -> bool:
    return isinstance(call.func, ast.Name) and call.func.id == name


def _calls(node: ast.AST, scope: _Scope | None) -> Iterator[tuple[ast.Call, _Scope | None]]:
    """Every ``execute``/``executemany``/``copy`` call under ``node``, with its scope."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _calls(child, _Scope(child, scope))
            continue
        if (
            isinstance(child, ast.Call)
            and isinstance(child.func, ast.Attribute)
            and child.func.attr in SQL_METHODS
            and child.args
        ):
            yield child, scope
        yield from _calls(child, scope)


def sql_calls(package: dict[str, _Module]) -> Iterator[tuple[str, int, str, bool]]:
    """(module, line, SQL argument, safe?) for every SQL call of ``package``."""
    for name, module in sorted(package.items()):
        for call, scope in _calls(module.tree, None):
            arg = call.args[0]
            yield name, call.lineno, ast.unparse(arg), module.safe(arg, scope)


def test_no_sql_is_built_from_data() -> None:
    calls = list(sql_calls(_package()))
    assert len(calls) >= 10  # the check sees the loader and migrations
    unsafe = [f"pmta_pipe/{f}.py:{line}: {text}" for f, line, text, ok in calls if not ok]
    assert unsafe == [], (
        "SQL text not provably made of literals and constants: pass data as parameters "
        "(%s) or compose with psycopg.sql.Identifier/Literal"
    )


PLANTED = {
    "consts": (
        "TABLE = 'pmta.events'\n"
        "COLUMNS = ', '.join(('a', 'b'))\n"
        "def table_sql(name, where='true'):\n"
        "    return f'SELECT * FROM {name} WHERE {where}'\n"
    ),
    "planted": (
        "from psycopg import sql\n"
        "from pmta_pipe import consts\n"
        "from pmta_pipe.consts import COLUMNS, table_sql\n"
        "LIMIT = 10\n"
        "MEASURES = {'k': 'SELECT 5', 'm': frozenset(('a',))}\n"
        "QUERY = f'SELECT {COLUMNS} FROM {consts.TABLE} LIMIT {LIMIT}'\n"
        "_later = 'SELECT 1'\n"
        "def rebind(x):\n"
        "    global _later\n"
        "    _later = x\n"
        "def bad(conn, name, rows):\n"
        "    conn.execute(f\"SELECT * FROM t WHERE a = '{name}'\")\n"  # f-string
        "    q = 'SELECT ' + name\n"
        "    conn.execute(q)\n"  # + through a local
        "    conn.execute('SELECT %s' % name)\n"  # %
        "    conn.execute('SELECT {}'.format(name))\n"  # .format
        "    conn.execute(name.encode())\n"  # a parameter
        "    parts = ['SELECT 1']\n"
        "    parts.append(name)\n"
        "    conn.execute(' '.join(parts))\n"  # data appended to a list of constants
        "    conn.execute(', '.join(r for r in rows))\n"  # a comprehension over data
        "    conn.execute(sql.SQL(name))\n"  # psycopg.sql.SQL does not quote
        "    conn.execute(table_sql(name))\n"  # a helper that interpolates its argument
        "    conn.execute(consts.table_sql('t', where=name))\n"  # the same, keyword
        "    conn.execute(_later)\n"  # a module name some function rebinds
        "    with open('x') as fh:\n"
        "        conn.execute(fh.read())\n"  # read at run time
        "    for stmt in rows:\n"
        "        conn.copy(stmt)\n"  # copy too
        "    conn.execute(name or QUERY)\n"  # one of the values is data
        "    conn.execute(MEASURES.get('k', name))\n"  # the default given is data
        "    conn.execute(joined('SELECT', name))\n"  # data among *parts
        "    _run(conn, name)\n"
        "def joined(*parts):\n"
        "    return ' '.join(parts)\n"
        "def _run(conn, statement):\n"
        "    conn.execute(statement)\n"  # a private helper one caller gives data
        "def _run_fixed(conn, statement, more=QUERY):\n"
        "    conn.execute(statement)\n"  # every caller gives constants
        "    conn.execute(more)\n"
        "def good(conn, name):\n"
        "    conn.execute('SELECT 1')\n"
        "    conn.execute(QUERY)\n"
        "    conn.execute(consts.TABLE.encode())\n"
        "    conn.execute(f'SET LOCAL lock_timeout = {int(name)}')\n"
        "    conn.execute(sql.SQL('SELECT {}').format(sql.Identifier(name)))\n"
        "    conn.execute(table_sql('pmta.events'))\n"
        "    conn.execute(table_sql(consts.TABLE, where='a = %s'), (name,))\n"
        "    q = QUERY if name else 'SELECT 2'\n"
        "    conn.execute(q + ' FOR UPDATE')\n"
        "    for stmt in ('BEGIN', QUERY):\n"
        "        conn.executemany(stmt, [(name,)])\n"
        "    _run(conn, 'SELECT 3')\n"
        "    _run_fixed(conn, sql.SQL('DROP TABLE {}').format(sql.Identifier(name)))\n"
        "    _run_fixed(conn, statement=QUERY, more='SELECT 4')\n"
        "    conn.execute(MEASURES.get('k') or QUERY)\n"
        "    conn.execute(joined('SELECT', QUERY, consts.TABLE))\n"
    ),
}


def test_the_sql_check_catches_data_in_sql() -> None:
    package: dict[str, _Module] = {}
    for name, text in PLANTED.items():
        package[name] = _Module(ast.parse(text), package)
    verdicts: dict[str, list[bool]] = {}
    module = package["planted"]
    for call, scope in _calls(module.tree, None):
        assert scope is not None and isinstance(scope.fn, ast.FunctionDef)
        verdicts.setdefault(scope.fn.name, []).append(module.safe(call.args[0], scope))
    assert verdicts == {
        "bad": [False] * 16,
        "good": [True] * 11,
        "_run": [False],
        "_run_fixed": [True, True],
    }


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

    env = clean_env()
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
    # an opening quote that never closes, on a 3 MiB line: the line is one reject (its
    # first 1 MiB; the rest of the line is skipped), never pieces; the rest loads
    huge = b'd,2026-01-01 00:00:00+0000,o@example.com,"' + b"A" * (3 << 20) + b"\n"
    data = HEADER + _record(1) + huge + _record(2) + _record(3)
    proc = run_cli(["ingest"], cli_env, input=data, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    rcpts = {r[0] for r in conn.execute("SELECT rcpt FROM pmta.events").fetchall()}
    assert rcpts == {"user1@example.com", "user2@example.com", "user3@example.com"}
    assert count(conn, "SELECT count(*) FROM pmta.rejects") == 1
    (raw,) = conn.execute("SELECT raw_line FROM pmta.rejects").fetchone() or ("",)
    assert raw == huge[: 1 << 20].decode()


def test_one_endless_line_is_cut_at_the_record_limit() -> None:
    from pmta_pipe.framing import DEFAULT_MAX_RECORD_BYTES, ChunkSplitter

    splitter = ChunkSplitter()
    out: list[bytes] = []
    for _ in range(12):  # 3 MiB without a line break
        splitter.feed(b"A" * (1 << 18), out)
    splitter.finish(out)
    assert out and max(len(r) for r in out) <= DEFAULT_MAX_RECORD_BYTES
    assert out == [b"A" * DEFAULT_MAX_RECORD_BYTES]  # one piece: the line is one reject
    assert splitter.skipped_bytes == (3 << 20) - DEFAULT_MAX_RECORD_BYTES


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


_CSV_HEADER = b"type,timeLogged,orig,rcpt,dsnStatus,dsnDiag,jobId,vmta,bounceCat\n"
_CMD = b"=cmd|' /C calc'!A0"
#: report -> (records, {column: formula-like value the report must show neutralised})
_FORMULA_CASES: dict[str, tuple[bytes, dict[str, str]]] = {
    "jobs": (
        b"b,2026-01-01 00:00:01+0000,o@example.com,u1@example.com,5.1.1 (bad),"
        b'smtp;550 x,"' + _CMD + b'",vmta1,bad-mailbox\n',
        {"job_id": _CMD.decode()},
    ),
    "bounces": (
        b"b,2026-01-01 00:00:02+0000,o@example.com,u2@-evil.example,5.1.1 (bad),"
        b"smtp;550 x,j,vmta1,+cmd|x\n",
        {"provider": "-evil.example", "bounce_cat": "+cmd|x"},
    ),
    "deferrals": (
        b"t,2026-01-01 00:00:03+0000,o@example.com,u3@-evil.example,4.0.0 (x),"
        b"smtp;450 busy,j,vmta1,\n",
        {"provider": "-evil.example"},
    ),
    "patterns": (
        b"t,2026-01-01 00:00:04+0000,o@example.com,u4@-evil.example,4.0.0 (x),"
        b"@SUM(1+1) busy,j,vmta1,\n",
        {"provider": "-evil.example", "example": "@SUM(1+1) busy"},
    ),
}


@pytest.mark.parametrize("kind", sorted(_FORMULA_CASES))
def test_csv_reports_cannot_carry_spreadsheet_formulas(kind: str, cli_env: dict[str, str]) -> None:
    records, shown = _FORMULA_CASES[kind]
    ingest = run_cli(["ingest"], cli_env, input=_CSV_HEADER + records)
    assert ingest.returncode == 0, ingest.stderr.decode()
    proc = run_cli(
        ["report", kind, "--format", "csv", "--since", "2025-12-01", "--until", "2026-02-01"],
        cli_env,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    rows = list(csv.DictReader(io.StringIO(proc.stdout.decode())))
    assert len(rows) == 1, proc.stdout.decode()
    for column, value in shown.items():
        assert value.startswith(_FORMULA_START)
        assert rows[0][column] == "'" + value  # shown, but as text a spreadsheet will not run
    cells = [c for row in rows for c in row.values()]
    risky = [c for c in cells if c.startswith(_FORMULA_START) and not _is_number(c)]
    assert risky == []
