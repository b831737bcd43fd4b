#!/usr/bin/env python3
"""ward-gateway-health: GETs the gateway's /healthz (or the path given) on this host; exit 0 on 200.

The gateway image's HEALTHCHECK runs it. WARD_HEALTHCHECK_URL overrides the URL (default
http://127.0.0.1:8000/healthz). An https URL is checked without verifying the certificate: the
probe talks to the process next to it, whose certificate names the service, not 127.0.0.1.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    url = argv[0] if argv else os.environ.get("WARD_HEALTHCHECK_URL", "http://127.0.0.1:8000/healthz")
    context = ssl._create_unverified_context() if url.startswith("https:") else None  # noqa: S323 - local probe
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as response:  # noqa: S310 - fixed local URL
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as err:
        print(f"{url}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
