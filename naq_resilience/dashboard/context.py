"""What every handler shares: the one client, the sampler, the templates."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import Request

if TYPE_CHECKING:
    import jinja2

    from naq_resilience.dashboard.sampler import Sampler
    from naq_resilience.dashboard.security import Credentials
    from naq_resilience.jetstream.client import Client

__all__ = ["Dashboard", "View", "dashboard"]

View = Callable[["Dashboard", str, str], Awaitable[dict[str, str]]]
"""A live page's fragments (element id -> HTML), rendered again after each sample;
taking the dashboard, the id the page is about, and the session's CSRF token (for
the forms a fragment holds)."""


@dataclass
class Dashboard:
    client: Client
    sampler: Sampler
    templates: jinja2.Environment
    credentials: Credentials
    views: dict[str, View] = field(default_factory=dict)


def dashboard(request: Request) -> Dashboard:
    board: Dashboard = request.app.state.dashboard
    return board
