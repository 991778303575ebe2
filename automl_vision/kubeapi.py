"""Reading the Kubernetes API server's refusals (``kubernetes.client.ApiException``) for our messages."""

from __future__ import annotations

import json
from typing import Any


def status_message(e: Any) -> str:
    """The ``message`` of the API server's Status body, else the body's text, else ''."""
    body = getattr(e, "body", None)
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and parsed.get("message"):
            return str(parsed["message"])
    except (TypeError, ValueError):
        pass
    text = body.decode(errors="replace") if isinstance(body, bytes) else (body or "")
    return text.strip()
