"""Credentials of the console: salted password hashes of [web] users, and how weak a token is.

Passwords are never stored: `[web] users` holds `name:hash` pairs, each hash made by
`lungnode hash-password` with scrypt from the standard library (hashlib.scrypt: memory-hard,
a random 16-byte salt per hash) and written as `scrypt$N$r$p$<salt base64>$<hash base64>`, so
the cost can be raised later without breaking hashes already written. Checked in constant time.

`weak_token_reason` says why a [web] token is guessable (few distinct characters, a long run of
one character, a dictionary word); the node starts with it all the same, with a WARNING in the
log and in `lungnode check-config`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

SCHEME = "scrypt"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # about 16 MiB and 30 ms per check
SALT_BYTES, HASH_BYTES = 16, 32
MAX_MEMORY = 256 * 2**20  # a hash asking scrypt for more is refused
_HASH = re.compile(r"scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")
USER_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")

# Words a person picks for a secret; any of them inside a token makes it guessable.
COMMON_WORDS = (
    "password passwort secret token admin administrator root lungnode orthanc pacs dicom "
    "changeme letmein welcome qwerty azerty hospital radiology default test example 123456 "
    "abcdef monkey dragon master"
).split()
MIN_DISTINCT = 10
MAX_RUN = 4


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The `scrypt$N$r$p$salt$hash` text of `password` with a random salt."""
    if not password:
        raise ValueError("an empty password: choose one of at least 12 characters")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join([SCHEME, str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)])


def is_password_hash(text: str) -> bool:
    """True when `text` has the form hash_password writes (with sane scrypt parameters)."""
    match = _HASH.fullmatch(text)
    if match is None:
        return False
    n, r, p = (int(x) for x in match.group(1, 2, 3))
    power_of_two = n >= 2**10 and n & (n - 1) == 0
    return power_of_two and 1 <= r <= 64 and 1 <= p <= 16 and 128 * n * r * p <= MAX_MEMORY


def verify_password(password: str, stored: str) -> bool:
    """True when `password` hashes to `stored` (compared in constant time); False for a
    stored text that is no hash."""
    match = _HASH.fullmatch(stored)
    if match is None or not is_password_hash(stored):
        return False
    n, r, p = (int(x) for x in match.group(1, 2, 3))
    salt, expected = base64.b64decode(match.group(4)), base64.b64decode(match.group(5))
    return hmac.compare_digest(_scrypt(password, salt, n, r, p, len(expected)), expected)


def weak_token_reason(token: str) -> str | None:
    """Why `token` is easy to guess, or None: fewer than MIN_DISTINCT distinct characters, a
    run of more than MAX_RUN of one character, or a common word inside it."""
    if not token:
        return None
    if len(set(token)) < MIN_DISTINCT:
        return f"only {len(set(token))} distinct characters"
    if re.search(r"(.)\1{" + str(MAX_RUN) + ",}", token):
        return f"a character repeated more than {MAX_RUN} times in a row"
    lowered = token.casefold()
    word = next((w for w in COMMON_WORDS if w in lowered), None)
    if word is not None:
        return f"it contains the common word {word!r}"
    return None


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, size: int = HASH_BYTES) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=MAX_MEMORY + 2**20, dklen=size
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
