"""Prefect flows and the `gdl` command line: thin wiring of tasks."""
