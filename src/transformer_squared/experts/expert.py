"""An expert: one z vector per targeted matrix, plus what it is for and how it was made.

On disk an expert is a folder:

    NAME/
      z.safetensors   one float32 vector per matrix, keyed by the linear's qualified name
      expert.json     metadata (schema below), written last; a folder without it is not an expert

Mixing is linear in z: z_mix = Σ αₖ zₖ (α global per expert, or one α per expert per matrix).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..atomic import atomic_folder
from ..errors import T2Error
from ..svd import combine_fingerprints
from ..svf import PARAMETRIZATIONS

SCHEMA_VERSION = 1


class ExpertError(T2Error, ValueError):
    """An expert that cannot be used as asked; the message says what and how to fix it."""


@dataclass
class ExpertMeta:
    name: str = ""
    base_model: str = ""  # what --model resolved to when the expert was made
    fingerprint: str = ""  # content hash of the targeted base weights (see svd.weight_fingerprints)
    targets: str = "mlp"  # the target spec used (preset or regex)
    parametrization: str = "paper"
    domain: str = ""  # label used by self-adaptation ("math", "code", ...)
    description: str = ""
    created_by: dict = field(default_factory=dict)  # {"method": "train"|"mix"|"cem"|"random"|..., ...}
    metrics: dict = field(default_factory=dict)
    alpha: dict | None = None  # mixing weights, for mixtures
    schema_version: int = SCHEMA_VERSION
    created_at: str = ""
    dtype: str = ""  # compute dtype the expert was made with ("" = before this was recorded: float32)
    device: str = ""  # device type it was made on (cpu, cuda, mps); z itself is float32 and portable

    def __repr__(self) -> str:  # the fields that identify an expert; created_by/metrics can be pages long
        method = self.created_by.get("method", "")
        return (f"ExpertMeta(name={self.name!r}, domain={self.domain!r}, base_model={self.base_model!r}, "
                f"targets={self.targets!r}, parametrization={self.parametrization!r}, method={method!r}, "
                f"fingerprint={self.fingerprint[:12]!r})")


class Expert:
    """z vectors + metadata. Treat z as immutable: the cache key is a hash of its content."""

    def __init__(self, z: dict[str, torch.Tensor], meta: ExpertMeta, components=None):
        self.z = {n: t.detach().to("cpu", torch.float32).contiguous() for n, t in z.items()}  # float32 on the host
        self.meta = meta
        self.components = components  # [(Expert, alpha)] when this is a mixture, for exact cached mixing
        self._key = None
        self._compatible_with: str | None = None  # decomposition fingerprint this expert last passed checks for

    def __repr__(self) -> str:
        return (f"Expert({self.name!r}, domain={self.meta.domain!r}, {self.num_params():,} z values over "
                f"{len(self.z)} matrices, targets={self.meta.targets!r}, base_model={self.meta.base_model!r}"
                + (f", alpha={self.meta.alpha}" if self.meta.alpha else "") + ")")

    name = property(lambda self: self.meta.name)
    parametrization = property(lambda self: self.meta.parametrization)

    @property
    def key(self) -> str:
        if self._key is None:
            h = hashlib.blake2b(digest_size=16)
            # "|1.0" is the max_mult every key hashed before that constant (it cancels) was dropped: keys stay as
            # they were for the experts that kept the default, which the expert memory's records name
            h.update(f"{self.meta.parametrization}|1.0".encode())
            for n in sorted(self.z):
                h.update(n.encode())
                h.update(self.z[n].numpy().data)
            self._key = h.hexdigest()
        return self._key

    def num_params(self) -> int:
        return sum(t.numel() for t in self.z.values())

    def validate(self) -> None:
        if self.meta.parametrization not in PARAMETRIZATIONS:
            raise ExpertError(f"expert {self.name!r}: unknown parametrization {self.meta.parametrization!r}")
        for n, t in self.z.items():
            if t.dim() != 1:
                raise ExpertError(f"expert {self.name!r}: z for {n} has shape {tuple(t.shape)}, expected a vector")
            if not torch.isfinite(t).all():
                raise ExpertError(f"expert {self.name!r}: z for {n} has non-finite values; retrain or re-create it")

    def check_compatible(self, svf) -> None:
        """Refuse (ExpertError) unless this expert was made for exactly these weights.

        z is immutable, so a check that passed for one decomposition is remembered: switching back to an expert
        costs a pointer swap, not 90 finiteness checks."""
        if self._compatible_with == svf.decomposition.fingerprint:
            return
        self.validate()
        missing = sorted(set(self.z) - set(svf.names))
        if set(self.z) != set(svf.names):
            raise ExpertError(
                f"expert {self.name!r} adapts {len(self.z)} matrices ({self.meta.targets!r}) but the model was "
                f"decomposed for {len(svf.names)} (e.g. {(missing or sorted(set(svf.names) - set(self.z)))[0]}); "
                f"decompose with --targets {self.meta.targets}"
            )
        fp = combine_fingerprints(svf.decomposition.fingerprints, list(self.z))
        if self.meta.fingerprint and fp != self.meta.fingerprint:
            raise ExpertError(
                f"expert {self.name!r} was made for other weights (fingerprint {self.meta.fingerprint[:12]}, "
                f"this model {fp[:12]}; base {self.meta.base_model!r}): use it with the model it was trained on"
            )
        for n, t in self.z.items():
            r = svf.decomposition.rank(n)
            if t.shape[0] != r:
                raise ExpertError(f"expert {self.name!r}: z for {n} has {t.shape[0]} values, the matrix has rank {r}")
        self._compatible_with = svf.decomposition.fingerprint

    # -- disk ------------------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write atomically: a temporary folder beside the target, renamed into place when complete."""
        from safetensors.torch import save_file

        self.validate()
        folder = Path(folder)
        if folder.exists() and not overwrite:
            raise ExpertError(f"{folder} already exists; pass --overwrite or choose another name")
        with atomic_folder(folder) as tmp:
            save_file(self.z, str(tmp / "z.safetensors"), metadata={"schema_version": str(SCHEMA_VERSION)})
            meta = asdict(self.meta)
            meta["name"] = self.meta.name or folder.name
            meta["created_at"] = meta["created_at"] or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            meta["num_params"] = self.num_params()
            meta["matrices"] = sorted(self.z)
            (tmp / "expert.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        self.meta.name = self.meta.name or folder.name
        return folder

    @classmethod
    def for_model(cls, svf, z: dict[str, torch.Tensor] | None = None, parametrization: str = "paper",
                  **meta) -> "Expert":
        """An expert bound to `svf`'s weights; z defaults to the identity (reproduces the base)."""
        z = z if z is not None else svf.init_z(parametrization)
        precision = getattr(svf, "precision", None)
        made_with = {"dtype": precision.dtype_name, "device": precision.device.type} if precision else {}
        m = ExpertMeta(base_model=svf.model_id, fingerprint=combine_fingerprints(svf.decomposition.fingerprints, list(z)),
                       targets=svf.targets, parametrization=parametrization, **{**made_with, **meta})
        return cls(z, m)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Expert":
        from safetensors.torch import load_file

        folder = Path(folder)
        meta_path, z_path = folder / "expert.json", folder / "z.safetensors"
        if not meta_path.is_file() or not z_path.is_file():
            raise ExpertError(f"{folder} is not an expert (needs expert.json and z.safetensors)")
        try:
            raw = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ExpertError(f"{meta_path} is corrupt ({e}); re-create the expert") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("schema_version", 0), int):
            raise ExpertError(f"{meta_path} is corrupt (not an expert.json object); re-create the expert")
        if raw.get("schema_version", 0) > SCHEMA_VERSION:
            raise ExpertError(f"{folder} uses schema {raw['schema_version']}; upgrade transformer-squared")
        known = ExpertMeta.__dataclass_fields__  # drops what older versions recorded, e.g. max_mult (svf.py: it cancels)
        meta = ExpertMeta(**{k: v for k, v in raw.items() if k in known})
        try:
            z = load_file(str(z_path))
        except Exception as e:
            raise ExpertError(f"{z_path} is corrupt ({str(e).splitlines()[0]}); re-create the expert") from None
        if "matrices" in raw and sorted(z) != sorted(raw["matrices"]):
            raise ExpertError(f"{folder}: z.safetensors and expert.json disagree on the matrices; re-create the expert")
        expert = cls(z, meta)
        expert.validate()
        return expert


def mix(experts: list[Expert], alphas: list[float | dict[str, float]], meta: ExpertMeta | None = None) -> Expert:
    """z = Σ αₖ zₖ, with αₖ a number or a {matrix: weight} dict. Experts must share matrices and parametrization."""
    if not experts or len(experts) != len(alphas):
        raise ExpertError("mix needs one weight per expert")
    first = experts[0]
    for e in experts[1:]:
        if set(e.z) != set(first.z) or e.meta.fingerprint != first.meta.fingerprint:
            raise ExpertError(f"cannot mix {first.name!r} and {e.name!r}: made for different matrices or weights")
        if e.parametrization != first.parametrization:
            raise ExpertError(f"cannot mix {first.name!r} ({first.parametrization}) and {e.name!r} ({e.parametrization})")
    for e, a in zip(experts, alphas):
        values = a.values() if isinstance(a, dict) else [a]
        if not all(isinstance(v, (int, float)) and v == v and abs(v) != float("inf") for v in values):
            raise ExpertError(f"mixing weight for {e.name!r} must be a finite number")
        if isinstance(a, dict) and set(a) != set(first.z):
            raise ExpertError(f"per-matrix weights for {e.name!r} must name every matrix of the expert")
    z = {}
    for n in first.z:
        z[n] = sum((a[n] if isinstance(a, dict) else a) * e.z[n] for e, a in zip(experts, alphas))
    meta = meta or ExpertMeta()
    meta.base_model = meta.base_model or first.meta.base_model
    meta.fingerprint, meta.targets = first.meta.fingerprint, first.meta.targets
    meta.parametrization = first.parametrization
    meta.alpha = {e.name: a for e, a in zip(experts, alphas)}
    meta.created_by = meta.created_by or {"method": "mix"}
    return Expert(z, meta, components=list(zip(experts, alphas)))
