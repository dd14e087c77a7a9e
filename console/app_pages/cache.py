"""Placeholder until the Cache page lands."""

import streamlit as st

from console.auth import require_role

require_role("viewer")
st.title("Cache")
