"""Redaction of database passwords: the one place that knows where a password hides in a URL.

`redact_database_url(url)` is for a value known to be one `[storage] database_url` (config
errors, `Database`/`Index` messages); `redact_secrets(text)` is the same redaction applied to
free text (every log line, error messages printed by the CLI). Both replace the password with
`***` and keep everything else (scheme, user, host, port, database, other parameters), so an
operator still sees which database is meant.

Where a password hides:

- `scheme://user:PASSWORD@host/db`: the userinfo ends at the LAST `@` of the authority, so a
  password holding `@`, `:`, `/`, `?` or `%` is hidden whole (`urllib.parse.urlsplit` ends the
  authority at the first `/` and would show the rest of such a password; libpq needs those
  characters percent-encoded, but a mistyped URL is exactly the one an error message echoes);
- query parameters `?password=...` / `&password=...` (libpq's URI parameters);
- key=value connection strings (libpq conninfo, psycopg's `conninfo`): `password=secret`,
  `password = 'it''s \\' quoted'`;
- `PGPASSWORD=...` in free text.
"""

from __future__ import annotations

import re

MASK = "***"

# `password=VALUE` in a conninfo string, a URI query or free text: VALUE is a single-quoted
# conninfo value (backslash escapes) or runs to the next whitespace, '&', ';' or quote (so the
# quote that closes a repr() in a message stays).
_PASSWORD_SETTING = re.compile(
    r"""(?ix)
    (?<![A-Za-z0-9_])((?:pg|ssl)?password\s*=\s*)
    ('(?:[^'\\]|\\.)*'?|[^\s&;'"]*)
    """
)
# scheme:// and what follows up to whitespace or a quote: one URL in free text.
_URL_IN_TEXT = re.compile(r"""[A-Za-z][A-Za-z0-9+.\-]*://[^\s'"<>`]+""")


def _redact_userinfo(url: str) -> str:
    """`scheme://user:***@rest` for a URL with a password in its userinfo, else `url`."""
    scheme, sep, rest = url.partition("://")
    if not sep or rest.startswith("/"):  # no authority (sqlite:///path)
        return url
    query = rest.find("?")
    authority_end = rest.rfind("@", 0, query) if query >= 0 else rest.rfind("@")
    if authority_end < 0:
        authority_end = rest.rfind("@")  # a password holding '?': the last '@' of all
    if authority_end < 0:
        return url
    user, colon, _password = rest[:authority_end].partition(":")
    if not colon:
        return url
    return f"{scheme}://{user}:{MASK}{rest[authority_end:]}"


def _redact_settings(text: str) -> str:
    return _PASSWORD_SETTING.sub(lambda m: m.group(1) + MASK, text)


def redact_database_url(url: str) -> str:
    """`url` (a `[storage] database_url`: URL or key=value conninfo) with every password
    replaced by `***`; see the module docstring for the forms handled."""
    return _redact_settings(_redact_userinfo(url.strip()))


def redact_secrets(text: str) -> str:
    """`text` with every URL's password and every `password=` setting replaced by `***`.

    In free text a URL ends at whitespace or a quote, so a password holding a space is hidden
    only as far as the space; a value known to be a database URL goes to `redact_database_url`,
    which takes it whole."""
    if "://" not in text and "assword" not in text.lower():
        return text  # the common case, checked cheaply: every log line passes here
    text = _URL_IN_TEXT.sub(lambda m: _redact_userinfo(m.group(0)), text)
    return _redact_settings(text)
