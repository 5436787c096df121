"""The naive baseline: a sequential enrichment script of the kind many integrations ship.

It does the same job as tqvt's three stages, written plainly with ``requests`` and
``sqlite3``: one VirusTotal request per indicator with no cache, one SQLite commit
per row, and one ThreatQ request per attribute. It keeps its connections alive
(one ``requests.Session`` per service), so the comparison is not about TCP set-up.
It exists only to be measured against tqvt in the same benchmark run.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from dataclasses import dataclass, field

import requests

PAGE_SIZE = 500
VT_ENDPOINTS = {
    "MD5": "files", "SHA-1": "files", "SHA-256": "files", "FQDN": "domains",
    "IP Address": "ip_addresses", "IPv6 Address": "ip_addresses", "URL": "urls",
}
GUI_PATHS = {"files": "file", "urls": "url", "domains": "domain", "ip_addresses": "ip-address"}


@dataclass
class NaiveTarget:
    """Where the naive script sends its requests and keeps its rows."""

    threatq_url: str
    client_id: str
    email: str
    password: str
    vt_url: str
    vt_key: str
    db_path: str
    since: str
    threatq_session: requests.Session = field(default_factory=requests.Session)
    vt_session: requests.Session = field(default_factory=requests.Session)


def run(target: NaiveTarget) -> dict[str, int]:
    """Pull, look up and push every indicator once; return counts."""
    connection = sqlite3.connect(target.db_path)
    connection.execute(
        "CREATE TABLE IF NOT EXISTS indicators (id INTEGER PRIMARY KEY, value TEXT, type TEXT, "
        "vt_response TEXT, verdict TEXT, pushed INTEGER DEFAULT 0)"
    )
    connection.commit()
    token = _token(target)
    counts = {"pulled": pull(target, connection, token)}
    counts["looked_up"] = lookup(target, connection)
    counts["attributes_written"] = push(target, connection, token)
    connection.close()
    return counts


def _token(target: NaiveTarget) -> str:
    response = target.threatq_session.post(f"{target.threatq_url}/api/token", json={
        "grant_type": "password", "client_id": target.client_id,
        "email": target.email, "password": target.password,
    }, timeout=30)
    response.raise_for_status()
    return response.json()["access_token"]


def pull(target: NaiveTarget, connection: sqlite3.Connection, token: str) -> int:
    """Read every indicator updated since ``target.since``, committing each row."""
    headers = {"Authorization": f"Bearer {token}"}
    offset, stored = 0, 0
    while True:
        response = target.threatq_session.post(
            f"{target.threatq_url}/api/indicators/query",
            params={"limit": PAGE_SIZE, "offset": offset, "sort": "id", "with": "type"},
            json={"filters": {"updated_at": {"+gte": target.since}}},
            headers=headers, timeout=60,
        )
        response.raise_for_status()
        items = response.json()["data"]
        for item in items:
            connection.execute(
                "INSERT OR REPLACE INTO indicators (id, value, type) VALUES (?, ?, ?)",
                (item["id"], item["value"], item["type"]["name"]),
            )
            connection.commit()
            stored += 1
        if len(items) < PAGE_SIZE:
            return stored
        offset += PAGE_SIZE


def lookup(target: NaiveTarget, connection: sqlite3.Connection) -> int:
    """Send one VirusTotal request per indicator and store the whole response."""
    rows = connection.execute("SELECT id, value, type FROM indicators WHERE verdict IS NULL")
    looked_up = 0
    for indicator_id, value, type_name in rows.fetchall():
        endpoint = VT_ENDPOINTS.get(type_name)
        if endpoint is None:
            continue
        key = value.strip().lower() if endpoint == "files" else value.strip()
        if endpoint == "urls":
            key = base64.urlsafe_b64encode(value.strip().encode()).decode().rstrip("=")
        while True:
            response = target.vt_session.get(f"{target.vt_url}/{endpoint}/{key}",
                                             headers={"x-apikey": target.vt_key}, timeout=30)
            if response.status_code != 429:
                break
            time.sleep(15)
        if response.status_code == 404:
            verdict, body = "not found", None
        elif response.status_code == 200:
            body = response.text
            stats = json.loads(body)["data"]["attributes"].get("last_analysis_stats", {})
            verdict = _verdict(stats)
        else:
            continue
        connection.execute("UPDATE indicators SET vt_response = ?, verdict = ? WHERE id = ?",
                           (body, verdict, indicator_id))
        connection.commit()
        looked_up += 1
    return looked_up


def _verdict(stats: dict) -> str:
    for name in ("malicious", "suspicious", "harmless"):
        if stats.get(name, 0) > 0:
            return name
    return "undetected"


def push(target: NaiveTarget, connection: sqlite3.Connection, token: str) -> int:
    """POST each attribute of each looked-up indicator, then commit the row as pushed."""
    headers = {"Authorization": f"Bearer {token}"}
    rows = connection.execute(
        "SELECT id, type, vt_response, verdict FROM indicators "
        "WHERE verdict IS NOT NULL AND pushed = 0"
    )
    written = 0
    for indicator_id, type_name, body, verdict in rows.fetchall():
        for name, value in _attributes(VT_ENDPOINTS[type_name], body, verdict).items():
            response = target.threatq_session.post(
                f"{target.threatq_url}/api/indicators/{indicator_id}/attributes",
                json={"name": name, "value": value, "sources": [{"name": "VirusTotal"}]},
                headers=headers, timeout=30,
            )
            response.raise_for_status()
            written += 1
        connection.execute("UPDATE indicators SET pushed = 1 WHERE id = ?", (indicator_id,))
        connection.commit()
    return written


def _attributes(endpoint: str, body: str | None, verdict: str) -> dict[str, str]:
    if body is None:
        return {"VirusTotal Verdict": verdict}
    data = json.loads(body)["data"]
    attributes = data["attributes"]
    stats = attributes.get("last_analysis_stats", {})
    total = sum(stats.get(name, 0) for name in ("harmless", "malicious", "suspicious",
                                                "undetected"))
    engines = sorted(
        f"{engine}: {result.get('result') or 'malicious'}"
        for engine, result in attributes.get("last_analysis_results", {}).items()
        if result.get("category") == "malicious"
    )
    values = {
        "VirusTotal Verdict": verdict,
        "VirusTotal Detection Ratio": f"{stats.get('malicious', 0)}/{total}",
        "VirusTotal Malicious Engines": "; ".join(engines[:10]),
        "VirusTotal Reputation": str(attributes.get("reputation", "")),
        "VirusTotal Last Analysis": str(attributes.get("last_analysis_date", "")),
        "VirusTotal Link": f"https://www.virustotal.com/gui/{GUI_PATHS[endpoint]}/{data['id']}",
    }
    return {name: value for name, value in values.items() if value}
