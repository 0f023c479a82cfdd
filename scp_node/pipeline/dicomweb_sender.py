"""STOW-RS delivery of result objects to DICOMweb destinations, with dicomweb-client.

A destination written `NAME = https://host/dicom-web [bearer=TOKEN | basic=USER:PASSWORD]
[verify_hostname] [sha256=PIN]` receives each tick's due results in one STOW-RS request
(POST <url>/studies, multipart/related; type="application/dicom"). The answer is classified per
instance like a C-STORE's, and scp_node.pipeline.sender records it in the same outbox:

- sent: 200 OK; 202 Accepted for the instances not in its Failed SOP Sequence (warnings);
  409 Conflict for those in its Referenced SOP Sequence.
- transient: no connection, TLS failure or pin mismatch, timeout; 401/403 (credentials a person
  fixes), 408, 429 and 5xx; a Failed SOP Sequence item whose Failure Reason is 0xA7xx (out of
  resources), 0x0110 (processing failure) or 0x0213 (resource limitation).
- permanent: any other 4xx (400, 404, 413, 415, ...), any other Failure Reason, and an instance
  the answer names neither way after a 409.

HTTPS trust is as for DICOM TLS destinations (scp_node.dicom.tls.https_client_context). The
environment's proxy and CA settings are not used: config.ini alone decides whom the node trusts.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset
from requests.adapters import HTTPAdapter

from scp_node.config import Config, Destination
from scp_node.dicom.status import PROCESSING_FAILURE, RESOURCE_LIMITATION, is_out_of_resources
from scp_node.dicom.tls import https_client_context

_TRANSIENT_HTTP = frozenset({401, 403, 408, 429})


@dataclass(frozen=True)
class StowOutcome:
    """How one instance of a STOW-RS request ended."""

    sent: bool
    transient: bool
    error: str


class _TrustedAdapter(HTTPAdapter):
    """A requests transport whose TLS trust is one SSL context alone (no certifi bundle)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        if not self._context.check_hostname:  # trust is the CA file (see scp_node.dicom.tls)
            kwargs["assert_hostname"] = False
        super().init_poolmanager(*args, **kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """Leave trust to the SSL context: requests would load its own CA bundle into it."""


def session_for(config: Config, destination: Destination) -> requests.Session:
    """An HTTP session with the destination's credentials and TLS trust."""
    session = requests.Session()
    session.trust_env = False  # no proxy, CA bundle or .netrc from the environment
    if str(destination.url).lower().startswith("https://"):
        session.mount(
            "https://", _TrustedAdapter(https_client_context(config.security, destination))
        )
    if destination.bearer_token:
        session.headers["Authorization"] = f"Bearer {destination.bearer_token}"
    elif destination.basic_auth:
        session.auth = destination.basic_auth
    return session


class StowSender:
    """STOW-RS to one DICOMweb destination; one request per batch."""

    def __init__(self, config: Config, destination: Destination) -> None:
        if not destination.url:
            raise ValueError(f"destination {destination.name} has no DICOMweb URL")
        self._destination = destination
        self._client = DICOMwebClient(
            url=destination.url,
            session=session_for(config, destination),
            timeout=config.sender.timeout_seconds,
        )
        self._client.set_http_retry_params(retry=False)  # the outbox retries, with backoff

    def store(self, datasets: Sequence[Dataset]) -> list[StowOutcome]:
        """POST `datasets` in one STOW-RS request; one outcome per dataset, in order."""
        destination = self._destination
        try:
            answer = self._client.store_instances(list(datasets))
        except requests.HTTPError as exc:
            return self._http_error(exc, datasets)
        except (requests.RequestException, OSError) as exc:
            error = f"STOW-RS to {destination} failed: {_reason(exc)}"
            return [StowOutcome(False, True, error) for _ in datasets]
        except ValueError as exc:  # an answer dicomweb-client cannot read
            error = f"STOW-RS answer of {destination} unreadable: {exc}"
            return [StowOutcome(False, True, error) for _ in datasets]
        failed = _failed(answer)
        return [
            self._failure(failed[uid]) if (uid := str(ds.SOPInstanceUID)) in failed else _SENT
            for ds in datasets
        ]

    def _http_error(
        self, exc: requests.HTTPError, datasets: Sequence[Dataset]
    ) -> list[StowOutcome]:
        """Outcomes of a 4xx/5xx answer (409: per instance, from its response body)."""
        response = exc.response
        code = response.status_code if response is not None else 0
        if code == 409 and response is not None:
            answer = _answer_dataset(response)
            if answer is not None:
                failed = _failed(answer)
                stored = _referenced(answer)
                outcomes = []
                for ds in datasets:
                    uid = str(ds.SOPInstanceUID)
                    if uid in failed:
                        outcomes.append(self._failure(failed[uid]))
                    elif uid in stored:
                        outcomes.append(_SENT)
                    else:
                        error = f"{self._destination} answered STOW-RS 409 without this instance"
                        outcomes.append(StowOutcome(False, False, error))
                return outcomes
        transient = code in _TRANSIENT_HTTP or code >= 500
        reason = response.reason if response is not None else ""
        hint = (
            " (check the destination's bearer= or basic= credentials)" if code in (401, 403) else ""
        )
        error = f"{self._destination} answered STOW-RS with HTTP {code} {reason}{hint}".rstrip()
        return [StowOutcome(False, transient, error) for _ in datasets]

    def _failure(self, code: int | None) -> StowOutcome:
        """A Failed SOP Sequence item: its Failure Reason decides whether to retry."""
        transient = code is not None and (
            is_out_of_resources(code) or code in (PROCESSING_FAILURE, RESOURCE_LIMITATION)
        )
        words = f"Failure Reason 0x{code:04X}" if code is not None else "no Failure Reason"
        return StowOutcome(False, transient, f"{self._destination} refused it in STOW-RS: {words}")


_SENT = StowOutcome(True, False, "")


def probe(config: Config, destination: Destination, timeout: float) -> str | None:
    """`lungnode check-config`'s reachability check of a DICOMweb destination: a QIDO-RS
    search for one study with its credentials and TLS trust; None on success, else why not."""
    client = DICOMwebClient(
        url=str(destination.url), session=session_for(config, destination), timeout=timeout
    )
    client.set_http_retry_params(retry=False)
    try:
        client.search_for_studies(limit=1)
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        return f"QIDO-RS answered HTTP {code}"
    except (requests.RequestException, OSError, ValueError) as exc:
        return f"QIDO-RS failed: {_reason(exc)}"
    return None


def _failed(answer: Dataset) -> dict[str, int | None]:
    """SOP Instance UID -> Failure Reason of the answer's Failed SOP Sequence."""
    failed: dict[str, int | None] = {}
    for item in answer.get("FailedSOPSequence", []):
        if "ReferencedSOPInstanceUID" in item:
            code = item.get("FailureReason")
            failed[str(item.ReferencedSOPInstanceUID)] = None if code is None else int(code)
    return failed


def _referenced(answer: Dataset) -> set[str]:
    """SOP Instance UIDs of the answer's Referenced SOP Sequence (stored)."""
    return {
        str(item.ReferencedSOPInstanceUID)
        for item in answer.get("ReferencedSOPSequence", [])
        if "ReferencedSOPInstanceUID" in item
    }


def _answer_dataset(response: requests.Response) -> Dataset | None:
    """The DICOM JSON body of an error answer, None when it has none."""
    if "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        return Dataset.from_json(response.json())
    except (ValueError, TypeError, KeyError):
        return None


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests error, in one line (a TLS pin mismatch, a refusal)."""
    cause: BaseException = exc
    while cause.__context__ is not None and cause.__context__ is not cause:
        cause = cause.__context__
    text = str(cause) if cause is not exc else str(exc)
    return f"{type(cause).__name__}: {text}"[:500]
