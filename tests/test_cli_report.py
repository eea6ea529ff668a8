"""``pmta-pipe report``: real subprocesses on data fed through ``pmta-pipe ingest``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.test_reports import alert_rows, crafted, to_bytes

WINDOW = ["--since", "2026-03-01", "--until", "2026-03-03"]


@pytest.fixture
def env(cli_env: dict[str, str]) -> dict[str, str]:
    proc = run_cli(["ingest"], cli_env, input=to_bytes(crafted()))
    assert proc.returncode == 0, proc.stderr.decode()
    return cli_env


def report(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = run_cli(["report", *args], env)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def report_json(env: dict[str, str], *args: str) -> Any:
    code, out, err = report(env, *args, *WINDOW, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def test_summary_json(env: dict[str, str]) -> None:
    assert report_json(env, "summary") == [
        {"day": "2026-03-01", "received": 5, "delivered": 10, "bounced": 3, "expired": 1,
         "deferred": 7, "complaints": 1, "delivery_rate": 10 / 13, "bounce_rate": 3 / 13,
         "complaint_rate": 0.1},
        {"day": "2026-03-02", "received": 0, "delivered": 1, "bounced": 0, "expired": 0,
         "deferred": 0, "complaints": 0, "delivery_rate": 1.0, "bounce_rate": 0.0,
         "complaint_rate": 0.0},
    ]  # fmt: skip


def test_domains_table_is_aligned(env: dict[str, str]) -> None:
    code, out, err = report(env, "domains", *WINDOW)
    assert code == 0, err
    assert out == (
        "rcpt_domain  provider     delivered  bounced  deferred  delivery_rate\n"
        "-----------  -----------  ---------  -------  --------  -------------\n"
        "gmail.com    Gmail                7        2         2         77.78%\n"
        "yahoo.com    Yahoo                3        1         4         75.00%\n"
        "example.org  example.org          1        0         0        100.00%\n"
        "hotmail.com  Microsoft            0        0         1              -\n"
    )


def test_filters_and_top(env: dict[str, str]) -> None:
    assert report_json(env, "ips", "--source", "test-host", "--top", "1") == [
        {"dlv_source_ip": "10.0.0.1", "delivered": 7, "bounced": 2, "deferred": 3,
         "attempts": 12, "bounce_rate": 2 / 12, "deferral_rate": 3 / 12},
    ]  # fmt: skip
    assert report_json(env, "ips", "--source", "other-host") == []
    assert report_json(env, "providers", "--job", "j2", "--vmta", "v2") == [
        {"provider": "Yahoo", "delivered": 3, "bounced": 1, "deferred": 4, "delivery_rate": 0.75},
        {"provider": "example.org", "delivered": 1, "bounced": 0, "deferred": 0,
         "delivery_rate": 1.0},
    ]  # fmt: skip
    assert report_json(env, "deferrals", "--domain", "yahoo.com") == [
        {"provider": "Yahoo", "code": "421 4.7.0", "n": 4}
    ]
    assert report_json(env, "bounces", "--job", "j1") == [
        {"provider": "Gmail", "bounce_cat": "bad-mailbox", "bounce_class": "hard", "n": 1,
         "remote_bounces": 0},
        {"provider": "Gmail", "bounce_cat": "message-expired", "bounce_class": "soft", "n": 1,
         "remote_bounces": 0},
    ]  # fmt: skip
    assert report_json(env, "complaints") == [
        {"provider": "Gmail", "job_id": "j1", "dlv_source_ip": "10.0.0.1", "complaints": 1,
         "delivered": 7, "complaint_rate": 1 / 7},
    ]  # fmt: skip
    assert report_json(env, "delivery-times", "--domain", "gmail.com") == [
        {"provider": "Gmail", "deliveries": 6, "p50_seconds": 20.0, "p90_seconds": 50.0,
         "p99_seconds": 50.0},
    ]  # fmt: skip


def test_window_selects_whole_utc_days(env: dict[str, str]) -> None:
    code, out, err = report(env, "summary", "--since", "2026-03-02T00:00:00Z", "--until",
                            "2026-03-02 12:00:00+0000", "--format", "csv")  # fmt: skip
    assert code == 0, err
    assert out == (
        "day,received,delivered,bounced,expired,deferred,complaints,delivery_rate,bounce_rate,"
        "complaint_rate\n2026-03-02,0,1,0,0,0,0,1.0,0.0,0.0\n"
    )
    code, out, err = report(env, "summary", "--since", "7d")
    assert code == 0, err
    assert out.endswith("(no rows)\n")  # the data is from 2026-03, long before "now"


def test_alerts_exit_code(cli_env: dict[str, str]) -> None:
    proc = run_cli(["ingest"], cli_env, input=to_bytes(alert_rows()))
    assert proc.returncode == 0, proc.stderr.decode()
    code, out, err = report(cli_env, "alerts", *WINDOW, "--fail-on-alert", "--format", "csv")
    assert code == 3, err
    assert out == (
        "day,dlv_source_ip,provider,alert,observed,threshold,attempts\n"
        "2026-03-02,10.9.9.8,,ip_bounce_rate,0.03,0.02,100\n"
        "2026-03-02,10.9.9.9,Gmail,ip_provider_deferral_rate,1.0,0.1,150\n"
        "2026-03-02,10.9.9.9,,ip_stopped_delivering,0.0,0.0,150\n"
    )
    code, out, err = report(cli_env, "alerts", "--since", "2026-03-01", "--until", "2026-03-02",
                            "--fail-on-alert", "--format", "json")  # fmt: skip
    assert (code, out) == (0, "[]\n"), err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["deferrals", "--job", "j1"],
         "error: --job does not apply to the 'deferrals' report (its view has no such column)"
         " (hint: 'deferrals' can be filtered by --source, --vmta, --domain)"),
        (["alerts", "--domain", "gmail.com"],
         "error: --domain does not apply to the 'alerts' report (its view has no such column)"
         " (hint: 'alerts' takes no filters)"),
        (["summary", "--since", "last tuesday"],
         "error: --since 'last tuesday' is not a time (hint: use an ISO timestamp"
         " (2026-01-02T15:00:00+00:00), a date (2026-01-02) or an age (90m, 24h, 7d, 2w))"),
        (["summary", "--since", "2026-03-02", "--until", "2026-03-01"],
         "error: --since (2026-03-02T00:00:00+00:00) is not before --until"
         " (2026-03-01T00:00:00+00:00) (hint: give a --since earlier than --until)"),
        (["summary", "--top", "0"], "error: --top must be at least 1 (hint: e.g. --top 20)"),
        (["summary", "--fail-on-alert"],
         "error: --fail-on-alert only applies to 'report alerts'"
         " (hint: run 'pmta-pipe report alerts --fail-on-alert')"),
    ],
)  # fmt: skip
def test_bad_flags_are_one_line_errors(
    cli_env: dict[str, str], args: list[str], message: str
) -> None:
    code, out, err = report(cli_env, *args)
    assert (code, out, err) == (2, "", message + "\n")
