"""Image datasets from an uploaded zip: PNG/JPEG members and one CSV naming each row's file and labels.

Layout: exactly one `.csv` member (any name and folder, e.g. `labels.csv`) with a header; its
`file` column holds a member path inside the zip, one column per task holds the labels (a
multilabel task: columns `<task>_0` .. `<task>_<K-1>` of 0/1), and an optional `split` column fixes
the split. Labels, missing targets and the split follow the table rules of uploaded.py.
Members under `__MACOSX/` (macOS Finder's resource forks) and folder entries are ignored.

Safety: the archive is never extracted. Member names are never trusted (a name with `..`, an
absolute path, a drive letter or a backslash refuses the whole archive), members are read into
memory one at a time with a read bounded by the caps below, and Pillow decodes PNG and JPEG only,
with its decompression-bomb guard (`Image.MAX_IMAGE_PIXELS`) turned from a warning into an error.
This module imports nothing heavy at the top: the upload check (app/files/checks.py) runs
`check_image_archive` in the API process, which never loads torch.
"""

import csv
import io
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.training.errors import TrainingError
from app.training.spec import TaskSpec

if TYPE_CHECKING:
    import numpy as np

    from app.training.datasets.splits import DatasetSplits

# Caps, in bytes of uncompressed data (module constants: tests shrink them). The upload limit
# (DISTILLERY_MAX_UPLOAD_BYTES, 2 GiB) bounds the compressed size; these bound what it inflates to.
MAX_MEMBER_BYTES = 256 * 1024**2  # one image or the CSV
MAX_TOTAL_BYTES = 2 * 1024**3  # all members together
# zipfile keeps about 500 bytes per member of the central directory in memory (measured): a 2 GiB
# upload of empty members would take ~13 GB before any size is seen. So the end record is read
# first: its member count, and the directory's size, which bounds what zipfile parses whatever
# the count says (an entry is 46 bytes and up, a real one 60-120 with its name and extras).
MAX_MEMBERS = 500_000
MAX_DIRECTORY_BYTES = 64 * 1024**2
MAX_DECODED_BYTES = 4 * 1024**3  # the float32 inputs: rows * channels * height * width * 4

FILE_COLUMN, SPLIT_COLUMN = "file", "split"
IMAGE_FORMATS = ("PNG", "JPEG")
IGNORED_PREFIX = "__MACOSX/"
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")


def _invalid(message: str) -> TrainingError:
    return TrainingError(code="invalid_data", message=message)


def unsafe_member_name(name: str) -> bool:
    """True for a path that could leave an extraction folder: `..`, absolute, drive letter, backslash."""
    return (name.startswith("/") or "\\" in name or "\x00" in name or bool(_DRIVE_LETTER.match(name))
            or ".." in name.split("/"))


@dataclass(frozen=True)
class ImageArchive:
    """The checked listing of an images zip: its file members by name and its one CSV."""

    members: dict[str, zipfile.ZipInfo]
    csv_name: str


def open_archive(path: Path) -> zipfile.ZipFile:
    """Open `path` as a zip after checking its member count (before zipfile lists every member)."""
    try:
        with path.open("rb") as fh:
            # The end-of-central-directory record, zip64 aware: private, but in zipfile since 2.x.
            end = zipfile._EndRecData(fh)
        if end is None:
            raise zipfile.BadZipFile("no end of central directory")
        count, directory = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]
        if count > MAX_MEMBERS or directory > MAX_DIRECTORY_BYTES:
            raise _invalid(f"the zip lists {count} members in {directory} bytes; at most {MAX_MEMBERS} "
                           f"members in {MAX_DIRECTORY_BYTES} bytes are accepted")
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise _invalid(f"not a readable zip archive: {exc}") from exc


def inspect_archive(archive: zipfile.ZipFile) -> ImageArchive:
    """Check member names, encryption and declared sizes; find the one CSV."""
    members: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in archive.infolist():
        name = info.filename
        if unsafe_member_name(name):
            raise _invalid(f"archive member {name!r} has an unsafe path (.., an absolute path, a drive "
                           "letter or a backslash); member paths must stay inside the archive")
        if info.is_dir() or name.startswith(IGNORED_PREFIX):
            continue
        if name in members:
            raise _invalid(f"the archive holds two members named {name!r}")
        if info.flag_bits & 0x1:
            raise _invalid(f"archive member {name!r} is encrypted; upload an unencrypted zip")
        if info.file_size > MAX_MEMBER_BYTES:
            raise _invalid(f"archive member {name!r} inflates to {info.file_size} bytes; the limit per "
                           f"member is {MAX_MEMBER_BYTES}")
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise _invalid(f"the archive inflates to more than {MAX_TOTAL_BYTES} bytes (the limit for all "
                           "members together)")
        members[name] = info
    tables = sorted(name for name in members if name.lower().endswith(".csv"))
    if len(tables) != 1:
        found = f"found {len(tables)}: {tables[:5]}" if tables else "found none"
        raise _invalid(f"an images zip needs exactly one .csv member (the `file` and label columns), {found}")
    return ImageArchive(members=members, csv_name=tables[0])


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """Return a member's bytes, reading at most MAX_MEMBER_BYTES + 1 whatever its header says."""
    try:
        with archive.open(info) as fh:
            data = fh.read(MAX_MEMBER_BYTES + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        # A header that understates the size ends the read early and fails the CRC check here.
        raise _invalid(f"archive member {info.filename!r} is corrupt or unsupported: {exc}") from exc
    if len(data) > MAX_MEMBER_BYTES:
        raise _invalid(f"archive member {info.filename!r} inflates past the limit of {MAX_MEMBER_BYTES} bytes")
    return data


def _named_member(value: Any, line: int, contents: ImageArchive) -> str:
    name = value.strip() if isinstance(value, str) else ""  # pandas gives a missing cell as NaN
    if not name:
        raise _invalid(f"CSV line {line}: the `{FILE_COLUMN}` column is empty")
    if unsafe_member_name(name):
        raise _invalid(f"CSV line {line}: file {name!r} is not a path inside the archive")
    if name not in contents.members or name == contents.csv_name:
        raise _invalid(f"CSV line {line}: file {name!r} is not in the archive")
    return name


def check_image_archive(path: Path) -> dict[str, Any]:
    """Cheaply check an uploaded images zip (names, sizes, the CSV's `file` column); return a summary."""
    with open_archive(path) as archive:
        contents = inspect_archive(archive)
        text = read_member(archive, contents.members[contents.csv_name])
    try:
        rows = list(csv.reader(io.StringIO(text.decode("utf-8-sig"), newline="")))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _invalid(f"{contents.csv_name} is not a readable UTF-8 CSV: {exc}") from exc
    header = rows[0] if rows else []
    if FILE_COLUMN not in header:
        raise _invalid(f"{contents.csv_name} needs a header with a `{FILE_COLUMN}` column (the image's "
                       f"path inside the zip); it has {header[:10]}")
    if len(rows) < 2:
        raise _invalid(f"{contents.csv_name} has no data rows")
    column = header.index(FILE_COLUMN)
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise _invalid(f"{contents.csv_name} line {line} has {len(row)} fields, the header has {len(header)}")
        _named_member(row[column], line, contents)
    return {"format": "images", "csv": contents.csv_name, "columns": header, "rows": len(rows) - 1,
            "members": len(contents.members)}


def _task_columns(task: TaskSpec) -> list[str]:
    if task.kind == "multilabel":
        return [f"{task.name}_{index}" for index in range(task.num_classes or 0)]
    return [task.name]


def _decode(data: bytes, name: str, *, mode: str, size: tuple[int, int]) -> "np.ndarray":
    """Decode one PNG/JPEG to float32 (channels, height, width) in [0, 1], resized bilinearly."""
    import numpy as np
    from PIL import Image

    height, width = size
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
                pixels = image.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _invalid(f"image {name!r} has more pixels than the limit of {Image.MAX_IMAGE_PIXELS} "
                           "(a decompression bomb?)") from exc
        except Exception as exc:  # any decoder failure of an untrusted file is the file's fault
            raise _invalid(f"image {name!r} is not a readable PNG or JPEG: {type(exc).__name__}: {exc}") from exc
    array = np.asarray(pixels, dtype=np.float32) / 255.0  # (H, W) or (H, W, 3)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _decode_rows(archive: zipfile.ZipFile, contents: ImageArchive, files: list[str], *, channels: int,
                 size: tuple[int, int]) -> "np.ndarray":
    """Return the images the rows name as (rows, channels, height, width) float32, one member at a time."""
    import numpy as np

    height, width = size
    decoded_bytes = len(files) * channels * height * width * 4
    if decoded_bytes > MAX_DECODED_BYTES:
        raise _invalid(f"{len(files)} images of {channels}x{height}x{width} take {decoded_bytes} bytes as "
                       f"float32, over the limit of {MAX_DECODED_BYTES}; use a smaller image_size")
    x = np.empty((len(files), channels, height, width), dtype=np.float32)
    first_row: dict[str, int] = {}  # a file named by several rows is read and decoded once
    for row, name in enumerate(files):
        if name in first_row:
            x[row] = x[first_row[name]]
            continue
        data = read_member(archive, contents.members[name])
        x[row] = _decode(data, name, mode="L" if channels == 1 else "RGB", size=size)
        first_row[name] = row
    return x


def load_images_dataset(path: Path, *, tasks: list[TaskSpec], image_size: tuple[int, int],
                        channels: int) -> "DatasetSplits":
    """Inputs (n, channels, height, width) float32 in [0, 1]; targets by uploaded.py's table rules."""
    import pandas as pd

    from app.training.datasets.uploaded import encode_labels, finish_splits, split_roles

    clash = [task.name for task in tasks if task.name in (FILE_COLUMN, SPLIT_COLUMN)]
    if clash:
        raise _invalid(f"task '{clash[0]}': `{FILE_COLUMN}` and `{SPLIT_COLUMN}` are reserved columns of an "
                       "images CSV; rename the task")
    with open_archive(path) as archive:
        contents = inspect_archive(archive)
        table = read_member(archive, contents.members[contents.csv_name])
        try:
            frame = pd.read_csv(io.BytesIO(table), dtype={FILE_COLUMN: str, SPLIT_COLUMN: str})
        except Exception as exc:  # pandas parse errors
            raise _invalid(f"{contents.csv_name} is not a readable CSV: {type(exc).__name__}: {exc}") from exc
        columns = {task.name: _task_columns(task) for task in tasks}
        missing = [c for c in [FILE_COLUMN, *(c for cols in columns.values() for c in cols)]
                   if c not in frame.columns]
        if missing:
            raise _invalid(f"{contents.csv_name}: columns {missing} are missing (it has: "
                           f"{', '.join(map(str, frame.columns))})")
        files = [_named_member(value, index + 2, contents) for index, value in enumerate(frame[FILE_COLUMN])]
        notes: list[str] = []
        keep = frame[[c for cols in columns.values() for c in cols]].notna().all(axis=1).to_numpy()
        if not keep.all():
            notes.append(f"dropped {int((~keep).sum())} of {len(frame)} rows with a missing target")
        frame, files = frame[keep].reset_index(drop=True), [f for f, k in zip(files, keep) if k]
        if not files:
            raise _invalid(f"{contents.csv_name} has no rows with every target")
        x = _decode_rows(archive, contents, files, channels=channels, size=image_size)
    encoded = {task.name: encode_labels(task, frame[columns[task.name]].to_numpy() if task.kind == "multilabel"
                                  else frame[task.name].to_numpy(), notes) for task in tasks}
    strat = next((encoded[t.name] for t in tasks if t.kind in ("multiclass", "binary")), None)
    split = frame[SPLIT_COLUMN].to_numpy() if SPLIT_COLUMN in frame.columns else None
    return finish_splits(x, encoded, split_roles(len(files), split, strat), notes)
