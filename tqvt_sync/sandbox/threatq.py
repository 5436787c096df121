"""A ThreatQ REST API simulator for the tests, the benchmarks and ``tqvt demo``.

It serves the endpoints that tqvt calls from an in-memory threat library, with the
request and response shapes that public ThreatQ clients use. Every body is JSON with a
``data`` envelope, and every endpoint except ``POST /api/token`` needs a bearer token.
Errors are ``{"errors": ["..."]}`` with 400, 401 ("Unauthenticated."), 404 or 405.
Timestamps are "YYYY-MM-DD HH:MM:SS" strings in UTC, taken from the injected clock.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from datetime import datetime

from tqvt_sync.clock import Clock
from tqvt_sync.sandbox.httpserver import Request, Response, SimulatorServer, json_response
from tqvt_sync.sandbox.threatq_auth import Credentials, TokenStore
from tqvt_sync.sandbox.threatq_library import (
    INDICATOR_TYPES,
    STATUS_IDS,
    STATUSES,
    TYPE_IDS,
    ThreatLibrary,
    require_status,
    require_type,
    status_record,
    type_record,
)
from tqvt_sync.sandbox.threatq_query import (
    DEFAULT_PAGE_SIZE,
    ApiFailure,
    SortSpec,
    attribute_value,
    compile_conditions,
    cursor_page,
    format_time,
    int_param,
    json_body,
    mentions_field,
    parse_attribute,
    parse_sort,
    parse_with,
    source_names,
)

_INDICATOR = r"/api/indicators/(?P<indicator_id>\d+)"
_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(pattern), handler)
    for method, pattern, handler in (
        ("POST", r"/api/indicators/query", "_query_indicators"),
        ("GET", r"/api/indicators/query/hash/(?P<collection>[^/]+)", "_query_collection"),
        ("POST", r"/api/indicators/consume", "_consume"),
        ("GET", _INDICATOR, "_get_indicator"),
        ("GET", _INDICATOR + "/attributes", "_list_attributes"),
        ("POST", _INDICATOR + "/attributes", "_create_attributes"),
        ("PUT", _INDICATOR + r"/attributes/(?P<attribute_id>\d+)", "_update_attribute"),
        ("DELETE", _INDICATOR + r"/attributes/(?P<attribute_id>\d+)", "_delete_attribute"),
        ("PUT", r"/api/indicator/(?P<indicator_id>\d+)/scores", "_update_score"),
        ("GET", r"/api/indicator/types", "_list_types"),
        ("GET", r"/api/indicator/statuses", "_list_statuses"),
    )
)
_COLLECTION_RELATIONS = frozenset({"attributes", "sources"})


class ThreatQSimulator(SimulatorServer):
    """An in-memory ThreatQ served over HTTP on 127.0.0.1; ``url`` is "http://127.0.0.1:PORT".

    Tokens live ``token_lifetime`` seconds on the clock. A ``limit`` above
    ``max_page_size`` is lowered to it. With ``reject_updated_at_filter``, a query
    that filters on ``updated_at`` gets 400, as from a server without that filter.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        client_id: str = "tqvt-demo-client",
        email: str = "analyst@example.com",
        password: str = "demo-password",
        client_secret: str = "demo-secret",
        token_lifetime: int = 1800,
        max_page_size: int = 500,
        reject_updated_at_filter: bool = False,
    ) -> None:
        super().__init__(clock)
        self.credentials = Credentials(client_id, email, password, client_secret)
        self.max_page_size = max_page_size
        self.reject_updated_at_filter = reject_updated_at_filter
        self.tokens = TokenStore(self.clock, self.credentials, token_lifetime)
        self.library = ThreatLibrary(self.clock)

    client_id = property(lambda self: self.credentials.client_id)
    email = property(lambda self: self.credentials.email)
    password = property(lambda self: self.credentials.password)
    client_secret = property(lambda self: self.credentials.client_secret)

    @property
    def token_lifetime(self) -> int:
        return self.tokens.lifetime

    @token_lifetime.setter
    def token_lifetime(self, seconds: int) -> None:
        self.tokens.lifetime = seconds

    # ---- Python helpers for tests and the demo -------------------------------------

    def add_indicator(
        self,
        value: str,
        type_name: str,
        *,
        score: float = 0,
        status: str = "Active",
        attributes: Iterable[tuple[str, ...]] = (),
        updated_at: datetime | str | None = None,
        source: str = "tqvt sandbox",
    ) -> int:
        """Create an indicator and return its id.

        ``attributes`` contains ``(name, value)`` or ``(name, value, source_name)``
        tuples. ``updated_at`` backdates the creation, update and touch times.

        Raises:
            ValueError: on an unknown type or status, or when the value and type exist.
        """
        library = self.library
        with library.lock:
            type_id = require_type(type_name)
            status_id = require_status(status)
            if library.find_by_value(value, type_id) is not None:
                raise ValueError(f"a {type_name} indicator with value {value!r} exists")
            stamp = format_time(updated_at) if updated_at is not None else library.now()
            indicator = library.create(value, type_id, status_id, [source], score, stamp)
            for name, attribute, *rest in attributes:
                sources = [rest[0]] if rest else [source]
                library.add_attribute(indicator, name, str(attribute), sources, None, stamp)
            return indicator["id"]

    def update_indicator(
        self, indicator_id: int, *, updated_at: datetime | str | None = None, **fields: object
    ) -> None:
        """Change fields of an indicator and bump its ``updated_at``.

        The fields are ``value``, ``type``, ``status``, ``score`` and ``description``.
        ``updated_at`` sets that time instead of the clock's.

        Raises:
            KeyError: when the indicator does not exist.
            ValueError: on an unknown field, type or status.
        """
        library = self.library
        with library.lock:
            indicator = library.get(indicator_id)
            stamp = format_time(updated_at) if updated_at is not None else library.now()
            library.apply_fields(indicator, fields)
            indicator["updated_at"] = indicator["touched_at"] = stamp
            library.changed()

    def indicator(self, indicator_id: int) -> dict:
        """Return a deep copy of the indicator with its attributes and sources."""
        with self.library.lock:
            return self.library.snapshot([indicator_id])[0]

    def indicators(self) -> list[dict]:
        """Return deep copies of every indicator, in id order."""
        with self.library.lock:
            return self.library.snapshot()

    def attributes_of(self, indicator_id: int) -> list[dict]:
        """Return deep copies of the indicator's attributes, oldest first."""
        with self.library.lock:
            return copy.deepcopy(self.library.get(indicator_id)["attributes"])

    def add_collection(self, collection_hash: str, indicator_ids: Iterable[int]) -> None:
        """Create or replace the data collection served at /api/indicators/query/hash/{hash}."""
        with self.library.lock:
            self.library.collections[collection_hash] = frozenset(indicator_ids)
            self.library.changed()

    def revoke_tokens(self) -> None:
        """Invalidate every access and refresh token, so the next API call gets 401."""
        with self.library.lock:
            self.tokens.revoke_all()

    # ---- HTTP dispatch -------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        with self.library.lock:
            try:
                return self._route(request)
            except ApiFailure as failure:
                return self.error_response(failure.status, failure.message)

    def error_response(self, status: int, message: str) -> Response:
        if status == 401:
            message = "Unauthenticated."
        return json_response(status, {"errors": [message]})

    def _route(self, request: Request) -> Response:
        if request.path == "/api/token":
            if request.method != "POST":
                raise ApiFailure(405, f"Method {request.method} is not allowed on /api/token.")
            return json_response(200, self.tokens.issue(request))
        path_known = False
        for method, pattern, handler_name in _ROUTES:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            path_known = True
            if method == request.method:
                identity = self.tokens.authenticate(request)
                return getattr(self, handler_name)(request, identity, **match.groupdict())
        if path_known:
            raise ApiFailure(405, f"Method {request.method} is not allowed on {request.path}.")
        raise ApiFailure(404, f"Route {request.path} not found")

    # ---- reads ---------------------------------------------------------------------

    def _query_indicators(self, request: Request, identity: str) -> Response:
        body = json_body(request, default={})
        if not isinstance(body, dict):
            raise ApiFailure(400, "The query body must be a JSON object.")
        conditions = [body.get("criteria") or {}, body.get("filters") or {}]
        if self.reject_updated_at_filter and mentions_field(conditions, "updated_at"):
            raise ApiFailure(400, "The field updated_at cannot be used in a query filter.")
        predicate = compile_conditions(conditions)
        sort = parse_sort(request.query.get("sort"))
        cache_key = ("query", json.dumps(conditions, sort_keys=True), sort)
        ordered = self.library.select(cache_key, predicate, sort)
        return self._page(request, ordered, sort, parse_with(request), body.get("fields"))

    def _query_collection(self, request: Request, identity: str, collection: str) -> Response:
        members = self.library.collections.get(collection)
        if members is None:
            raise ApiFailure(404, f"Data collection {collection} not found")
        sort = parse_sort(request.query.get("sort"))
        ordered = self.library.select(
            ("collection", collection, sort), lambda item: item["id"] in members, sort
        )
        # Collection items carry their attributes and sources unless the request sets `with`.
        with_ = parse_with(request) if "with" in request.query else _COLLECTION_RELATIONS
        return self._page(request, ordered, sort, with_, None)

    def _page(
        self,
        request: Request,
        ordered: list[int],
        sort: SortSpec,
        with_: frozenset[str],
        fields: object,
    ) -> Response:
        """Build one page: by ``cursorMark`` when the request has one, else by ``offset``."""
        limit = min(int_param(request, "limit", DEFAULT_PAGE_SIZE, 1), self.max_page_size)
        payload: dict = {"total": len(ordered), "limit": limit}
        if "cursorMark" in request.query:
            mark = request.query["cursorMark"]
            indicators = self.library.by_id
            page, payload["nextCursorMark"] = cursor_page(ordered, indicators, sort, mark, limit)
        else:
            offset = int_param(request, "offset", 0, 0)
            page = ordered[offset : offset + limit]
            payload["offset"] = offset
        library = self.library
        payload["data"] = [library.render(library.get(i), with_, fields) for i in page]
        return json_response(200, payload)

    def _get_indicator(self, request: Request, identity: str, indicator_id: str) -> Response:
        item = self.library.render(self.library.find(indicator_id), parse_with(request))
        return json_response(200, {"data": item})

    def _list_attributes(self, request: Request, identity: str, indicator_id: str) -> Response:
        attributes = self.library.find(indicator_id)["attributes"]
        return json_response(200, {"total": len(attributes), "data": attributes})

    def _list_types(self, request: Request, identity: str) -> Response:
        name = request.query.get("name")
        types = [type_record(*row) for row in INDICATOR_TYPES if name in (None, row[1])]
        return json_response(200, {"total": len(types), "data": types})

    def _list_statuses(self, request: Request, identity: str) -> Response:
        statuses = [status_record(*row) for row in STATUSES]
        return json_response(200, {"total": len(statuses), "data": statuses})

    # ---- writes --------------------------------------------------------------------

    def _create_attributes(self, request: Request, identity: str, indicator_id: str) -> Response:
        indicator = self.library.find(indicator_id)
        body = json_body(request)
        entries = body if isinstance(body, list) else [body]
        if not entries:
            raise ApiFailure(400, "The request body must hold at least one attribute.")
        parsed = [parse_attribute(entry, identity) for entry in entries]
        stamp = self.library.now()
        created = [
            self.library.add_attribute(indicator, name, value, sources, published_at, stamp)
            for name, value, sources, published_at in parsed
        ]
        return json_response(201, {"total": len(created), "data": created})

    def _update_attribute(
        self, request: Request, identity: str, indicator_id: str, attribute_id: str
    ) -> Response:
        indicator = self.library.find(indicator_id)
        attribute = self.library.find_attribute(indicator, attribute_id)
        body = json_body(request)
        if not isinstance(body, dict):
            raise ApiFailure(400, "The request body must be a JSON object with a value.")
        value = attribute_value(body.get("value"))
        stamp = self.library.now()
        attribute.update(value=value, updated_at=stamp, touched_at=stamp)
        self.library.touch(indicator, stamp)
        return json_response(200, {"data": attribute})

    def _delete_attribute(
        self, request: Request, identity: str, indicator_id: str, attribute_id: str
    ) -> Response:
        indicator = self.library.find(indicator_id)
        attribute = self.library.find_attribute(indicator, attribute_id)
        indicator["attributes"].remove(attribute)
        self.library.touch(indicator, self.library.now())
        return Response(204)

    def _update_score(self, request: Request, identity: str, indicator_id: str) -> Response:
        indicator = self.library.find(indicator_id)
        body = json_body(request)
        if not isinstance(body, dict) or "manual_score" not in body:
            raise ApiFailure(400, "The manual_score field is required.")
        manual = body["manual_score"]
        is_number = isinstance(manual, int | float) and not isinstance(manual, bool)
        if manual is not None and not (is_number and 0 <= manual <= 10):
            message = f"manual_score must be a number from 0 to 10 or null, got {manual!r}."
            raise ApiFailure(400, message)
        score = self.library.set_scores(indicator, manual=manual)
        self.library.touch(indicator, self.library.now())
        return json_response(200, {"data": score})

    def _consume(self, request: Request, identity: str) -> Response:
        """Match each indicator by exact value and type, create it when missing, append attributes.

        The whole body is validated before anything is written.

        NOTE: an existing indicator keeps its status. Whether ThreatQ applies the
        consumed status to an existing indicator is not known.
        """
        body = json_body(request)
        if not isinstance(body, list):
            raise ApiFailure(400, "The request body must be a JSON array of indicators.")
        parsed = [_parse_consumed(entry, identity) for entry in body]
        library = self.library
        stamp = library.now()
        results = []
        for item in parsed:
            indicator = library.find_by_value(item["value"], item["type_id"])
            if indicator is None:
                indicator = library.create(
                    item["value"], item["type_id"], item["status_id"], item["sources"], 0, stamp
                )
            for name in item["sources"]:
                library.add_source(indicator, name, stamp)
            for name, value, sources, published_at in item["attributes"]:
                library.add_attribute(indicator, name, value, sources, published_at, stamp)
            results.append(library.render(indicator, frozenset()))
        return json_response(200, {"data": results})


def _parse_consumed(entry: object, identity: str) -> dict:
    if not isinstance(entry, dict):
        raise ApiFailure(400, "Each consumed indicator must be a JSON object.")
    value = entry.get("value")
    if not isinstance(value, str) or not value:
        raise ApiFailure(400, "The indicator value field is required.")
    attributes = entry.get("attributes") or []
    if not isinstance(attributes, list):
        raise ApiFailure(400, "The attributes field must be a list.")
    return {
        "value": value,
        "type_id": _reference(entry, "type", TYPE_IDS, None),
        "status_id": _reference(entry, "status", STATUS_IDS, "Active"),
        "sources": source_names(entry.get("sources"), identity),
        "attributes": [parse_attribute(item, identity) for item in attributes],
    }


def _reference(entry: dict, field: str, ids: dict[str, int], default: str | None) -> int:
    """Resolve ``{field: {name}}``, ``{field: {id}}``, ``{field: name}`` or ``{field}_id``."""
    reference = entry.get(field)
    if isinstance(reference, dict):
        reference = reference.get("name", reference.get("id"))
    if reference is None:
        reference = entry.get(f"{field}_id", default)
    if isinstance(reference, str) and reference in ids:
        return ids[reference]
    if isinstance(reference, int) and not isinstance(reference, bool) and reference in ids.values():
        return reference
    raise ApiFailure(400, f"Unknown indicator {field} {reference!r}.")
