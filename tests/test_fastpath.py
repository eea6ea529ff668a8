"""The compiled parser against the pure-Python one: the same results for every input.

Both parsers read the same batches in lockstep and must agree on everything a
``ParsedBatch`` holds (rows, lines and their format, ids, times, raw text,
positions, rejects, days, headers) and on the state they carry to the next batch.
Inputs: the generated stream, ``samples/``, the reference samples, every input of
the parser tests (run again with ``tests.twin_parser``, which repeats each parse on
a pure-Python twin), and seeded random mutations of the generated stream. No database.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pmta_pipe import fastpath
from pmta_pipe.load import render_copy
from pmta_pipe.parse import ParsedBatch, RecordParser
from tests.helpers import ROOT, framed, generate, stream

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)

needs_extension = pytest.mark.skipif(
    not fastpath.available(), reason="the compiled extension is not built (no C compiler?)"
)


def assert_same(got: ParsedBatch, ref: ParsedBatch) -> None:
    """``got`` (compiled) holds exactly what ``ref`` (pure Python) holds."""
    assert got.positions == ref.positions
    assert got.rejects == ref.rejects
    assert got.raw == ref.raw
    assert got.ids == ref.ids
    assert got.times == ref.times
    assert got.days == ref.days
    assert got.headers == ref.headers
    assert got.records == ref.records
    assert [tuple(r) for r in got.rows] == [tuple(r) for r in ref.rows]
    assert (got.copy_format, got.lines) == (ref.copy_format, ref.lines)
    fmt, data = render_copy(ref.rows)  # what the loader writes for these rows
    assert (got.copy_format, "".join(got.lines)) == (fmt, data)
    assert got.ids == [r[1] for r in ref.rows] and got.times == [r[0] for r in ref.rows]


def both(
    batches: Sequence[Sequence[bytes]], *, torn_last: bool = False, source: str = "h"
) -> tuple[int, int]:
    """Parse ``batches`` with both parsers in lockstep; (rows, rejects) seen."""
    compiled = RecordParser(source, compiled=True)
    pure = RecordParser(source, compiled=False)
    rows = rejects = 0
    for n, batch in enumerate(batches):
        torn = torn_last and n == len(batches) - 1
        got = compiled.parse(batch, NOW, torn_last=torn)
        ref = pure.parse(batch, NOW, torn_last=torn)
        assert_same(got, ref)
        assert compiled.header.names == pure.header.names
        assert (compiled.header_line, compiled.next_position) == (
            pure.header_line,
            pure.next_position,
        )
        rows += len(ref.ids)
        rejects += len(ref.rejects)
    return rows, rejects


def batched(records: list[bytes], size: int) -> list[list[bytes]]:
    return [records[i : i + size] for i in range(0, len(records), size)] or [[]]


def test_paths_and_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fastpath.ENV, "python")
    assert fastpath.parser_path() == ("python", "pure Python: PMTA_PIPE_PARSER=python")
    assert RecordParser("h").compiled is False
    monkeypatch.setenv(fastpath.ENV, "nonsense")
    with pytest.raises(fastpath.ConfigError):
        fastpath.parser_path()
    monkeypatch.setenv(fastpath.ENV, "compiled")
    if fastpath.available():
        assert fastpath.parser_path() == ("compiled", "compiled C extension")
        assert RecordParser("h").compiled is True
    else:
        with pytest.raises(fastpath.ConfigError):
            RecordParser("h")
    monkeypatch.delenv(fastpath.ENV)
    assert RecordParser("h").compiled is fastpath.available()


def test_version_names_the_parser() -> None:
    from pmta_pipe import __version__
    from tests.helpers import clean_env

    for choice, words in (("python", "pure Python: PMTA_PIPE_PARSER=python"), ("auto", None)):
        env = dict(clean_env(), PMTA_PIPE_PARSER=choice)
        got = subprocess.run(
            [sys.executable, "-m", "pmta_pipe", "--version"],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        if words is None:
            words = "compiled C extension" if fastpath.available() else "pure Python: the"
        assert got.stdout.startswith(f"pmta-pipe {__version__} (parser: {words}")


def test_ci_builds_the_extension() -> None:
    """CI must test the compiled path: there, a missing build is a failure, not a skip."""
    if os.environ.get("CI") and os.environ.get(fastpath.ENV) != "python":
        assert fastpath.available(), "the compiled parser was not built in CI"


@needs_extension
def test_generated_stream() -> None:
    records = framed(stream(20000, days=3, seed=7))
    rows, rejects = both(batched(records, 5000))
    assert (rows, rejects) == (20000, 0)


@needs_extension
def test_bundled_sample_and_reference_samples() -> None:
    for path in (
        ROOT / "samples" / "acct-sample.csv",
        ROOT / "tests" / "data" / "pmta-samples.txt",
    ):
        records = framed(path.read_bytes())
        for size in (1, 7, 5000):
            both(batched(records, size))


@needs_extension
def test_the_parser_tests_inputs_through_both_parsers(tmp_path: Path) -> None:
    """test_parse, test_hostile_streams and test_torn_records with every parse compared."""
    files = ["tests/test_parse.py", "tests/test_hostile_streams.py", "tests/test_torn_records.py",
             "tests/test_json_parse.py"]  # fmt: skip
    env = {**os.environ, fastpath.ENV: "auto"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.twin_parser", "-p", "no:cacheprovider",
         *files],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "twin parser: 0 parse calls" not in proc.stdout


# -- seeded random mutations ---------------------------------------------------------------

ODD_TIMES = [
    "2026-01-15T14:23:11-07:00", "2026-01-15 14:23:11-07", "2026-01-15 14:23:11Z",
    "2026-01-15 14:23:11.250+0100", "1768486991", "1768486991.5", "01/15/2026 14:23:11-0700",
    "2026-01-15 14:23:11", "2026-02-29 00:00:00+0000", "2024-02-29 23:59:59-2359",
    "0001-01-01 00:10:00+0100", "9999-12-31 23:00:00-0200", "2026-01-15 24:00:00+0000",
    " 2026-01-15 14:23:11+0000", "2026-01-15 14:23:11-0000", "2026-01-15 14:23:11+2400",
    "2026-1-5 4:23:11+0000", "yesterday", "",
]  # fmt: skip
ODD_INTS = [
    "007",
    "+5",
    "-0",
    " 5",
    "2147483648",
    "-2147483648",
    "2147483647",
    "9" * 19,
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "1e3",
    "٣",
]
ODD_IPS = [
    "2001:db8::1",
    "2001:DB8:0:0:0:0:0:1",
    "::ffff:192.0.2.1",
    "fe80::1%eth0",
    "192.0.2.001",
    "192.0.2.256",
    "192.0.2",
    "192.0.2.1/24",
    " 192.0.2.1",
    "0.0.0.0",
]
ODD_TEXT = [
    'say "hi"',
    "a\\b",
    "tab\there",
    "é and ü",
    "日本",
    "\u00a0x",
    "a,b",
    '"',
    "",
    "x@Y.COM >",
    "x@ d.ORG",
    "x@",
    "@",
    "x@ë.com",
    "x@a@B.c",
    "x@>>D<>",
]
EXTRA_COLUMNS = [
    "header_X-Job",
    "userString",
    "arf_Foo",
    "rcpt",
    "header_X-Job",
    'we"ird',
    "pmtaPipeTimeFrom",
    "Ünï",
]
BASE = generate.HEADER.split(",")


def _field(value: str) -> str:
    if any(c in value for c in ',"\r\n') or (value[:1] == " " and random.random() < 0.5):
        return '"' + value.replace('"', '""') + '"'
    return value


def _mutate_line(rng: random.Random, line: bytes, names: list[str]) -> bytes:
    """One record changed in one or two of the ways a hostile stream has."""
    fields = line.split(b",")
    for _ in range(rng.choice((1, 1, 2))):
        kind = rng.randrange(16)
        i = rng.randrange(len(fields))
        if kind == 0:
            pos = rng.randrange(len(line) + 1)
            line = (
                line[:pos] + rng.choice((b'"', b'""', b'"x"y', b"\r", b"\n", b"\x00")) + line[pos:]
            )
            fields = line.split(b",")
        elif kind == 1:
            pos = rng.randrange(len(line) + 1)
            bad = rng.choice((b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc3\xa9", b"\xf0\x9f\x98\x80"))
            line = line[:pos] + bad + line[pos:]
            fields = line.split(b",")
        elif kind == 2:
            del fields[i]
        elif kind == 3:
            fields.insert(i, b"extra")
        elif kind == 4:
            fields[i] = b"x" * rng.choice((300, 5000, 70000))
        elif kind in (5, 6):
            t = rng.choice(ODD_TIMES).encode()
            fields[min(rng.choice((1, 1, 2)), len(fields) - 1)] = _field(t.decode()).encode()
        elif kind == 7 and "dlvSize" in names:
            fields[min(names.index("dlvSize"), len(fields) - 1)] = rng.choice(ODD_INTS).encode()
        elif kind == 8 and "dlvSourceIp" in names:
            fields[min(names.index("dlvSourceIp"), len(fields) - 1)] = rng.choice(ODD_IPS).encode()
        elif kind in (9, 10):
            fields[i] = _field(rng.choice(ODD_TEXT)).encode()
        elif kind == 11:
            fields[0] = rng.choice(
                (b"x-custom", b" d", b"D", b"\xef\xbb\xbfd", b"", b"type", b"tq")
            )
        elif kind == 12:
            line = rng.choice((b"", b"   ", b"\r", b",,,", b'"', b"d"))
            fields = line.split(b",")
        elif kind == 13:
            line = line + b"\r"
            fields = line.split(b",")
        elif kind == 14 and "rcpt" in names:
            fields[min(names.index("rcpt"), len(fields) - 1)] = _field(
                rng.choice(ODD_TEXT)
            ).encode()
        else:
            fields[i] = b'"' + fields[i].replace(b'"', b'""') + b'"'
    return b",".join(fields)


def _header(rng: random.Random) -> tuple[bytes, list[str]]:
    names = BASE[1:]
    rng.shuffle(names)
    names = names[: rng.randrange(3, len(names) + 1)]
    if rng.random() < 0.7 and "timeLogged" not in names:
        names.insert(0, "timeLogged")
    for _ in range(rng.randrange(0, 4)):
        names.insert(rng.randrange(len(names) + 1), rng.choice(EXTRA_COLUMNS))
    if rng.random() < 0.2:
        names = [n.upper() if rng.random() < 0.3 else n for n in names]
    first = rng.choice(("type", "type", "TYPE", " type ", '"type"', "\ufefftype"))
    return ",".join([_field(first), *map(_field, names)]).encode(), ["type", *names]


def _mutated_stream(seed: int, records: int = 1500) -> bytes:
    rng = random.Random(seed)
    lines = stream(records, days=2, seed=seed).split(b"\n")
    names = BASE
    out: list[bytes] = []
    for line in lines:
        if line.startswith(b"type,"):
            out.append(line)
            continue
        r = rng.random()
        if r < 0.01:
            header, names = _header(rng)
            out.append(header)
        elif r < 0.03:
            out.append(b"type," + ",".join(BASE[1:]).encode())
            names = BASE
        if line and names is not BASE:  # the record under another header: rewrite it
            values = dict(zip(BASE, line.decode().split(","), strict=False))
            extra = {n: rng.choice(("", "v", 'q"uote', "b\\s", "ü", "t\tab")) for n in names}
            line = ",".join(_field(values.get(n, extra[n])) for n in names).encode()
        if line and rng.random() < 0.25:
            line = _mutate_line(rng, line, names)
        out.append(line)
    return b"\n".join(out)


@needs_extension
@pytest.mark.parametrize("seed", range(12))
def test_random_mutations(seed: int) -> None:
    data = _mutated_stream(seed)
    records = framed(data)
    rng = random.Random(seed)
    sizes = [rng.choice((1, 3, 50, 400, 5000)) for _ in range(3)]
    for size in sizes:
        both(batched(records, size), torn_last=not data.endswith(b"\n"))


@needs_extension
@pytest.mark.parametrize("seed", range(4))
def test_json_records_among_csv_ones(seed: int) -> None:
    """JSON records (objects, broken ones, values that are no object) inside a CSV stream
    and as a JSON stream of their own: the compiled path hands every one to Python."""
    rng = random.Random(seed)
    csv_records = framed(_mutated_stream(seed))
    objects = [
        json.dumps({"type": rng.choice("dbt"), "timeLogged": f"2026-01-15 14:23:{s:02d}+0000",
                    "rcpt": f"u{s}@example.com", "header_x-job": rng.choice(("", "j"))}).encode()
        for s in range(60)
    ]  # fmt: skip
    odd = [b'{"type":"d","rcpt":', b"42", b'"type"', b"[1]", b"}", b'{"rcpt":"x"}', b" {}"]
    mixed = list(csv_records)
    for rec in objects + odd:
        mixed.insert(rng.randrange(len(mixed) + 1), rec)
    for size in (1, 9, 5000):
        both(batched(mixed, size))
    stream_of_json = framed(b"[\n" + b",\n".join(objects + odd[1:3]) + b"\n]")
    both(batched(stream_of_json, 7))


@needs_extension
def test_long_and_cut_records_and_other_sources() -> None:
    head = b"type,timeLogged,rcpt,dsnDiag\n"
    rec = b"d,2026-01-15 14:23:11+0000,a@b.c,"
    data = b"".join(
        [head, rec + b"x" * (1 << 20) + b"\n", rec + b"y" * ((1 << 20) - 40) + b"\n", rec + b"z\n"]
    )
    both([framed(data)])
    for source in ("tab\there", "back\\slash", "ünï", "\udcff"):
        both([framed(stream(50, days=1))], source=source)


@pytest.mark.slow
def test_without_a_compiler_the_package_installs_the_pure_parser(tmp_path: Path) -> None:
    """A wheel built where the C compiler fails (CC=false) installs, and parses alike."""
    import sysconfig

    if os.environ.get(fastpath.ENV) == "python":
        pytest.skip("checked in the run on the compiled path")
    import shutil

    base = {k: v for k, v in os.environ.items() if k not in (fastpath.ENV, "PYTHONPATH")}
    env = dict(base, CC="false")
    src, dist = tmp_path / "src", tmp_path / "dist"  # a copy without build/ or a built .so
    ignore = shutil.ignore_patterns(".*", "build", "dist", "out", "*.so", "__pycache__", "*.egg*")
    shutil.copytree(ROOT, src, ignore=ignore)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(src)],
        env=env, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    wheel = next(dist.glob("*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # dependencies
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(wheel)],
        env=base, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    code = (
        "import sys; from datetime import datetime, timezone; from pmta_pipe import fastpath\n"
        "from pmta_pipe.parse import RecordParser; from pmta_pipe.framing import ChunkSplitter\n"
        "out = []; s = ChunkSplitter(); s.feed(sys.stdin.buffer.read(), out); s.finish(out)\n"
        "b = RecordParser('h').parse(out, datetime(2026, 3, 1, 12, tzinfo=timezone.utc))\n"
        "print(fastpath.parser_path()[1]); print(''.join(b.lines), end='')\n"
    )
    data = stream(300, days=1)
    got = subprocess.run(
        [str(py), "-c", code], input=data, env=base, cwd=tmp_path, capture_output=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr.decode()
    why, _, lines = got.stdout.decode().partition("\n")
    assert why == "pure Python: the compiled extension is not built"
    assert lines == "".join(RecordParser("h").parse(framed(data), NOW).lines)
