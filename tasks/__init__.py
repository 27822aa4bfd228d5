"""Prefect tasks, one module per step kind; caching, retries and artifacts live here."""
