"""Uploads: good files of each purpose are kept; broken and hostile ones get a precise 400/413."""

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from app.config import Settings, get_settings
from app.main import create_app


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _safetensors(tmp_path: Path) -> bytes:
    save_file({"w": torch.randn(4, 3), "b": torch.zeros(4)}, str(tmp_path / "t.safetensors"))
    return (tmp_path / "t.safetensors").read_bytes()


def _onnx(tmp_path: Path, *, external: bool = False) -> bytes:
    import onnx

    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    path = tmp_path / "teacher.onnx"
    torch.onnx.export(model, (torch.zeros(1, 4),), str(path), input_names=["x"], output_names=["digit"], dynamo=False)
    if external:
        proto = onnx.load(str(path))
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="weights.bin", size_threshold=0)
    return path.read_bytes()


def _upload(client: TestClient, auth: dict, content: bytes, purpose: str, filename: str):  # noqa: ANN202
    return client.post("/v1/files", headers=auth, data={"purpose": purpose}, files={"file": (filename, content)})


GOOD_CSV = b"bill,flipper,species\n39.1,181,Adelie\n46.5,210,Gentoo\n"


@pytest.mark.parametrize("settings", ["sqlite", "postgres"], indirect=True)
def test_good_files_of_every_purpose_are_accepted(client: TestClient, auth: dict, tmp_path: Path,
                                                  settings: Settings) -> None:
    x = np.random.rand(20, 5).astype("float32")
    cases = [
        (_npz(x=x, y_digit=np.arange(20) % 10), "dataset", "d.npz", "npz"),
        (GOOD_CSV, "dataset", "penguins.csv", "csv"),
        (_npz(x=x), "transfer_set", "t.npz", "npz"),
        (_safetensors(tmp_path), "teacher_weights", "teacher.safetensors", "safetensors"),
        (_onnx(tmp_path), "teacher_onnx", "teacher.onnx", "onnx"),
        (_npz(digit=np.random.rand(20, 10).astype("float32")), "teacher_outputs", "outs.npz", "npz"),
    ]
    ids = []
    for content, purpose, name, fmt in cases:
        r = _upload(client, auth, content, purpose, name)
        assert r.status_code == 201, (purpose, r.text)
        body = r.json()
        assert body["meta"]["format"] == fmt and body["size"] == len(content)
        import hashlib

        assert body["sha256"] == hashlib.sha256(content).hexdigest()
        ids.append(body["id"])
        stored = [p for p in settings.files_dir.glob(f"*/{body['id']}")]
        assert len(stored) == 1 and stored[0].read_bytes() == content
    assert client.get("/v1/files", headers=auth).json()["data"][0]["id"] == ids[-1]
    assert client.get("/v1/files", params={"purpose": "teacher_onnx"}, headers=auth).json()["data"][0]["id"] == ids[4]
    onnx_meta = client.get(f"/v1/files/{ids[4]}", headers=auth).json()["meta"]
    assert onnx_meta["outputs"] == ["digit"]


def _truncated_npz() -> bytes:
    return _npz(x=np.random.rand(10, 3), y_a=np.zeros(10))[:-40]


def _traversal_npz() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("x.npy", _npy(np.zeros((3, 2))))
        archive.writestr("../../evil.npy", _npy(np.zeros(3)))
    return buf.getvalue()


def _zip_with(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _torch_save() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    return buf.getvalue()


BROKEN = {
    "rows disagree": (lambda p: _npz(x=np.zeros((10, 3)), y_a=np.zeros(9)), "dataset", "d.npz", "rows"),
    "NaN in inputs": (lambda p: _npz(x=np.full((4, 2), np.nan), y_a=np.zeros(4)), "dataset", "d.npz", "NaN"),
    "no targets": (lambda p: _npz(x=np.zeros((4, 2))), "dataset", "d.npz", "y_<task>"),
    "labels in a transfer set": (lambda p: _npz(x=np.zeros((4, 2)), y_a=np.zeros(4)), "transfer_set", "t.npz",
                                 "inputs only"),
    "truncated npz": (lambda p: _truncated_npz(), "dataset", "d.npz", "npz"),
    "archive path traversal": (lambda p: _traversal_npz(), "dataset", "d.npz", "leave the archive"),
    "member that is not .npy": (lambda p: _zip_with({"x.npy": _npy(np.zeros((3, 2))), "notes.txt": b"hi"}),
                                "dataset", "d.npz", "not a .npy array"),
    "object array": (lambda p: _npz(x=np.array([{"a": 1}] * 3, dtype=object), y_a=np.zeros(3)), "dataset", "d.npz",
                     "pickle"),
    "CSV with a missing column": (lambda p: b"a,b,c\n1,2,3\n4,5\n", "dataset", "d.csv", "line 3"),
    "CSV without rows": (lambda p: b"a,b\n", "dataset", "d.csv", "no data rows"),
    "pickle disguised as safetensors": (lambda p: pickle.dumps({"w": [1, 2]}), "teacher_weights",
                                        "teacher.safetensors", "pickle"),
    "torch.save checkpoint": (lambda p: _torch_save(), "teacher_weights", "teacher.pt", "pickle"),
    "truncated safetensors": (lambda p: _safetensors(p)[:-7], "teacher_weights", "t.safetensors", "truncated"),
    "ONNX with external data": (lambda p: _onnx(p, external=True), "teacher_onnx", "t.onnx", "external data"),
    "not ONNX": (lambda p: b"hello world, not a model", "teacher_onnx", "t.onnx", "ONNX"),
    "empty file": (lambda p: b"", "dataset", "d.npz", "empty"),
    "unknown purpose": (lambda p: GOOD_CSV, "weights", "d.csv", "purpose"),
}


@pytest.mark.parametrize("case", list(BROKEN))
@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_broken_files_are_refused_with_a_clear_message(case: str, client: TestClient, auth: dict, tmp_path: Path,
                                                       settings: Settings) -> None:
    make, purpose, name, words = BROKEN[case]
    r = _upload(client, auth, make(tmp_path), purpose, name)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert words.lower() in r.json()["detail"].lower(), r.json()["detail"]
    assert client.get("/v1/files", headers=auth).json()["data"] == []
    assert not list((settings.files_dir / ".incoming").glob("*"))  # nothing left behind
    assert not (tmp_path.parent / "evil.npy").exists()


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_oversized_upload_is_413_and_nothing_is_kept(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                                    auth: dict) -> None:
    monkeypatch.setenv("DISTILLERY_MAX_UPLOAD_BYTES", "1000")
    get_settings.cache_clear()
    client = TestClient(create_app(), raise_server_exceptions=False)
    big = _npz(x=np.zeros((100, 10)), y_a=np.zeros(100))
    r = _upload(client, auth, big, "dataset", "big.npz")
    assert r.status_code == 413 and "1000 bytes" in r.json()["detail"]

    # streamed in chunks without a Content-Length: the limit is enforced while the bytes arrive
    body = (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\ndataset\r\n--b\r\n'
            b'Content-Disposition: form-data; name="file"; filename="x.npz"\r\n\r\n' + big + b"\r\n--b--\r\n")
    r = client.post("/v1/files", headers={**auth, "Content-Type": "multipart/form-data; boundary=b"},
                    content=iter([body[i:i + 512] for i in range(0, len(body), 512)]))
    assert r.status_code == 413
    assert client.get("/v1/files", headers=auth).json()["data"] == []
    assert not list((settings.files_dir / ".incoming").glob("*"))


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_files_are_tenant_scoped_and_in_use_files_cannot_be_deleted(client: TestClient, auth: dict, other_auth: dict,
                                                                    settings: Settings) -> None:
    file_id = _upload(client, auth, GOOD_CSV, "dataset", "d.csv").json()["id"]
    for method in ("GET", "DELETE"):
        assert client.request(method, f"/v1/files/{file_id}", headers=other_auth).status_code == 404
    assert client.get("/v1/files", headers=other_auth).json()["data"] == []
    # a queued job that names the file holds it
    from app.db import session_scope
    from app.models import Job, Tenant

    with session_scope(settings.resolved_database_url) as db:
        tenant = db.query(Tenant).filter(Tenant.name == "acme").one()
        db.add(Job(tenant_id=tenant.id, name="uses-file", spec={"dataset": {"file": file_id}}, spec_sha256="0" * 64))
        db.commit()
    r = client.delete(f"/v1/files/{file_id}", headers=auth)
    assert r.status_code == 409 and "active job" in r.json()["detail"]
    with session_scope(settings.resolved_database_url) as db:
        db.query(Job).update({"status": "cancelled"})
        db.commit()
    assert client.delete(f"/v1/files/{file_id}", headers=auth).status_code == 204
    assert client.get(f"/v1/files/{file_id}", headers=auth).status_code == 404


def test_missing_file_part_and_wrong_content_type(client: TestClient, auth: dict) -> None:
    r = client.post("/v1/files", headers=auth, data={"purpose": "dataset"}, files={"other": ("a", b"x")})
    assert r.status_code == 400
    r = client.post("/v1/files", headers={**auth, "Content-Type": "application/json"}, content=json.dumps({}))
    assert r.status_code == 400 and "multipart/form-data" in r.json()["detail"]
