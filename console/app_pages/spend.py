import streamlit as st

st.title("Spend")
