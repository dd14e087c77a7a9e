"""The metergate console: the sign-in gate and the pages each role may open.

Served by ``metergate serve console``. Nobody reaches a page without signing in,
and the navigation holds only the pages the signed-in role may open (an address
of another page lands on the first allowed one). Each page checks the role again
(``require_role``), and each write checks it once more in ``shared/``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from console import actions, auth

PAGES_DIR = Path(__file__).parent / "app_pages"


def navigation(role_pages: list[auth.PageSpec]) -> dict[str, list[st.Page]]:
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

allowed = [page for page in auth.PAGES if actor.can(page.role)]
current = st.navigation(navigation(allowed), expanded=True)
actions.show_notice()
current.run()
