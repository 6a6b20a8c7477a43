"""``shapenetpart:DIR``: ShapeNetPart (``shapenetcore_partanno_segmentation_benchmark_v0_normal``).

Layout: DIR/synsetoffset2category.txt (``Airplane<TAB>02691156`` per line: the categories and
their label order), DIR/train_test_split/shuffled_{train,val,test}_file_list.json (lists of
``shape_data/<synset>/<id>``) and DIR/<synset>/<id>.txt with rows ``x y z nx ny nz part``, the
part being a GLOBAL id in the standard ranges (Airplane 0-3, Bag 4-5, ..., Table 47-49; 50 parts
over 16 categories). Ids are ``<synset>/<id>``; labels are category indices; each Sample carries
``parts``. Only xyz is used. Splits: train, val, test and all (= the three). Editing
synsetoffset2category.txt selects categories: list entries of other synsets are left out.

The text files (~16k of them) are parsed once per split into a pack, ``.i2p-cache/<split>-
<hash>.npz`` in DIR (or under ``~/.cache/i2p/shapenetpart`` when DIR is read-only), written
atomically; the hash covers the category and list files, so an edited list gets a new pack. A
bad file (wrong column count, a part id outside its category, missing) is recorded in the pack
and raises :class:`SampleError` naming the file when loaded, so one bad shape never stops a run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from i2p.common.atomic import atomic_path
from i2p.common.datasets._common import ListDataset, existing_path
from i2p.common.datasets.base import SPLITS_WITH_VAL, register_reader
from i2p.common.errors import DataSpecError, SampleError

# Category -> (synset, first global part id, number of parts): the benchmark's 50 parts.
CATEGORIES: dict[str, tuple[str, int, int]] = {
    "Airplane": ("02691156", 0, 4), "Bag": ("02773838", 4, 2), "Cap": ("02954340", 6, 2),
    "Car": ("02958343", 8, 4), "Chair": ("03001627", 12, 4), "Earphone": ("03261776", 16, 3),
    "Guitar": ("03467517", 19, 3), "Knife": ("03624134", 22, 2), "Lamp": ("03636649", 24, 4),
    "Laptop": ("03642806", 28, 2), "Motorbike": ("03790512", 30, 6), "Mug": ("03797390", 36, 2),
    "Pistol": ("03948459", 38, 3), "Rocket": ("04099429", 41, 3), "Skateboard": ("04225987", 44, 3),
    "Table": ("04379243", 47, 3),
}
NUM_PARTS = 50
COLUMNS = 7
PACK_VERSION = 1


def category_parts(name: str) -> list[int]:
    _, first, count = CATEGORIES[name]
    return list(range(first, first + count))


def read_categories(root: Path) -> list[tuple[str, str]]:
    """(category, synset) pairs of synsetoffset2category.txt, in file order."""
    path = root / "synsetoffset2category.txt"
    if not path.is_file():
        raise DataSpecError(f"category list not found: {path}")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[0] not in CATEGORIES:
            raise DataSpecError(f"{path}:{n}: expected '<category> <synset>' with a ShapeNetPart category "
                                f"({', '.join(CATEGORIES)}), got {line.strip()!r}")
        out.append((fields[0], fields[1]))
    if not out:
        raise DataSpecError(f"{path} lists no category")
    return out


def list_path(root: Path, part: str) -> Path:
    return root / "train_test_split" / f"shuffled_{part}_file_list.json"


def read_split_list(root: Path, part: str, synsets: set[str]) -> list[str]:
    """``<synset>/<id>`` of every entry of the split's list whose synset is a listed category."""
    path = list_path(root, part)
    if not path.is_file():
        raise DataSpecError(f"split list not found: {path}")
    try:
        entries = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise DataSpecError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(entries, list):
        raise DataSpecError(f"{path}: expected a JSON list of 'shape_data/<synset>/<id>' entries")
    ids = []
    for e in entries:
        fields = e.split("/") if isinstance(e, str) else []
        if len(fields) != 3 or not fields[1] or not fields[2]:
            raise DataSpecError(f"{path}: malformed entry {e!r} (expected 'shape_data/<synset>/<id>')")
        if fields[1] in synsets:
            ids.append(f"{fields[1]}/{fields[2]}")
    return ids


def parse_part_file(path: Path, allowed: list[int], category: str) -> tuple[np.ndarray, np.ndarray]:
    """(xyz [n,3] float32, parts [n] int16) of one text file; SampleError naming it otherwise."""
    if not path.is_file():
        raise SampleError(f"{path}: file missing (listed in the split list)")
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        raise SampleError(f"{path}: empty file")
    vals = np.array(" ".join(lines).split(), dtype=np.float64) if lines else np.zeros(0)
    if vals.size != COLUMNS * len(lines):
        bad = next(n for n, ln in enumerate(lines, 1) if len(ln.split()) != COLUMNS)
        raise SampleError(f"{path}: line {bad} has {len(lines[bad - 1].split())} columns, expected "
                          f"{COLUMNS} (x y z nx ny nz part)")
    rows = vals.reshape(-1, COLUMNS)
    parts = rows[:, 6]
    lo, hi = allowed[0], allowed[-1]
    out = (parts != np.round(parts)) | (parts < lo) | (parts > hi)
    if out.any():
        n = int(np.argmax(out))
        raise SampleError(f"{path}: part id {parts[n]:g} on line {n + 1} is outside {category}'s parts {lo}-{hi}")
    if not np.isfinite(rows[:, :3]).all():
        raise SampleError(f"{path}: NaN/Inf coordinates")
    return rows[:, :3].astype(np.float32), parts.astype(np.int16)


def _cache_dir(root: Path) -> Path:
    """DIR/.i2p-cache when writable, else a per-DIR folder in the user's cache."""
    local = root / ".i2p-cache"
    if os.access(root, os.W_OK) or (local.is_dir() and os.access(local, os.W_OK)):
        return local
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "i2p" / "shapenetpart" / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]


def pack_path(root: Path, part: str) -> Path:
    h = hashlib.sha256(f"v{PACK_VERSION}".encode())
    for f in (root / "synsetoffset2category.txt", list_path(root, part)):
        h.update(f.read_bytes())
    return _cache_dir(root) / f"{part}-{h.hexdigest()[:16]}.npz"


def build_pack(root: Path, part: str, ids: list[str], cats: dict[str, str], path: Path) -> None:
    """Parse every file of ``ids`` once and write the pack (errors kept per shape)."""
    from tqdm.auto import tqdm

    pts, parts, offsets, errors = [], [], [0], []
    for sid in tqdm(ids, desc=f"parse shapenetpart {part}", disable=len(ids) < 500, leave=False):
        synset, name = sid.split("/")
        try:
            p, q = parse_part_file(root / synset / f"{name}.txt", category_parts(cats[synset]), cats[synset])
            errors.append("")
        except (SampleError, OSError, ValueError, UnicodeDecodeError) as err:
            p, q = np.zeros((0, 3), np.float32), np.zeros(0, np.int16)
            errors.append(str(err) if isinstance(err, SampleError) else f"{root / synset / name}.txt: {err}")
        pts.append(p)
        parts.append(q)
        offsets.append(offsets[-1] + len(p))
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, ids=np.asarray(ids, dtype=str), offsets=np.asarray(offsets, np.int64),
                 points=np.concatenate(pts) if pts else np.zeros((0, 3), np.float32),
                 parts=np.concatenate(parts) if parts else np.zeros(0, np.int16),
                 errors=np.asarray(errors, dtype=str))


class ShapeNetPartDataset(ListDataset):
    def __init__(self, root: Path, *, spec: str, split: str, num_points: int, seed: int) -> None:
        cats = read_categories(root)
        self.root = root
        self._cats = {syn: name for name, syn in cats}
        index = {syn: k for k, (_, syn) in enumerate(cats)}
        present = [p for p in ("train", "val", "test") if list_path(root, p).is_file()]
        self._parts_of = ("train", "val", "test") if split == "all" else (split,)
        if split == "all":
            self._parts_of = tuple(p for p in self._parts_of if p in present) or ("train",)
        self._lists = {p: read_split_list(root, p, set(index)) for p in self._parts_of}
        ids = [sid for p in self._parts_of for sid in self._lists[p]]
        super().__init__(spec=spec, split=split, num_points=num_points, seed=seed, ids=ids,
                         labels=[index[sid.split("/")[0]] for sid in ids], classes=[c for c, _ in cats],
                         present_splits=present)
        self.class_parts = [category_parts(c) for c, _ in cats]
        names = {pid: f"{c}/{k}" for c in CATEGORIES for k, pid in enumerate(category_parts(c))}
        self.part_names = [names[i] for i in range(NUM_PARTS)]
        self._packs: dict[str, dict[str, np.ndarray]] = {}
        self._where = {sid: (p, k) for p in self._parts_of for k, sid in enumerate(self._lists[p])}

    def _pack(self, part: str) -> dict[str, np.ndarray]:
        if part not in self._packs:
            path = pack_path(self.root, part)
            if not path.is_file():
                build_pack(self.root, part, self._lists[part], self._cats, path)
            with np.load(path) as z:
                self._packs[part] = {k: z[k] for k in z.files}
        return self._packs[part]

    def _raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        part, k = self._where[self._ids[i]]
        pack = self._pack(part)
        if pack["errors"][k]:
            raise SampleError(str(pack["errors"][k]))
        lo, hi = pack["offsets"][k], pack["offsets"][k + 1]
        return pack["points"][lo:hi].astype(np.float64), pack["parts"][lo:hi].astype(np.int64)


@register_reader("shapenetpart", splits=SPLITS_WITH_VAL)
def open_shapenetpart(arg: str, *, split: str, num_points: int, seed: int, spec: str) -> ShapeNetPartDataset:
    root = existing_path(arg, spec, want_dir=True)
    return ShapeNetPartDataset(root, spec=spec, split=split, num_points=num_points, seed=seed)
