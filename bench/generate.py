"""Deterministic, realistic PowerMTA accounting streams for benchmarks, tests and the demo.

``python bench/generate.py RECORDS [--days D] [--seed S] [--start 2026-01-01] > acct.csv``

The stream has PowerMTA v5's default 23 columns with a header line, records in
time order over ``days`` days, a realistic type mix (mostly ``d``, then ``t``, ``b``
with some ``message-expired``, ``r``, ``f``, ``rb``, ``tq``), several source IPs,
VirtualMTAs, jobs and mailbox providers, quoted fields (``dlvEsmtpAvailable``) and
real ISP diagnostic texts. The same arguments always give the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

HEADER = (
    "type,timeLogged,timeQueued,orig,rcpt,orcpt,dsnAction,dsnStatus,dsnDiag,dsnMta,bounceCat,"
    "srcType,srcMta,dlvType,dlvSourceIp,dlvDestinationIp,dlvEsmtpAvailable,dlvSize,vmta,jobId,"
    "envId,queue,vmtaPool"
)

DOMAINS = [
    ("gmail.com", 30, "gmail-smtp-in.l.google.com", "142.250.102.27"),
    ("yahoo.com", 12, "mta7.am0.yahoodns.net", "67.195.204.72"),
    ("hotmail.com", 10, "hotmail-com.olc.protection.outlook.com", "52.101.40.29"),
    ("outlook.com", 6, "outlook-com.olc.protection.outlook.com", "52.101.68.14"),
    ("aol.com", 4, "mx-aol.mail.gm0.yahoodns.net", "67.195.228.106"),
    ("icloud.com", 5, "mx01.mail.icloud.com", "17.57.154.33"),
    ("comcast.net", 3, "mx1a1.comcast.net", "96.103.145.165"),
    ("web.de", 2, "mx-ha03.web.de", "212.227.17.26"),
    ("example-corp.com", 2, "mx.example-corp.com", "203.0.113.25"),
    ("small-biz.org", 1, "mail.small-biz.org", "198.51.100.7"),
]
SOURCE_IPS = [f"192.0.2.{i}" for i in range(10, 18)]
JOBS = [f"job-{n:04d}" for n in range(1, 13)]
ESMTP = "PIPELINING,SIZE,ENHANCEDSTATUSCODES,8BITMIME,STARTTLS"
DEFERRALS = {
    "gmail.com": [
        (
            "4.7.0 (delivery not authorized)",
            "smtp;421 4.7.0 [192.0.2.10 15] Our system has "
            "detected an unusual rate of unsolicited mail originating from your IP address. "
            "To protect our users from spam, mail sent from your IP address has been temporarily "
            "rate limited. https://support.google.com/mail/?p=UnsolicitedRateLimitError "
            "{gid} - gsmtp",
            "policy-related",
        ),
    ],
    "yahoo.com": [
        (
            "4.7.0 (other or undefined security status)",
            "smtp;421 4.7.0 [TSS04] Messages from "
            "192.0.2.11 temporarily deferred due to unexpected volume or user complaints - "
            "4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
            "policy-related",
        ),
    ],
    "hotmail.com": [
        (
            "4.7.0 (other or undefined security status)",
            "smtp;451 4.7.650 The mail server "
            "[192.0.2.12] has been temporarily rate limited due to IP reputation. For e-mail "
            "delivery information, see https://postmaster.live.com (S775) [Name=Protocol "
            "Filter Agent]",
            "policy-related",
        ),
    ],
}
GREYLIST = ("4.2.0 (other or undefined mailbox status)",
            "smtp;450 4.2.0 <{rcpt}>: Recipient address rejected: Greylisted, see "
            "http://postgrey.schweikert.ch/help/{dom}.html", "other")  # fmt: skip
BOUNCES = [
    ("5.1.1 (bad destination mailbox address)", "smtp;550 5.1.1 <{rcpt}>: Recipient address "
     "rejected: User unknown in virtual mailbox table", "bad-mailbox"),
    ("5.2.2 (mailbox full)", "smtp;552 5.2.2 <{rcpt}> Mailbox full", "quota-issues"),
    ("5.7.1 (delivery not authorized)", "smtp;550 5.7.1 [192.0.2.13] Our system has detected "
     "that this message is likely unsolicited mail. To reduce the amount of spam sent to "
     "Gmail, this message has been blocked. gsmtp", "spam-related"),
    ("5.7.26 (delivery not authorized)", "smtp;550-5.7.26 Unauthenticated email from "
     "example.com is not accepted due to domain's DMARC policy. gsmtp", "policy-related"),
    ("5.1.2 (bad destination system: no such domain)", "smtp;550 5.1.2 Host unknown",
     "bad-domain"),
]  # fmt: skip
EXPIRED = ("4.4.7 (delivery time expired)", "smtp;421 4.4.7 connection timed out",
           "message-expired")  # fmt: skip

TYPE_WEIGHTS = [("d", 720), ("t", 150), ("b", 70), ("r", 40), ("f", 5), ("rb", 10), ("tq", 5)]


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S%z")


def generate(
    records: int, *, days: int = 3, seed: int = 1, start: datetime | None = None
) -> Iterator[list[str]]:
    """Yield ``records`` rows (lists of 23 fields), in time order."""
    rnd = random.Random(seed)
    start = start or datetime(2026, 1, 1, tzinfo=timezone.utc)
    tz = timezone(timedelta(hours=-5))
    span = days * 86400
    types = [t for t, _ in TYPE_WEIGHTS]
    tweights = [w for _, w in TYPE_WEIGHTS]
    doms = [d for d in DOMAINS]
    dweights = [d[1] for d in DOMAINS]
    for i in range(records):
        t_logged = (start + timedelta(seconds=span * i / max(records, 1))).astimezone(tz)
        rtype = rnd.choices(types, tweights)[0]
        dom, _, mx, mx_ip = rnd.choices(doms, dweights)[0]
        queued_for = int(rnd.expovariate(1 / 40)) if rtype != "t" else rnd.randint(60, 7200)
        t_queued = t_logged - timedelta(seconds=queued_for)
        src_ip = SOURCE_IPS[rnd.randrange(len(SOURCE_IPS))]
        vmta = f"vmta-{SOURCE_IPS.index(src_ip) + 1:02d}"
        job = JOBS[rnd.randrange(len(JOBS))]
        rcpt = f"user{rnd.randrange(1_000_000)}@{dom}"
        orig = f"bounce-{job}@mail.sender.example"
        row = [rtype, _fmt(t_logged), _fmt(t_queued), orig, rcpt, "", "", "", "", "", "",
               "smtp", "app1.sender.example (10.0.0.5)", "smtp", src_ip, mx_ip, ESMTP,
               str(rnd.randint(8_000, 120_000)), vmta, job, f"env{i}",
               f"{dom}/{vmta}", "pool-a" if src_ip < "192.0.2.14" else "pool-b"]  # fmt: skip
        mta = f"{mx} ({mx_ip})"
        if rtype == "d":
            row[6:11] = ["relayed", "2.0.0 (success)", "smtp;250 2.0.0 OK accepted", mta, ""]
        elif rtype in ("t", "tq"):
            status, diag, cat = rnd.choice(DEFERRALS.get(dom, [GREYLIST]))
            gid = f"{rnd.getrandbits(40):x}si{rnd.randrange(10**6)}qkb.{rnd.randrange(1000)}"
            row[6:11] = ["delayed", status, diag.format(rcpt=rcpt, dom=dom, gid=gid), mta, cat]
            if rtype == "tq":
                row[3:6] = ["", "", ""]
        elif rtype == "b":
            status, diag, cat = EXPIRED if rnd.random() < 0.1 else rnd.choice(BOUNCES)
            row[6:11] = ["failed", status, diag.format(rcpt=rcpt), mta, cat]
            row[17] = ""
        elif rtype == "rb":
            status, diag, cat = BOUNCES[0]
            row[6:11] = ["", status, diag.format(rcpt=rcpt), mta, cat]
            row[13:18] = ["", "", "", "", ""]
        elif rtype == "f":
            row[6:18] = ["", "", "", "", "", "", "", "", "", src_ip, "", ""]
        elif rtype == "r":
            row[6:18] = ["", "", "", "", "", "smtp", "app1.sender.example (10.0.0.5)", "", "",
                         "", "", ""]  # fmt: skip
        yield row


def write(out: io.TextIOBase | object, records: int, **kwargs: object) -> None:
    w = csv.writer(out, lineterminator="\n")  # type: ignore[arg-type]
    out.write(HEADER + "\n")  # type: ignore[attr-defined]
    w.writerows(generate(records, **kwargs))  # type: ignore[arg-type]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("records", type=int)
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--start", default="2026-01-01", help="first UTC day (YYYY-MM-DD)")
    a = p.parse_args()
    start = datetime.fromisoformat(a.start).replace(tzinfo=timezone.utc)
    write(sys.stdout, a.records, days=a.days, seed=a.seed, start=start)


if __name__ == "__main__":
    main()
