"""Normalise ThreatQ indicator values into VirusTotal v3 lookup identifiers.

``normalize`` trims and refangs a value and checks it against its ThreatQ type.
It returns the VirusTotal kind and the identifier that goes into the request path:
lowercase hex for hashes, unpadded URL-safe base64 for URLs, the IDNA (punycode)
name for domains and the canonical text form for IP addresses. Nothing here does I/O.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

# idna implements IDNA 2008 with the UTS 46 mapping, which the stdlib "idna" codec
# (IDNA 2003) does not. It is installed as a dependency of requests.
import idna

KINDS: tuple[str, ...] = ("file", "url", "domain", "ip_address")

DEFAULT_TYPE_MAP: dict[str, str] = {
    "MD5": "file",
    "SHA-1": "file",
    "SHA-256": "file",
    "URL": "url",
    "FQDN": "domain",
    "IP Address": "ip_address",
    "IPv6 Address": "ip_address",
}

STATUS_OK = "ok"
STATUS_UNSUPPORTED = "unsupported"
STATUS_INVALID = "invalid"
STATUS_SKIPPED = "skipped"

MAX_VALUE_LENGTH = 64 * 1024
MAX_URL_LENGTH = 8 * 1024
MAX_DOMAIN_LENGTH = 253
MAX_LABEL_LENGTH = 63
# The longest IPv6 text form is 45 characters, so 64 leaves room for brackets.
MAX_IP_LENGTH = 64

_HASH_LENGTHS = {"MD5": 32, "SHA-1": 40, "SHA-256": 64}
_HASH_NAME_BY_LENGTH = {32: "an MD5", 40: "a SHA-1", 64: "a SHA-256"}

_GUI_PATHS = {"file": "file", "url": "url", "domain": "domain", "ip_address": "ip-address"}

_HXXP = re.compile(r"\bhxxp(s?)\b", re.IGNORECASE)
_BRACKETED = re.compile(r"\[://\]|\[:\]|\[/\]|\[\.\]|\(\.\)|\[dot\]", re.IGNORECASE)
_BRACKETED_REPLACEMENTS = {
    "[://]": "://",
    "[:]": ":",
    "[/]": "/",
    "[.]": ".",
    "(.)": ".",
    "[dot]": ".",
}

_NON_HEX = re.compile(r"[^0-9a-f]")
_URL_PARTS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)(.*)", re.DOTALL)
_NON_HOSTNAME = re.compile(r"[^a-z0-9_-]")

_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x85\u2028\u2029")
# Zero-width joiners are legitimate inside some IDNA labels, and IDNA checks their context.
_JOINERS = frozenset("\u200c\u200d")
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


@dataclass(frozen=True)
class Normalized:
    """Outcome of normalising one indicator value."""

    status: str  # "ok" | "unsupported" | "invalid" | "skipped"
    kind: str | None  # VirusTotal kind when status is "ok", and for skipped IP addresses
    identifier: str | None  # path identifier sent to VirusTotal, only when status is "ok"
    value: str  # the trimmed, refanged value
    reason: str | None  # why the value is unsupported, invalid or skipped


class _InvalidValue(ValueError):
    """Carries the reason why a value is invalid for its type."""


def refang(value: str) -> str:
    """Undo common defanging: hxxp(s) becomes http(s); [.] (.) [dot] [:] [/] [://] lose brackets.

    Matching ignores case, so ``hXXps`` and ``[DOT]`` are refanged as well.
    """
    value = _HXXP.sub(lambda match: "https" if match.group(1) else "http", value)
    return _BRACKETED.sub(lambda match: _BRACKETED_REPLACEMENTS[match.group(0).lower()], value)


def url_identifier(url: str) -> str:
    """Return the VirusTotal URL identifier: unpadded URL-safe base64 of the UTF-8 URL."""
    return base64.urlsafe_b64encode(url.encode("utf-8")).decode("ascii").rstrip("=")


def gui_link(kind: str, data_id: str) -> str:
    """Return the VirusTotal web page of an object from its kind and ``data.id``."""
    try:
        path = _GUI_PATHS[kind]
    except KeyError:
        raise ValueError(f"unknown VirusTotal kind {kind!r}; expected one of {KINDS}") from None
    return f"https://www.virustotal.com/gui/{path}/{quote(data_id, safe=':')}"


def normalize(
    type_name: str,
    value: str,
    *,
    type_map: Mapping[str, str] | None = None,
    lookup_private_ips: bool = False,
) -> Normalized:
    """Check a ThreatQ value against its type and build its VirusTotal identifier.

    ``type_map`` maps ThreatQ type names to VirusTotal kinds and replaces
    ``DEFAULT_TYPE_MAP`` when given. A type missing from it, or mapped to "", is
    unsupported. Addresses that are not globally routable are skipped unless
    ``lookup_private_ips`` is true. Raises ValueError when the map names a kind
    outside ``KINDS``, because that is a configuration error.
    """
    kind = (DEFAULT_TYPE_MAP if type_map is None else type_map).get(type_name) or None
    trimmed = value.strip()
    if kind is None:
        reason = f"ThreatQ type {type_name!r} is not looked up in VirusTotal"
        return Normalized(STATUS_UNSUPPORTED, None, None, refang(trimmed), reason)
    if kind not in KINDS:
        raise ValueError(f"ThreatQ type {type_name!r} is mapped to unknown kind {kind!r}")

    if len(trimmed) > MAX_VALUE_LENGTH:
        reason = str(_too_long("value", len(trimmed), MAX_VALUE_LENGTH))
        return Normalized(STATUS_INVALID, None, None, trimmed, reason)
    text = refang(trimmed)
    try:
        _check_characters(text)
        if kind == "file":
            return _ok_result(kind, _hash_identifier(type_name, text), text)
        if kind == "url":
            return _ok_result(kind, _checked_url_identifier(text), text)
        if kind == "domain":
            return _ok_result(kind, _domain_identifier(text), text)
        return _normalize_ip(text, lookup_private_ips)
    except _InvalidValue as error:
        return Normalized(STATUS_INVALID, None, None, text, str(error))


def _ok_result(kind: str, identifier: str, value: str) -> Normalized:
    return Normalized(STATUS_OK, kind, identifier, value, None)


def _too_long(what: str, length: int, maximum: int) -> _InvalidValue:
    return _InvalidValue(f"{what} is {length} characters long; the maximum is {maximum}")


def _check_characters(text: str) -> None:
    """Raise _InvalidValue for an empty value or one with a character no indicator may contain."""
    if not text:
        raise _InvalidValue("value is empty")
    for position, char in enumerate(text, start=1):
        if char.isprintable() and char != " ":
            continue
        problem = _describe_character(char)
        if problem is not None:
            raise _InvalidValue(f"value contains {problem} at character {position}")


def _describe_character(char: str) -> str | None:
    """Name the problem with a non-printable character, or return None when it is allowed."""
    code = f"U+{ord(char):04X}"
    if char == "\x00":
        return "a NUL byte"
    if char in _LINE_BREAKS:
        return f"a line break ({code})"
    if char.isspace():
        return f"whitespace ({code})"
    if char in _BIDI_CONTROLS:
        return f"bidirectional control character {code}"
    category = unicodedata.category(char)
    if category == "Cc":
        return f"control character {code}"
    if category == "Cf" and char not in _JOINERS:
        return f"invisible format character {code}"
    if category == "Cs":
        return f"unpaired surrogate {code}"
    return None


def _hash_identifier(type_name: str, text: str) -> str:
    """Return the lowercase hash, checked against the length its ThreatQ type implies."""
    digest = text.lower()
    expected = _HASH_LENGTHS.get(type_name)
    label = type_name if expected is not None else "file hash"
    non_hex = _NON_HEX.search(digest)
    if non_hex is not None:
        raise _InvalidValue(
            f"{label} must be hexadecimal, found {text[non_hex.start()]!r} "
            f"at character {non_hex.start() + 1}"
        )

    length = len(digest)
    if expected is None:
        # A custom ThreatQ type mapped to "file" may hold any hash that VirusTotal accepts.
        if length not in _HASH_NAME_BY_LENGTH:
            raise _InvalidValue(
                f"file hash must be 32, 40 or 64 hexadecimal characters "
                f"(MD5, SHA-1 or SHA-256), got {length}"
            )
    elif length != expected:
        reason = f"{type_name} must be {expected} hexadecimal characters, got {length}"
        other = _HASH_NAME_BY_LENGTH.get(length)
        if other is not None:
            reason += f" (the length of {other})"
        raise _InvalidValue(reason)
    return digest


def _checked_url_identifier(text: str) -> str:
    """Return the identifier of a URL after checking its length, host and port."""
    if len(text) > MAX_URL_LENGTH:
        raise _too_long("URL", len(text), MAX_URL_LENGTH)

    # A URL without a scheme is looked up as http://, the scheme a browser assumes,
    # so the lookup names what a browser would have fetched.
    # NOTE: VirusTotal does not document whether its own URL canonicalisation adds a
    # missing scheme, so the bare form might name a different object.
    url = text if _URL_PARTS.match(text) else "http://" + text
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        _ = parts.port  # reading the port validates it
    except ValueError as error:
        raise _InvalidValue(f"URL is not valid: {error}") from None
    if not hostname:
        raise _InvalidValue("URL has no host name")
    return url_identifier(_lowercase_scheme_and_host(url))


def _lowercase_scheme_and_host(url: str) -> str:
    """Lowercase the scheme and host, which RFC 3986 defines as case-insensitive.

    The user information, path, query and fragment keep their case, so two spellings
    of one URL share a cache entry without changing what VirusTotal is asked about.
    """
    match = _URL_PARTS.match(url)
    if match is None:
        return url
    scheme, authority, rest = match.groups()
    userinfo, at_sign, host_and_port = authority.rpartition("@")
    return f"{scheme.lower()}{userinfo}{at_sign}{host_and_port.lower()}{rest}"


def _domain_identifier(text: str) -> str:
    """Return the lowercase ASCII (punycode) name without its trailing dot."""
    # Rejecting very long input before the IDNA mapping bounds the work on hostile values.
    if len(text) > 4 * MAX_DOMAIN_LENGTH:
        raise _too_long("domain", len(text), MAX_DOMAIN_LENGTH)
    if _parse_ip(text.strip("[]")) is not None:
        raise _InvalidValue("value is an IP address, not a domain name")
    try:
        # The UTS 46 mapping lowercases and turns full-width dots into ".". STD3 rules
        # are off so that "_" survives and the ASCII check below names a bad character.
        mapped = idna.uts46_remap(text, std3_rules=False, transitional=False)
    except idna.IDNAError as error:
        raise _InvalidValue(f"domain is not a valid internationalised name: {error}") from None

    name = mapped[:-1] if mapped.endswith(".") else mapped
    if not name:
        raise _InvalidValue("domain is empty")
    labels = [_encode_label(label) for label in name.split(".")]
    if labels[-1].isdigit():
        raise _InvalidValue("top-level label is all digits, so the value is not a domain name")
    domain = ".".join(labels)
    if len(domain) > MAX_DOMAIN_LENGTH:
        raise _too_long("domain in ASCII form", len(domain), MAX_DOMAIN_LENGTH)
    return domain


def _encode_label(label: str) -> str:
    """Return one domain label in ASCII form, or raise _InvalidValue naming the problem."""
    if not label:
        raise _InvalidValue("domain contains an empty label")
    if not label.isascii():
        try:
            return idna.alabel(label).decode("ascii")
        except (idna.IDNAError, UnicodeError) as error:
            reason = f"label {label!r} is not a valid internationalised name: {error}"
            raise _InvalidValue(reason) from None

    if len(label) > MAX_LABEL_LENGTH:
        raise _too_long("domain label", len(label), MAX_LABEL_LENGTH)
    bad = _NON_HOSTNAME.search(label)
    if bad is not None:
        character = bad.group(0)
        raise _InvalidValue(f"domain contains {character!r}, which is not allowed in a host name")
    if label.startswith("-") or label.endswith("-"):
        raise _InvalidValue(f"label {label!r} starts or ends with a hyphen")
    # Underscores are accepted in ASCII labels. IDNA forbids them, but DNS allows them
    # and host names in threat data use them.
    if label.startswith("xn--"):
        try:
            idna.ulabel(label)
        except (idna.IDNAError, UnicodeError) as error:
            raise _InvalidValue(f"label {label!r} is not valid punycode: {error}") from None
    return label


_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SHARED_NETWORK = ipaddress.ip_network("100.64.0.0/10")
_DOCUMENTATION_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "2001:db8::/32",
        "3fff::/20",
    )
)
_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
# NAT64 addresses (RFC 6052) embed a public IPv4 address. The ipaddress module of
# Python 3.11 counts all of ::/8 as reserved, but the IANA special-purpose registry
# lists 64:ff9b::/96 as globally reachable.
_NAT64_NETWORK = ipaddress.ip_network("64:ff9b::/96")


def _parse_ip(text: str) -> _IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _normalize_ip(text: str, lookup_private_ips: bool) -> Normalized:
    """Return the canonical address, or a skipped result when it is not globally routable.

    VirusTotal serves IPv4 and IPv6 from the same endpoint, so an address filed under
    the other family's ThreatQ type ("IP Address" holding IPv6 or the reverse) is
    looked up all the same. An IPv4-mapped IPv6 address becomes its IPv4 address.
    """
    address = _ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    canonical = str(address)

    special_range = _special_range(address)
    if special_range is not None and not lookup_private_ips:
        reason = (
            f"{canonical} is {special_range}, not globally routable; "
            "set TQVT_LOOKUP_PRIVATE_IPS=true to look it up"
        )
        return Normalized(STATUS_SKIPPED, "ip_address", None, text, reason)
    return _ok_result("ip_address", canonical, text)


def _ip_address(text: str) -> _IPAddress:
    """Parse one IPv4 or IPv6 address, or raise _InvalidValue naming what is wrong."""
    if len(text) > MAX_IP_LENGTH:
        raise _too_long("IP address", len(text), MAX_IP_LENGTH)
    candidate = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if "/" in candidate:
        raise _InvalidValue("value is a network in CIDR notation, not a single IP address")
    if "%" in candidate:
        raise _InvalidValue("IPv6 zone index (the part after '%') is not allowed")

    address = _parse_ip(candidate)
    if address is not None:
        return address
    if candidate.count(":") == 1 and "." in candidate:
        raise _InvalidValue("value is an IPv4 address with a port, not a single IP address")
    try:
        if ":" in candidate:
            ipaddress.IPv6Address(candidate)
        else:
            ipaddress.IPv4Address(candidate)
    except ValueError as error:
        family = "IPv6" if ":" in candidate else "IPv4"
        raise _InvalidValue(f"value is not a valid {family} address: {error}") from None
    raise _InvalidValue("value is not a valid IP address")


def _special_range(address: _IPAddress) -> str | None:
    """Describe the range that keeps an address from being globally routable, or return None."""
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address in _SHARED_NETWORK:
        return "in the shared address space 100.64.0.0/10"
    if _in_any(address, _DOCUMENTATION_NETWORKS):
        return "a documentation address"
    if _in_any(address, _PRIVATE_NETWORKS):
        return "a private address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    reserved = address.is_reserved and address not in _NAT64_NETWORK
    if reserved or not address.is_global:
        return "in a reserved or special-purpose range"
    return None


def _in_any(address: _IPAddress, networks: tuple[_IPNetwork, ...]) -> bool:
    # An address is never in a network of the other IP version.
    return any(address in network for network in networks)
