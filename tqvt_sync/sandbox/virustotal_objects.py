"""VirusTotal objects of the simulator: the bundled samples and generated documents.

The sample documents in ``data/`` are served as published. With ``synthesize`` on, an
identifier that no sample or test added gets a deterministic response derived from the
SHA-256 of its object id: a share ``not_found_rate`` of them is "not found", and the
rest is a sample of the same kind with the id, hashes or URL and the analysis results
rewritten. The verdicts spread over many engines malicious, a few malicious,
suspicious only, harmless, undetected, and no engine results at all.

Generated documents are assembled from JSON fragments prepared once per template, so
one costs a few string joins; nothing is kept after it is sent.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import ipaddress
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
KINDS = ("file", "url", "domain", "ip_address")
COLLECTION_KINDS = {
    "files": "file",
    "urls": "url",
    "domains": "domain",
    "ip_addresses": "ip_address",
}
_COLLECTIONS = {kind: collection for collection, kind in COLLECTION_KINDS.items()}
NOT_FOUND_LABELS = {"file": "File", "url": "URL", "domain": "Domain", "ip_address": "IP address"}

_HEX_LENGTHS = (32, 40, 64)
_HEX = re.compile(r"[0-9a-fA-F]+")
_URL_ID = re.compile(r"[A-Za-z0-9_-]+={0,2}")
_DOMAIN_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_REGENERATED = frozenset(
    {"last_analysis_stats", "last_analysis_results", "md5", "sha1", "sha256", "url"}
)
_FILE_STATS_KEYS = (
    "harmless",
    "type-unsupported",
    "suspicious",
    "confirmed-timeout",
    "timeout",
    "failure",
    "malicious",
    "undetected",
)
_OTHER_STATS_KEYS = ("harmless", "malicious", "suspicious", "undetected", "timeout")
_FILE_LABELS = (
    "Trojan.GenericKD.46",
    "Malware.AI.4294",
    "W32.Trojan.Gen",
    "Trojan:Win32/Wacatac.B!ml",
    "Gen:Variant.Zusy.1",
)
_NETWORK_LABELS = ("malicious", "malware", "phishing")
_API_BASE = "https://www.virustotal.com/api/v3"


class InvalidIdentifier(ValueError):
    """The identifier in the request path is not valid for its object kind."""


@dataclass(frozen=True)
class Target:
    """The object that one lookup requests: its kind, its ``data.id`` and its store keys."""

    kind: str
    data_id: str
    keys: tuple[str, ...]
    url: str | None = None
    requested: str = ""


@dataclass(frozen=True)
class Verdict:
    """Engine counts of a generated analysis.

    ``harmless=None`` gives the kind's usual share: most of the remaining engines for
    URLs, domains and IP addresses, none for files. ``undetected=None`` fills the rest.
    """

    malicious: int = 0
    suspicious: int = 0
    harmless: int | None = 0
    undetected: int | None = None
    no_engines: bool = False


# ---- identifiers --------------------------------------------------------------------


def target_for(kind: str, identifier: str) -> Target:
    """Parse the identifier of a lookup path, or a key given to ``add_object``.

    For URLs the identifier is the URL-safe base64 of the URL (padding optional), the
    SHA-256 hex of the URL, or, as a key, the URL itself.

    Raises:
        InvalidIdentifier: when the identifier is not valid for ``kind``.
    """
    if kind == "file":
        return _file_target(identifier)
    if kind == "url":
        return _url_target(identifier)
    if kind == "domain":
        return _domain_target(identifier)
    if kind == "ip_address":
        return _ip_target(identifier)
    raise ValueError(f"unknown VirusTotal kind {kind!r}; expected one of {KINDS}")


def _file_target(identifier: str) -> Target:
    # NOTE: whether VirusTotal accepts upper-case hex is not known; it is accepted here.
    if len(identifier) not in _HEX_LENGTHS or not _HEX.fullmatch(identifier):
        raise InvalidIdentifier(f"{identifier!r} is not an MD5, SHA-1 or SHA-256 hash")
    key = identifier.lower()
    data_id = key if len(key) == 64 else hashlib.sha256(b"tqvt-sandbox:" + key.encode()).hexdigest()
    return Target("file", data_id, (key,), requested=identifier)


def _url_target(identifier: str) -> Target:
    if len(identifier) == 64 and _HEX.fullmatch(identifier):
        return Target("url", identifier.lower(), (identifier.lower(),), requested=identifier)
    url = identifier if "://" in identifier else _decode_url_id(identifier)
    data_id = hashlib.sha256(url.encode()).hexdigest()
    return Target("url", data_id, (url, data_id), url=url, requested=identifier)


def _decode_url_id(identifier: str) -> str:
    if not _URL_ID.fullmatch(identifier) or len(identifier.rstrip("=")) % 4 == 1:
        raise InvalidIdentifier(f"{identifier!r} is not a URL identifier")
    padded = identifier.rstrip("=") + "=" * (-len(identifier.rstrip("=")) % 4)
    try:
        url = base64.urlsafe_b64decode(padded).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidIdentifier(f"{identifier!r} is not a URL identifier") from None
    if not url.strip() or not url.isprintable():
        raise InvalidIdentifier(f"{identifier!r} does not decode to a URL")
    return url


def _domain_target(identifier: str) -> Target:
    # NOTE: VirusTotal's own validation of domain names is not known; this accepts
    # ASCII labels (punycode included) and lower-cases them.
    name = identifier.lower().rstrip(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_DOMAIN_LABEL.fullmatch(label) for label in labels):
        raise InvalidIdentifier(f"{identifier!r} is not a domain name")
    return Target("domain", name, (name,), requested=identifier)


def _ip_target(identifier: str) -> Target:
    try:
        address = str(ipaddress.ip_address(identifier))
    except ValueError:
        raise InvalidIdentifier(f"{identifier!r} is not an IP address") from None
    return Target("ip_address", address, (address,), requested=identifier)


def store_keys(kind: str, document: dict) -> list[str]:
    """Return the keys under which a sample document is served."""
    data = document["data"]
    attributes = data.get("attributes", {})
    if kind == "file":
        return [attributes[name] for name in ("md5", "sha1", "sha256") if attributes.get(name)]
    if kind == "url":
        return [key for key in (attributes.get("url"), data["id"]) if key]
    return [data["id"]]


# ---- the store ----------------------------------------------------------------------


class ObjectStore:
    """Serialized documents by (kind, key), the keys marked not found, and generation."""

    def __init__(self, *, synthesize: bool = True, not_found_rate: float = 0.15) -> None:
        self.synthesize = synthesize
        self.not_found_rate = not_found_rate
        self._lock = threading.Lock()
        self._bodies: dict[tuple[str, str], bytes] = {}
        self._not_found: set[tuple[str, str]] = set()
        for kind, document, body in _samples():
            for key in store_keys(kind, document):
                self._bodies[(kind, key)] = body

    def add(self, target: Target, body: bytes) -> None:
        with self._lock:
            for key in target.keys:
                self._not_found.discard((target.kind, key))
                self._bodies[(target.kind, key)] = body

    def mark_not_found(self, target: Target) -> None:
        with self._lock:
            for key in target.keys:
                self._bodies.pop((target.kind, key), None)
                self._not_found.add((target.kind, key))

    def lookup(self, target: Target) -> bytes | None:
        """Return the response body for the target, or None for "not found"."""
        with self._lock:
            for key in target.keys:
                if (target.kind, key) in self._not_found:
                    return None
                body = self._bodies.get((target.kind, key))
                if body is not None:
                    return body
        if not self.synthesize:
            return None
        return generate(target, self.not_found_rate)


# ---- generation ---------------------------------------------------------------------


def generate(target: Target, not_found_rate: float) -> bytes | None:
    """Return the generated response body for an unknown target, or None for not found."""
    digest = hashlib.sha256(target.data_id.encode()).digest()
    if int.from_bytes(digest[:4]) / 2**32 < not_found_rate:
        return None
    verdict = _verdict_from_digest(target.kind, digest)
    malicious_look = verdict.malicious > 0 or verdict.suspicious > 0
    templates = _templates()[(target.kind, malicious_look)]
    template = templates[digest[6] % len(templates)]
    return template.render(target, verdict, offset=int.from_bytes(digest[7:9]))


def render_verdict(target: Target, verdict: Verdict) -> bytes:
    """Render a document for the target with exactly these engine counts."""
    malicious_look = verdict.malicious > 0 or verdict.suspicious > 0
    return _templates()[(target.kind, malicious_look)][0].render(target, verdict, offset=0)


def _verdict_from_digest(kind: str, digest: bytes) -> Verdict:
    bucket, spread = digest[4] % 100, digest[5]
    if bucket >= 95:
        return Verdict(no_engines=True)
    if bucket < 15:
        return Verdict(malicious=5 + spread % 40, suspicious=spread % 3, harmless=None)
    if bucket < 35:
        return Verdict(malicious=1 + spread % 4, harmless=None)
    if bucket < 45:
        return Verdict(suspicious=1 + spread % 5, harmless=None)
    if bucket < 70:
        return Verdict(harmless=1 + spread % 3 if kind == "file" else None)
    return Verdict()


class _Template:
    """A sample document split into fixed JSON text and per-engine result fragments."""

    def __init__(self, kind: str, document: dict) -> None:
        data = document["data"]
        attributes = data["attributes"]
        self.kind = kind
        self.type = data["type"]
        fixed = {key: value for key, value in attributes.items() if key not in _REGENERATED}
        self.fixed_json = json.dumps(fixed)[1:-1]
        results = attributes.get("last_analysis_results", {})
        self.fragments = [
            _engine_fragments(kind, index, name, entry)
            for index, (name, entry) in enumerate(results.items())
        ]

    def render(self, target: Target, verdict: Verdict, offset: int) -> bytes:
        categories = self._categories(verdict, offset)
        stats_keys = _FILE_STATS_KEYS if self.kind == "file" else _OTHER_STATS_KEYS
        stats = {key: 0 for key in stats_keys}
        for category in categories:
            if category:
                stats[category] += 1
        results = ", ".join(
            self.fragments[index][category] for index, category in enumerate(categories) if category
        )
        parts = [
            _identity_json(target),
            '"last_analysis_stats": ' + json.dumps(stats),
            '"last_analysis_results": {' + results + "}",
            self.fixed_json,
        ]
        links = json.dumps({"self": f"{_API_BASE}/{_COLLECTIONS[self.kind]}/{target.data_id}"})
        head = f'{{"data": {{"id": {json.dumps(target.data_id)}, "type": "{self.type}", '
        body = head + f'"links": {links}, "attributes": {{{", ".join(p for p in parts if p)}}}}}}}'
        return body.encode()

    def _categories(self, verdict: Verdict, offset: int) -> list[str]:
        """Assign a category to each engine, starting at a rotating offset."""
        count = len(self.fragments)
        if verdict.no_engines or count == 0:
            return [""] * count
        malicious = min(verdict.malicious, count)
        suspicious = min(verdict.suspicious, count - malicious)
        rest = count - malicious - suspicious
        harmless = verdict.harmless
        if harmless is None:
            harmless = 0 if self.kind == "file" else max(0, rest - 7)
        harmless = min(harmless, rest)
        undetected = rest - harmless if verdict.undetected is None else verdict.undetected
        if malicious + suspicious + harmless + undetected > count:
            raise ValueError(f"a {self.kind} template has only {count} engines")
        planned = (
            ["malicious"] * malicious
            + ["suspicious"] * suspicious
            + ["harmless"] * harmless
            + ["undetected"] * undetected
        )
        categories = [""] * count
        for position, category in enumerate(planned):
            categories[(offset + position) % count] = category
        return categories


def _engine_fragments(kind: str, index: int, name: str, entry: dict) -> dict[str, str]:
    was_malicious = entry.get("category") == "malicious" and entry.get("result")
    generic = _FILE_LABELS if kind == "file" else _NETWORK_LABELS
    labels = {
        "malicious": entry["result"] if was_malicious else generic[index % len(generic)],
        "suspicious": "suspicious",
        "harmless": None if kind == "file" else "clean",
        "undetected": None if kind == "file" else "unrated",
    }
    fragments = {}
    for category, label in labels.items():
        record = {**entry, "category": category, "result": label}
        fragments[category] = f"{json.dumps(name)}: {json.dumps(record)}"
    return fragments


def _identity_json(target: Target) -> str:
    if target.kind == "url":
        return f'"url": {json.dumps(target.url)}' if target.url else ""
    if target.kind != "file":
        return ""
    seed = target.data_id.encode()
    hashes = {
        "md5": hashlib.md5(seed).hexdigest(),
        "sha1": hashlib.sha1(seed).hexdigest(),
        "sha256": target.data_id,
    }
    requested = target.keys[0]
    hashes[{32: "md5", 40: "sha1", 64: "sha256"}[len(requested)]] = requested
    return json.dumps(hashes)[1:-1]


@functools.cache
def _samples() -> tuple[tuple[str, dict, bytes], ...]:
    """Load every sample object document once per process: (kind, document, body)."""
    samples = []
    for path in sorted(DATA_DIR.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        data = document.get("data")
        if isinstance(data, dict) and data.get("type") in KINDS and "attributes" in data:
            samples.append((data["type"], document, json.dumps(document).encode()))
    return tuple(samples)


@functools.cache
def _templates() -> dict[tuple[str, bool], list[_Template]]:
    """Group the sample templates by (kind, has malicious detections)."""
    groups: dict[tuple[str, bool], list[_Template]] = {}
    for kind, document, _ in _samples():
        stats = document["data"]["attributes"].get("last_analysis_stats", {})
        key = (kind, stats.get("malicious", 0) > 0)
        groups.setdefault(key, []).append(_Template(kind, document))
    return groups
