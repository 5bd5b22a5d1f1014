"""`manifest.json`: what a build produced (files, sizes, digests) and how long each step took."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from kairos.errors import KairosError


class ArtifactKind(StrEnum):
    ISO = "iso"
    RAW = "raw"
    QCOW2 = "qcow2"
    NETBOOT_KERNEL = "netboot-kernel"
    NETBOOT_INITRD = "netboot-initrd"
    NETBOOT_SQUASHFS = "netboot-squashfs"
    NETBOOT_IPXE = "netboot-ipxe"
    OCI = "oci"


@dataclass(frozen=True)
class Artifact:
    kind: ArtifactKind
    file: str  # relative to the output directory
    size: int
    sha256: str

    @classmethod
    def of(cls, kind: ArtifactKind, out_dir: Path, path: Path) -> Artifact:
        return cls(kind, path.name, path.stat().st_size, sha256_file(path))


@dataclass(frozen=True)
class Step:
    name: str
    seconds: float


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    artifacts: tuple[Artifact, ...] = ()
    steps: tuple[Step, ...] = field(default=())

    def artifact(self, kind: ArtifactKind) -> Artifact:
        for art in self.artifacts:
            if art.kind is kind:
                return art
        raise KeyError(kind)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "artifacts": [
                {"kind": str(a.kind), "file": a.file, "size": a.size, "sha256": a.sha256}
                for a in self.artifacts
            ],
            "steps": [{"name": s.name, "seconds": round(s.seconds, 3)} for s in self.steps],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        try:
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                artifacts=tuple(
                    Artifact(
                        ArtifactKind(a["kind"]), str(a["file"]), int(a["size"]), str(a["sha256"])
                    )
                    for a in data["artifacts"]
                ),
                steps=tuple(Step(str(s["name"]), float(s["seconds"])) for s in data["steps"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KairosError(f"manifest: malformed ({exc}).") from exc

    def write(self, out_dir: Path) -> Path:
        path = out_dir / "manifest.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.rename(path)
        return path

    @classmethod
    def read(cls, out_dir: Path) -> Manifest:
        path = out_dir / "manifest.json"
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise KairosError(f"{path}: cannot read the build manifest ({exc}).") from exc


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
