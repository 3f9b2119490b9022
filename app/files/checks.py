"""Check an uploaded file's content for its purpose before it is accepted (no pickle, ever)."""

import json
import struct
import zipfile
from pathlib import Path
from typing import Any, Literal, get_args

from app.files.hf_check import check_hf_zip
from app.files.uploads import BadUpload

# The one list of upload purposes: the API's request/response models and OpenAPI enum use it too.
FilePurpose = Literal["dataset", "transfer_set", "teacher_weights", "teacher_onnx", "teacher_outputs",
                      "teacher_torchscript", "teacher_hf"]
PURPOSES: tuple[str, ...] = get_args(FilePurpose)
# Purposes whose files run code when the engine loads them: accepted only where the server allows it.
CODE_PURPOSES = {"teacher_torchscript": "DISTILLERY_ALLOW_TORCHSCRIPT"}
PICKLE_HINT = "pickle files (and torch.save checkpoints, which are pickles) run code when loaded and are refused"


def _looks_like_pickle(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _refuse_pickle_zip(path: Path) -> None:
    """torch.save writes a zip holding data.pkl; an .npz holds only .npy members."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith(".pkl") or "/data.pkl" in name:
                raise BadUpload(f"{PICKLE_HINT}: the archive holds {name!r}")


def _check_npz(path: Path, *, purpose: str) -> dict[str, Any]:
    import numpy as np

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            bad = [n for n in names if n.startswith("/") or ".." in n.split("/") or "\\" in n]
            if bad:
                raise BadUpload(f"archive member names leave the archive: {bad[:3]}")
            if archive.testzip() is not None:
                raise BadUpload("the archive is corrupt (a member fails its CRC check)")
        _refuse_pickle_zip(path)
        arrays: dict[str, Any] = {}
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                arr = npz[key]
                if not isinstance(arr, np.ndarray):  # a member that is not an .npy file
                    raise BadUpload(f"archive member {key!r} is not a .npy array")
                if arr.dtype == object:
                    raise BadUpload(f"array {key!r} holds Python objects; {PICKLE_HINT}")
                if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
                    raise BadUpload(f"array {key!r} has NaN or inf values")
                arrays[key] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
    except BadUpload:
        raise
    except Exception as exc:  # any parse failure of an untrusted archive is the file's fault
        raise BadUpload(f"not a readable .npz file: {type(exc).__name__}: {exc}") from exc
    if purpose in ("dataset", "transfer_set"):
        if "x" not in arrays:
            raise BadUpload("an .npz dataset needs an array named `x` (the inputs)")
        rows = arrays["x"]["shape"][0] if arrays["x"]["shape"] else 0
        if rows < 1:
            raise BadUpload("`x` has no rows")
        targets = [k for k in arrays if k.startswith("y_")]
        if purpose == "dataset" and not targets:
            raise BadUpload("an .npz dataset needs one target array per task, named `y_<task>`")
        if purpose == "transfer_set" and targets:
            raise BadUpload("a transfer set is inputs only; remove the `y_*` arrays")
        for key in targets + (["split"] if "split" in arrays else []):
            if not arrays[key]["shape"] or arrays[key]["shape"][0] != rows:
                raise BadUpload(f"`{key}` has {arrays[key]['shape'][:1]} rows, `x` has {rows}")
    elif purpose == "teacher_outputs" and not arrays:
        raise BadUpload("teacher outputs need one array of logits per task")
    return {"format": "npz", "arrays": arrays}


def _check_csv(path: Path) -> dict[str, Any]:
    import csv

    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header or any(not h.strip() for h in header):
                raise BadUpload("a CSV dataset needs a header row naming every column")
            if len(set(header)) != len(header):
                raise BadUpload("the CSV header repeats a column name")
            rows = 0
            for line_no, row in enumerate(reader, start=2):
                if len(row) != len(header):
                    raise BadUpload(f"CSV line {line_no} has {len(row)} fields, the header has {len(header)}")
                rows += 1
    except UnicodeDecodeError as exc:
        raise BadUpload("the CSV file is not UTF-8 text") from exc
    if rows == 0:
        raise BadUpload("the CSV file has no data rows")
    return {"format": "csv", "columns": header, "rows": rows}


def _check_parquet(path: Path) -> dict[str, Any]:
    """Columns, types, rows and row groups from the footer, never the rows (the dry run reads those)."""
    from app.training import TrainingError
    from app.training.datasets.parquet_parts import parquet_summary

    try:
        summary = parquet_summary(path)
    except TrainingError as exc:
        raise BadUpload(exc.message) from exc
    except Exception as exc:  # any parse failure of an untrusted footer is the file's fault
        raise BadUpload(f"not a readable Parquet file: {type(exc).__name__}: {exc}") from exc
    if summary["rows"] < 1:
        raise BadUpload("the Parquet file has no rows")
    return {"format": "parquet", **summary}


def _is_image_zip(path: Path, filename: str) -> bool:
    """A dataset zip is an images archive when it is named .zip or holds a .csv (an .npz holds only .npy)."""
    if filename.endswith(".zip"):
        return True
    if filename.endswith(".npz"):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.lower().endswith(".csv") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False  # the .npz check says what is wrong with it


def _check_image_zip(path: Path) -> dict[str, Any]:
    """Names, sizes and the CSV's `file` column, never the pixels (the dry run decodes those)."""
    from app.training import TrainingError, check_image_archive

    try:
        return check_image_archive(path)
    except TrainingError as exc:
        raise BadUpload(exc.message) from exc


def _check_safetensors(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        head = fh.read(8)
        if _looks_like_pickle(head) or head[:2] == b"PK":
            raise BadUpload(f"this is not a safetensors file; {PICKLE_HINT}")
        if len(head) < 8:
            raise BadUpload("truncated safetensors file")
        (header_len,) = struct.unpack("<Q", head)
        size = path.stat().st_size
        if header_len > min(size - 8, 100 << 20):
            raise BadUpload("not a safetensors file (its header length is impossible)")
        try:
            header = json.loads(fh.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadUpload("not a safetensors file (its header is not JSON)") from exc
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
    if 8 + header_len + end != size:
        raise BadUpload(f"truncated or padded safetensors file: expected {8 + header_len + end} bytes, got {size}")
    return {"format": "safetensors", "tensors": {k: {"shape": v["shape"], "dtype": v["dtype"]} for k, v in tensors.items()}}


def _check_torchscript(path: Path) -> dict[str, Any]:
    """A torch.jit.save archive: one top folder with code/, data.pkl and constants.pkl (read as a zip, never loaded).

    A plain torch.save checkpoint has data.pkl but no code/ and no constants.pkl, so it is refused here.
    """
    if not zipfile.is_zipfile(path):
        raise BadUpload(f"a teacher_torchscript must be a torch.jit.save archive (a zip); {PICKLE_HINT}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if archive.testzip() is not None:
                raise BadUpload("the archive is corrupt (a member fails its CRC check)")
    except zipfile.BadZipFile as exc:
        raise BadUpload(f"not a readable zip archive: {exc}") from exc
    bad = [n for n in names if n.startswith("/") or ".." in n.split("/") or "\\" in n]
    if bad:
        raise BadUpload(f"archive member names leave the archive: {bad[:3]}")
    tops = {n.split("/", 1)[0] for n in names}
    top = next(iter(tops)) if len(tops) == 1 else None
    needed = [f"{top}/data.pkl", f"{top}/constants.pkl"]
    if top is None or any(n not in names for n in needed) or not any(n.startswith(f"{top}/code/") for n in names):
        raise BadUpload("not a TorchScript archive (torch.jit.save writes one folder with code/, data.pkl and "
                        f"constants.pkl); torch.save checkpoints are pickles and refused: {PICKLE_HINT}")
    code = sorted(n[len(top) + 6:] for n in names if n.startswith(f"{top}/code/") and n.endswith(".py"))
    return {"format": "torchscript", "members": len(names), "code_files": code[:20]}


def _check_onnx(path: Path) -> dict[str, Any]:
    import onnx
    from onnx.external_data_helper import uses_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise BadUpload(f"not a readable ONNX model: {exc}") from exc
    external = [t.name for t in onnx.external_data_helper._get_all_tensors(model) if uses_external_data(t)]
    if external:
        raise BadUpload(f"ONNX models with external data files are refused (tensors {external[:3]}); "
                        "save the model with all tensors inside the .onnx file")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise BadUpload(f"the ONNX model does not pass onnx.checker: {str(exc).splitlines()[0]}") from exc
    return {"format": "onnx", "inputs": [i.name for i in model.graph.input],
            "outputs": [o.name for o in model.graph.output]}


def check_content(*, path: Path, purpose: str, filename: str) -> dict[str, Any]:
    """Return a summary of the file (format, arrays/columns/tensors) or raise BadUpload saying what is wrong."""
    with path.open("rb") as fh:
        head = fh.read(8)
    if not head:
        raise BadUpload("the file is empty")
    if _looks_like_pickle(head):
        raise BadUpload(PICKLE_HINT)
    lower = filename.lower()
    if purpose in ("dataset", "transfer_set", "teacher_outputs"):
        if head[:2] == b"PK":
            if purpose == "dataset" and _is_image_zip(path, lower):
                return _check_image_zip(path)
            return _check_npz(path, purpose=purpose)
        if purpose == "dataset" and head[:4] == b"PAR1":
            return _check_parquet(path)
        if purpose != "teacher_outputs" and lower.endswith(".csv"):
            return _check_csv(path)
        kinds = {"dataset": ", a .csv file, a .parquet file or a .zip of images", "transfer_set": " or a .csv file"}
        raise BadUpload(f"a {purpose} must be an .npz archive" + kinds.get(purpose, ""))
    if purpose == "teacher_weights":
        return _check_safetensors(path)
    if purpose == "teacher_onnx":
        return _check_onnx(path)
    if purpose == "teacher_torchscript":
        return _check_torchscript(path)
    if purpose == "teacher_hf":  # a zipped Hugging Face encoder: app/files/hf_check.py
        return check_hf_zip(path)
    raise BadUpload(f"unknown purpose {purpose!r}; one of {', '.join(PURPOSES)}")
