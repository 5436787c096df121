"""tqvt: enrich ThreatQ indicators with VirusTotal v3 verdicts."""

__version__ = "0.1.0"
