"""Experts on disk (z.safetensors + expert.json), a library over a directory, and mixing."""

from .expert import Expert, ExpertError, ExpertMeta, mix
from .library import ExpertLibrary, check_name, default_library_dir

__all__ = ["Expert", "ExpertError", "ExpertMeta", "ExpertLibrary", "check_name", "default_library_dir", "mix"]
