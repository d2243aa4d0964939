"""Secrets never printed: masking for URLs and text shown to people or written to logs.

Credentials declared as ``SecretStr`` (SASL, MQTT and HTTP header values, a SQL URL)
are never shown at all. URLs that are plain strings — a ClickHouse sample-store URL
``clickhouse://user:pass@host/db``, a web endpoint with ``?token=…`` — are shown with
the password and secret-looking query values replaced by ``***``.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["MASK", "MaskSecrets", "mask_text", "mask_url", "required_variables"]

#: A ``${VAR}`` without a default: a secret (or a setting) the process must be given.
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: Names a topology may use that are not the environment's.
_BUILTIN = {"TOPOLOGY_DIR"}


def required_variables(text: str) -> list[str]:
    """The environment variables a topology's text needs (``${VAR}`` with no default).

    Deployments pass them from a secret store — never written into a manifest.
    """
    return sorted({m for m in _VAR.findall(text) if m not in _BUILTIN})


MASK = "***"
_SECRET_NAMES = re.compile(
    r"pass|pwd|secret|token|key|auth|sig|signature|credential|session", re.IGNORECASE
)
#: ``scheme://user:password@`` anywhere in a text.
_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<pw>[^@/\s]+)@"
)


def mask_url(url: str) -> str:
    """``url`` with its password and secret-looking query values masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if _SECRET_NAMES.search(k) else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def mask_text(text: str) -> str:
    """Any ``scheme://user:password@`` inside ``text`` with the password masked."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


class MaskSecrets(logging.Filter):
    """No log line carries a URL's password, whoever wrote it."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        masked = mask_text(text)
        if masked != text:
            record.msg, record.args = masked, None
        return True
