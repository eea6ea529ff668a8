"""Block lists: the seeded patterns on real-looking replies, and pmta.blocklist_hits
exact against an independent count of the input.

The independent count is Python over the input rows: every record is built from a
reply whose list is known by construction (``None`` for throttling and ordinary
replies), and the hits are counted per UTC day, IP, provider and list, as the view
must count them, after a live load, once materialized, after late records into a
day already materialized, and after edits of the pattern table.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pmta_pipe import materialize
from pmta_pipe.report import REPORTS
from tests.conftest import ROOT, run_cli
from tests.test_grafana import ALL, iter_panels, load_dashboard, query_variables
from tests.test_grafana import expand as grafana_expand
from tests.test_reports import load_bytes, rec, to_bytes
from tests.test_roles import RolesDb, load_as, roles_db

__all__ = ["roles_db"]  # the fixture, shared with tests/test_roles.py

Conn = psycopg.Connection[tuple[Any, ...]]
IP = "192.0.2.20"

#: (list the reply names, reply): every seeded list, as receivers word it
LISTED: list[tuple[str, str, str | None]] = [
    ("Spamhaus ZEN",
     f"smtp;554 5.7.1 Service unavailable; Client host [{IP}] blocked using zen.spamhaus.org;"
     f" https://www.spamhaus.org/query/ip/{IP}", f"https://www.spamhaus.org/query/ip/{IP}"),
    ("Spamhaus SBL",
     f"smtp;550 5.7.1 Service unavailable; Client host [{IP}] blocked using sbl.spamhaus.org;"
     " https://www.spamhaus.org/sbl/query/SBL545454", "https://www.spamhaus.org/sbl/query/SBL545454"),
    # ZEN named, the SBL record linked: one hit, for the more specific zone
    ("Spamhaus SBL",
     f"smtp;554 5.7.1 Service unavailable; Client host [{IP}] blocked using zen.spamhaus.org;"
     " https://www.spamhaus.org/sbl/query/SBL545454", "https://www.spamhaus.org/sbl/query/SBL545454"),
    ("Spamhaus XBL",
     f"smtp;550 5.7.1 Service unavailable; Client host [{IP}] blocked using xbl.spamhaus.org;"
     f" https://www.spamhaus.org/query/ip/{IP}", f"https://www.spamhaus.org/query/ip/{IP}"),
    ("Spamhaus XBL",
     f"smtp;550 rejected because {IP} is in a black list at zen.spamhaus.org (127.0.0.4)", None),
    ("Spamhaus PBL",
     f"smtp;554 5.7.1 Service unavailable; Client host [{IP}] blocked using pbl.spamhaus.org;"
     " https://www.spamhaus.org/pbl/query/PBL1234567.",
     "https://www.spamhaus.org/pbl/query/PBL1234567"),
    ("Spamhaus DBL",
     "smtp;554 5.7.1 <bounce@news.example.com>: Sender address rejected: blocked using"
     " dbl.spamhaus.org; https://www.spamhaus.org/query/domain/news.example.com",
     "https://www.spamhaus.org/query/domain/news.example.com"),
    ("Spamhaus CSS",
     f"smtp;550 5.7.1 Service unavailable; Client host [{IP}] blocked using Spamhaus CSS;"
     f" https://check.spamhaus.org/listed/?searchterm={IP}",
     f"https://check.spamhaus.org/listed/?searchterm={IP}"),
    ("Spamhaus",
     f"smtp;550 5.7.1 Service unavailable, Client host [{IP}] blocked using Spamhaus. To request"
     f" removal from this list see https://www.spamhaus.org/query/ip/{IP} (AS3130)."
     " [BN8NAM12FT033.eop-nam12.prod.protection.outlook.com]",
     f"https://www.spamhaus.org/query/ip/{IP}"),
    ("SpamCop",
     f"smtp;554 5.7.1 Service unavailable; Client host [{IP}] blocked using bl.spamcop.net;"
     f" Blocked - see https://www.spamcop.net/bl.shtml?{IP}",
     f"https://www.spamcop.net/bl.shtml?{IP}"),
    ("Barracuda",
     f"smtp;554 Service unavailable; Client host [{IP}] blocked using Barracuda Reputation;"
     f" http://www.barracudanetworks.com/reputation/?r=1&ip={IP}",
     f"http://www.barracudanetworks.com/reputation/?r=1&ip={IP}"),
    ("Barracuda",
     f"smtp;554 5.7.1 Service unavailable; Client host [mta.example.com] blocked using"
     f" b.barracudacentral.org; http://bbl.barracudacentral.com/q.cgi?ip={IP}",
     f"http://bbl.barracudacentral.com/q.cgi?ip={IP}"),
    ("UCEPROTECT",
     f"smtp;550 5.7.1 Service unavailable; Client host [{IP}] blocked using"
     f" dnsbl-1.uceprotect.net; IP {IP} is UCEPROTECT-Level 1 listed. See"
     f" http://www.uceprotect.net/rblcheck.php?ipr={IP}",
     f"http://www.uceprotect.net/rblcheck.php?ipr={IP}"),
    ("SORBS",
     f"smtp;554 5.7.1 Service unavailable; Client host [{IP}] blocked using dnsbl.sorbs.net;"
     f" Currently Sending Spam See: http://www.sorbs.net/lookup.shtml?{IP}",
     f"http://www.sorbs.net/lookup.shtml?{IP}"),
    ("Abuseat CBL",
     f"smtp;550 5.7.1 Service unavailable; Client host [{IP}] blocked using cbl.abuseat.org;"
     f" Blocked - see http://cbl.abuseat.org/lookup.cgi?ip={IP}",
     f"http://cbl.abuseat.org/lookup.cgi?ip={IP}"),
    ("Invaluement",
     f"smtp;554 5.7.1 Service unavailable; Client host [{IP}] blocked using ivmSIP;"
     f" https://www.invaluement.com/lookup/?item={IP}",
     f"https://www.invaluement.com/lookup/?item={IP}"),
    ("Proofpoint",
     f"smtp;554 5.7.0 Blocked - see https://ipcheck.proofpoint.com/?ip={IP}",
     f"https://ipcheck.proofpoint.com/?ip={IP}"),
    ("Cloudmark",
     f"smtp;550 5.3.2 cmsmtp {IP} is listed on Cloudmark CSI-Global. Please visit"
     " https://csi.cloudmark.com/en/reset/ to request removal",
     "https://csi.cloudmark.com/en/reset/"),
    ("Microsoft S3150",
     f"smtp;550 5.7.1 Unfortunately, messages from [{IP}] weren't sent. Please contact your"
     " Internet service provider since part of their network is on our block list (S3150)."
     " You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors."
     " [VE1EUR01FT080.eop-EUR01.prod.protection.outlook.com]", None),
    ("Microsoft block list",
     f"smtp;550 5.7.1 Unfortunately, messages from [{IP}] weren't sent. Please contact your"
     " Internet service provider since part of their network is on our block list (S3140).",
     None),
    ("Microsoft 365 banned IP",
     f"smtp;550 5.7.606 Access denied, banned sending IP [{IP}]. To request removal from this"
     " list please visit https://sender.office.com/ and follow the directions.",
     "https://sender.office.com/"),
    ("Yahoo TSS09",
     f"smtp;553 5.7.2 [TSS09] All messages from {IP} will be permanently deferred; Retrying will"
     " NOT succeed. See https://postmaster.yahooinc.com/error-codes",
     "https://postmaster.yahooinc.com/error-codes"),
    ("Gmail low IP reputation",
     f"smtp;550-5.7.1 [{IP} 12] Our system has detected that this message is likely suspicious"
     " due to the very low reputation of the sending IP address. To best protect our users from"
     " spam, the message has been blocked. Please visit"
     " https://support.google.com/mail/answer/188131 for more information."
     " a1si123456qkb.12 - gsmtp", "https://support.google.com/mail/answer/188131"),
    ("Gmail very low reputation",
     f"smtp;550-5.7.1 [{IP}] Our system has detected that this message is likely suspicious due"
     " to the very low reputation of the sender. - gsmtp", None),
    # a multi-line reply as PowerMTA joins it: the continuation code inside the sentence
    ("Gmail low domain reputation",
     f"smtp;421-4.7.0 [{IP} 15] Our system has detected that this message is suspicious due"
     " to the very low 421-4.7.0 reputation of the sending domain. To best protect our users"
     " from spam, the 421-4.7.0 message has been blocked. Please visit 421 4.7.0"
     " https://support.google.com/mail/answer/188131 for more information. - gsmtp",
     "https://support.google.com/mail/answer/188131"),
]  # fmt: skip

#: replies that name no list: throttling, content, ordinary rejections, a list's name
#: in an address, a list's error answer to a misconfigured receiver
NOT_LISTED = [
    f"smtp;421 4.7.28 [{IP} 15] Our system has detected an unusual rate of unsolicited mail"
    " originating from your IP address. To protect our users from spam, mail sent from your IP"
    " address has been temporarily rate limited. - gsmtp",
    "smtp;550-5.7.1 [192.0.2.20] Our system has detected that this message is likely"
    " unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been"
    " blocked. - gsmtp",
    "smtp;452 4.2.2 The email account that you tried to reach is over quota. - gsmtp",
    f"smtp;421 4.7.0 [TSS04] Messages from {IP} temporarily deferred due to unexpected volume or"
    " user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
    f"smtp;451 4.7.650 The mail server [{IP}] has been temporarily rate limited due to IP"
    " reputation. For e-mail delivery information, see https://postmaster.live.com (S775)",
    "smtp;550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302).",
    f"smtp;554 5.7.1 Service unavailable; Client host [{IP}] blocked using zen.spamhaus.org;"
    " Error: open resolver; https://check.spamhaus.org/returnc/pub/198.51.100.53/",
    "smtp;550 5.7.1 Service unavailable; Client host [192.0.2.20] blocked using"
    " zen.spamhaus.org=127.255.255.254",
    "smtp;550 5.1.1 <bob@spamcop.net>: Recipient address rejected: User unknown",
    "smtp;550 5.1.1 <spamcop-alerts@example.com>: Recipient address rejected: User unknown",
    "smtp;550 5.1.1 <info@uceprotect.net>... User unknown",
    "smtp;550 5.1.1 <mary@cloudmark.com>: Recipient address rejected: User unknown",
    "smtp;550 5.1.1 <x@abuseat.org>... No such user here",
    "smtp;550 5.1.1 <support@invaluement.com>: user unknown",
    "smtp;554 5.7.1 Message rejected by Barracuda Email Security Service content policy",
    "smtp;550 5.7.1 Message refused: it absorbs too many resources",
    "smtp;550 5.1.1 User unknown (proofpoint.com)",
    "smtp;550 5.7.26 Unauthenticated email from example.com is not accepted due to domain's"
    " DMARC policy. - gsmtp",
    "smtp;450 4.2.0 <g@example.org>: Recipient address rejected: Greylisted",
    "smtp;421 4.4.1 connection refused",
]


def match(conn: Conn, text: str) -> tuple[str, str | None] | None:
    row = conn.execute("SELECT * FROM pmta.blocklist_match(%s)", (text,)).fetchone()
    return None if row is None else (row[0], row[1])


@pytest.mark.parametrize(
    ("expected", "text", "url"), LISTED, ids=[f"{b}-{i}" for i, (b, _, _) in enumerate(LISTED)]
)
def test_a_reply_names_its_list(conn: Conn, expected: str, text: str, url: str | None) -> None:
    assert match(conn, text) == (expected, url)
    # PowerMTA writes the reply as the receiver sent it: case does not matter
    assert match(conn, text.upper()) is not None


@pytest.mark.parametrize("text", NOT_LISTED)
def test_an_ordinary_reply_names_no_list(conn: Conn, text: str) -> None:
    assert match(conn, text) is None


def test_every_seeded_list_has_a_reply(conn: Conn) -> None:
    seeded = {r[0] for r in conn.execute("SELECT blocklist FROM pmta.blocklist_patterns")}
    assert seeded == {b for b, _, _ in LISTED}
    with pytest.raises(psycopg.errors.InvalidRegularExpression):
        conn.execute(
            "INSERT INTO pmta.blocklist_patterns (priority, blocklist, pattern)"
            " VALUES (1, 'x', '(')"
        )


def test_keywords_only_speed_up(conn: Conn) -> None:
    """The keywords rule out texts, never change an answer: every reply gives the same list
    with them and without them; a pattern changed without new keywords loses them."""
    texts = [t for _, t, _ in LISTED] + NOT_LISTED
    with_words = [match(conn, t) for t in texts]
    assert conn.execute("SELECT pmta.blocklist_prefilter() IS NOT NULL").fetchone() == (True,)
    conn.execute("UPDATE pmta.blocklist_patterns SET keywords = NULL")
    assert conn.execute("SELECT pmta.blocklist_prefilter() IS NULL").fetchone() == (True,)
    assert [match(conn, t) for t in texts] == with_words
    conn.execute("UPDATE pmta.blocklist_patterns SET keywords = '{spamcop}'"
                 " WHERE blocklist = 'SpamCop'")  # fmt: skip
    conn.execute("UPDATE pmta.blocklist_patterns SET pattern = 'spam-?cop'"
                 " WHERE blocklist = 'SpamCop'")  # fmt: skip
    got = conn.execute("SELECT keywords FROM pmta.blocklist_patterns WHERE blocklist = 'SpamCop'")
    assert got.fetchall() == [(None,)]
    assert match(conn, "smtp;554 blocked by SPAM-COP") == ("SpamCop", None)
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE pmta.blocklist_patterns SET keywords = '{SpamCop}'")


# --- the view, exact against the input --------------------------------------------------

PROVIDERS = {"gmail.com": "Gmail", "yahoo.com": "Yahoo", "hotmail.com": "Microsoft"}
IPS = ["192.0.2.20", "192.0.2.21", "192.0.2.22"]
THROTTLED = [NOT_LISTED[0], NOT_LISTED[3], NOT_LISTED[4]]
ORDINARY = [NOT_LISTED[2], NOT_LISTED[5], NOT_LISTED[8], NOT_LISTED[18], NOT_LISTED[6]]

Labelled = list[tuple[list[str], str | None]]  # (record row, its list or None)
#: the replies of the streams: not the ZEN reply linking an SBL record, which differs
#: from the plain ZEN reply only in its URL, so that both fall in one rollup group
#: (see test_replies_differing_only_in_a_url_count_as_their_group)
STREAM_LISTED = [r for i, r in enumerate(LISTED) if i != 2]


def mixed(day: str, seed: int, k: int) -> Labelled:
    """k records of one UTC day: blocklisted, throttled and ordinary replies as t, b, tq and
    rb records from three IPs to four domains, and deliveries; each labelled with its list."""
    out: Labelled = []
    domains = ["gmail.com", "yahoo.com", "hotmail.com", "corp.example"]
    for i in range(k):
        j = (i * 7 + seed * 13) % 97
        ip = IPS[j % 3]
        dom = domains[(j // 3) % 4]
        when = f"{day} {(j * 5) % 24:02d}:{i % 60:02d}:{(i * 11) % 60:02d}+0000"
        kind = j % 5
        rtype = ["t", "b", "t", "tq", "rb"][(i + seed) % 5]
        if kind == 0:  # a delivery
            out.append((rec("d", when, f"u{i}@{dom}", dlvSourceIp=ip, vmta="v1"), None))
            continue
        if kind in (1, 2):
            label, text, _ = STREAM_LISTED[(len(out) + seed) % len(STREAM_LISTED)]
            text = text.replace(IP, ip)
            listed: str | None = label
        elif kind == 3:
            text, listed = THROTTLED[j % len(THROTTLED)].replace(IP, ip), None
        else:
            text, listed = ORDINARY[j % len(ORDINARY)].replace(IP, ip), None
        if rtype == "tq":
            row = rec("tq", when, queue=f"{dom}/v1", dsnStatus="4.0.0 (x)", dsnDiag=text,
                      dlvSourceIp=ip, vmta="v1")  # fmt: skip
        else:
            row = rec(rtype, when, f"r{i}@{dom}", dsnStatus="5.0.0 (x)", dsnDiag=text,
                      bounceCat="spam-related", dlvSourceIp=ip, vmta=f"v{i % 2}")  # fmt: skip
        out.append((row, listed))
    return out


def independent(*streams: Labelled) -> Counter[tuple[str, str, str, str]]:
    """Hits per (UTC day, IP, provider, list), counted over the input rows."""
    want: Counter[tuple[str, str, str, str]] = Counter()
    for rows in streams:
        for row, listed in rows:
            if listed is None:
                continue
            fields = dict(zip(["type", "timeLogged", "rcpt", "queue", "dlvSourceIp"],
                              [row[0], row[1], row[4], row[13], row[8]], strict=True))  # fmt: skip
            when = datetime.strptime(fields["timeLogged"], "%Y-%m-%d %H:%M:%S%z")
            day = when.astimezone(timezone.utc).strftime("%Y-%m-%d")
            domain = (fields["rcpt"] or fields["queue"].split("/")[0]).rsplit("@", 1)[-1]
            want[day, fields["dlvSourceIp"], PROVIDERS.get(domain, domain), listed] += 1
    return want


def reported(conn: Conn) -> Counter[tuple[str, str, str, str]]:
    got: Counter[tuple[str, str, str, str]] = Counter()
    for day, ip, provider, listed, n, t, b, tq, rb in conn.execute(
        "SELECT day::text, host(dlv_source_ip), provider, blocklist, n, deferred, bounced,"
        " queue_deferrals, remote_bounces FROM pmta.blocklist_hits"
    ):
        key = (day, ip, provider, listed)
        assert key not in got, f"two rows for {key}"
        assert n == t + b + tq + rb
        got[key] = n
    return got


def load(dsn: str, rows: Labelled) -> None:
    assert load_bytes(dsn, to_bytes([r for r, _ in rows]), batch_rows=50) == len(rows)


def test_hits_equal_an_independent_count_live_materialized_and_after_late_records(
    dsn: str, conn: Conn
) -> None:
    first = mixed("2026-03-01", 1, 600) + mixed("2026-03-02", 2, 400)
    load(dsn, first)
    assert sum(independent(first).values()) > 300
    assert {k[3] for k in independent(first)} == {b for b, _, _ in LISTED}
    assert reported(conn) == independent(first)
    assert materialize.run(conn, grace=0).caught_up
    assert reported(conn) == independent(first)
    # late records into both days, already materialized
    late = mixed("2026-03-01", 3, 300) + mixed("2026-03-02", 4, 100)
    load(dsn, late)
    assert conn.execute("SELECT count(*) FROM pmta.rollup_invalidations").fetchone() != (0,)
    assert reported(conn) == independent(first, late)
    got = materialize.run(conn, grace=0)
    assert got.caught_up and got.redone_days == 2
    assert reported(conn) == independent(first, late)


BY_ROW = """
    SELECT to_char(r.bucket AT TIME ZONE 'UTC', 'YYYY-MM-DD'), host(r.dlv_source_ip),
           coalesce(mp.provider, r.rcpt_domain), m.blocklist, sum(r.n)::bigint
    FROM pmta.rollup_diag r
    LEFT JOIN pmta.mailbox_providers mp ON mp.domain = r.rcpt_domain
    CROSS JOIN LATERAL pmta.blocklist_match(r.example) m
    GROUP BY 1, 2, 3, 4
"""


def test_matching_once_per_group_is_matching_every_rollup_row(dsn: str, conn: Conn) -> None:
    rows = mixed("2026-03-01", 10, 400)
    load(dsn, rows)
    materialize.run(conn, grace=0)
    by_row = Counter({(d, ip, p, b): n for d, ip, p, b, n in conn.execute(BY_ROW)})
    assert reported(conn) == by_row == independent(rows)


def test_replies_differing_only_in_a_url_count_as_their_group(dsn: str, conn: Conn) -> None:
    """The rollup keeps one example per normalized reply: two replies of one receiver to
    one IP on one day that differ only in a URL are one group, counted for the list its
    example (the smallest reply) names. The total stays exact."""
    zen, sbl = LISTED[0][1], LISTED[2][1]
    rows: Labelled = []
    for i, text in enumerate([zen, sbl, sbl]):
        row = rec("t", f"2026-03-01 10:0{i}:00+0000", f"u{i}@gmail.com", dsnDiag=text,
                  dlvSourceIp=IP, vmta="v1")  # fmt: skip
        rows.append((row, None))
    load(dsn, rows)
    got = conn.execute("SELECT blocklist, n FROM pmta.blocklist_hits").fetchall()
    assert got == [(match(conn, min(zen, sbl))[0], 3)]  # type: ignore[index]


def test_an_edit_of_the_patterns_relabels_at_once(dsn: str, conn: Conn) -> None:
    rows = mixed("2026-03-01", 5, 500)
    load(dsn, rows)
    materialize.run(conn, grace=0)
    before = reported(conn)
    spamhaus = sum(n for k, n in before.items() if k[3].startswith("Spamhaus"))
    assert spamhaus > 0
    # one name for the whole family; a throttling signal as a list of its own; a list gone
    conn.execute("UPDATE pmta.blocklist_patterns SET blocklist = 'Spamhaus (any zone)'"
                 " WHERE blocklist LIKE 'Spamhaus%'")  # fmt: skip
    conn.execute("INSERT INTO pmta.blocklist_patterns (priority, blocklist, pattern)"
                 " VALUES (5, 'Yahoo TSS04', '\\mTSS04\\M')")  # fmt: skip
    conn.execute("DELETE FROM pmta.blocklist_patterns WHERE blocklist = 'SpamCop'")
    after = reported(conn)
    assert sum(n for k, n in after.items() if k[3] == "Spamhaus (any zone)") == spamhaus
    assert not any(k[3].startswith("Spamhaus ") and k[3] != "Spamhaus (any zone)" for k in after)
    assert not any(k[3] == "SpamCop" for k in after)
    tss04 = sum(1 for r, _ in rows if "[TSS04]" in r[6])
    assert tss04 > 0
    assert sum(n for k, n in after.items() if k[3] == "Yahoo TSS04") == tss04
    # the examples and URLs follow the lists and show no address
    for example, url in conn.execute("SELECT example, lookup_url FROM pmta.blocklist_hits"):
        assert "bounce@" not in example and (url is None or "@" not in url)


def test_a_reply_quoting_an_address_is_masked(dsn: str, conn: Conn) -> None:
    dbl = LISTED[6][1]
    load(dsn, [(rec("b", "2026-03-01 10:00:00+0000", "a@gmail.com", dsnDiag=dbl,
                    dlvSourceIp=IP), "Spamhaus DBL")])  # fmt: skip
    got = conn.execute("SELECT blocklist, example, lookup_url FROM pmta.blocklist_hits").fetchall()
    assert got == [("Spamhaus DBL", dbl.replace("<bounce@", "<…@"),
                    "https://www.spamhaus.org/query/domain/news.example.com")]  # fmt: skip


# --- everywhere the user looks --------------------------------------------------------


def test_report_blocklists(cli_env: dict[str, str]) -> None:
    rows = mixed("2026-03-01", 6, 300) + mixed("2026-03-02", 7, 200)
    proc = run_cli(["ingest"], cli_env, input=to_bytes([r for r, _ in rows]))
    assert proc.returncode == 0, proc.stderr.decode()
    window = ["--since", "2026-03-01", "--until", "2026-03-03"]
    proc = run_cli(["report", "blocklists", *window, "--format", "json", "--top", "1000"],
                   cli_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    got = json.loads(proc.stdout)
    want: Counter[tuple[str, str, str]] = Counter()
    days: dict[tuple[str, str, str], set[str]] = {}
    for (day, ip, provider, listed), n in independent(rows).items():
        want[ip, provider, listed] += n
        days.setdefault((ip, provider, listed), set()).add(day)
    assert {(r["dlv_source_ip"], r["provider"], r["blocklist"]): r["n"] for r in got} == want
    ns = [r["n"] for r in got]
    assert ns == sorted(ns, reverse=True)
    for r in got:
        key = (r["dlv_source_ip"], r["provider"], r["blocklist"])
        assert (r["first_day"], r["last_day"]) == (min(days[key]), max(days[key]))
        assert r["n"] == r["deferred"] + r["bounced"] + r["queue_deferrals"] + r["remote_bounces"]
    proc = run_cli(["report", "blocklists", *window, "--top", "3"], cli_env)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert lines[0].split()[:4] == ["dlv_source_ip", "provider", "blocklist", "n"]
    assert len(lines) == 2 + 3
    proc = run_cli(["report", "blocklists", "--since", "7d", "--format", "csv"], cli_env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().count("\n") == 1  # the header: 2026-03 is long before now
    proc = run_cli(["report", "blocklists", *window, "--vmta", "v1"], cli_env)
    assert proc.returncode == 2
    assert "'blocklists' takes no filters" in proc.stderr.decode()


def test_every_report_kind_is_documented() -> None:
    reports = (ROOT / "docs" / "reports.md").read_text(encoding="utf-8")
    for kind in REPORTS:
        assert f"\n| {kind} |" in reports, f"report {kind} missing from docs/reports.md"
    assert "pmta-pipe report blocklists" in reports
    assert "blocklist_hits" in (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")


def test_the_grafana_panel_shows_the_hits_to_a_reader(roles_db: RolesDb, tmp_path: Path) -> None:
    rows = mixed("2026-01-01", 8, 400) + mixed("2026-01-02", 9, 300)
    load_as(roles_db.writer, to_bytes([r for r, _ in rows]))
    dash = load_dashboard()
    variables = {v["name"]: v for v in query_variables(dash)}
    (panel,) = [p for p in iter_panels(dash["panels"]) if p["title"] == "Block-list hits"]
    assert panel["targets"][0]["format"] == "table"
    want = independent(rows)
    per_ip_list: Counter[tuple[str, str]] = Counter()
    for (_, ip, _, listed), n in want.items():
        per_ip_list[ip, listed] += n
    with psycopg.connect(roles_db.reader, autocommit=True) as c:
        sql = grafana_expand(panel["targets"][0]["rawSql"], variables, {"provider": ALL})
        cur = c.execute(sql.encode())
        cols = [d.name for d in cur.description or ()]
        got = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        assert {(r["ip"], r["blocklist"]): r["hits"] for r in got} == per_ip_list
        sql = grafana_expand(panel["targets"][0]["rawSql"], variables, {"provider": ["Gmail"]})
        gmail = c.execute(sql.encode()).fetchall()
        assert 0 < len(gmail) < len(got)
