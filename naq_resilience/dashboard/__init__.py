"""`naq dashboard`: a web face over the job layer's own API (`Client`), never a second
implementation of it. Needs the `dashboard` extra: `pip install 'naq-resilience[dashboard]'`.

`create_app(nats_url, credentials=..., loopback_only=...)` is the ASGI application;
`naq dashboard` serves it with uvicorn.
"""

from __future__ import annotations

from naq_resilience.dashboard.app import create_app
from naq_resilience.dashboard.security import Credentials, check_bind, is_loopback

__all__ = ["Credentials", "check_bind", "create_app", "is_loopback"]
