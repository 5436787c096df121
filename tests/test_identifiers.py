"""Tables of ThreatQ values and the VirusTotal identifiers, or statuses, they normalise to.

Expected URL identifiers were computed outside Python with
``printf '%s' URL | basenc --base64url | tr -d =`` (GNU coreutils).
"""

from __future__ import annotations

import pytest

from tqvt_sync.virustotal.identifiers import (
    DEFAULT_TYPE_MAP,
    Normalized,
    gui_link,
    normalize,
    refang,
    url_identifier,
)

SHA256_UPPER = "ECB53F367B3541DA3A14236D9A091F9BCC7A9903953F36577C2664FDD2A68A55"
SHA256_LOWER = SHA256_UPPER.lower()
MD5 = "44d88612fea8a8f36de82e1278abb02f"
SHA1 = "3395856ce81f2b7382dee72602f798b642f14140"
LABEL_63 = "a" * 63
MEGABYTE = 1024 * 1024

# (ThreatQ type, value, expected identifier)
OK_CASES = [
    # Hashes
    pytest.param("MD5", MD5, MD5, id="md5-lowercase"),
    pytest.param("MD5", MD5.upper(), MD5, id="md5-uppercase"),
    pytest.param("SHA-1", SHA1, SHA1, id="sha1"),
    pytest.param("SHA-1", SHA1.upper(), SHA1, id="sha1-uppercase"),
    pytest.param("SHA-256", SHA256_UPPER, SHA256_LOWER, id="sha256-uppercase"),
    pytest.param("SHA-256", SHA256_LOWER + "\n", SHA256_LOWER, id="sha256-trailing-newline"),
    pytest.param("SHA-256", f" \t{SHA256_LOWER}\r\n", SHA256_LOWER, id="sha256-surrounding-space"),
    # URLs
    pytest.param(
        "URL",
        "https://example.com/index.php?id=1&x=??",
        "aHR0cHM6Ly9leGFtcGxlLmNvbS9pbmRleC5waHA_aWQ9MSZ4PT8_",
        id="url-urlsafe-alphabet",
    ),
    pytest.param(
        "URL",
        "hxxps[://]login-portal[.]example[/]a[.]php",
        "aHR0cHM6Ly9sb2dpbi1wb3J0YWwuZXhhbXBsZS9hLnBocA",
        id="url-defanged",
    ),
    pytest.param(
        "URL",
        "http://soclosebutyetqq.com/69.exe",
        "aHR0cDovL3NvY2xvc2VidXR5ZXRxcS5jb20vNjkuZXhl",
        id="url-sample-c2-download",
    ),
    pytest.param(
        "URL", "http://example.com/", "aHR0cDovL2V4YW1wbGUuY29tLw", id="url-sample-example"
    ),
    pytest.param(
        "URL", "hXXp://evil[.]example/x", "aHR0cDovL2V2aWwuZXhhbXBsZS94", id="url-hxxp-mixed-case"
    ),
    pytest.param(
        "URL", "hxxp[:]//evil.example/", "aHR0cDovL2V2aWwuZXhhbXBsZS8", id="url-bracketed-colon"
    ),
    pytest.param(
        "URL",
        "https://example(.)com[DOT]evil[dot]com/",
        "aHR0cHM6Ly9leGFtcGxlLmNvbS5ldmlsLmNvbS8",
        id="url-dot-forms",
    ),
    pytest.param(
        "URL",
        "HTTP://EXAMPLE.COM/Path?Q=A",
        "aHR0cDovL2V4YW1wbGUuY29tL1BhdGg_UT1B",
        id="url-scheme-and-host-lowercased",
    ),
    pytest.param(
        "URL",
        "http://User:Pw@Example.COM/",
        "aHR0cDovL1VzZXI6UHdAZXhhbXBsZS5jb20v",
        id="url-userinfo-keeps-case",
    ),
    pytest.param("URL", "example.com/path", "aHR0cDovL2V4YW1wbGUuY29tL3BhdGg", id="url-no-scheme"),
    pytest.param(
        "URL",
        "evil[.]example[:]8080/x",
        "aHR0cDovL2V2aWwuZXhhbXBsZTo4MDgwL3g",
        id="url-no-scheme-port",
    ),
    pytest.param(
        "URL", "https://bücher.example/", "aHR0cHM6Ly9iw7xjaGVyLmV4YW1wbGUv", id="url-idn-utf8"
    ),
    pytest.param(
        "URL",
        "http://example.com/?id=1'%20OR%20'1'='1;--",
        "aHR0cDovL2V4YW1wbGUuY29tLz9pZD0xJyUyME9SJTIwJzEnPScxOy0t",
        id="url-sql-metacharacters",
    ),
    pytest.param(
        "URL",
        "http://example.com/<script>alert(1)</script>",
        "aHR0cDovL2V4YW1wbGUuY29tLzxzY3JpcHQ-YWxlcnQoMSk8L3NjcmlwdD4",
        id="url-html-metacharacters",
    ),
    pytest.param("URL", "ftp://files.example/pub", "ZnRwOi8vZmlsZXMuZXhhbXBsZS9wdWI", id="url-ftp"),
    pytest.param(
        "URL",
        "https://example.com/a#frag",
        "aHR0cHM6Ly9leGFtcGxlLmNvbS9hI2ZyYWc",
        id="url-fragment",
    ),
    pytest.param(
        "URL",
        "http://[2001:db8::1]:8080/",
        "aHR0cDovL1syMDAxOmRiODo6MV06ODA4MC8",
        id="url-ipv6-host",
    ),
    # Domains
    pytest.param("FQDN", "Example.COM", "example.com", id="domain-lowercased"),
    pytest.param("FQDN", "example.com.", "example.com", id="domain-trailing-dot"),
    pytest.param("FQDN", "evil[.]example", "evil.example", id="domain-defanged"),
    pytest.param("FQDN", "evil[DOT]example", "evil.example", id="domain-defanged-upper-dot"),
    pytest.param("FQDN", "bücher.example", "xn--bcher-kva.example", id="domain-idn"),
    pytest.param(
        "FQDN", "BÜCHER.example.", "xn--bcher-kva.example", id="domain-idn-upper-trailing-dot"
    ),
    pytest.param(
        "FQDN", "bücher\u3002example", "xn--bcher-kva.example", id="domain-idn-fullwidth-dot"
    ),
    pytest.param("FQDN", "münchen.de", "xn--mnchen-3ya.de", id="domain-idn-german"),
    pytest.param("FQDN", "例え.テスト", "xn--r8jz45g.xn--zckzah", id="domain-idn-japanese"),
    pytest.param(
        "FQDN", "xn--bcher-kva.example", "xn--bcher-kva.example", id="domain-punycode-input"
    ),
    pytest.param("FQDN", "_dmarc.example.com", "_dmarc.example.com", id="domain-underscore"),
    pytest.param("FQDN", f"{LABEL_63}.example", f"{LABEL_63}.example", id="domain-label-63"),
    pytest.param(
        "FQDN",
        f"{LABEL_63}.{LABEL_63}.{LABEL_63}.{'b' * 61}",
        f"{LABEL_63}.{LABEL_63}.{LABEL_63}.{'b' * 61}",
        id="domain-total-253",
    ),
    pytest.param("FQDN", "localhost", "localhost", id="domain-single-label"),
    # IP addresses
    pytest.param("IP Address", "8.8.8[.]8", "8.8.8.8", id="ipv4-defanged"),
    pytest.param("IP Address", " 8.8.8.8 \n", "8.8.8.8", id="ipv4-trimmed"),
    pytest.param("IP Address", "138.128.150.133", "138.128.150.133", id="ipv4-sample"),
    pytest.param(
        "IPv6 Address",
        "2001:4860:4860:0000:0000:0000:0000:8888",
        "2001:4860:4860::8888",
        id="ipv6-compressed",
    ),
    pytest.param(
        "IPv6 Address", "2001:4860:4860::8888".upper(), "2001:4860:4860::8888", id="ipv6-lowercased"
    ),
    pytest.param(
        "IPv6 Address",
        "2001:4860:0:0:1:0:0:8888",
        "2001:4860::1:0:0:8888",
        id="ipv6-first-zero-run",
    ),
    pytest.param(
        "IPv6 Address", "[2001:4860:4860::8888]", "2001:4860:4860::8888", id="ipv6-bracketed"
    ),
    pytest.param("IPv6 Address", "8.8.8.8", "8.8.8.8", id="ipv4-under-ipv6-type"),
    pytest.param(
        "IP Address", "2001:4860:4860::8888", "2001:4860:4860::8888", id="ipv6-under-ipv4-type"
    ),
    pytest.param("IPv6 Address", "::ffff:8.8.8.8", "8.8.8.8", id="ipv4-mapped-becomes-ipv4"),
    pytest.param("IPv6 Address", "64:ff9b::808:808", "64:ff9b::808:808", id="ipv6-nat64-global"),
]

# (ThreatQ type, value, fragment of the reason)
INVALID_CASES = [
    # Hashes
    pytest.param("MD5", "a" * 31, "MD5 must be 32 hexadecimal characters, got 31", id="md5-short"),
    pytest.param("MD5", SHA1, "got 40 (the length of a SHA-1)", id="md5-given-sha1"),
    pytest.param(
        "SHA-1",
        MD5,
        "SHA-1 must be 40 hexadecimal characters, got 32 (the length of an MD5)",
        id="sha1-given-md5",
    ),
    pytest.param(
        "SHA-256",
        SHA256_LOWER[:-1],
        "SHA-256 must be 64 hexadecimal characters, got 63",
        id="sha256-short",
    ),
    pytest.param(
        "MD5", "g" + MD5[1:], "MD5 must be hexadecimal, found 'g' at character 1", id="md5-non-hex"
    ),
    pytest.param(
        "SHA-256", "0x" + SHA256_LOWER[2:], "found 'x' at character 2", id="sha256-hex-prefix"
    ),
    pytest.param(
        "MD5", MD5[:4] + " " + MD5[5:], "whitespace (U+0020) at character 5", id="md5-inner-space"
    ),
    pytest.param(
        "MD5",
        MD5[:16] + "\r\n" + MD5[16:],
        "line break (U+000D) at character 17",
        id="md5-crlf-inside",
    ),
    pytest.param(
        "SHA-256",
        SHA256_LOWER[:10] + "\x00" + SHA256_LOWER[10:],
        "NUL byte at character 11",
        id="sha256-nul",
    ),
    pytest.param("MD5", "", "value is empty", id="md5-empty"),
    pytest.param("MD5", "  \n\t", "value is empty", id="md5-whitespace-only"),
    pytest.param("SHA-1", "' OR '1'='1", "whitespace", id="sha1-sql-injection"),
    pytest.param(
        "SHA-1", "';DROP--", 'SHA-1 must be hexadecimal, found "\'"', id="sha1-sql-no-space"
    ),
    # URLs
    pytest.param(
        "URL", "http://exa mple.com/", "whitespace (U+0020) at character 11", id="url-inner-space"
    ),
    pytest.param(
        "URL",
        "http://a.example/\r\nSet-Cookie:x=1",
        "line break (U+000D) at character 18",
        id="url-crlf-injection",
    ),
    pytest.param("URL", "http://a.example/\x00.exe", "NUL byte at character 18", id="url-nul"),
    pytest.param("URL", "http://a.example/\x07", "control character U+0007", id="url-bell-control"),
    pytest.param(
        "URL",
        "http://a.example/\u202egpj.exe",
        "bidirectional control character U+202E",
        id="url-bidi-override",
    ),
    pytest.param(
        "URL",
        "http://a\u2066.example/",
        "bidirectional control character U+2066",
        id="url-bidi-isolate",
    ),
    pytest.param(
        "URL",
        "http://a\u200b.example/",
        "invisible format character U+200B",
        id="url-zero-width-space",
    ),
    pytest.param(
        "URL", "http://a\ud800.example/", "unpaired surrogate U+D800", id="url-lone-surrogate"
    ),
    pytest.param(
        "URL",
        "http://a.example/" + "a" * 8200,
        "URL is 8217 characters long; the maximum is 8192",
        id="url-over-8k",
    ),
    pytest.param(
        "URL", "http://a.example/" + "a" * MEGABYTE, "the maximum is 65536", id="url-one-megabyte"
    ),
    pytest.param("URL", "http://", "URL has no host name", id="url-no-host"),
    pytest.param("URL", "http:///path", "URL has no host name", id="url-empty-host"),
    pytest.param("URL", "http://[::1", "URL is not valid", id="url-broken-ipv6-host"),
    pytest.param("URL", "http://a.example:99999/", "Port out of range", id="url-port-out-of-range"),
    pytest.param("URL", "http://a.example:http/", "URL is not valid", id="url-port-not-numeric"),
    # Domains
    pytest.param("FQDN", "a..example", "empty label", id="domain-empty-label"),
    pytest.param("FQDN", ".example.com", "empty label", id="domain-leading-dot"),
    pytest.param("FQDN", "example.com..", "empty label", id="domain-two-trailing-dots"),
    pytest.param("FQDN", ".", "domain is empty", id="domain-only-dot"),
    pytest.param(
        "FQDN",
        "a" * 64 + ".example",
        "domain label is 64 characters long; the maximum is 63",
        id="domain-label-64",
    ),
    pytest.param(
        "FQDN",
        f"{LABEL_63}.{LABEL_63}.{LABEL_63}.{LABEL_63}",
        "domain in ASCII form is 255 characters long; the maximum is 253",
        id="domain-total-255",
    ),
    pytest.param(
        "FQDN", "a" * 2000 + ".com", "domain is 2004 characters long", id="domain-very-long"
    ),
    pytest.param(
        "FQDN", "-bad.example", "starts or ends with a hyphen", id="domain-leading-hyphen"
    ),
    pytest.param(
        "FQDN", "bad-.example", "starts or ends with a hyphen", id="domain-trailing-hyphen"
    ),
    pytest.param("FQDN", "exa mple.com", "whitespace", id="domain-inner-space"),
    pytest.param("FQDN", "example.com/path", "domain contains '/'", id="domain-with-path"),
    pytest.param("FQDN", "*.example.com", "domain contains '*'", id="domain-wildcard"),
    pytest.param(
        "FQDN", "example.com';DROP--", "not allowed in a host name", id="domain-sql-metacharacters"
    ),
    pytest.param("FQDN", "8.8.8.8", "is an IP address, not a domain name", id="domain-given-ipv4"),
    pytest.param(
        "FQDN", "2001:db8::1", "is an IP address, not a domain name", id="domain-given-ipv6"
    ),
    pytest.param("FQDN", "xn--zz.example", "not valid punycode", id="domain-bad-punycode"),
    pytest.param("FQDN", "example.123", "top-level label is all digits", id="domain-numeric-tld"),
    pytest.param(
        "FQDN", "a\u2764.com", "not a valid internationalised name", id="domain-idna-disallowed"
    ),
    pytest.param(
        "FQDN", "ex\u00adample.com", "invisible format character U+00AD", id="domain-soft-hyphen"
    ),
    pytest.param(
        "FQDN", "exa\u202emple.com", "bidirectional control character U+202E", id="domain-bidi"
    ),
    pytest.param("FQDN", "example.com\x00", "NUL byte", id="domain-nul"),
    # IP addresses
    pytest.param(
        "IP Address", "010.1.1.1", "Leading zeros are not permitted", id="ipv4-leading-zero"
    ),
    pytest.param(
        "IP Address", "256.1.1.1", "Octet 256 (> 255) not permitted", id="ipv4-octet-too-big"
    ),
    pytest.param("IP Address", "1.2.3", "Expected 4 octets", id="ipv4-three-octets"),
    pytest.param("IP Address", "8.8.8.8:53", "IPv4 address with a port", id="ipv4-with-port"),
    pytest.param("IP Address", "8.8.8.0/24", "network in CIDR notation", id="ipv4-cidr"),
    pytest.param("IPv6 Address", "2001:db8::/32", "network in CIDR notation", id="ipv6-cidr"),
    pytest.param("IPv6 Address", "fe80::1%eth0", "zone index", id="ipv6-zone-index"),
    pytest.param(
        "IPv6 Address", "2001:db8:::1", "not a valid IPv6 address", id="ipv6-triple-colon"
    ),
    pytest.param("IP Address", "example.com", "not a valid IPv4 address", id="ip-given-domain"),
    pytest.param("IP Address", "1" * 100, "IP address is 100 characters long", id="ip-too-long"),
    pytest.param("IP Address", "8.8.8.8\x00", "NUL byte", id="ip-nul"),
    pytest.param("IP Address", "8.8.8.8\n1.1.1.1", "line break (U+000A)", id="ip-two-lines"),
    pytest.param(
        "IP Address", "1" * MEGABYTE, "value is 1048576 characters long", id="ip-one-megabyte"
    ),
]

# (ThreatQ type, value, fragment of the reason)
SKIPPED_CASES = [
    pytest.param(
        "IP Address",
        "198.51.100[.]7",
        "198.51.100.7 is a documentation address",
        id="ipv4-doc-defanged",
    ),
    pytest.param("IP Address", "192.0.2.1", "documentation address", id="ipv4-doc-test-net-1"),
    pytest.param("IP Address", "203.0.113.9", "documentation address", id="ipv4-doc-test-net-3"),
    pytest.param("IPv6 Address", "2001:db8::1", "documentation address", id="ipv6-documentation"),
    pytest.param("IP Address", "10.1.2.3", "private address", id="ipv4-private-10"),
    pytest.param("IP Address", "172.16.0.1", "private address", id="ipv4-private-172"),
    pytest.param("IP Address", "192.168.1.1", "private address", id="ipv4-private-192"),
    pytest.param("IPv6 Address", "fd12:3456::1", "private address", id="ipv6-unique-local"),
    pytest.param(
        "IPv6 Address", "::ffff:10.0.0.1", "10.0.0.1 is a private address", id="ipv4-mapped-private"
    ),
    pytest.param("IP Address", "127.0.0.1", "loopback address", id="ipv4-loopback"),
    pytest.param("IPv6 Address", "::1", "loopback address", id="ipv6-loopback"),
    pytest.param("IP Address", "169.254.10.1", "link-local address", id="ipv4-link-local"),
    pytest.param("IPv6 Address", "fe80::1", "link-local address", id="ipv6-link-local"),
    pytest.param("IP Address", "100.64.0.1", "shared address space", id="ipv4-shared-cgnat"),
    pytest.param("IP Address", "224.0.0.1", "multicast address", id="ipv4-multicast"),
    pytest.param("IPv6 Address", "ff02::1", "multicast address", id="ipv6-multicast"),
    pytest.param("IP Address", "0.0.0.0", "unspecified address", id="ipv4-unspecified"),
    pytest.param("IPv6 Address", "::", "unspecified address", id="ipv6-unspecified"),
    pytest.param(
        "IP Address", "240.0.0.1", "reserved or special-purpose", id="ipv4-reserved-class-e"
    ),
    pytest.param(
        "IP Address", "255.255.255.255", "reserved or special-purpose", id="ipv4-broadcast"
    ),
    pytest.param("IP Address", "198.18.0.1", "reserved or special-purpose", id="ipv4-benchmarking"),
    pytest.param("IPv6 Address", "fec0::1", "site-local address", id="ipv6-site-local"),
    pytest.param("IPv6 Address", "4000::1", "reserved or special-purpose", id="ipv6-unassigned"),
]

UNSUPPORTED_TYPES = [
    pytest.param("SHA-384", "a" * 96, id="sha384"),
    pytest.param("SHA-512", "a" * 128, id="sha512"),
    pytest.param("Email Address", "foo@demisto.com", id="email"),
    pytest.param("CVE", "CVE-2021-44228", id="cve"),
    pytest.param("Filename", "invoice.exe", id="filename"),
    pytest.param("md5", MD5, id="type-name-case-sensitive"),
]


@pytest.mark.parametrize(("type_name", "value", "identifier"), OK_CASES)
def test_normalize_ok(type_name: str, value: str, identifier: str) -> None:
    result = normalize(type_name, value)
    assert result.status == "ok", result.reason
    assert result.identifier == identifier
    assert result.kind == DEFAULT_TYPE_MAP[type_name]
    assert result.reason is None


@pytest.mark.parametrize(("type_name", "value", "fragment"), INVALID_CASES)
def test_normalize_invalid(type_name: str, value: str, fragment: str) -> None:
    result = normalize(type_name, value)
    assert result.status == "invalid"
    assert result.identifier is None
    assert result.reason is not None
    assert fragment in result.reason


@pytest.mark.parametrize(("type_name", "value", "fragment"), SKIPPED_CASES)
def test_normalize_skips_not_global(type_name: str, value: str, fragment: str) -> None:
    result = normalize(type_name, value)
    assert result.status == "skipped"
    assert result.kind == "ip_address"
    assert result.identifier is None
    assert result.reason is not None
    assert fragment in result.reason
    assert "not globally routable" in result.reason


@pytest.mark.parametrize(
    ("value", "identifier"),
    [
        pytest.param("198.51.100[.]7", "198.51.100.7", id="documentation"),
        pytest.param("10.1.2.3", "10.1.2.3", id="private"),
        pytest.param("::1", "::1", id="loopback-ipv6"),
        pytest.param("::ffff:192.168.0.1", "192.168.0.1", id="mapped-private"),
    ],
)
def test_normalize_looks_up_private_when_enabled(value: str, identifier: str) -> None:
    result = normalize("IP Address", value, lookup_private_ips=True)
    assert result.status == "ok"
    assert result.identifier == identifier


@pytest.mark.parametrize(("type_name", "value"), UNSUPPORTED_TYPES)
def test_normalize_unsupported_type(type_name: str, value: str) -> None:
    result = normalize(type_name, value)
    assert result.status == "unsupported"
    assert result.kind is None
    assert result.identifier is None
    assert result.reason == f"ThreatQ type {type_name!r} is not looked up in VirusTotal"


CUSTOM_TYPE_MAP = {
    **DEFAULT_TYPE_MAP,
    "URL": "",
    "Hostname": "domain",
    "File Hash": "file",
    "SHA-384": "",
}


@pytest.mark.parametrize(
    ("type_name", "value", "status", "expected"),
    [
        pytest.param("URL", "http://example.com/", "unsupported", None, id="mapped-to-empty"),
        pytest.param("SHA-384", "a" * 96, "unsupported", None, id="explicitly-unsupported"),
        pytest.param("Hostname", "Evil[.]Example.", "ok", "evil.example", id="custom-domain-type"),
        pytest.param("File Hash", MD5.upper(), "ok", MD5, id="custom-file-type-md5"),
        pytest.param("File Hash", SHA1, "ok", SHA1, id="custom-file-type-sha1"),
        pytest.param("File Hash", SHA256_UPPER, "ok", SHA256_LOWER, id="custom-file-type-sha256"),
        pytest.param(
            "File Hash",
            "a" * 50,
            "invalid",
            "32, 40 or 64 hexadecimal",
            id="custom-file-type-bad-length",
        ),
        pytest.param(
            "File Hash",
            "z" * 32,
            "invalid",
            "file hash must be hexadecimal",
            id="custom-file-type-non-hex",
        ),
        pytest.param("FQDN", "example.com", "ok", "example.com", id="default-type-kept"),
    ],
)
def test_normalize_custom_type_map(
    type_name: str, value: str, status: str, expected: str | None
) -> None:
    result = normalize(type_name, value, type_map=CUSTOM_TYPE_MAP)
    assert result.status == status
    if status == "ok":
        assert result.identifier == expected
    elif expected is not None:
        assert result.reason is not None
        assert expected in result.reason


def test_custom_type_map_replaces_default() -> None:
    result = normalize("FQDN", "example.com", type_map={"Hostname": "domain"})
    assert result.status == "unsupported"


def test_type_map_with_unknown_kind_raises() -> None:
    with pytest.raises(ValueError, match="unknown kind 'hash'"):
        normalize("MD5", MD5, type_map={"MD5": "hash"})


def test_hash_spellings_share_identifier() -> None:
    upper = normalize("SHA-256", SHA256_UPPER)
    lower_with_newline = normalize("SHA-256", SHA256_LOWER + "\n")
    assert upper.identifier == lower_with_newline.identifier


@pytest.mark.parametrize(
    ("type_name", "value", "expected_value"),
    [
        pytest.param(
            "URL", " hxxps[://]a[.]example/x \n", "https://a.example/x", id="url-refanged"
        ),
        pytest.param("URL", "example.com/x", "example.com/x", id="url-no-scheme-unprefixed"),
        pytest.param("SHA-256", SHA256_UPPER + "\n", SHA256_UPPER, id="hash-case-kept"),
        pytest.param(
            "Email Address", " foo[@]bar[.]com ", "foo[@]bar.com", id="unsupported-refanged"
        ),
        pytest.param("IP Address", "10.0.0[.]1", "10.0.0.1", id="skipped-refanged"),
    ],
)
def test_normalized_value_is_trimmed_and_refanged(
    type_name: str, value: str, expected_value: str
) -> None:
    assert normalize(type_name, value).value == expected_value


@pytest.mark.parametrize(
    ("defanged", "refanged"),
    [
        pytest.param("hxxp://a.example/", "http://a.example/", id="hxxp"),
        pytest.param("hxxps://a.example/", "https://a.example/", id="hxxps"),
        pytest.param("HXXPS://a.example/", "https://a.example/", id="hxxps-upper"),
        pytest.param("hXXp[://]a[.]example", "http://a.example", id="hxxp-bracketed-scheme"),
        pytest.param("a[.]b(.)c[dot]d[DOT]e[Dot]f", "a.b.c.d.e.f", id="dot-forms"),
        pytest.param("a[:]8080[/]x", "a:8080/x", id="colon-and-slash"),
        pytest.param("hxxpfoo.example", "hxxpfoo.example", id="hxxp-inside-word-kept"),
        pytest.param("plain.example", "plain.example", id="unchanged"),
    ],
)
def test_refang(defanged: str, refanged: str) -> None:
    assert refang(defanged) == refanged


def test_url_identifier_has_no_padding() -> None:
    assert url_identifier("http://example.com/") == "aHR0cDovL2V4YW1wbGUuY29tLw"


@pytest.mark.parametrize(
    ("kind", "data_id", "link"),
    [
        pytest.param("file", MD5, f"https://www.virustotal.com/gui/file/{MD5}", id="file"),
        pytest.param("url", "7d83e9f6", "https://www.virustotal.com/gui/url/7d83e9f6", id="url"),
        pytest.param(
            "domain",
            "tawuhoju.com",
            "https://www.virustotal.com/gui/domain/tawuhoju.com",
            id="domain",
        ),
        pytest.param(
            "ip_address", "8.8.8.8", "https://www.virustotal.com/gui/ip-address/8.8.8.8", id="ipv4"
        ),
        pytest.param(
            "ip_address",
            "2001:4860::8888",
            "https://www.virustotal.com/gui/ip-address/2001:4860::8888",
            id="ipv6",
        ),
    ],
)
def test_gui_link(kind: str, data_id: str, link: str) -> None:
    assert gui_link(kind, data_id) == link


def test_gui_link_unknown_kind_raises() -> None:
    with pytest.raises(ValueError, match="unknown VirusTotal kind"):
        gui_link("ip_addresses", "8.8.8.8")


def test_normalized_is_frozen() -> None:
    result = normalize("MD5", MD5)
    assert isinstance(result, Normalized)
    with pytest.raises(AttributeError):
        result.status = "invalid"  # type: ignore[misc]
