"""The metergate console (Streamlit). Placeholder until the console issue lands."""

import streamlit as st

st.set_page_config(page_title="metergate", layout="wide")
st.title("metergate console")
st.info("The console is being built; the proxy and its records are live.")
