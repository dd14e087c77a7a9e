import streamlit as st

st.title("Export")
