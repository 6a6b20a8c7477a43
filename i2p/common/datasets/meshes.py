"""``meshes:DIR``: DIR/<class>/{train,test}/*.obj|off|ply (SHREC'16, raw ModelNet40).

Meshes are turned into clouds by area-weighted surface sampling seeded by (seed, id), so a
mesh with dense tessellation in one region is not oversampled there and the same (seed, id)
always yields the same points. trimesh is imported lazily: listing ids must stay cheap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from i2p.common.datasets._common import (
    DENSE_DRAW,
    ListDataset,
    existing_path,
    sample_triangles,
    split_parts,
)
from i2p.common.datasets.base import register_reader
from i2p.common.errors import DataSpecError, SampleError
from i2p.common.geometry import stable_seed

MESH_SUFFIXES = (".obj", ".off", ".ply")


def _mesh_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MESH_SUFFIXES)


def load_mesh_triangles(path: Path) -> np.ndarray:
    """Triangles [k, 3, 3] of a mesh file; any failure to parse becomes a SampleError."""
    import trimesh  # lazy: heavy import, only needed when a sample is read

    try:
        mesh = trimesh.load(str(path), file_type=path.suffix.lower().lstrip("."), force="mesh", process=False)
        vertices = np.asarray(mesh.vertices, dtype=np.float64)
        faces = np.asarray(mesh.faces, dtype=np.int64)
    except Exception as err:  # trimesh raises many types for bad files; all mean "unreadable"
        raise SampleError(f"unreadable mesh ({type(err).__name__}: {err})"[:300]) from err
    if len(vertices) == 0 or len(faces) == 0:
        raise SampleError("empty mesh (no faces)")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= len(vertices):
        raise SampleError("malformed faces")
    return vertices[faces]  # finiteness is checked on these (used) vertices by sample_triangles


class MeshDataset(ListDataset):
    """Ids are ``<class>/<split>/<file stem>``: stable, unique, readable in skip lists."""

    def __init__(self, root: Path, *, spec: str, split: str, num_points: int, seed: int) -> None:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise DataSpecError(f"no class subdirectories in {root} (expected DIR/<class>/{{train,test}}/*.obj)")
        present = [s for s in ("train", "test") if any(_mesh_files(root / c / s) for c in classes)]
        if not present:
            raise DataSpecError(f"no .obj/.off/.ply files under {root}/<class>/{{train,test}}/")
        files, ids, labels = [], [], []
        for part in split_parts(split):
            if part not in present:
                if split == "all":
                    continue
                raise DataSpecError(f"{root} has no {part} split (no meshes in {root}/<class>/{part}/)")
            for label, name in enumerate(classes):
                for f in _mesh_files(root / name / part):
                    files.append(f)
                    ids.append(f"{name}/{part}/{f.stem}")
                    labels.append(label)
        super().__init__(spec=spec, split=split, num_points=num_points, seed=seed, ids=ids,
                         labels=labels, classes=classes, present_splits=present)
        self.root = root
        self._files = files

    def _raw(self, i: int) -> np.ndarray:
        tris = load_mesh_triangles(self._files[i])
        rng = np.random.default_rng(stable_seed(self.seed, self._ids[i], "surface"))
        return sample_triangles(tris, max(self.num_points, DENSE_DRAW), rng)


@register_reader("meshes")
def open_meshes(arg: str, *, split: str, num_points: int, seed: int, spec: str) -> MeshDataset:
    root = existing_path(arg, spec, want_dir=True)
    return MeshDataset(root, spec=spec, split=split, num_points=num_points, seed=seed)
