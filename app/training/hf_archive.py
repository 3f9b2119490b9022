"""A Hugging Face checkpoint uploaded as a zip: checked from the zip's index and headers, never by extracting.

The API's upload check (purpose `teacher_hf`) and the worker both call `check_hf_archive`; the worker
then extracts with `extract_hf_archive`, which re-runs the check (a file kept before a rule existed
meets it too) and copies only the files the loader reads, each under a fixed name.

What is refused, and why:
- a pickle: pytorch_model.bin, *.pkl, *.pt, *.pth, *.ckpt and any member whose first bytes are a
  pickle's or a zip's (torch.save writes zip-wrapped pickles) — loading one runs code;
- code: any *.py member, and a config.json with `auto_map` (transformers would import that code);
- a family transformers does not ship as an encoder (hf_config.HF_ENCODER_FAMILIES);
- a member whose name leaves the folder (`..`, an absolute path, a drive letter, a backslash), a
  symbolic link, an encrypted or a repeated member;
- a zip bomb: more than MAX_MEMBERS members, more than MAX_UNPACKED_BYTES declared in all, or a
  member over 1 MiB that claims to inflate more than MAX_RATIO times (weights barely compress; text
  files 3-10x). zipfile stops a member's output at its declared size and checks its CRC, and the
  extraction counts bytes too, so a lying header gains nothing;
- a config.json whose sizes do not match the tensor shapes of model.safetensors' header (read from
  the member, never the tensors).
Nothing here imports torch: the API process runs the check.
"""

import json
import re
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

from app.training.hf_config import (
    check_tensor_shapes,
    config_dims,
    hf_error,
    read_hf_config,
)

MAX_MEMBERS = 200
MAX_UNPACKED_BYTES = 8 << 30  # a BERT-large checkpoint with its tokenizer is about 1.4 GB
MAX_RATIO = 100
RATIO_FLOOR = 1 << 20  # members smaller than this may compress as well as they like
MAX_TEXT_BYTES = 64 << 20  # config, tokenizer and vocabulary files
MAX_HEADER_BYTES = 100 << 20  # a safetensors header (JSON) is kilobytes to a few megabytes
PICKLE_SUFFIXES = (".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib")
DATA_SUFFIXES = (".json", ".txt", ".md", ".model")  # config, tokenizer (sentencepiece .model), readme
DATA_NAMES = (".gitattributes", "LICENSE")
# The files the loader reads; only these are extracted, each under this very name.
EXTRACTED = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
             "special_tokens_map.json")
SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
PICKLE_HINT = "pickle files (pytorch_model.bin, *.pt, *.ckpt, *.pkl) run code when loaded and are refused"
_DRIVE = re.compile(r"^[A-Za-z]:")


def _looks_like_pickle(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _member_names(infos: list[zipfile.ZipInfo]) -> tuple[dict[str, zipfile.ZipInfo], str]:
    """Check every member's name, kind and size; return the files by name and the one top folder ('' if none)."""
    if len(infos) > MAX_MEMBERS:
        raise hf_error(f"the zip has {len(infos)} members, more than {MAX_MEMBERS}: not a checkpoint folder",
                       "zip_bomb")
    files: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        name = info.filename
        parts = name.split("/")
        if (name.startswith("/") or "\\" in name or "\x00" in name or _DRIVE.match(name)
                or any(part in ("..", ".") for part in parts)):
            raise hf_error(f"zip member {name!r} leaves the checkpoint folder (absolute path, '..' or a "
                           "backslash); the whole zip is refused", "traversal")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise hf_error(f"zip member {name!r} is a symbolic link; links are refused", "traversal")
        if info.flag_bits & 0x1:
            raise hf_error(f"zip member {name!r} is encrypted", "invalid")
        if info.is_dir() or parts[0] == "__MACOSX":
            continue
        if name in files:
            raise hf_error(f"zip member {name!r} appears twice", "invalid")
        total += info.file_size
        if total > MAX_UNPACKED_BYTES:
            raise hf_error(f"the zip declares more than {MAX_UNPACKED_BYTES} bytes once unpacked", "zip_bomb")
        if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise hf_error(f"zip member {name!r} inflates {info.file_size} bytes from {info.compress_size} "
                           f"(over {MAX_RATIO}x): refused as a zip bomb", "zip_bomb")
        base = parts[-1]
        if base.endswith(PICKLE_SUFFIXES):
            raise hf_error(f"zip member {name!r}: {PICKLE_HINT}; save the model with "
                           "save_pretrained(..., safe_serialization=True)", "pickle")
        if base.endswith(".py"):
            raise hf_error(f"zip member {name!r} is Python code: a checkpoint's code is never run (custom "
                           "models are refused; use a family transformers ships)", "remote_code")
        if base.endswith(".safetensors") and base != "model.safetensors":
            raise hf_error(f"zip member {name!r}: give the weights as one model.safetensors (sharded "
                           "checkpoints are not accepted)", "invalid")
        if not (base == "model.safetensors" or base.endswith(DATA_SUFFIXES) or base in DATA_NAMES):
            raise hf_error(f"zip member {name!r} is not part of an encoder checkpoint; a teacher_hf zip holds "
                           "config.json, model.safetensors and tokenizer files (.json, .txt, .model)", "invalid")
        files[name] = info
    tops = {name.split("/", 1)[0] for name in files if "/" in name}
    top = ""
    if "config.json" not in files and len(tops) == 1 and all("/" in name for name in files):
        top = next(iter(tops)) + "/"  # a zipped folder: my-model/config.json, ...
    return files, top


def _read_head(archive: zipfile.ZipFile, info: zipfile.ZipInfo, size: int) -> bytes:
    with archive.open(info) as fh:
        return fh.read(size)


def _safetensors_shapes(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> dict[str, list[int]]:
    """Read and check the header of model.safetensors from the zip member; return each tensor's shape."""
    with archive.open(info) as fh:
        head = fh.read(8)
        if _looks_like_pickle(head) or head[:2] == b"PK":
            raise hf_error(f"model.safetensors is not a safetensors file: {PICKLE_HINT}", "pickle")
        if len(head) < 8:
            raise hf_error("model.safetensors is truncated", "invalid")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(info.file_size - 8, MAX_HEADER_BYTES):
            raise hf_error("model.safetensors is not a safetensors file (its header length is impossible)",
                           "invalid")
        try:
            header = json.loads(fh.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise hf_error("model.safetensors is not a safetensors file (its header is not JSON)", "invalid") from exc
    if not isinstance(header, dict):
        raise hf_error("model.safetensors' header is not a JSON object", "invalid")
    shapes: dict[str, list[int]] = {}
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            if dtype not in SAFETENSORS_DTYPES or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise ValueError(f"dtype {dtype!r}, shape {shape!r}")
            count = 1
            for d in shape:
                count *= d
            if not (isinstance(start, int) and isinstance(end, int)) or end - start != count * SAFETENSORS_DTYPES[dtype]:
                raise ValueError(f"offsets {start}..{end} do not hold {shape} of {dtype}")
        except (KeyError, TypeError, ValueError) as exc:
            raise hf_error(f"model.safetensors' header entry {name!r} is malformed: {exc}", "invalid") from exc
        shapes[name] = list(shape)
        spans.append((start, end))
    spans.sort()
    position = 0
    for start, end in spans:
        if start != position:
            raise hf_error("model.safetensors' tensors overlap or leave gaps", "invalid")
        position = end
    if 8 + header_len + position != info.file_size:
        raise hf_error(f"model.safetensors is truncated or padded: its header describes {8 + header_len + position} "
                       f"bytes, the member has {info.file_size}", "invalid")
    return shapes


def check_hf_archive(path: Path) -> dict[str, Any]:
    """Check a teacher_hf zip from its index and headers; return a summary or raise HFCheckpointError."""
    try:
        with zipfile.ZipFile(path) as archive:
            files, top = _member_names(archive.infolist())
            for name in ("config.json", "model.safetensors"):
                if top + name not in files:
                    pickles = "" if name != "model.safetensors" else " (pytorch_model.bin is refused: a pickle)"
                    raise hf_error(f"the zip has no {name}{pickles}; it holds config.json, model.safetensors and "
                                   "tokenizer files at its top (or in one folder)", "invalid")
            tokenizer = next((n for n in ("tokenizer.json", "vocab.txt") if top + n in files), None)
            if tokenizer is None:
                raise hf_error("the zip has no tokenizer: give tokenizer.json (or a WordPiece vocab.txt)", "invalid")
            for name, info in files.items():
                if name == top + "model.safetensors":
                    continue
                if info.file_size > MAX_TEXT_BYTES:
                    raise hf_error(f"zip member {name!r} is {info.file_size} bytes, over the {MAX_TEXT_BYTES} "
                                   "bytes allowed for a config or tokenizer file", "zip_bomb")
                head = _read_head(archive, info, 8)
                if _looks_like_pickle(head) or head[:4] == b"PK\x03\x04":
                    raise hf_error(f"zip member {name!r} is a pickle or an archive, not text: {PICKLE_HINT}",
                                   "pickle")
            config = read_hf_config(_read_head(archive, files[top + "config.json"], MAX_TEXT_BYTES))
            shapes = _safetensors_shapes(archive, files[top + "model.safetensors"])
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                if top + name in files:
                    try:
                        json.loads(_read_head(archive, files[top + name], MAX_TEXT_BYTES))
                    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                        raise hf_error(f"{name} is not JSON: {exc}", "invalid") from exc
    except (zipfile.BadZipFile, zlib.error) as exc:  # includes a member whose CRC or size does not match
        raise hf_error(f"not a readable zip archive: {exc}", "invalid") from exc
    except (EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        raise hf_error(f"not a readable zip archive: {type(exc).__name__}: {exc}", "invalid") from exc
    check_tensor_shapes(config, shapes)
    dims = config_dims(config)
    return {"format": "hf_zip", "model_type": config["model_type"], "tokenizer": tokenizer,
            "layers": dims["layers"], "hidden_size": dims["hidden"], "vocab_size": dims["vocab"],
            "tensors": len(shapes), "params": sum(_count(shape) for shape in shapes.values())}


def _count(shape: list[int]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def extract_hf_archive(path: Path, dest: Path) -> Path:
    """Check the zip again, then copy the files the loader reads into `dest`, member by member; return `dest`.

    The files are written into a fresh folder next to `dest`, renamed into place when complete: a
    `dest` that exists is whole, and two jobs extracting the same upload at once do not mix their
    writes (the one that renames second keeps the first's folder).
    """
    check_hf_archive(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    try:
        with zipfile.ZipFile(path) as archive:
            files, top = _member_names(archive.infolist())
            for name in EXTRACTED:
                info = files.get(top + name)
                if info is not None:  # a fixed name: nothing from the member's own name reaches the disk
                    _copy_member(archive, info, staging / name)
        try:
            staging.rename(dest)  # replaces an empty `dest`; a non-empty one is another job's, whole
        except OSError:
            if not (dest / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    written = 0
    try:
        with archive.open(info) as src, target.open("wb") as out:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > info.file_size:  # zipfile stops at the declared size; counted anyway
                    raise hf_error(f"zip member {info.filename!r} inflates past its declared size", "zip_bomb")
                out.write(chunk)
    except (zipfile.BadZipFile, zlib.error) as exc:  # the member's data changed under its header
        raise hf_error(f"zip member {info.filename!r} is corrupt: {exc}", "invalid") from exc
