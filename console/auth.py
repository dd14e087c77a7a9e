"""Sign-in, sessions and roles for the console.

Local accounts (``metergate console-user create NAME --role …``) sign in with an
argon2-checked password; when OIDC is on (``METERGATE_CONSOLE_OIDC``, or an
``[auth]`` section in ``.streamlit/secrets.toml``) a person can sign in through
``st.login`` instead, and gets the role of the console account named like their
e-mail address. A sign-in lasts ``METERGATE_CONSOLE_SESSION_SECONDS``; on every
run the account is read again, so a disabled account or a changed role takes
effect at the next click.

Pages start with ``actor = require_role("admin")`` (or ``"support"``, ``"viewer"``),
and pass ``actor`` to the ``shared/`` write they call, which checks it again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import streamlit as st
from sqlalchemy.orm import Session

from console import data
from shared.console_users import Actor, actor_for, authenticate

log = logging.getLogger(__name__)

SESSION_KEY = "metergate_sign_in"
FAILED_ATTEMPTS_ALLOWED = 5
FAILED_ATTEMPTS_WINDOW_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class SignIn:
    """What the session remembers about its sign-in."""

    name: str
    method: str  # "password" or "oidc"
    signed_in_at: float  # time.time()


# -- which role opens which page ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PageSpec:
    """A page of ``console/app_pages`` and the least role that opens it."""

    file: str
    title: str
    icon: str
    role: str
    section: str
    is_hidden: bool = False


PAGES = (
    PageSpec("spend.py", "Spend", ":material/payments:", "viewer", "Dashboards"),
    PageSpec("latency.py", "Latency", ":material/speed:", "viewer", "Dashboards"),
    PageSpec("cache.py", "Cache", ":material/cached:", "viewer", "Dashboards"),
    PageSpec("export.py", "Export", ":material/download:", "viewer", "Dashboards"),
    PageSpec("conversations.py", "Conversations", ":material/forum:", "support", "Support"),
    PageSpec("session.py", "Session", ":material/timeline:", "support", "Support", True),
    PageSpec("flagged.py", "Flagged", ":material/flag:", "support", "Support"),
    PageSpec("tiers.py", "Tiers", ":material/layers:", "admin", "Admin"),
    PageSpec("overrides.py", "Overrides", ":material/tune:", "admin", "Admin"),
    PageSpec("caps.py", "Caps", ":material/savings:", "admin", "Admin"),
    PageSpec("keys.py", "Keys", ":material/key:", "admin", "Admin"),
    PageSpec("prices.py", "Prices", ":material/sell:", "admin", "Admin"),
    PageSpec("users.py", "Users and tenants", ":material/group:", "admin", "Admin"),
    PageSpec("audit.py", "Audit", ":material/history:", "admin", "Admin"),
)


# -- the gate (run by streamlit_app.py on every run) ------------------------------------


def signed_in_actor() -> Actor | None:
    """The actor of this session, or None when nobody is (validly) signed in.

    Ends the sign-in when it is older than the session length, or when its account
    was disabled or removed; an OIDC identity without a console account gets None.
    """
    sign_in: SignIn | None = st.session_state.get(SESSION_KEY)
    if sign_in is None and oidc_enabled() and _oidc_logged_in():
        sign_in = SignIn(_oidc_name(), "oidc", _oidc_signed_in_at())
        st.session_state[SESSION_KEY] = sign_in
    if sign_in is None:
        return None
    if time.time() - sign_in.signed_in_at > data.settings().console_session_seconds:
        sign_out(reason="Your session has expired; please sign in again.")
        return None
    with Session(data.engine()) as session:
        actor = actor_for(session, sign_in.name)
    if actor is None:
        if sign_in.method == "oidc":
            st.session_state.pop(SESSION_KEY, None)
            st.session_state["metergate_oidc_refused"] = sign_in.name
        else:
            sign_out(reason="This account can no longer sign in.")
        return None
    st.session_state["metergate_actor"] = actor
    return actor


def current_actor() -> Actor | None:
    """The actor the gate validated on this run (None outside a signed-in run)."""
    if SESSION_KEY not in st.session_state:
        return None
    actor: Actor | None = st.session_state.get("metergate_actor")
    return actor


def require_role(role: str) -> Actor:
    """The signed-in actor if their role includes ``role``; otherwise stop the page here."""
    actor = current_actor()
    if actor is None:
        st.error("Please sign in.")
        st.stop()
        raise AssertionError("unreachable")  # st.stop raises; this keeps the types honest
    if not actor.can(role):
        st.error(f"This page needs the {role} role; you are signed in as {actor.role}.")
        st.stop()
    return actor


def sign_out(reason: str | None = None) -> None:
    sign_in: SignIn | None = st.session_state.pop(SESSION_KEY, None)
    st.session_state.pop("metergate_actor", None)
    if reason:
        st.session_state["metergate_sign_in_notice"] = reason
    if sign_in is not None and sign_in.method == "oidc":
        st.logout()


# -- the sign-in page -------------------------------------------------------------------


def sign_in_page() -> None:
    """Shown instead of every page while nobody is signed in."""
    st.title("metergate console")
    notice = st.session_state.pop("metergate_sign_in_notice", None)
    if notice:
        st.info(notice)
    refused = st.session_state.get("metergate_oidc_refused")
    if refused:
        st.error(
            f"{refused} has no console account. An admin can add one with "
            f"`metergate console-user create {refused} --role viewer --oidc-only`."
        )
        if _oidc_logged_in() and st.button("Sign out of single sign-on", key="oidc-logout"):
            st.session_state.pop("metergate_oidc_refused", None)
            st.logout()
    with st.form("sign-in"):
        name = st.text_input("Name", key="sign-in-name")
        password = st.text_input("Password", type="password", key="sign-in-password")
        submitted = st.form_submit_button("Sign in", key="sign-in-submit", type="primary")
    if submitted:
        _sign_in_with_password(name, password)
    if oidc_enabled():
        _oidc_buttons()


def _sign_in_with_password(name: str, password: str) -> None:
    name = name.strip()
    if not name or not password:
        st.error("Enter your name and password.")
        return
    failures = _failures()
    now = time.monotonic()
    recent = [t for t in failures.get(name, []) if now - t < FAILED_ATTEMPTS_WINDOW_SECONDS]
    if len(recent) >= FAILED_ATTEMPTS_ALLOWED:
        st.error("Too many failed attempts for this name; try again in a few minutes.")
        return
    with data.transaction_session() as session:
        actor = authenticate(session, name, password)
    if actor is None:
        failures[name] = [*recent, now]
        log.warning("event=console_sign_in_failed name=%s", name)
        st.error("Wrong name or password.")
        return
    failures.pop(name, None)
    log.info("event=console_sign_in name=%s role=%s", actor.name, actor.role)
    st.session_state[SESSION_KEY] = SignIn(actor.name, "password", time.time())
    st.session_state.pop("sign-in-password", None)
    st.rerun()


@st.cache_resource(show_spinner=False)
def _failures() -> dict[str, list[float]]:
    """Failed sign-ins per name in this console process (a brake on guessing)."""
    return {}


# -- OIDC -------------------------------------------------------------------------------


def oidc_enabled() -> bool:
    configured = data.settings().console_oidc
    if configured is not None:
        return configured
    try:
        return "auth" in st.secrets
    except FileNotFoundError:
        return False


def _oidc_logged_in() -> bool:
    return bool(st.user.get("is_logged_in"))


def _oidc_name() -> str:
    return str(st.user.get("email") or st.user.get("preferred_username") or st.user.get("sub"))


def _oidc_signed_in_at() -> float:
    """When the identity provider signed the person in (the ID token's ``iat``), so a
    reload within the identity cookie's life does not restart the session length."""
    issued = st.user.get("iat")
    return float(issued) if isinstance(issued, int | float) else time.time()


def _oidc_providers() -> list[str]:
    """Named providers (``[auth.NAME]`` sections), or none for the unnamed one."""
    try:
        section = st.secrets.get("auth", {})
    except FileNotFoundError:
        return []
    return [name for name, value in section.items() if isinstance(value, Mapping)]


def _oidc_buttons() -> None:
    st.divider()
    providers = _oidc_providers()
    if not providers:
        if st.button("Sign in with single sign-on", key="oidc-default"):
            st.session_state.pop("metergate_oidc_refused", None)
            st.login()
        return
    for provider in providers:
        if st.button(f"Sign in with {provider}", key=f"oidc-{provider}"):
            st.session_state.pop("metergate_oidc_refused", None)
            st.login(provider)
