"""The experts a server can answer with: a live view of an ExpertLibrary folder, checked against the model.

The library folder is the source of truth. `rescan()` loads experts that appeared on disk (or whose expert.json
changed) and forgets those that disappeared; it runs when /v1/models is listed and when a request names an expert
the server does not know yet, so copying a folder into the library is enough to serve it. `add` / `remove` are the
HTTP endpoints' way to do the same. An expert made for other weights is never served: it is listed under
`rejected` with the reason. `version` changes whenever the set of experts does (the auto strategy is rebuilt then).

Thread-safety: HTTP handlers call this from several threads, the engine reads experts from its worker; one lock
guards the name → Expert map. Expert objects are immutable, so a request keeps its expert even if it is removed.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ..experts import Expert, ExpertError, ExpertLibrary, check_name, mix

RESERVED = ("auto", "base", "mixture")  # model names with a meaning of their own (the base model's id is one too)


class UnknownExpert(KeyError):
    def __init__(self, name: str, available: list[str]):
        super().__init__(name)
        self.name, self.available = name, available

    def __str__(self) -> str:
        return f"unknown model {self.name!r}; available: {', '.join(self.available) or 'none'}"


class ExpertRegistry:
    def __init__(self, svf, library: ExpertLibrary, max_mixtures: int = 32):
        self.svf, self.library = svf, library
        self.experts: dict[str, Expert] = {}
        self.rejected: dict[str, str] = {}  # name -> why it is not served
        self._stamps: dict[str, float] = {}  # name -> expert.json mtime when loaded
        self._mixtures: dict[tuple, Expert] = {}  # recent mixtures, so a repeated one keeps its cached weights
        self.max_mixtures = max_mixtures
        self.version = 0
        self._lock = threading.RLock()
        self.rescan()

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self.experts)

    def _load(self, name: str, path: Path) -> Expert:
        expert = Expert.load(path)
        expert.check_compatible(self.svf)
        expert.meta.name = name
        return expert

    def rescan(self) -> None:
        """Bring the map in line with the library folder."""
        with self._lock:
            reserved = {*RESERVED, self.svf.model_id}
            on_disk = {n: self.library.root / n / "expert.json" for n in self.library.names() if n not in reserved}
            changed = False
            for name in list(self.experts) + list(self.rejected):
                if name not in on_disk:
                    changed |= self.experts.pop(name, None) is not None
                    self.rejected.pop(name, None)
                    self._stamps.pop(name, None)
            for name, meta_path in on_disk.items():
                try:
                    stamp = meta_path.stat().st_mtime
                except OSError:
                    continue  # removed while we looked
                if self._stamps.get(name) == stamp:
                    continue
                self._stamps[name] = stamp
                try:
                    self.experts[name] = self._load(name, meta_path.parent)
                    self.rejected.pop(name, None)
                except ExpertError as e:
                    self.experts.pop(name, None)
                    self.rejected[name] = str(e)
                changed = True
            if changed:
                self.version += 1
                self._mixtures.clear()

    def get(self, name: str) -> Expert:
        """The expert called `name`; rescans the library once before giving up."""
        with self._lock:
            if name not in self.experts:
                self.rescan()
            if name in self.experts:
                return self.experts[name]
            if name in self.rejected:
                raise ExpertError(f"expert {name!r} cannot be served: {self.rejected[name]}")
            raise UnknownExpert(name, self.names())

    def mixture(self, weights: dict[str, float]) -> Expert:
        """Σ wₖ zₖ over named experts (see experts.mix); the same request twice gives the same Expert object."""
        if not weights:
            raise ExpertError("mixture needs at least one expert: {\"name\": weight, ...}")
        key = tuple(sorted(weights.items()))
        with self._lock:
            if key in self._mixtures:
                return self._mixtures[key]
            parts = [self.get(n) for n in weights]
            label = "+".join(f"{w:g}*{n}" for n, w in weights.items())
            mixed = mix(parts, list(weights.values()))
            mixed.meta.name = f"mixture({label})"
            mixed.check_compatible(self.svf)
            if len(self._mixtures) >= self.max_mixtures:
                self._mixtures.pop(next(iter(self._mixtures)))
            self._mixtures[key] = mixed
            return mixed

    def add(self, name: str, path: str | None = None, overwrite: bool = False) -> Expert:
        """Copy the expert folder at `path` into the library as `name` (checked first), or, without a path,
        load `name` from the library folder."""
        check_name(name)
        if name in (*RESERVED, self.svf.model_id):
            raise ExpertError(f"{name!r} is reserved ({', '.join((*RESERVED, self.svf.model_id))}); choose another name")
        with self._lock:
            if path is None:
                self._stamps.pop(name, None)
                self.rescan()
                return self.get(name)
            if name in self.library and not overwrite:
                raise ExpertError(f"expert {name!r} already exists; pass \"overwrite\": true or choose another name")
            expert = self._load(name, Path(path))
            self.library.add(expert, name, overwrite=overwrite)
            self.rescan()
            return self.get(name)

    def remove(self, name: str) -> None:
        """Delete the expert from the library folder (requests already running with it finish normally)."""
        with self._lock:
            if name not in self.library:
                raise UnknownExpert(name, self.names())
            self.library.remove(name)
            self.rescan()
