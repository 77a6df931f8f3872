"""Keeping secrets out of everything cpr_zarr writes or prints (pure text functions).

Three rules, applied to provenance records, error messages and the ``cpr_zarr`` log:

* *by URL*: the userinfo of a URL (``s3://KEY:SECRET@bucket``) is dropped, also when the
  secret holds ``/``, ``@``, ``:`` or percent-escapes;
* *by name*: a value stored under a secret-looking name (``token``, ``password``,
  ``aws_secret_access_key``, ``apiKey``, ... at any nesting level) is replaced;
* *by value*: a string known to be a secret (storage options of any store opened in this
  process, credentials found in a store URL, secret-named environment variables such as
  ``AWS_SECRET_ACCESS_KEY``) is replaced wherever it appears, under any name.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import urllib.parse
from typing import Any

__all__ = [
    "REDACTED",
    "is_secret_name",
    "redact_text",
    "redact_value",
    "register_options",
    "register_secret",
    "split_userinfo",
]

REDACTED = "<redacted>"
_SECRET_WORDS = {
    "secret", "secrets", "password", "passwd", "passphrase", "token", "tokens",
    "key", "apikey", "credential", "credentials", "creds", "auth", "authorization", "cookie",
    "signature", "sig", "private", "session",
}  # fmt: skip
_SECRET_PARTS = ("secret", "password", "passwd", "token", "credential", "apikey", "api_key")
_MIN_SECRET_LENGTH = 4  # shorter values would blank out ordinary words
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"`]+")
_known: set[str] = set()
_lock = threading.Lock()
# (known secrets, secret-named environment variables) -> secrets longest first: every
# provenance record and log line is redacted, and rebuilding this took ~10 ms a save
_search_order: tuple[tuple[int, tuple[tuple[str, str], ...]], tuple[str, ...]] | None = None


def is_secret_name(name: object) -> bool:
    """Whether a field or parameter name looks like it holds a secret.

    Words are split at ``_ - .`` and camelCase, so ``aws_secret_access_key``, ``apiKey`` and
    ``GITHUB_TOKEN`` are secret names and ``keypoints`` or ``monkey`` are not.
    """
    return _is_secret_text(str(name))


@functools.lru_cache(maxsize=4096)  # the same few field and variable names, again and again
def _is_secret_text(text: str) -> bool:
    lowered = text.lower()
    if any(part in lowered for part in _SECRET_PARTS):
        return True
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text).lower()
    return any(w in _SECRET_WORDS for w in re.split(r"[\s_.\-]+", words))


def _variants(value: str) -> frozenset[str]:
    out = {value, urllib.parse.unquote(value), urllib.parse.quote(value, safe="")}
    out.add(urllib.parse.quote_plus(value, safe=""))
    return frozenset(v for v in out if len(v) >= _MIN_SECRET_LENGTH)


def register_secret(value: object) -> None:
    """Remember a secret value: it is redacted from everything written or printed."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str) and len(value) >= _MIN_SECRET_LENGTH:
        with _lock:
            _known.update(_variants(value))


def register_options(options: object, *, all_values: bool = False) -> None:
    """Remember the secret values in storage options (nested dicts too).

    Values under secret-looking names are secrets; with ``all_values`` every string is.
    """
    if isinstance(options, dict):
        for k, v in options.items():
            if isinstance(v, dict | list | tuple):
                register_options(v, all_values=all_values or is_secret_name(k))
            elif all_values or is_secret_name(k):
                register_secret(v)
    elif isinstance(options, list | tuple):
        for v in options:
            register_options(v, all_values=all_values)
    elif all_values:
        register_secret(options)


def _secrets_longest_first() -> tuple[str, ...]:
    """Every secret to replace, longest first; the environment is read again every call
    (a variable set after import is redacted too), the sorting only when something changed."""
    global _search_order
    environment = tuple(
        (name, value)
        for name, value in os.environ.items()
        if len(value) >= 8 and _is_secret_text(name)
    )
    with _lock:
        key = (len(_known), environment)  # _known only grows: its size names its state
        if _search_order is not None and _search_order[0] == key:
            return _search_order[1]
        secrets = _known.union(*(_variants(value) for _, value in environment))
        order = tuple(sorted(secrets, key=len, reverse=True))
        _search_order = (key, order)
    return order


def split_userinfo(url: str) -> tuple[str, list[str]]:
    """``(url without userinfo, [userinfo parts])``.

    ``s3://KEY:SE/CRET@bucket/x`` -> ``s3://bucket/x``: when the part before the first ``/``
    has no ``@`` but a later ``@`` follows a ``user:`` prefix, the secret held a raw ``/``
    (AWS secret keys often do) and everything up to that ``@`` is userinfo. An ``@`` in a
    path without such a prefix (``s3://bucket/a@b``) is left alone.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url, []
    slash = rest.find("/")
    netloc = rest if slash < 0 else rest[:slash]
    if "@" in netloc:
        at = netloc.rfind("@")
    else:
        at = rest.rfind("@")
        if ":" not in rest[:at]:
            return url, []
    userinfo = rest[:at]
    user, _, password = userinfo.partition(":")
    parts = [p for p in (userinfo, user, password) if p]
    return f"{scheme}://{rest[at + 1 :]}", parts


def _clean_url(url: str) -> str:
    url = split_userinfo(url)[0]
    head, sep, query = url.partition("?")
    if not sep:
        return url
    params = [
        f"{name}={REDACTED}" if is_secret_name(name) or name.lower().startswith("x-amz-") else p
        for p in query.split("&")
        for name in [p.partition("=")[0]]
    ]  # presigned URLs: X-Amz-Signature, X-Amz-Credential, sig, token, ...
    return f"{head}?{'&'.join(params)}"


def redact_text(text: str) -> str:
    """``text`` with URL userinfo and every known secret value replaced."""
    return _redact_text(text, _secrets_longest_first())


def _redact_text(text: str, secrets: tuple[str, ...]) -> str:
    if not isinstance(text, str) or not text:
        return text
    text = _URL.sub(lambda m: _clean_url(m.group(0)), text)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_value(value: Any, depth: int = 0) -> Any:
    """A JSON-like value with secret-named fields and secret strings replaced (any depth)."""
    return _redact_value(value, depth, _secrets_longest_first())


def _redact_value(value: Any, depth: int, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return _redact_text(value, secrets)
    if depth > 20:
        return value
    if isinstance(value, dict):
        return {
            k: REDACTED if is_secret_name(k) else _redact_value(v, depth + 1, secrets)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v, depth + 1, secrets) for v in value)
    return value


class _RedactingFilter(logging.Filter):
    """Redacts every record of the ``cpr_zarr`` logger before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error path
            return True
        record.msg, record.args = redact_text(message), None
        return True


_filter_lock = threading.Lock()


def install_log_filter() -> None:
    """Put the redacting filter on the ``cpr_zarr`` logger (once)."""
    logger = logging.getLogger("cpr_zarr")
    with _filter_lock:
        if not any(isinstance(f, _RedactingFilter) for f in logger.filters):
            logger.addFilter(_RedactingFilter())


install_log_filter()
