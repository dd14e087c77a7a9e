import streamlit as st

st.title("Cache")
