"""Posting alert notifications to an incoming webhook (Slack, Mattermost, Teams).

``post_webhook(url, text)`` sends ``{"text": text}`` as JSON, the body Slack's,
Mattermost's and Microsoft Teams' incoming webhooks all accept, and retries a
bounded number of times (tenacity, exponential backoff with jitter) when the
receiver is away, times out, answers 429 or a 5xx. Any other answer is final.
After the last try it raises ``NotifyError``; nothing here decides what that
means for the alerts (``alerts`` keeps them to notify on the next run).

An incoming-webhook URL is a credential (its path holds the token): errors and
logs name only its scheme and host (``describe_url``), never the path.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import tenacity

from pmta_pipe import __version__
from pmta_pipe.errors import PmtaPipeError

log = logging.getLogger(__name__)

#: tries in all, and the longest single wait between two, in seconds
ATTEMPTS = 4
MAX_WAIT = 8.0
TIMEOUT = 10.0

_LOCAL_PART = re.compile(r"[^\s<>@\"'(),;:\[\]]+@(?=[^\s<>@])")


class NotifyError(PmtaPipeError):
    """The webhook did not take the notification."""


class _Retryable(Exception):
    """An answer worth trying again (429, 5xx, no connection, timeout)."""


def describe_url(url: str) -> str:
    """``https://hooks.slack.com``: a webhook URL's scheme and host, without its secret path."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}"


def mask_addresses(text: str) -> str:
    """The text with the local part of any e-mail address replaced by ``…``."""
    return _LOCAL_PART.sub("…@", text)


def _post_once(url: str, body: bytes, timeout: float) -> None:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": f"pmta-pipe/{__version__}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 429 or exc.code >= 500:
            raise _Retryable(f"HTTP {exc.code}") from None
        raise NotifyError(
            f"the webhook at {describe_url(url)} refused the notification: HTTP {exc.code}",
            "check the webhook URL (PMTA_PIPE_ALERT_WEBHOOK)",
        ) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Retryable(f"{type(reason).__name__}: {reason}") from None


def post_webhook(
    url: str,
    text: str,
    *,
    attempts: int = ATTEMPTS,
    max_wait: float = MAX_WAIT,
    timeout: float = TIMEOUT,
) -> None:
    """Post ``{"text": text}`` to ``url``, trying at most ``attempts`` times."""
    body = json.dumps({"text": mask_addresses(text)}).encode()
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_random_exponential(multiplier=0.5, max=max_wait),
        retry=tenacity.retry_if_exception_type(_Retryable),
        before_sleep=lambda state: log.warning(
            "webhook %s: %s; trying again",
            describe_url(url),
            state.outcome.exception() if state.outcome else "?",
        ),
        reraise=True,
    )
    try:
        retrying(_post_once, url, body, timeout)
    except _Retryable as exc:
        raise NotifyError(
            f"the webhook at {describe_url(url)} did not take the notification after"
            f" {attempts} tries: {exc}",
            "the alerts stay to be notified: the next run posts them",
        ) from None
