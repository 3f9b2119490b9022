"""Uploaded image zips: decoded in memory to (channels, H, W) in [0, 1], labels by the table rules,
and hostile archives (unsafe names, missing files, bombs) refused with invalid_data."""

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from app.training.datasets import images
from app.training.datasets.registry import load_dataset
from app.training.datasets.splits import DatasetSplits
from app.training.errors import TrainingError
from app.training.files import LocalFileResolver
from app.training.spec import DatasetSpec, JobSpec, TaskSpec

SHAPE = TaskSpec(name="shape", kind="multiclass", num_classes=3)
BRIGHT = TaskSpec(name="bright", kind="binary")
TASKS = [SHAPE, BRIGHT]
N = 40


def _image(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _pixels(n: int = N, *, rgb: bool = False) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (10, 12, 3) if rgb else (10, 12), dtype=np.uint8) for _ in range(n)]


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _labels_csv(files: list[str], *, split: list[str] | None = None) -> bytes:
    lines = ["file,shape,bright" + (",split" if split else "")]
    for index, name in enumerate(files):
        row = f"{name},{['circle', 'square', 'star'][index % 3]},{index % 2}"
        lines.append(row + (f",{split[index]}" if split else ""))
    return ("\n".join(lines) + "\n").encode()


def _dataset_zip(tmp_path: Path, *, rgb: bool = False, split: list[str] | None = None,
                 extra: dict[str, bytes] | None = None) -> tuple[Path, list[np.ndarray]]:
    pixels = _pixels(rgb=rgb)
    files = [f"img/{index:03d}.{'jpg' if index % 5 == 0 else 'png'}" for index in range(N)]
    members = {name: _image(p, "JPEG" if name.endswith(".jpg") else "PNG") for name, p in zip(files, pixels)}
    members["labels.csv"] = _labels_csv(files, split=split)
    return _zip(tmp_path / "images.zip", {**members, **(extra or {})}), pixels


def _load(tmp_path: Path, name: str = "images.zip", *, channels: int | None = None,
          tasks: list[TaskSpec] = TASKS) -> DatasetSplits:
    fields = {"file": name, "format": "images", "image_size": [8, 8]}
    spec = DatasetSpec(**fields, **({"channels": channels} if channels else {}))
    return load_dataset(spec, tasks=tasks, resolver=LocalFileResolver(tmp_path))


def test_images_become_float_channels_first_with_labels_by_the_table_rules(tmp_path: Path) -> None:
    _dataset_zip(tmp_path)
    data = _load(tmp_path)
    assert data.x_train.shape == (32, 1, 8, 8) and data.x_test.shape == (8, 1, 8, 8)  # the 80/20 split
    assert data.x_train.dtype == torch.float32 and data.x_val is None
    both = torch.cat([data.x_train, data.x_test])
    assert both.min() >= 0 and both.max() <= 1 and both.std() > 0.1
    assert data.y_train["shape"].dtype == torch.int64 and set(data.y_train["shape"].tolist()) == {0, 1, 2}
    assert data.y_train["bright"].dtype == torch.float32 and set(data.y_train["bright"].tolist()) == {0.0, 1.0}
    assert "task 'shape': labels ['circle', 'square', 'star'] -> [0, 1, 2]" in data.notes


@pytest.mark.parametrize("channels", [1, 3])
def test_split_column_and_pixels_match_pillows_bilinear_resize(tmp_path: Path, channels: int) -> None:
    split = ["train"] * 30 + ["val"] * 4 + ["test"] * 6
    _, pixels = _dataset_zip(tmp_path, rgb=True, split=split)
    data = _load(tmp_path, channels=channels)
    assert data.x_train.shape == (30, channels, 8, 8)
    assert data.x_val is not None and data.x_val.shape == (4, channels, 8, 8) and len(data.x_test) == 6
    assert data.y_test["shape"].tolist() == [index % 3 for index in range(34, 40)]
    # the first test row is image 34 (a PNG: lossless), converted and resized as Pillow does it
    mode = "L" if channels == 1 else "RGB"
    expected = np.asarray(Image.fromarray(pixels[34]).convert(mode).resize((8, 8), Image.Resampling.BILINEAR),
                          dtype=np.float32) / 255
    expected = expected[None] if channels == 1 else expected.transpose(2, 0, 1)
    assert torch.allclose(data.x_test[0], torch.from_numpy(expected))


def test_missing_targets_drop_rows_and_a_repeated_file_is_decoded_once(tmp_path: Path) -> None:
    png = _image(_pixels(1)[0])
    rows = ["file,shape,bright", *(f"a.png,{['x', 'y', 'z'][i % 3]},{i % 2}" for i in range(19)), "a.png,,1"]
    _zip(tmp_path / "images.zip", {"a.png": png, "labels.csv": ("\n".join(rows) + "\n").encode()})
    data = _load(tmp_path)
    assert len(data.x_train) + len(data.x_test) == 19
    assert "dropped 1 of 20 rows with a missing target" in data.notes
    assert torch.equal(data.x_train[0], data.x_test[0])


def test_a_multilabel_task_reads_one_0_1_column_per_label(tmp_path: Path) -> None:
    rows = ["file,tags_0,tags_1,tags_2", *(f"a.png,{i % 2},1,0" for i in range(10))]
    _zip(tmp_path / "images.zip", {"a.png": _image(_pixels(1)[0]), "labels.csv": ("\n".join(rows) + "\n").encode()})
    data = _load(tmp_path, tasks=[TaskSpec(name="tags", kind="multilabel", num_classes=3)])
    assert data.y_train["tags"].shape == (8, 3) and data.y_train["tags"].dtype == torch.float32
    assert data.y_train["tags"][:, 1:].tolist() == [[1.0, 0.0]] * 8


@pytest.mark.parametrize("member", ["../evil.png", "/etc/evil.png", "C:/evil.png", "img\\..\\evil.png",
                                    "img/../../evil.png"])
def test_an_unsafe_member_name_refuses_the_archive(tmp_path: Path, member: str) -> None:
    _dataset_zip(tmp_path, extra={member: _image(_pixels(1)[0])})
    with pytest.raises(TrainingError, match="unsafe path") as err:
        _load(tmp_path)
    assert err.value.code == "invalid_data" and repr(member) in err.value.message


@pytest.mark.parametrize(("named", "words"), [
    ("../outside.png", "is not a path inside the archive"),
    ("OUTSIDE", "is not a path inside the archive"),  # an absolute path to a real file next to the zip
    ("img/missing.png", "is not in the archive"),
    ("labels.csv", "is not in the archive"),
])
def test_a_csv_row_naming_a_file_outside_or_missing_from_the_zip_is_refused(tmp_path: Path, named: str,
                                                                            words: str) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(_image(_pixels(1)[0]))  # the traversal's target exists: it must not be read
    named = str(outside) if named == "OUTSIDE" else named
    png = _image(_pixels(1)[0])
    rows = "file,shape,bright\nimg/a.png,circle,0\n" + f"{named},star,1\n"
    (tmp_path / "sub").mkdir()
    _zip(tmp_path / "sub" / "images.zip", {"img/a.png": png, "labels.csv": rows.encode()})
    with pytest.raises(TrainingError, match=words) as err:
        _load(tmp_path, "sub/images.zip")
    assert "CSV line 3" in err.value.message and err.value.code == "invalid_data"


def _understate_size(path: Path, member: str, size: int) -> None:
    """Rewrite the member's uncompressed size in its local header and central directory entry."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        offset, entry = archive.getinfo(member).header_offset, archive.start_dir
    struct.pack_into("<I", raw, offset + 22, size)  # local header: uncompressed size
    while raw[entry + 46:entry + 46 + struct.unpack_from("<H", raw, entry + 28)[0]] != member.encode():
        entry = raw.index(b"PK\x01\x02", entry + 4)  # the next central directory entry
    struct.pack_into("<I", raw, entry + 24, size)  # central directory: uncompressed size
    path.write_bytes(bytes(raw))


def test_bombs_are_refused_by_declared_and_by_actual_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_MEMBER_BYTES", 100_000)
    zeros = bytes(1_000_000)  # deflates to about 1 KB
    path = _zip(tmp_path / "images.zip", {"bomb.png": zeros, "labels.csv": _labels_csv(["bomb.png"] * 10)})
    assert zipfile.ZipFile(path).getinfo("bomb.png").compress_size < 5000
    with pytest.raises(TrainingError, match="'bomb.png' inflates to 1000000 bytes; the limit per member is 100000"):
        _load(tmp_path)
    # a header that understates the size: the bounded read stops at the declared size and fails the CRC
    _understate_size(path, "bomb.png", 5000)
    assert zipfile.ZipFile(path).getinfo("bomb.png").file_size == 5000
    with pytest.raises(TrainingError, match="'bomb.png' is corrupt or unsupported: Bad CRC-32") as err:
        _load(tmp_path)
    assert err.value.code == "invalid_data"
    # many members each under the cap, together over the total cap
    _dataset_zip(tmp_path)
    monkeypatch.setattr(images, "MAX_TOTAL_BYTES", 10_000)
    with pytest.raises(TrainingError, match="inflates to more than 10000 bytes"):
        _load(tmp_path)


@pytest.mark.parametrize("limit", [100, 50])  # 120 pixels: Pillow warns past the limit, fails past twice it
def test_pillows_pixel_guard_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    _dataset_zip(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(TrainingError, match=f"more pixels than the limit of {limit}"):
        _load(tmp_path)


def test_directory_decoded_size_csv_and_decoder_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _dataset_zip(tmp_path)
    monkeypatch.setattr(images, "MAX_MEMBERS", 10)
    with pytest.raises(TrainingError, match="the zip lists 41 members in [0-9]+ bytes; at most 10 members"):
        _load(tmp_path)
    monkeypatch.undo()
    monkeypatch.setattr(images, "MAX_DIRECTORY_BYTES", 1000)  # what zipfile parses, whatever the count says
    with pytest.raises(TrainingError, match="at most 500000 members in 1000 bytes"):
        _load(tmp_path)
    monkeypatch.undo()
    monkeypatch.setattr(images, "MAX_DECODED_BYTES", 40 * 64 * 4 - 1)
    with pytest.raises(TrainingError, match="use a smaller image_size"):
        _load(tmp_path)
    monkeypatch.undo()
    _dataset_zip(tmp_path, extra={"more.csv": b"file\n"})
    with pytest.raises(TrainingError, match="exactly one .csv member"):
        _load(tmp_path)
    _zip(tmp_path / "images.zip", {"a.png": _image(_pixels(1)[0]), "labels.csv": b"file,shape\na.png,x\n"})
    with pytest.raises(TrainingError, match=r"columns \['bright'\] are missing"):
        _load(tmp_path)
    _zip(tmp_path / "images.zip", {"a.png": b"GIF89a not really", "labels.csv": b"file,shape,bright\na.png,x,1\n"})
    with pytest.raises(TrainingError, match="'a.png' is not a readable PNG or JPEG"):
        _load(tmp_path)


def test_the_spec_fields_belong_to_their_format() -> None:
    spec = DatasetSpec(file="d.zip", format="images", image_size=[28, 28])
    assert spec.model_dump()["channels"] == 1  # the default is written back
    for bad, words in [({"format": "images"}, "image_size"),
                       ({"format": "images", "image_size": [8]}, "at least 2"),
                       ({"format": "images", "image_size": [8, 2000]}, "less than or equal to 1024"),
                       ({"format": "images", "image_size": [8, 8], "channels": 2}, "1 or 3"),
                       ({"format": "images", "image_size": [8, 8], "features": ["a"]}, "only for csv or parquet"),
                       ({"format": "csv", "channels": 3}, "only for images files"),
                       ({"format": "npz", "image_size": [8, 8]}, "only for images files")]:
        with pytest.raises(ValidationError, match=words):
            DatasetSpec(file="d.zip", **bad)


def test_a_cnn2d_student_trains_end_to_end_on_an_images_zip(tmp_path: Path) -> None:
    from app.training.loop import train

    path, _ = _dataset_zip(tmp_path, rgb=True)
    arch = {"type": "cnn2d", "channels": [4], "kernel_size": 3, "trunk": [8]}
    spec = JobSpec.model_validate({
        "name": "images", "dataset": {"file": str(path), "format": "images", "image_size": [8, 8], "channels": 3},
        "tasks": [SHAPE.model_dump(), BRIGHT.model_dump()],
        "teachers": [{"name": "t", "tasks": ["shape", "bright"],
                      "source": {"train": {"arch": arch, "epochs": 1, "batch_size": 16}}}],
        "student": arch, "training": {"epochs": 1, "batch_size": 16, "device": "cpu"},
        "baseline": False, "export": ["safetensors"]})
    results = train(spec, tmp_path / "work").results
    assert set(results["tasks"]) == {"shape", "bright"} and results["tasks"]["shape"]["student"] is not None
    assert results["rows"]["train"] + results["rows"]["validation"] == 32 and results["rows"]["test"] == 8
