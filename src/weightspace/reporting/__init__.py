"""Reporting: tables and plots built from library results (matplotlib, no pyplot state)."""
