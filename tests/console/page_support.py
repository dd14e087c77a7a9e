"""Opening one page of the console straight away, signed in (the landing page is not run,
so a page's tests do not depend on another page)."""

from __future__ import annotations

import time

from sqlalchemy import Engine
from streamlit.testing.v1 import AppTest

from console import data
from console.auth import SESSION_KEY, SignIn
from shared.console_users import Actor
from tests.console.conftest import APP, APP_TIMEOUT_SECONDS, make_console_user


def open_page(engine: Engine, role: str, page: str, **params: str) -> tuple[AppTest, Actor]:
    """The console signed in as a fresh ``role`` user, on ``page`` (``app_pages/NAME.py``)
    with these query parameters. Needs the ``console_env`` fixture."""
    actor = make_console_user(engine, role)
    data.refresh_config()  # the test wrote tenants, users and flags the cache has not seen
    at = AppTest.from_file(str(APP), default_timeout=APP_TIMEOUT_SECONDS)
    at.session_state[SESSION_KEY] = SignIn(actor.name, "password", time.time())
    at.query_params.update(params)
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at, actor


def open_page_file(engine: Engine, role: str, page: str) -> AppTest:
    """A page script (``app_pages/NAME.py``) run on its own, no navigation, signed in as
    ``role``: what the page itself does for a role the navigation would not offer it to."""
    actor = make_console_user(engine, role)
    at = AppTest.from_file(str(APP.parent / page), default_timeout=APP_TIMEOUT_SECONDS)
    at.session_state[SESSION_KEY] = SignIn(actor.name, "password", time.time())
    at.session_state["metergate_actor"] = actor
    at.run()
    assert not at.exception, at.exception
    return at
