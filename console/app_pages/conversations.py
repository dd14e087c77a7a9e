import streamlit as st

st.title("Conversations")
