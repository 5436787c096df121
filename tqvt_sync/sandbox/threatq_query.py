"""Request parsing and the query language of the ThreatQ simulator.

``POST /api/indicators/query`` takes ``criteria`` and ``filters`` objects that are
both applied. A condition object contains field conditions that must all be true:

- equality: ``{"value": "1.2.3.4"}``, ``{"type_name": "FQDN"}``, ``{"status_name": "Active"}``,
  ``{"id": 7}`` (also ``type_id``, ``status_id`` and ``class``);
- comparison: ``{"updated_at": {"+gte": "2026-01-05 00:00:00"}}`` with ``+gt``, ``+gte``,
  ``+lt`` and ``+lte`` on ``updated_at``, ``touched_at``, ``created_at``, ``score`` and ``id``;
- substring: ``{"value": {"+contains": "example"}}``, ignoring case;
- groups: ``{"+or": [condition, ...]}`` and ``{"+and": [condition, ...]}``, nestable.

Anything else is rejected with 400, so that product code cannot come to depend on a
query form that public ThreatQ clients do not show.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import operator
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from tqvt_sync.sandbox.httpserver import Request

# NOTE: ThreatQ's default page size is not documented; 100 is this simulator's choice.
DEFAULT_PAGE_SIZE = 100
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

Predicate = Callable[[dict], bool]
SortSpec = tuple[tuple[str, bool], ...]

_EQUALITY_FIELDS: dict[str, Callable[[dict], object]] = {
    "id": operator.itemgetter("id"),
    "value": operator.itemgetter("value"),
    "class": operator.itemgetter("class"),
    "type_id": operator.itemgetter("type_id"),
    "status_id": operator.itemgetter("status_id"),
    "type_name": lambda indicator: indicator["type"]["name"],
    "status_name": lambda indicator: indicator["status"]["name"],
}
_INTEGER_FIELDS = frozenset({"id", "type_id", "status_id"})
_TIME_FIELDS = frozenset({"created_at", "updated_at", "touched_at"})
_NUMBER_FIELDS = frozenset({"id", "score"})
_COMPARISONS = {"+gt": operator.gt, "+gte": operator.ge, "+lt": operator.lt, "+lte": operator.le}
_SORT_FIELDS = frozenset(
    {"id", "value", "created_at", "updated_at", "touched_at", "score", "type_id", "status_id"}
)


class ApiFailure(Exception):
    """An error response of the simulated API: an HTTP status and one message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ---- request parsing ----------------------------------------------------------------


def json_body(request: Request, default: object = None) -> object:
    """Parse the JSON body; an empty body returns ``default`` or, without one, raises 400."""
    if not request.body.strip():
        if default is not None:
            return default
        raise ApiFailure(400, "The request body is empty; a JSON document is required.")
    try:
        return json.loads(request.body)
    except ValueError as error:
        raise ApiFailure(400, f"The request body is not valid JSON: {error}.") from None


def parse_with(request: Request) -> frozenset[str]:
    """Return the relation names of the comma-separated ``with`` parameter."""
    text = request.query.get("with") or ""
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def int_param(request: Request, name: str, default: int, minimum: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        number = int(text)
    except ValueError:
        raise ApiFailure(400, f"The {name} parameter must be an integer, got {text!r}.") from None
    if number < minimum:
        raise ApiFailure(400, f"The {name} parameter must be at least {minimum}, got {number}.")
    return number


def format_time(moment: datetime | str) -> str:
    """Format a datetime as ThreatQ does; a string must already have that format.

    Raises:
        ValueError: when a string is not "YYYY-MM-DD HH:MM:SS".
    """
    if isinstance(moment, datetime):
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC)
        return moment.strftime(TIME_FORMAT)
    datetime.strptime(moment, TIME_FORMAT)
    return moment


def parse_attribute(entry: object, identity: str) -> tuple[str, str, list[str], str | None]:
    """Validate one attribute of a request body; return (name, value, sources, published_at)."""
    if not isinstance(entry, dict):
        raise ApiFailure(400, "Each attribute must be a JSON object.")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ApiFailure(400, "The attribute name field is required.")
    published_at = entry.get("published_at")
    if published_at is not None:
        try:
            published_at = format_time(str(published_at))
        except ValueError:
            message = f"published_at must be YYYY-MM-DD HH:MM:SS, got {published_at!r}."
            raise ApiFailure(400, message) from None
    sources = source_names(entry.get("sources"), identity)
    return name, attribute_value(entry.get("value")), sources, published_at


def attribute_value(value: object) -> str:
    """Return an attribute value as the string ThreatQ stores; numbers are converted."""
    if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
        raise ApiFailure(400, "The attribute value field is required and must be a string.")
    return str(value)


def source_names(raw: object, identity: str) -> list[str]:
    """Return the source names of a write; without sources, the caller's own source."""
    if raw is None:
        return [identity]
    if not isinstance(raw, list) or not all(
        isinstance(source, dict) and isinstance(source.get("name"), str) for source in raw
    ):
        raise ApiFailure(400, "sources must be a list of objects with a name.")
    return [source["name"] for source in raw] or [identity]


# ---- conditions ---------------------------------------------------------------------


def compile_conditions(conditions: Sequence[object]) -> Predicate:
    """Compile condition objects into one predicate that requires all of them.

    Raises:
        ApiFailure: 400 on an unknown field, operator or operand.
    """
    # An empty condition object matches everything, so it adds no predicate.
    return _all_of([_compile(condition) for condition in conditions if condition != {}])


def _all_of(predicates: list[Predicate]) -> Predicate:
    """Combine predicates with AND; one predicate is returned as is, none matches everything.

    Paging through a large library evaluates the query once per indicator and
    page, so each level of nesting saved here is a measurable cost.
    """
    if len(predicates) == 1:
        return predicates[0]
    if not predicates:
        return lambda indicator: True
    return lambda indicator: all(predicate(indicator) for predicate in predicates)


def mentions_field(condition: object, field: str) -> bool:
    """Tell whether a condition tree uses ``field`` anywhere."""
    if isinstance(condition, Mapping):
        return any(key == field or mentions_field(value, field) for key, value in condition.items())
    if isinstance(condition, list):
        return any(mentions_field(item, field) for item in condition)
    return False


def _compile(condition: object) -> Predicate:
    if not isinstance(condition, Mapping):
        raise ApiFailure(400, f"A query condition must be a JSON object, got {condition!r}.")
    return _all_of([_compile_entry(key, expected) for key, expected in condition.items()])


def _compile_entry(key: str, expected: object) -> Predicate:
    if key in ("+or", "+and"):
        if not isinstance(expected, list) or not expected:
            raise ApiFailure(400, f"{key} needs a non-empty list of conditions.")
        parts = [_compile(item) for item in expected]
        combine = any if key == "+or" else all
        return lambda indicator: combine(part(indicator) for part in parts)
    if isinstance(expected, Mapping):
        return _all_of([_compile_operator(key, op, operand) for op, operand in expected.items()])
    return _compile_equality(key, expected)


def _compile_equality(field: str, expected: object) -> Predicate:
    getter = _EQUALITY_FIELDS.get(field)
    if getter is None:
        raise ApiFailure(400, f"Unsupported query field {field!r}.")
    if field in _INTEGER_FIELDS:
        expected_value: object = _number(field, expected, integer=True)
    elif isinstance(expected, str):
        expected_value = expected
    else:
        raise ApiFailure(400, f"The {field} condition needs a string, got {expected!r}.")
    return lambda indicator: getter(indicator) == expected_value


def _compile_operator(field: str, op: str, operand: object) -> Predicate:
    if op == "+contains" and field == "value" and isinstance(operand, str):
        needle = operand.lower()
        return lambda indicator: needle in indicator["value"].lower()
    compare = _COMPARISONS.get(op)
    if compare is None or field not in _TIME_FIELDS | _NUMBER_FIELDS:
        raise ApiFailure(400, f"Unsupported query operator {op!r} on field {field!r}.")
    if field in _TIME_FIELDS:
        if not isinstance(operand, str):
            raise ApiFailure(400, f"{field} {op} needs a YYYY-MM-DD HH:MM:SS string.")
        try:
            bound: float | str = format_time(operand)
        except ValueError:
            message = f"{field} {op} needs YYYY-MM-DD HH:MM:SS, got {operand!r}."
            raise ApiFailure(400, message) from None
    else:
        bound = _number(field, operand, integer=False)
    return lambda indicator: compare(indicator[field], bound)


def _number(field: str, value: object, *, integer: bool) -> float:
    message = f"The {field} condition needs a number, got {value!r}."
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ApiFailure(400, message)
    try:
        return int(value) if integer else float(value)
    except ValueError:
        raise ApiFailure(400, message) from None


# ---- sorting and cursor paging ------------------------------------------------------


def parse_sort(text: str | None) -> SortSpec:
    """Parse "updated_at,-id" into ((field, descending), ...); the default is ("id", False)."""
    if not text:
        return (("id", False),)
    spec = []
    for part in text.split(","):
        part = part.strip()
        name = part.lstrip("+-")
        if name not in _SORT_FIELDS:
            raise ApiFailure(400, f"Unsupported sort field {name!r}.")
        spec.append((name, part.startswith("-")))
    return tuple(spec)


def ordered_ids(indicators: list[dict], sort: SortSpec) -> list[int]:
    """Sort indicators by the sort spec, with ascending id as the final tie-breaker."""
    items = sorted(indicators, key=operator.itemgetter("id"))
    for name, descending in reversed(sort):
        items.sort(key=operator.itemgetter(name), reverse=descending)
    return [indicator["id"] for indicator in items]


def cursor_page(
    ordered: list[int], indicators: Mapping[int, dict], sort: SortSpec, mark: str, limit: int
) -> tuple[list[int], str]:
    """Return the page after the cursor mark, and the mark for the next page.

    "*" starts at the beginning. A mark encodes the sort values of the last item
    sent, so a walk continues correctly when other indicators are added. After the
    last item the next mark equals the mark sent.
    """
    directions = [descending for _, descending in sort] + [False]

    def sort_values(indicator_id: int) -> list:
        indicator = indicators[indicator_id]
        return [indicator[name] for name, _ in sort] + [indicator_id]

    comparable = functools.cmp_to_key(functools.partial(_compare, directions=directions))
    start = 0
    if mark != "*":
        cursor = _decode_mark(mark, len(directions))
        start = bisect_right(ordered, comparable(cursor), key=lambda i: comparable(sort_values(i)))
    page = ordered[start : start + limit]
    next_mark = _encode_mark(sort_values(page[-1])) if page else mark
    return page, next_mark


def _compare(left: list, right: list, directions: list[bool]) -> int:
    for a, b, descending in zip(left, right, directions, strict=True):
        if a != b:
            order = -1 if a < b else 1
            return -order if descending else order
    return 0


def _encode_mark(values: list) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode()


def _decode_mark(mark: str, length: int) -> list:
    try:
        values = json.loads(base64.urlsafe_b64decode(mark.encode()))
    except (ValueError, binascii.Error):
        raise ApiFailure(400, f"Invalid cursorMark {mark!r}.") from None
    if not isinstance(values, list) or len(values) != length:
        raise ApiFailure(400, f"The cursorMark {mark!r} does not match the sort order.")
    return values
