"""Images zips over the API: a good one is kept and a job on it validates; hostile ones are a 400
that says why, and nothing is kept."""

import io
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.training.datasets import images

N = 30


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (10, 12), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def _good_members() -> dict[str, bytes]:
    rows = "".join(f"img/{i}.png,{['cat', 'dog'][i % 2]},{i % 3}\n" for i in range(N))
    return {**{f"img/{i}.png": _png(i) for i in range(N)}, "labels.csv": ("file,animal,size\n" + rows).encode()}


def _upload(client: TestClient, auth: dict, content: bytes, name: str = "pets.zip") -> httpx.Response:
    return client.post("/v1/files", headers=auth, data={"purpose": "dataset"}, files={"file": (name, content)})


@pytest.mark.parametrize("settings", ["sqlite", "postgres"], indirect=True)
def test_a_good_images_zip_is_kept_and_a_job_on_it_validates(client: TestClient, auth: dict,
                                                            settings: Settings) -> None:
    r = _upload(client, auth, _zip(_good_members()))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["meta"] == {"format": "images", "csv": "labels.csv", "columns": ["file", "animal", "size"],
                            "rows": N, "members": N + 1}
    arch = {"type": "cnn2d", "channels": [4], "kernel_size": 3, "trunk": [8]}
    spec = {"name": "pets", "dataset": {"file": body["id"], "format": "images", "image_size": [8, 8]},
            "tasks": [{"name": "animal", "kind": "binary"}, {"name": "size", "kind": "multiclass", "num_classes": 3}],
            "teachers": [{"name": "t", "tasks": ["animal", "size"], "source": {"train": {"arch": arch, "epochs": 1}}}],
            "student": arch, "training": {"epochs": 1, "batch_size": 8}, "export": ["safetensors"]}
    r = client.post("/v1/jobs/validate", json=spec, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["summary"]["dataset"]["input_shape"] == [1, 8, 8]
    assert r.json()["spec"]["dataset"]["channels"] == 1
    # a spec that the file cannot satisfy is a 422 from the dry run, naming the missing column
    spec["tasks"][0]["name"] = "colour"
    spec["teachers"][0]["tasks"][0] = "colour"
    r = client.post("/v1/jobs/validate", json=spec, headers=auth)
    assert r.status_code == 422 and "['colour'] are missing" in r.json()["detail"], r.text
    assert r.json()["errors"][0]["type"] == "invalid_data"


def _with_labels(rows: str, **extra: bytes) -> bytes:
    return _zip({"a.png": _png(0), "labels.csv": ("file,animal\n" + rows).encode(), **extra})


HOSTILE = {
    "member path traversal": (lambda: _with_labels("a.png,cat\n", **{"../../evil.png": _png(1)}), "unsafe path"),
    "absolute member path": (lambda: _with_labels("a.png,cat\n", **{"/tmp/evil.png": _png(1)}), "unsafe path"),
    "drive letter member": (lambda: _with_labels("a.png,cat\n", **{"C:/evil.png": _png(1)}), "unsafe path"),
    "CSV row with a traversal": (lambda: _with_labels("a.png,cat\n../../etc/passwd,dog\n"),
                                 "line 3: file '../../etc/passwd' is not a path inside the archive"),
    "CSV row naming a missing file": (lambda: _with_labels("a.png,cat\nb.png,dog\n"),
                                      "line 3: file 'b.png' is not in the archive"),
    "bomb": (lambda: _with_labels("a.png,cat\n", **{"bomb.png": bytes(1_000_000)}),
             "'bomb.png' inflates to 1000000 bytes; the limit per member is 100000"),
    "two CSVs": (lambda: _with_labels("a.png,cat\n", **{"more.csv": b"file\na.png\n"}), "exactly one .csv"),
    "no CSV": (lambda: _zip({"a.png": _png(0)}), "exactly one .csv member"),
    "no file column": (lambda: _zip({"a.png": _png(0), "labels.csv": b"path,animal\na.png,cat\n"}),
                       "`file` column"),
    "not a zip": (lambda: b"PK\x03\x04 and then nothing", "not a readable zip"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_hostile_images_zips_are_refused_and_nothing_is_kept(case: str, client: TestClient, auth: dict,
                                                             settings: Settings, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_MEMBER_BYTES", 100_000)  # the bomb's 1 MB of zeros deflates to ~1 KB
    make, words = HOSTILE[case]
    r = _upload(client, auth, make())
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert words in r.json()["detail"], r.json()["detail"]
    assert client.get("/v1/files", headers=auth).json()["data"] == []
    assert not [p for p in settings.files_dir.rglob("*") if p.is_file()]  # not kept, not extracted
    assert not (tmp_path / "evil.png").exists()
