"""Demo data for ``tqvt demo``: about 50 indicators that exercise every path of tqvt.

The threat library contains every type that tqvt looks up, including the sample objects'
hashes, URLs, domains and addresses, values that need refanging, an upper-case hash
that shares its VirusTotal identifier with a lower-case one, an IDN, addresses that are
not globally routable, invalid values and types that tqvt does not support. Some
indicators carry attributes of other sources, and one carries a stale "VirusTotal
Verdict" that tqvt must update in place.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from tqvt_sync.sandbox.threatq import ThreatQSimulator
from tqvt_sync.sandbox.virustotal import VirusTotalSimulator

DEMO_COLLECTION = "demo-watchlist"
STALE_VERDICT_VALUE = "4bc00f7d638e042da764e8648c03c0db46700599dd4f08d117e3e9e8b538519b"
NOT_FOUND_SHA256 = "01ba4719c80b6fe911b091a7c05124b64eeece964e09c058ef8f9805daca546b"
PHISHING_URL = "https://login-portal.example/a.php"
SUSPICIOUS_DOMAIN = "update-check.example.net"


def _demo_hash(algorithm: str, label: str) -> str:
    return hashlib.new(algorithm, f"tqvt demo {label}".encode()).hexdigest()


_ANALYST_NOTE = ("Description", "Reported by the SOC during triage", "Analyst")
_STALE_VERDICT = ("VirusTotal Verdict", "harmless", "VirusTotal")

# (summary kind, ThreatQ type, value, attributes). The summary kind is how tqvt is
# expected to classify the value.
DEMO_INDICATORS: tuple[tuple[str, str, str, tuple[tuple[str, str, str], ...]], ...] = (
    ("file", "MD5", "546bb6ef89bebfb053999777f6930d7e", (_ANALYST_NOTE,)),
    ("file", "MD5", "24599e1a44d180a90b892f310be34cf0", ()),
    ("file", "MD5", "b20f8706f3b64c98bc1caf273d7cb605", ()),
    ("file", "MD5", _demo_hash("md5", "dropper"), ()),
    ("file", "MD5", _demo_hash("md5", "loader"), ()),
    ("invalid", "MD5", "546bb6ef89bebfb053999777f6930d7", ()),
    ("file", "SHA-1", "ffe1dd532e08911537d01f51f21c1ce181f4ac71", ()),
    ("file", "SHA-1", "6b94690b3cc47e2b4f128745020237252da8c63f", ()),
    ("file", "SHA-1", "b1dab6357db7ce83ecd16d987fbabe3dd0d5cfec", ()),
    ("file", "SHA-1", _demo_hash("sha1", "installer"), ()),
    ("file", "SHA-256", STALE_VERDICT_VALUE, (_ANALYST_NOTE, _STALE_VERDICT)),
    ("file", "SHA-256", "6b60666d6ace3a450d54fe7b915c46632172ca0d4127d87873f0c111560e66cb", ()),
    ("file", "SHA-256", "4eae23e60e21119933e885f14c6af7bffd146169124449ac0dae4163fae9310a", ()),
    ("file", "SHA-256", "32acc1bc543116cbe2cff10cb867772df2f254ff2634c870aef0b46c4b696fdb", ()),
    ("file", "SHA-256", "32ACC1BC543116CBE2CFF10CB867772DF2F254FF2634C870AEF0B46C4B696FDB", ()),
    ("file", "SHA-256", "f36005f6b20ffcd42bcff696c2917a15865b49b8c7dfdacb5a214c9bc536b6f4", ()),
    ("file", "SHA-256", "0bebc92d6e228beb4abe1352e22a6348b01c03caefae268c72914fbe991cc7f9", ()),
    ("file", "SHA-256", "c99dba3ba7a50f2c04b182ba871c3f7c6ca4061542990d6e191e506404393908", ()),
    ("file", "SHA-256", "213a543b5be7cb5ff6fe326ddbc5296df9c8762549f4bc0a7f588999bd50a708", ()),
    ("file", "SHA-256", "29bd5781eb25da10c05b9e4074c08b5c0d5127abd4e278066973a725463884c3", ()),
    ("file", "SHA-256", NOT_FOUND_SHA256, ()),
    ("file", "SHA-256", _demo_hash("sha256", "ransomware"), ()),
    ("file", "SHA-256", _demo_hash("sha256", "miner"), ()),
    ("url", "URL", "http://soclosebutyetqq.com/69.exe", (_ANALYST_NOTE,)),
    ("url", "URL", "http://example.com/", ()),
    ("url", "URL", "hxxps[://]login-portal[.]example[/]a[.]php", (_ANALYST_NOTE,)),
    ("url", "URL", "https://cdn.example.net/update.bin", ()),
    ("url", "URL", "http://shop.example.org/checkout", ()),
    ("invalid", "URL", "not a url", ()),
    ("domain", "FQDN", "tawuhoju.com", ()),
    ("domain", "FQDN", "virustotal.com", ()),
    ("domain", "FQDN", "bücher.example", ()),
    ("domain", "FQDN", SUSPICIOUS_DOMAIN, ()),
    ("domain", "FQDN", "mail.example.org", ()),
    ("domain", "FQDN", "cdn.example.net", ()),
    ("ip_address", "IP Address", "8.8.8.8", ()),
    ("ip_address", "IP Address", "138.128.150.133", (_ANALYST_NOTE,)),
    ("ip_address", "IP Address", "8.8.4[.]4", ()),
    ("ip_address", "IP Address", "1.1.1.1", ()),
    ("ip_address", "IP Address", "9.9.9.9", ()),
    ("skipped", "IP Address", "10.1.2.3", ()),
    ("skipped", "IP Address", "203.0.113.7", ()),
    ("ip_address", "IPv6 Address", "2001:4860:4860::8888", ()),
    ("ip_address", "IPv6 Address", "2606:4700:4700::1111", ()),
    ("skipped", "IPv6 Address", "fe80::1", ()),
    ("unsupported", "SHA-384", _demo_hash("sha384", "archive"), ()),
    ("unsupported", "SHA-512", _demo_hash("sha512", "archive"), ()),
    ("unsupported", "Email Address", "billing@example.com", (_ANALYST_NOTE,)),
    ("unsupported", "CVE", "CVE-2021-44228", ()),
    ("unsupported", "Filename", "invoice.pdf.exe", ()),
)


def seed_demo(tq: ThreatQSimulator, vt: VirusTotalSimulator | None = None) -> dict:
    """Fill the simulators with the demo data and return a summary.

    The indicators are updated over the six hours before the clock's time, so a pull
    of the last 24 hours finds all of them. In VirusTotal, ``NOT_FOUND_SHA256`` is not
    found, the phishing URL is malicious and ``SUSPICIOUS_DOMAIN`` is suspicious only.

    Returns:
        ``{"total": n, "ids": {kind: [indicator ids]}, "stale_verdict": id,
        "collection": DEMO_COLLECTION}``, where kind is file, url, domain, ip_address,
        skipped, invalid or unsupported.
    """
    start = tq.clock.now() - timedelta(hours=6)
    step = timedelta(hours=6) / len(DEMO_INDICATORS)
    ids: dict[str, list[int]] = {}
    stale_verdict = 0
    for position, (kind, type_name, value, attributes) in enumerate(DEMO_INDICATORS):
        indicator_id = tq.add_indicator(
            value,
            type_name,
            attributes=attributes,
            updated_at=start + step * position,
            source="Demo Feed",
        )
        ids.setdefault(kind, []).append(indicator_id)
        if value == STALE_VERDICT_VALUE:
            stale_verdict = indicator_id
    watched = ids["url"][:3] + ids["domain"][:3]
    tq.add_collection(DEMO_COLLECTION, watched)
    if vt is not None:
        _seed_virustotal(vt)
    return {
        "total": len(DEMO_INDICATORS),
        "ids": ids,
        "stale_verdict": stale_verdict,
        "collection": DEMO_COLLECTION,
    }


def _seed_virustotal(vt: VirusTotalSimulator) -> None:
    vt.mark_not_found("file", NOT_FOUND_SHA256)
    vt.add_generated("url", PHISHING_URL, malicious=8, harmless=60)
    vt.add_generated("domain", SUSPICIOUS_DOMAIN, suspicious=2, harmless=70)
    # Public DNS resolvers without a bundled sample: a generated answer would pick a
    # verdict from the value's digest, and a malicious Google DNS would mislead.
    for resolver in ("8.8.4.4", "1.1.1.1", "9.9.9.9", "2001:4860:4860::8888",
                     "2606:4700:4700::1111"):
        vt.add_generated("ip_address", resolver, harmless=60, undetected=30)
