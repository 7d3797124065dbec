"""Helpers for the course notebooks: exercise self-checks and reference solutions."""
