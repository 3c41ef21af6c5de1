"""Serving: `serve`, a model behind HTTP with dynamic batching and limits."""
