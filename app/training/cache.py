"""Teacher-output cache: teacher logits/features stored on disk under a content-addressed key.

The key hashes the teacher's identity (weights or file bytes, the source settings that shape its
outputs, its architecture and tasks: see teachers.teacher_identity), the inputs it ran on and the
preprocessing, so a later job with the same teacher and data reuses the outputs without running
the teacher, and a job that would get different outputs never does. Each entry is a directory of
.npy files (written atomically as a whole); files above `memmap_bytes` are memory-mapped when read
instead of loaded.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from app.training.datasets.rowstore import DiskRows

# Bump when the way inputs reach a teacher, or what an identity covers, changes: old keys must
# not match. v2: identities cover output settings, architecture and tasks, not only the bytes.
PREPROCESSING = "float32-rows-v2"
MEMMAP_BYTES = 64 << 20

Tensors = dict[str, torch.Tensor]


def tensor_sha256(*tensors: torch.Tensor) -> str:
    """Return the sha256 of the tensors' shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for tensor in tensors:
        if isinstance(tensor, DiskRows):  # rows on disk: the store's own hash of their bytes
            digest.update(f"disk{tuple(tensor.shape)}{tensor.np_dtype.str}{tensor.sha256}{tensor.ops};".encode())
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tuple(tensor.shape)}{tensor.dtype};".encode())
        # reshape: a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def cache_key(*, teacher_identity: str, inputs_sha256: dict[str, str], extra: str = "") -> str:
    """Return the entry key for a teacher run over named input splits."""
    payload = json.dumps({"teacher": teacher_identity, "inputs": inputs_sha256,
                          "preprocessing": PREPROCESSING, "extra": extra}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class TeacherOutputCache:
    """Directory of cache entries: <directory>/<key>/<tensor name>.npy."""

    def __init__(self, directory: Path, *, memmap_bytes: int = MEMMAP_BYTES) -> None:
        self.directory = Path(directory)
        self.memmap_bytes = memmap_bytes
        self.mapped: set[str] = set()  # keys whose entries get() returned memory-mapped

    def get(self, key: str) -> Tensors | None:
        """Return the stored tensors of `key`, or None when there is no complete entry."""
        entry = self.directory / key
        if not (entry / "index.json").exists():
            return None
        names = json.loads((entry / "index.json").read_text())
        tensors = {}
        for index, name in enumerate(names):
            path = entry / f"{index}.npy"
            # "c" (copy-on-write) maps the file and still gives torch a writable array.
            mode = "c" if path.stat().st_size > self.memmap_bytes else None
            if mode:
                self.mapped.add(key)
            tensors[name] = torch.from_numpy(np.load(path, mmap_mode=mode, allow_pickle=False))
        return tensors

    def put(self, key: str, tensors: Tensors) -> None:
        """Store the tensors under `key`; a concurrent writer of the same key is harmless."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{key}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        names = list(tensors)
        for index, name in enumerate(names):  # file names by index: task names stay out of paths
            np.save(tmp / f"{index}.npy", tensors[name].detach().cpu().float().numpy(),
                    allow_pickle=False)
        (tmp / "index.json").write_text(json.dumps(names))
        try:
            os.replace(tmp, self.directory / key)
        except OSError:  # another job stored the same key first: its entry is identical
            shutil.rmtree(tmp, ignore_errors=True)
