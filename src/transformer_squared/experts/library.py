"""A directory of experts: list, get, add, remove, mix."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from .expert import Expert, ExpertError, ExpertMeta, mix

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def default_library_dir() -> Path:
    return Path(os.environ.get("T2_EXPERTS", "experts"))


def check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise ExpertError(f"invalid expert name {name!r}: use letters, digits, '.', '_' or '-' (max 100)")
    return name


class ExpertLibrary:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_library_dir()

    def __repr__(self) -> str:
        names = self.names()
        shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
        return f"ExpertLibrary({str(self.root)!r}, {len(names)} expert{'s' * (len(names) != 1)}: {shown or 'none'})"

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "expert.json").is_file() and not p.name.startswith("."))

    def __contains__(self, name: str) -> bool:
        return NAME.match(name or "") is not None and (self.root / name / "expert.json").is_file()

    def __len__(self) -> int:
        return len(self.names())

    def info(self, name: str) -> dict:
        """expert.json as a dict, without loading z."""
        path = self.root / check_name(name) / "expert.json"
        if not path.is_file():
            raise ExpertError(f"no expert {name!r} in {self.root} (have: {', '.join(self.names()) or 'none'})")
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ExpertError(f"{path} is corrupt ({e}); re-create the expert") from None

    def get(self, name_or_path: str | os.PathLike) -> Expert:
        """An expert by library name, or by path to an expert folder."""
        path = Path(name_or_path)
        if (path / "expert.json").is_file():
            return Expert.load(path)
        self.info(str(name_or_path))  # raises with the list of names
        return Expert.load(self.root / str(name_or_path))

    def add(self, expert: Expert, name: str | None = None, overwrite: bool = False) -> Path:
        name = check_name(name or expert.name)
        expert.meta.name = name
        return expert.save(self.root / name, overwrite=overwrite)

    def remove(self, name: str) -> None:
        self.info(name)
        folder = self.root / name
        trash = self.root / f".{name}.rm{os.getpid()}"
        os.replace(folder, trash)  # atomic: the expert disappears at once, then its files
        shutil.rmtree(trash, ignore_errors=True)

    def mix(self, weights: dict[str, float | dict[str, float]], name: str | None = None, overwrite: bool = False,
            description: str = "") -> Expert:
        """z = Σ wₖ zₖ over library experts; saved under `name` when given."""
        if name is not None:
            check_name(name)
            if name in self and not overwrite:
                raise ExpertError(f"expert {name!r} already exists; pass --overwrite or choose another name")
        experts = [self.get(n) for n in weights]
        meta = ExpertMeta(name=name or "", description=description or "mixture of " + ", ".join(weights))
        mixed = mix(experts, list(weights.values()), meta)
        if name is not None:
            self.add(mixed, name, overwrite=overwrite)
        return mixed
