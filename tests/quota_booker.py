"""Book and send VirusTotal lookups from one process until a deadline.

The cross-process quota test starts several of these on one SQLite file. Each
process books every call in the shared ledger before it sends it, as the lookup
stage does; SQLite admits one lookup stage at a time, so this script replaces
parallel lookup workers there.

Usage: python quota_booker.py DB_URL VT_URL API_KEY MINUTE_LIMIT SECONDS LABEL
"""

from __future__ import annotations

import sys
import time

from tqvt_sync.clock import SystemClock
from tqvt_sync.db.engine import make_engine, session_factory
from tqvt_sync.quota import Ledger, QuotaLimits
from tqvt_sync.virustotal.client import VirusTotalClient


def main(db_url: str, vt_url: str, api_key: str, minute_limit: int, seconds: float,
         label: str) -> int:
    engine = make_engine(db_url)
    ledger = Ledger(session_factory(engine), api_key, SystemClock())
    ledger.apply_limits(QuotaLimits(minute_limit, 1_000_000, None, "settings"))
    deadline = time.monotonic() + seconds
    sent = 0
    with VirusTotalClient(vt_url, api_key) as client:
        while ledger.book(should_stop=lambda: time.monotonic() >= deadline):
            client.fetch_object("domain", f"{label}-{sent}.example.com")
            sent += 1
    engine.dispose()
    return sent


if __name__ == "__main__":
    db_url, vt_url, api_key, minute_limit, seconds, label = sys.argv[1:7]
    print(main(db_url, vt_url, api_key, int(minute_limit), float(seconds), label))
