"""Serving: the Python Recommender API and the HTTP service."""
