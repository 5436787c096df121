"""The in-memory threat library behind the ThreatQ simulator.

Indicators are dicts shaped like ThreatQ's API items: ``type`` and ``status`` are
embedded, ``score`` is the effective score, ``sources`` and ``attributes`` are lists.
Attributes are multi-valued: adding an attribute whose name and value already exist
on the indicator creates a second instance, which is what tqvt must guard against.
Callers hold ``lock`` around every call.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import threading
from collections.abc import Callable, Iterable, Mapping

from tqvt_sync.clock import Clock
from tqvt_sync.sandbox.threatq_query import (
    ApiFailure,
    Predicate,
    SortSpec,
    format_time,
    ordered_ids,
)

# (id, name, class). Type ids differ between ThreatQ instances; these are this simulator's.
INDICATOR_TYPES: tuple[tuple[int, str, str], ...] = (
    (3, "CVE", "host"),
    (4, "Email Address", "network"),
    (7, "FQDN", "network"),
    (8, "Filename", "host"),
    (15, "IP Address", "network"),
    (16, "IPv6 Address", "network"),
    (18, "MD5", "host"),
    (22, "SHA-1", "host"),
    (23, "SHA-256", "host"),
    (24, "SHA-384", "host"),
    (25, "SHA-512", "host"),
    (28, "URL", "network"),
)
STATUSES: tuple[tuple[int, str, str], ...] = (
    (1, "Active", "Poses a threat and is being exported to detection tools."),
    (2, "Expired", "No longer poses a serious threat."),
    (3, "Indirect", "Associated with a threat but not a threat by itself."),
    (4, "Review", "Needs review by an analyst before it is exported."),
    (5, "Whitelisted", "Poses NO risk and should never be deployed."),
)
TYPE_IDS = {name: type_id for type_id, name, _ in INDICATOR_TYPES}
STATUS_IDS = {name: status_id for status_id, name, _ in STATUSES}
_TYPES_BY_ID = {row[0]: {"id": row[0], "name": row[1], "class": row[2]} for row in INDICATOR_TYPES}
_STATUSES_BY_ID = {
    row[0]: {"id": row[0], "name": row[1], "description": row[2]} for row in STATUSES
}
_CATALOG_STAMP = "2017-04-17 04:35:21"
_RELATIONS = ("attributes", "sources")
_EMPTY_RELATIONS = ("adversaries", "events", "tags", "watchlist")
_SCORE_CONFIG_HASH = hashlib.sha1(b"tqvt sandbox score config").hexdigest()


class ThreatLibrary:
    """Indicators, their attributes, sources and scores, and data collections."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.collections: dict[str, frozenset[int]] = {}
        self._indicators: dict[int, dict] = {}
        self._by_value: dict[tuple[str, int], int] = {}
        self._scores: dict[int, dict] = {}
        self._attribute_definitions: dict[str, int] = {}
        self._source_ids: dict[str, int] = {}
        self._indicator_ids = itertools.count(1)
        self._attribute_ids = itertools.count(1001)
        self._source_link_ids = itertools.count(1)
        self._version = 0
        self._selections: dict[tuple, list[int]] = {}
        self._selections_version = -1

    # ---- reads ---------------------------------------------------------------------

    def now(self) -> str:
        return format_time(self.clock.now())

    def get(self, indicator_id: int) -> dict:
        return self._indicators[indicator_id]

    @property
    def by_id(self) -> Mapping[int, dict]:
        """The live indicators by id, for read-only use under ``lock``."""
        return self._indicators

    def find(self, indicator_id: str | int) -> dict:
        """Return the indicator, or raise a 404 failure."""
        indicator = self._indicators.get(int(indicator_id))
        if indicator is None:
            raise ApiFailure(404, f"Indicator {indicator_id} not found")
        return indicator

    def find_by_value(self, value: str, type_id: int) -> dict | None:
        indicator_id = self._by_value.get((value, type_id))
        return None if indicator_id is None else self._indicators[indicator_id]

    def snapshot(self, indicator_ids: Iterable[int] | None = None) -> list[dict]:
        """Return deep copies of the indicators, all of them in id order by default."""
        ids = self._indicators.keys() if indicator_ids is None else indicator_ids
        return copy.deepcopy([self._indicators[i] for i in ids])

    def select(self, cache_key: tuple, predicate: Predicate, sort: SortSpec) -> list[int]:
        """Return the ids of matching indicators in sort order.

        The result is cached until the next write, so paging through a large result
        costs one scan instead of one per page.
        """
        if self._selections_version != self._version or len(self._selections) > 32:
            self._selections = {}
            self._selections_version = self._version
        ordered = self._selections.get(cache_key)
        if ordered is None:
            matching = [
                indicator for indicator in self._indicators.values() if predicate(indicator)
            ]
            ordered = ordered_ids(matching, sort)
            self._selections[cache_key] = ordered
        return ordered

    def render(self, indicator: dict, with_: frozenset[str], fields: object = None) -> dict:
        """Shape an indicator as an API item; relations appear only when ``with_`` names them.

        ``score`` is a number, or the score object when ``with_`` names it. The item
        shares nested objects with the library, so serialise it before releasing ``lock``.
        """
        item = {key: value for key, value in indicator.items() if key not in _RELATIONS}
        if "score" in with_:
            item["score"] = self._scores[indicator["id"]]
        for relation in _RELATIONS:
            if relation in with_:
                item[relation] = indicator[relation]
        for relation in _EMPTY_RELATIONS:
            if relation in with_:
                item[relation] = []
        if isinstance(fields, list) and fields:
            item = {key: value for key, value in item.items() if key == "id" or key in fields}
        return item

    # ---- writes --------------------------------------------------------------------

    def create(
        self,
        value: str,
        type_id: int,
        status_id: int,
        sources: list[str],
        score: float,
        stamp: str,
    ) -> dict:
        """Create an indicator; the caller checks that the value and type are new."""
        indicator_id = next(self._indicator_ids)
        indicator = {
            "id": indicator_id,
            "class": _TYPES_BY_ID[type_id]["class"],
            "value": value,
            "hash": hashlib.md5(value.encode()).hexdigest(),
            "description": None,
            "type_id": type_id,
            "status_id": status_id,
            "score": score,
            "manual_score": None,
            "created_at": stamp,
            "updated_at": stamp,
            "touched_at": stamp,
            "published_at": stamp,
            "expires_at": None,
            "type": dict(_TYPES_BY_ID[type_id]),
            "status": dict(_STATUSES_BY_ID[status_id]),
            "sources": [],
            "attributes": [],
        }
        indicator["sources"] = [self._source_link(indicator, name, stamp) for name in sources]
        self._indicators[indicator_id] = indicator
        self._by_value[(value, type_id)] = indicator_id
        self._scores[indicator_id] = {
            "id": indicator_id,
            "indicator_id": indicator_id,
            "generated_score": float(score),
            "manual_score": None,
            "score_config_hash": _SCORE_CONFIG_HASH,
            "created_at": stamp,
            "updated_at": stamp,
        }
        self.changed()
        return indicator

    def add_source(self, indicator: dict, name: str, stamp: str) -> None:
        if all(source["name"] != name for source in indicator["sources"]):
            indicator["sources"].append(self._source_link(indicator, name, stamp))
            self.touch(indicator, stamp)

    def add_attribute(
        self,
        indicator: dict,
        name: str,
        value: str,
        sources: list[str],
        published_at: str | None,
        stamp: str,
    ) -> dict:
        """Append an attribute instance, even when the same name and value exist."""
        definition_id = self._attribute_definitions.setdefault(
            name, len(self._attribute_definitions) + 1
        )
        attribute = {
            "id": next(self._attribute_ids),
            "attribute_id": definition_id,
            "indicator_id": indicator["id"],
            "name": name,
            "value": value,
            "sources": [{"source_id": self._source_id(s), "name": s} for s in sources],
            "published_at": published_at or stamp,
            "created_at": stamp,
            "updated_at": stamp,
            "touched_at": stamp,
        }
        indicator["attributes"].append(attribute)
        self.touch(indicator, stamp)
        return attribute

    def find_attribute(self, indicator: dict, attribute_id: str | int) -> dict:
        """Return the attribute instance of this indicator, or raise a 404 failure."""
        for attribute in indicator["attributes"]:
            if attribute["id"] == int(attribute_id):
                return attribute
        message = f"Attribute {attribute_id} of indicator {indicator['id']} not found"
        raise ApiFailure(404, message)

    def score_of(self, indicator: dict) -> dict:
        return self._scores[indicator["id"]]

    def set_scores(
        self, indicator: dict, *, generated: float | None = None, manual: object = ...
    ) -> dict:
        """Change the generated and/or manual score and return the score object.

        NOTE: the effective score is the manual score when set, else the generated
        one. ThreatQ's own rule is not known; it may be the maximum of both.
        """
        score = self._scores[indicator["id"]]
        if generated is not None:
            score["generated_score"] = float(generated)
        if manual is not ...:
            score["manual_score"] = manual
            score["updated_at"] = self.now()
        indicator["manual_score"] = score["manual_score"]
        manual_score = score["manual_score"]
        indicator["score"] = manual_score if manual_score is not None else score["generated_score"]
        self.changed()
        return score

    def apply_fields(self, indicator: dict, fields: dict[str, object]) -> None:
        """Change value, type, status, score or description (the test helper's fields)."""
        setters: dict[str, Callable[[object], object]] = {
            "value": lambda value: self._rekey(indicator, str(value), indicator["type_id"]),
            "type": lambda name: self._rekey(indicator, indicator["value"], require_type(name)),
            "status": lambda name: self._set_status(indicator, require_status(name)),
            "score": lambda value: self.set_scores(indicator, generated=float(str(value))),
            "description": lambda value: indicator.__setitem__("description", value),
        }
        for name, value in fields.items():
            if name not in setters:
                raise ValueError(f"update_indicator cannot change field {name!r}")
            setters[name](value)

    def touch(self, indicator: dict, stamp: str) -> None:
        # NOTE: attribute, source and score writes bump touched_at and leave
        # updated_at alone. Which of the two a real ThreatQ bumps is not known.
        indicator["touched_at"] = stamp
        self.changed()

    def changed(self) -> None:
        self._version += 1

    def _rekey(self, indicator: dict, value: str, type_id: int) -> None:
        key = (value, type_id)
        if key in self._by_value and self._by_value[key] != indicator["id"]:
            raise ValueError(f"another indicator has value {value!r} and type id {type_id}")
        del self._by_value[(indicator["value"], indicator["type_id"])]
        indicator.update(value=value, type_id=type_id, type=dict(_TYPES_BY_ID[type_id]))
        indicator["class"] = indicator["type"]["class"]
        self._by_value[key] = indicator["id"]

    def _set_status(self, indicator: dict, status_id: int) -> None:
        indicator.update(status_id=status_id, status=dict(_STATUSES_BY_ID[status_id]))

    def _source_link(self, indicator: dict, name: str, stamp: str) -> dict:
        source_id = self._source_id(name)
        return {
            "id": next(self._source_link_ids),
            "source_id": source_id,
            "name": name,
            "source_type": "connectors",
            "creator_source_id": source_id,
            "indicator_id": indicator["id"],
            "indicator_type_id": indicator["type_id"],
            "indicator_status_id": indicator["status_id"],
            "tlp_id": None,
            "published_at": stamp,
            "created_at": stamp,
            "updated_at": stamp,
        }

    def _source_id(self, name: str) -> int:
        return self._source_ids.setdefault(name, len(self._source_ids) + 1)


def require_type(name: object) -> int:
    """Return the id of an indicator type name, or raise ValueError."""
    if name not in TYPE_IDS:
        raise ValueError(f"unknown indicator type {name!r}; known: {sorted(TYPE_IDS)}")
    return TYPE_IDS[name]


def require_status(name: object) -> int:
    """Return the id of an indicator status name, or raise ValueError."""
    if name not in STATUS_IDS:
        raise ValueError(f"unknown indicator status {name!r}; known: {sorted(STATUS_IDS)}")
    return STATUS_IDS[name]


def type_record(type_id: int, name: str, kind: str) -> dict:
    """Return the item of GET /api/indicator/types for one type."""
    return {
        "id": type_id,
        "name": name,
        "class": kind,
        "score": None,
        "wildcard_matching": "Y",
        "created_at": _CATALOG_STAMP,
        "updated_at": _CATALOG_STAMP,
    }


def status_record(status_id: int, name: str, description: str) -> dict:
    """Return the item of GET /api/indicator/statuses for one status."""
    return {
        "id": status_id,
        "name": name,
        "description": description,
        "user_editable": "N",
        "visible": "Y",
        "include_in_export": "N" if name == "Whitelisted" else "Y",
        "protected": "Y",
        "created_at": _CATALOG_STAMP,
        "updated_at": _CATALOG_STAMP,
    }
