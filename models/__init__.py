"""Keras models and the shared pieces they use; imports neither Prefect nor DVC."""
