import streamlit as st

st.title("Latency")
