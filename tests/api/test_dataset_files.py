"""`dataset.files` over HTTP: Parquet uploads (checked from their footer), each file of the list
tenant-checked and Parquet-checked with the field at fault, the same columns and types in every
file, the dry run's rows over all files, a file a queued job lists cannot be deleted, and a host
that shares no directory with the API reads every file of the list from the object store."""

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.db import session_scope
from app.files.refs import file_refs, file_resolver
from app.main import create_app
from app.models import File
from tests.api.test_s3_uploads import BUCKET, s3  # noqa: F401  (s3: uploads in a private moto bucket)
from tests.s3 import object_gets

ROWS = 300


def frame(n: int = ROWS, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    return pd.DataFrame({"a": a, "b": b, "color": rng.choice(["red", "blue"], size=n),
                         "y": (a + b > 0).astype(int)})


def parquet(table: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    return buf.getvalue()


def upload(client: TestClient, auth: dict, content: bytes, name: str, purpose: str = "dataset") -> str:
    r = client.post("/v1/files", headers=auth, data={"purpose": purpose}, files={"file": (name, content)})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def files_spec(files: list[str], **training: object) -> dict:
    return {"name": "parts", "dataset": {"files": files},
            "tasks": [{"name": "y", "kind": "binary"}],
            "teachers": [{"name": "t", "tasks": ["y"], "source": {
                "train": {"arch": {"type": "mlp", "hidden": [8]}, "epochs": 1}}}],
            "student": {"type": "mlp", "trunk": [4], "head": []}, "export": [],
            "training": {"epochs": 1, "batch_size": 32, "device": "cpu", **training}}


def test_file_refs_lists_every_dataset_file_with_its_field() -> None:
    spec = {"dataset": {"files": ["file_a", "file_b"]}, "transfer_set": {"file": "file_c"}}
    assert file_refs(spec) == [("body.dataset.files[0]", "file_a", "dataset"),
                               ("body.dataset.files[1]", "file_b", "dataset"),
                               ("body.transfer_set.file", "file_c", "transfer_set")]


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_parquet_uploads_are_checked_from_their_footer(client: TestClient, auth: dict) -> None:
    r = client.post("/v1/files", headers=auth, data={"purpose": "dataset"},
                    files={"file": ("p.parquet", parquet(frame()))})
    assert r.status_code == 201, r.text
    meta = r.json()["meta"]
    assert meta["format"] == "parquet" and meta["rows"] == ROWS and meta["row_groups"] == 1
    # pandas 3 writes text as large_string: the same Parquet column as string, named so
    assert meta["columns"] == {"a": "double", "b": "double", "color": "string", "y": "int64"}
    for content, why in ((parquet(frame())[:-40] + b"PAR1", "not a readable Parquet file"),
                         (parquet(frame().iloc[:0]), "has no rows")):
        r = client.post("/v1/files", headers=auth, data={"purpose": "dataset"},
                        files={"file": ("bad.parquet", content)})
        assert r.status_code == 400 and why in r.json()["detail"], r.text


@pytest.mark.parametrize("settings", ["sqlite", "postgres"], indirect=True)
@pytest.mark.parametrize("placement", ["auto", "disk"])
def test_the_dry_run_counts_the_rows_of_every_file(client: TestClient, auth: dict, placement: str) -> None:
    whole = frame()
    ids = [upload(client, auth, parquet(whole.iloc[a:b]), f"part-{a}.parquet")
           for a, b in ((0, 100), (100, 250), (250, ROWS))]
    r = client.post("/v1/jobs/validate", headers=auth, json=files_spec(ids, data_placement=placement))
    assert r.status_code == 200, r.text
    assert r.json()["spec"]["dataset"]["files"] == ids and r.json()["spec"]["dataset"]["format"] == "parquet"
    dataset = r.json()["summary"]["dataset"]
    assert dataset["train_rows"] + dataset["validation_rows"] + dataset["test_rows"] == ROWS
    r = client.post("/v1/jobs/validate", headers=auth, json=files_spec(ids[:1], data_placement=placement))
    dataset = r.json()["summary"]["dataset"]
    assert dataset["train_rows"] + dataset["validation_rows"] + dataset["test_rows"] == 100


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_each_file_is_checked_with_its_field(client: TestClient, auth: dict, other_auth: dict) -> None:
    good = upload(client, auth, parquet(frame()), "a.parquet")
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((4, 2)), y_y=np.zeros(4))
    cases = {
        "csv": (upload(client, auth, frame().to_csv(index=False).encode(), "d.csv"), "not_parquet"),
        "npz": (upload(client, auth, buf.getvalue(), "d.npz"), "not_parquet"),
        "theirs": (upload(client, other_auth, parquet(frame()), "b.parquet"), "unknown_file"),
        "missing": ("file_doesnotexist", "unknown_file"),
        "path": ("/etc/passwd", "unknown_file"),
        "purpose": (upload(client, auth, buf.getvalue(), "t.npz", purpose="teacher_outputs"), "wrong_purpose"),
        "lacking": (upload(client, auth, parquet(frame().drop(columns=["b"])), "c.parquet"),
                    "dataset_schema_mismatch"),
        "retyped": (upload(client, auth, parquet(frame().assign(y=frame()["y"].astype(float))), "e.parquet"),
                    "dataset_schema_mismatch"),
    }
    for name, (ref, kind) in cases.items():
        for path in ("/v1/jobs/validate", "/v1/jobs"):
            r = client.post(path, headers=auth, json=files_spec([good, ref]))
            assert r.status_code == 422, (name, r.text)
            errors = r.json()["errors"]
            assert [(e["field"], e["type"]) for e in errors] == [("body.dataset.files[1]", kind)], (name, errors)
    message = client.post("/v1/jobs/validate", headers=auth,
                          json=files_spec([good, cases["lacking"][0]])).json()["errors"][0]["message"]
    assert "lacks columns ['b'] (against body.dataset.files[0])" in message
    r = client.post("/v1/jobs/validate", headers=auth, json=files_spec([cases["csv"][0], good, cases["missing"][0]]))
    assert sorted((e["field"], e["type"]) for e in r.json()["errors"]) == [
        ("body.dataset.files[0]", "not_parquet"), ("body.dataset.files[2]", "unknown_file")]
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_file_a_queued_job_lists_cannot_be_deleted(client: TestClient, auth: dict, settings: Settings) -> None:
    ids = [upload(client, auth, parquet(frame().iloc[a:b]), f"p{a}.parquet") for a, b in ((0, 150), (150, ROWS))]
    r = client.post("/v1/jobs", headers=auth, json=files_spec(ids, data_placement="disk"))
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    for file_id in ids:
        r = client.delete(f"/v1/files/{file_id}", headers=auth)
        assert r.status_code == 409 and job_id in r.json()["detail"]
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code in (200, 202)
    assert all(client.delete(f"/v1/files/{file_id}", headers=auth).status_code == 204 for file_id in ids)


def test_the_upload_meta_and_the_engine_name_the_same_types(tmp_path: Path) -> None:
    """The API compares uploads' recorded columns; the engine compares the files themselves."""
    from app.files.checks import check_content
    from app.training.datasets.parquet_parts import parquet_summary

    path = tmp_path / "p.parquet"
    path.write_bytes(parquet(frame()))
    assert check_content(path=path, purpose="dataset", filename="p.parquet")["columns"] == \
        parquet_summary(path)["columns"]


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_another_host_resolves_every_file_from_the_object_store(s3: tuple[Settings, Path], auth: dict,  # noqa: F811
                                                                tmp_path: Path) -> None:
    settings, log = s3
    client = TestClient(create_app(), raise_server_exceptions=False)
    contents = [parquet(frame().iloc[:120]), parquet(frame().iloc[120:])]
    ids = [upload(client, auth, content, f"p{i}.parquet") for i, content in enumerate(contents)]
    r = client.post("/v1/jobs/validate", headers=auth, json=files_spec(ids, data_placement="disk"))
    assert r.status_code == 200, r.text
    dataset = r.json()["summary"]["dataset"]
    assert dataset["train_rows"] + dataset["validation_rows"] + dataset["test_rows"] == ROWS
    with session_scope(settings.resolved_database_url) as db:
        tenant = db.get(File, ids[0]).tenant_id
    host = settings.model_copy(update={"data_dir": tmp_path / "worker-host"})  # shares no directory
    resolver = file_resolver(settings=host, tenant_id=tenant, spec={"dataset": {"files": ids}})
    for file_id, content in zip(ids, contents, strict=True):
        path = resolver.resolve(file_id)
        assert path.parent == (tmp_path / "worker-host" / "file-cache").resolve()
        assert path.read_bytes() == content  # the sha256-keyed, verified copy
        assert object_gets(log, bucket=BUCKET, key=f"files/{tenant}/{file_id}") == 1
