"""The one redaction of secrets carried by URLs: every log line, error, event and answer that
holds a URL (a camera's, a webhook's) goes through it.

A URL's userinfo (`user:password@`) and the values of password-like query keys (`password`,
`token`, `key`, `secret`, `auth`, `sig`, ...) are replaced by `***`; the rest (scheme, host,
port, path) stays, because that is what a person needs to find the camera.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
SECRET_KEYS = re.compile(r"pass|pwd|token|secret|key|auth|sig|credential|session|cookie", re.I)
# Anything that looks like scheme://... in free text (a URL inside an error message).
URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]{1,15}://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """`url` without its userinfo and the values of password-like query keys."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK if "@" in url else url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(SECRET_KEYS.search(k) for k, _ in pairs):
            query = urlencode([(k, MASK if SECRET_KEYS.search(k) else v) for k, v in pairs], safe="*")
        elif "@" in query:  # not a key=value query: keep it only when it carries nothing like a credential
            query = MASK
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted."""
    if "://" not in text:
        return text
    return URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts URLs in every record's message (a second line behind the
    code that builds its messages from redacted URLs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format: leave it to the handler to report
            return True
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
