"""VirusTotal v3: identifiers, verdicts and attribute values (pure), and the HTTP client."""
