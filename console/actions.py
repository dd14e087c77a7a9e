"""Running a console action: one ``shared/`` write, and telling the person how it went.

``attempt`` shows a refusal (a role the actor lacks, a value that does not
validate) where the form is, and keeps a success notice for the next run, which
``streamlit_app.py`` shows above the page (pages rerun after a change so every
table on them is fresh).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

import streamlit as st
from sqlalchemy.orm import Session

from console import data
from shared.accounts import AccountError
from shared.console_users import PermissionDenied

P = ParamSpec("P")
T = TypeVar("T")

NOTICE_KEY = "metergate_notice"


def attempt(
    success: str,
    action: Callable[Concatenate[Session, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T | None:
    """Run ``action`` through ``data.write``; None (and an error shown) when it is refused."""
    try:
        result = data.write(action, *args, **kwargs)
    except PermissionDenied as exc:
        st.error(f"Not allowed: {exc}")
        return None
    except AccountError as exc:
        st.error(str(exc))
        return None
    st.session_state[NOTICE_KEY] = success
    return result


def show_notice() -> None:
    """Show (once) the notice the previous run left."""
    notice = st.session_state.pop(NOTICE_KEY, None)
    if notice:
        st.success(notice)
