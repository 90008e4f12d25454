"""A small HTTP client shared by the image sources: retries, backoff, a request budget, no leaks.

Retries 429 and 5xx answers and network failures with exponential backoff, honouring
``Retry-After``; counts every request sent against an optional budget; and scrubs API keys
and tokens from every URL or message it produces, so none reaches a log or an exception.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ...errors import GeoscopeError

SECRET_PARAMS = ("key", "access_token", "signature", "client_secret", "token")
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_BODY_BYTES = 32 * 1024 * 1024
USER_AGENT = "geoscope (+https://github.com/geoscope)"


class FetchError(GeoscopeError):
    """A download problem the user can act on (the message never holds a key)."""


class AuthError(FetchError):
    """The service refused the key or token."""


class NetworkError(FetchError):
    """The service could not be reached, or kept failing, after every retry."""


class BudgetExhausted(Exception):
    """The request budget is spent; no further request was sent."""


class Stopped(Exception):
    """Another worker asked every request to stop."""


_SECRET_RE = re.compile(r"(?i)([?&;](?:" + "|".join(SECRET_PARAMS) + r")=)[^&#\s'\"]*")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with secret query values and every given secret replaced by ``***``."""
    out = _SECRET_RE.sub(r"\1***", str(text))
    for secret in secrets:
        if secret:
            out = out.replace(secret, "***")
            quoted = urllib.parse.quote(secret, safe="")
            if quoted != secret:
                out = out.replace(quoted, "***")
            plus = urllib.parse.quote_plus(secret)
            if plus not in (secret, quoted):
                out = out.replace(plus, "***")
    return out


def check_base_url(url: str) -> str:
    """``url`` without a trailing slash; raises :class:`FetchError` unless it is http(s)://host/…."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FetchError(f"bad base URL {scrub(url)!r}: need http:// or https:// and a host")
    return url.rstrip("/")


class Budget:
    """A thread-safe count of requests, with an optional limit."""

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and limit < 0:
            raise FetchError(f"request budget must be at least 0 (got {limit})")
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self) -> None:
        """Count one request, or raise :class:`BudgetExhausted` when none is left."""
        with self._lock:
            if self.limit is not None and self.used >= self.limit:
                raise BudgetExhausted
            self.used += 1

    @property
    def exhausted(self) -> bool:
        with self._lock:
            return self.limit is not None and self.used >= self.limit


@dataclass
class Response:
    """A final HTTP answer: status, headers (lower-case names), body and the scrubbed URL."""

    status: int
    headers: dict[str, str]
    body: bytes
    url: str

    def json(self) -> object:
        """The body parsed as JSON; raises :class:`FetchError` when it is not JSON."""
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise FetchError(f"{self.url}: answer is not JSON (HTTP {self.status})") from None


@dataclass
class HttpClient:
    """GET with retries. Thread-safe; share one per fetch.

    ``retries`` is how many times a failed request is tried again; the wait before try
    ``n`` is ``backoff_s · 2^n`` (± jitter, at most ``max_backoff_s``) unless the server's
    ``Retry-After`` says otherwise.
    """

    retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    timeout_s: float = 30.0
    budget: Budget = field(default_factory=Budget)
    secrets: tuple[str, ...] = ()
    stop: threading.Event = field(default_factory=threading.Event)
    sleep: Callable[[float], None] | None = None

    def scrub(self, text: str) -> str:
        return scrub(text, self.secrets)

    def get(self, url: str, params: Mapping[str, object] | None = None,
            headers: Mapping[str, str] | None = None,
            retry_when: Callable[[Response], str | None] | None = None) -> Response:
        """GET ``url`` (with query ``params``); returns the final answer, retried if need be.

        ``retry_when`` may name a further reason to retry an answer (e.g. a rate-limit
        status inside a 200 JSON body). Raises :class:`NetworkError` when the network or the
        server keeps failing, :class:`BudgetExhausted` when the budget is spent,
        :class:`Stopped` when stopped.
        """
        if params:
            url = f"{url}{'&' if '?' in url else '?'}{urllib.parse.urlencode(params)}"
        shown = self.scrub(url)
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise FetchError(f"{shown}: only http and https URLs can be fetched")
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
        attempt = 0
        while True:
            if self.stop.is_set():
                raise Stopped
            self.budget.take()
            try:
                response = self._send(request, shown)
            except _Transient as exc:
                problem, wait = exc.problem, None
            else:
                if response.status in RETRY_STATUSES:
                    problem = f"HTTP {response.status}{_detail(response, self.scrub)}"
                else:
                    reason = retry_when(response) if retry_when is not None else None
                    if reason is None:
                        return response
                    problem = self.scrub(reason)
                wait = _retry_after(response.headers.get("retry-after"))
            if attempt >= self.retries:
                raise NetworkError(f"{shown}: {problem} (after {attempt + 1} tries)")
            if wait is None:
                wait = self.backoff_s * (2 ** attempt) * random.uniform(0.75, 1.25)
            self._wait(min(wait, self.max_backoff_s))
            attempt += 1

    def _send(self, request: urllib.request.Request, shown: str) -> Response:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                body = _read_limited(answer, shown)
                return Response(answer.status, _headers(answer.headers), body, shown)
        except urllib.error.HTTPError as exc:
            try:
                body = _read_limited(exc, shown) if exc.fp is not None else b""
            except _Transient:
                body = b""
            finally:
                exc.close()
            return Response(exc.code, _headers(exc.headers), body, shown)
        except ValueError as exc:  # a malformed URL; its text may hold the key
            raise FetchError(f"{shown}: bad URL ({self.scrub(str(exc))})") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            text = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
            raise _Transient(f"cannot connect ({self.scrub(str(text))})") from None
        except TimeoutError:
            raise _Transient(f"no answer within {self.timeout_s:g} s") from None
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            raise _Transient(f"connection failed ({self.scrub(type(exc).__name__)})") from None

    def _wait(self, seconds: float) -> None:
        if self.sleep is not None:
            self.sleep(seconds)
        elif self.stop.wait(seconds):
            raise Stopped


class _Transient(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _read_limited(answer, shown: str) -> bytes:
    try:
        body = answer.read(MAX_BODY_BYTES + 1)
    except TimeoutError:
        raise _Transient("answer stalled") from None
    except (ConnectionError, http.client.HTTPException, OSError) as exc:
        raise _Transient(f"answer cut short ({type(exc).__name__})") from None
    if len(body) > MAX_BODY_BYTES:
        raise FetchError(f"{shown}: answer larger than {MAX_BODY_BYTES // 2**20} MiB")
    return body


def _headers(message) -> dict[str, str]:
    return {k.lower(): v for k, v in (message.items() if message is not None else [])}


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _detail(response: Response, clean: Callable[[str], str]) -> str:
    """A short reason from an error body (JSON ``error``/``error_message``, else plain text)."""
    text = response.body[:2000].decode("utf-8", "replace").strip()
    if not text:
        return ""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):
            text = str(err.get("message") or err)
        elif err:
            text = str(err)
        elif doc.get("error_message"):
            text = str(doc["error_message"])
        else:
            return ""
    elif "<" in text:
        return ""
    line = " ".join(text.split())[:200]
    return f" ({clean(line)})"


def error_detail(response: Response, secrets: Iterable[str] = ()) -> str:
    """Public form of the error-body summary used in messages: ``" (reason)"`` or ``""``."""
    return _detail(response, lambda s: scrub(s, secrets))
