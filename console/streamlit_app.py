"""The metergate console: the sign-in gate and the pages each role may open.

Served by ``metergate serve console``. Nobody reaches a page without signing in,
and the navigation holds only the pages the signed-in role may open (an address
of another page lands on the first allowed one). Each page checks the role again
(``require_role``), and each write checks it once more in ``shared/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from console import actions, auth

PAGES_DIR = Path(__file__).parent / "app_pages"


@dataclass(frozen=True, slots=True)
class PageSpec:
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


def navigation(role_pages: list[PageSpec]) -> dict[str, list[st.Page]]:
    sections: dict[str, list[st.Page]] = {}
    for spec in role_pages:
        path = PAGES_DIR / spec.file
        if not path.exists():  # a page another change has not added yet
            continue
        page = st.Page(
            path,
            title=spec.title,
            icon=spec.icon,
            url_path=path.stem,
            visibility="hidden" if spec.is_hidden else "visible",
        )
        sections.setdefault(spec.section, []).append(page)
    return sections


st.set_page_config(page_title="metergate console", page_icon=":material/toll:", layout="wide")
actor = auth.signed_in_actor()
if actor is None:
    st.navigation([st.Page(auth.sign_in_page, title="Sign in", url_path="sign-in")]).run()
    st.stop()

with st.sidebar:
    st.caption(f"Signed in as **{actor.name}** ({actor.role})")
    if st.button("Sign out", key="sign-out", icon=":material/logout:"):
        auth.sign_out()
        st.rerun()

current = st.navigation(navigation([p for p in PAGES if actor.can(p.role)]))
actions.show_notice()
current.run()
