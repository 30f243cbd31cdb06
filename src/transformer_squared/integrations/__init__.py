"""Bridges to other training stacks (each optional, behind its own pyproject extra)."""
