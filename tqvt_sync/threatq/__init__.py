"""ThreatQ REST client: authentication, indicator paging and attribute writes."""

from tqvt_sync.threatq.client import Page, ThreatQClient

__all__ = ["Page", "ThreatQClient"]
