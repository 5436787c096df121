"""ThreatQ REST client: indicator pages, attribute reads and writes, scores.

Reads are retried and writes are sent once. The module
``tqvt_sync.threatq.transport`` describes both policies and the errors they raise.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from tqvt_sync.clock import Clock
from tqvt_sync.errors import OutcomeUnknownError, PermanentApiError, ResponseFormatError
from tqvt_sync.http import RandomSource
from tqvt_sync.threatq.auth import Token, make_credentials
from tqvt_sync.threatq.transport import SERVICE, Transport

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 500
DEFAULT_RELATIONS = ("type", "attributes", "score")


@dataclass
class Page:
    """One page of indicators.

    Attributes:
        items: the indicator objects of the page.
        total: the number of matches ThreatQ reported, when it did.
        next_cursor_mark: the page token for the next page of a Data Collection.
    """

    items: list[dict]
    total: int | None
    next_cursor_mark: str | None


class ThreatQClient:
    """A ThreatQ API client for one instance and one set of credentials.

    A client secret selects the client-credentials grant, otherwise email and
    password are used with the password grant. ``clock`` is used for token
    expiry and retry sleeps. ``max_attempts`` bounds the attempts of a read.
    Raises ConfigError for an invalid URL, missing credentials or a missing
    CA bundle file.
    """

    def __init__(
        self,
        base_url: str,
        *,
        client_id: str | None,
        email: str | None = None,
        password: str | None = None,
        client_secret: str | None = None,
        verify: bool | str = True,
        timeout: float = 30.0,
        clock: Clock | None = None,
        session: requests.Session | None = None,
        max_attempts: int = 5,
        rng: RandomSource = random,
        pool_size: int = 10,
    ) -> None:
        credentials = make_credentials(
            client_id=client_id, email=email, password=password, client_secret=client_secret
        )
        self._transport = Transport(
            base_url, credentials, verify=verify, timeout=timeout, clock=clock, session=session,
            max_attempts=max_attempts, rng=rng, pool_size=pool_size,
        )
        self.base_url = self._transport.base_url

    def close(self) -> None:
        """Close the HTTP session and its pooled connections."""
        self._transport.close()

    def __enter__(self) -> ThreatQClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def fetch_token(self) -> Token:
        """Fetch and keep a new access token, as ``Transport.fetch_token`` describes."""
        return self._transport.fetch_token()

    def _read(self, method: str, path: str, *, params: dict | None = None,
              json_body: Any = None) -> dict:
        return self._transport.read(method, path, params=params, json_body=json_body)

    def _write(self, method: str, path: str, *, json_body: Any = None) -> dict | None:
        return self._transport.write(method, path, json_body=json_body)

    # Reads

    def iter_indicator_pages(
        self, criteria: dict | None = None, filters: dict | None = None, *,
        sort: str = "updated_at", page_size: int = DEFAULT_PAGE_SIZE, offset: int = 0,
        relations: Sequence[str] = DEFAULT_RELATIONS,
    ) -> Iterator[Page]:
        """Yield pages of ``POST /api/indicators/query`` by offset until a short page."""
        while True:
            page = self.fetch_indicator_page(
                criteria, filters, sort=sort, limit=page_size, offset=offset, relations=relations
            )
            yield page
            if len(page.items) < page_size:
                return
            offset += len(page.items)

    def fetch_indicator_page(
        self, criteria: dict | None = None, filters: dict | None = None, *,
        sort: str = "updated_at", limit: int = DEFAULT_PAGE_SIZE, offset: int = 0,
        relations: Sequence[str] = DEFAULT_RELATIONS,
    ) -> Page:
        """Fetch one page of indicators matching ``criteria`` and ``filters``.

        ``relations`` become the ``with`` parameter (embedded objects per indicator).
        """
        params: dict[str, Any] = {"limit": limit, "offset": offset, "sort": sort}
        if relations:
            params["with"] = ",".join(relations)
        query = {"criteria": criteria or {}, "filters": filters or {}}
        path = "/api/indicators/query"
        return _page(self._read("POST", path, params=params, json_body=query), path)

    def fetch_collection_page(
        self, collection: str, cursor_mark: str = "*", *, limit: int = DEFAULT_PAGE_SIZE,
        sort: str = "updated_at",
    ) -> Page:
        """Fetch one page of a Data Collection (saved search), starting at ``cursor_mark``."""
        path = f"/api/indicators/query/hash/{quote(str(collection), safe='')}"
        params = {"cursorMark": cursor_mark, "limit": limit, "sort": sort}
        return _page(self._read("GET", path, params=params), path)

    def iter_collection_pages(
        self, collection: str, cursor_mark: str = "*", *, limit: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[Page]:
        """Yield every page of a Data Collection until ``nextCursorMark`` stops changing."""
        while True:
            page = self.fetch_collection_page(collection, cursor_mark, limit=limit)
            yield page
            if not page.items or page.next_cursor_mark in (None, cursor_mark):
                return
            cursor_mark = page.next_cursor_mark

    def fetch_attributes(self, indicator_id: int) -> list[dict]:
        """Fetch the attributes of an indicator, each with its ``sources``."""
        path = f"/api/indicators/{_object_id(indicator_id)}/attributes"
        # NOTE: ThreatQ documents no paging for this list, so it is assumed to return all items.
        return _data_list(self._read("GET", path, params={"with": "sources"}), path)

    def fetch_indicator(self, indicator_id: int) -> dict | None:
        """Fetch one indicator with its score and attributes, or None when it does not exist."""
        path = f"/api/indicators/{_object_id(indicator_id)}"
        try:
            document = self._read("GET", path, params={"with": "score,attributes"})
        except PermanentApiError as exc:
            if exc.status == 404:
                return None
            raise
        return _data_object(document)

    def fetch_indicator_types(self) -> list[dict]:
        """Fetch the indicator types of this ThreatQ instance."""
        path = "/api/indicator/types"
        return _data_list(self._read("GET", path), path)

    # Writes

    def create_attribute(
        self, indicator_id: int, name: str, value: str, source: str = "VirusTotal"
    ) -> dict:
        """Create one attribute on an indicator and return it, including its instance ``id``.

        When the create response lacks ``id``, the attributes are read back and the
        newest matching instance is returned.
        """
        indicator = _object_id(indicator_id)
        path = f"/api/indicators/{indicator}/attributes"
        body = {"name": name, "value": value, "sources": [{"name": source}]}
        created = _data_object(self._write("POST", path, json_body=body))
        if created.get("id") is not None:
            return created
        logger.info("ThreatQ create response for %s has no attribute id; reading attributes back",
                    path)
        matches = [item for item in self.fetch_attributes(indicator)
                   if _is_attribute(item, name, value, source)]
        if not matches:
            raise OutcomeUnknownError(
                f"ThreatQ accepted POST {path} but the new attribute was not found when read "
                "back; read the indicator again before sending it again",
                service=SERVICE, path=path,
            )
        return max(matches, key=lambda item: _sort_id(item.get("id")))

    def update_attribute(self, indicator_id: int, attribute_id: int, value: str) -> dict:
        """Replace the value of one attribute instance and return the updated attribute."""
        path = f"/api/indicators/{_object_id(indicator_id)}/attributes/{_object_id(attribute_id)}"
        return _data_object(self._write("PUT", path, json_body={"value": value}))

    def delete_attribute(self, indicator_id: int, attribute_id: int) -> None:
        """Delete one attribute instance. An attribute already gone (HTTP 404) counts as deleted."""
        path = f"/api/indicators/{_object_id(indicator_id)}/attributes/{_object_id(attribute_id)}"
        try:
            self._write("DELETE", path)
        except PermanentApiError as exc:
            if exc.status != 404:
                raise
            logger.info("ThreatQ DELETE %s returned 404; the attribute is already gone", path)

    def update_score(self, indicator_id: int, manual_score: int | None) -> dict:
        """Set the manual score (0 to 10) of an indicator. None clears it, so the generated
        score applies again."""
        if manual_score is not None and not 0 <= manual_score <= 10:
            raise ValueError(f"manual_score must be between 0 and 10, got {manual_score}")
        path = f"/api/indicator/{_object_id(indicator_id)}/scores"
        return _data_object(self._write("PUT", path, json_body={"manual_score": manual_score}))

    def consume(self, indicators: list[dict]) -> list[dict]:
        """Send indicator dicts to ``POST /api/indicators/consume`` and return the result list.

        ThreatQ matches indicators by exact value and type, creates any it does not
        find, and appends attribute values rather than replacing them.
        """
        path = "/api/indicators/consume"
        document = self._write("POST", path, json_body=indicators)
        return _data_list(document, path) if document is not None else []


def _object_id(value: int | str) -> int:
    """Return a ThreatQ object id as an int, or raise ValueError for anything else."""
    text = str(value)
    if isinstance(value, bool) or not isinstance(value, int | str) or not _is_digits(text):
        raise ValueError(f"a ThreatQ id must be a non-negative integer, got {value!r}")
    return int(value)


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _sort_id(value: object) -> int:
    return int(value) if isinstance(value, int | str) and _is_digits(str(value)) else -1


def _page(document: dict, path: str) -> Page:
    total = document.get("total")
    cursor = document.get("nextCursorMark")
    return Page(
        items=_data_list(document, path),
        total=total if isinstance(total, int) and not isinstance(total, bool) else None,
        next_cursor_mark=cursor if isinstance(cursor, str) else None,
    )


def _data_list(document: dict, path: str) -> list[dict]:
    items = document.get("data")
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ResponseFormatError(
            f"ThreatQ returned a body without a data list for {path}", service=SERVICE, path=path
        )
    return items


def _data_object(document: dict | None) -> dict:
    """Return ``data`` of a write response: the object, or the first item of a list."""
    data = (document or {}).get("data")
    if isinstance(data, list):
        data = data[0] if data else None
    return data if isinstance(data, dict) else {}


def _is_attribute(item: dict, name: str, value: str, source: str) -> bool:
    nested = item.get("attribute")
    item_name = item.get("name") or (nested.get("name") if isinstance(nested, dict) else None)
    if item_name != name or str(item.get("value")) != value:
        return False
    sources = item.get("sources")
    if not isinstance(sources, list):
        return True
    return any(isinstance(entry, dict) and entry.get("name") == source for entry in sources)
