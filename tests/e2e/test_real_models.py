"""The models of the field over real HTTP, a real API process and a real Celery worker:
- an images zip (PNG files + labels CSV) uploaded and distilled resnet -> resnet with augmentation
  and online teachers;
- a slice of the real census-income data uploaded as a CSV with integer-coded categorical columns,
  distilled MMoE -> MMoE on embedding tables.
Each student is downloaded; student.onnx and student.safetensors agree on the job's own test rows,
and the torch student reproduces the accuracy the job reported."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from PIL import Image

from app.auth import create_api_key
from app.client import Client
from app.config import Settings
from app.db import session_scope
from app.training.datasets import census
from app.training.datasets.images import load_images_dataset
from app.training.datasets.uploaded import load_table_dataset
from app.training.export import load_student
from app.training.spec import JobSpec
from tests.procs import api_argv, env_for, free_port, running, wait_http, worker_argv

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # real jobs on a shared 2-core box
STRIPES = ("none", "horizontal", "vertical")


def _image(i: int, rng: np.random.Generator) -> tuple[bytes, int, int]:
    """A 16x16 grey image: stripes of one orientation (or none) over noise, bright or dark."""
    stripe, bright = i % 3, (i // 3) % 2
    pixels = rng.normal(70 + 100 * bright, 20, (16, 16))
    if stripe == 1:
        pixels[::4, :] += 80
    elif stripe == 2:
        pixels[:, ::4] += 80
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue(), stripe, bright


def _images_zip(path: Path, n: int = 240) -> None:
    rng = np.random.default_rng(0)
    rows = ["file,stripes,bright,split"]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for i in range(n):
            data, stripe, bright = _image(i, rng)
            archive.writestr(f"images/{i:04d}.png", data)
            rows.append(f"images/{i:04d}.png,{STRIPES[stripe]},{bright},{'test' if i % 5 == 0 else 'train'}")
        archive.writestr("labels.csv", "\n".join(rows) + "\n")


def _census_slice(path: Path, rows: int = 1500) -> list[str]:
    """The first rows of the shipped train and test CSVs as one table with named columns and a
    split column; returns the nominal columns that pandas reads as numbers (integer codes)."""
    frames = []
    for split, csv in census.census_csv_paths().items():
        frame = pd.read_csv(csv, header=None, nrows=rows if split == "train" else rows // 3,
                            skipinitialspace=True)
        frame.columns = [f"c{i}" for i in range(frame.shape[1])]
        frame["income"] = (frame[f"c{census.INCOME}"] == "50000+.").astype(int)
        frame["never_married"] = (frame[f"c{census.MARITAL}"] == "Never married").astype(int)
        frame["split"] = split
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(path, index=False)
    return [f"c{c}" for c in census.NOMINAL if pd.api.types.is_numeric_dtype(table[f"c{c}"])]


def _run(settings: Settings, tmp_path: Path, upload: Path, spec_for) -> tuple[dict, dict]:
    """Upload the file, submit the job it makes, wait, download; return (spec, results)."""
    with session_scope(settings.resolved_database_url) as db:
        key = create_api_key(db=db, tenant_name="acme")[1]
    port = free_port()
    env = env_for(settings)
    with running(api_argv(port), env=env, log=tmp_path / "api.log"), \
            running(worker_argv("real-models"), env=env, log=tmp_path / "worker.log"):
        wait_http(f"http://127.0.0.1:{port}/readyz")
        with Client(f"http://127.0.0.1:{port}", key) as client:
            spec = spec_for(client.upload(upload, purpose="dataset").id)
            client.validate(spec)
            job = client.wait(client.submit(spec).id, poll=0.5, timeout=600)
            assert job.status == "succeeded", job
            results = client.results(job.id)
            client.download_all(job.id, tmp_path / "out")
    return spec, results


def _onnx_matches_torch(out: Path, x: torch.Tensor, tasks: list[str]) -> dict[str, np.ndarray]:
    torch_out = {k: v.detach().numpy() for k, v in load_student(out)(x).items()}
    session = ort.InferenceSession(str(out / "student.onnx"))
    onnx_out = dict(zip(tasks, session.run(tasks, {"x": x.numpy()})))
    for task in tasks:
        assert np.abs(torch_out[task] - onnx_out[task]).max() <= 1e-4, task
    return torch_out


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_an_images_zip_distilled_resnet_to_resnet_with_augmentation(settings: Settings, tmp_path: Path) -> None:
    archive = tmp_path / "stripes.zip"
    _images_zip(archive)
    tasks = [{"name": "stripes", "kind": "multiclass", "num_classes": 3}, {"name": "bright", "kind": "binary"}]

    def spec_for(file_id: str) -> dict:
        return {
            "name": "stripes", "tasks": tasks,
            "dataset": {"file": file_id, "format": "images", "image_size": [16, 16]},
            "teachers": [{"name": "t", "tasks": ["stripes", "bright"], "source": {"train": {
                "arch": {"type": "resnet", "channels": [8, 16], "blocks": [1, 1], "trunk": [16]},
                "epochs": 8, "batch_size": 32, "lr": 0.01}}}],
            "student": {"type": "resnet", "channels": [4], "blocks": [1], "trunk": [8]},
            "distillation": {"strategy": "task_kd", "temperature": 2.0, "alpha": 0.5, "online": True},
            "training": {"epochs": 6, "batch_size": 32, "lr": 0.01, "seed": 0,
                         "augment": {"crop_padding": 2, "flip": True}},
            "export": ["safetensors", "onnx"],
        }

    spec, results = _run(settings, tmp_path, archive, spec_for)
    assert results["tasks"]["stripes"]["teacher"] > 0.6  # the in-job teacher learnt the stripes
    data = load_images_dataset(archive, tasks=JobSpec.model_validate(spec).tasks, image_size=(16, 16), channels=1)
    assert tuple(data.x_test.shape[1:]) == (1, 16, 16)
    out = _onnx_matches_torch(tmp_path / "out", data.x_test, ["stripes", "bright"])
    accuracy = float((out["stripes"].argmax(1) == data.y_test["stripes"].numpy()).mean())
    assert accuracy == pytest.approx(results["tasks"]["stripes"]["student"], abs=1e-6)


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_a_census_income_slice_distilled_mmoe_to_mmoe_on_embeddings(settings: Settings, tmp_path: Path) -> None:
    table = tmp_path / "census.csv"
    codes = _census_slice(table)
    assert "c2" in codes and "c3" in codes  # industry and occupation codes are numbers in the file
    features = [f"c{c}" for c in sorted((*census.NUMERIC, *census.NOMINAL))]
    tasks = [{"name": "income", "kind": "binary"}, {"name": "never_married", "kind": "binary"}]

    def spec_for(file_id: str) -> dict:
        return {
            "name": "census-slice", "tasks": tasks,
            "dataset": {"file": file_id, "format": "csv", "features": features, "categorical": codes,
                        "split_column": "split"},
            "teachers": [{"name": "mmoe", "tasks": ["income", "never_married"], "source": {"train": {
                "arch": {"type": "mmoe", "experts": 4, "expert": [32], "head": [8]},
                "epochs": 4, "batch_size": 128, "lr": 0.003}}}],
            "student": {"type": "mmoe", "experts": 2, "expert": [8], "head": [4]},
            "distillation": {"strategy": "task_kd", "temperature": 2.0, "alpha": 0.5},
            "training": {"epochs": 4, "batch_size": 128, "lr": 0.003, "seed": 0},
            "export": ["safetensors", "onnx"],
        }

    spec, results = _run(settings, tmp_path, table, spec_for)
    config = json.loads((tmp_path / "out" / "student.json").read_text())
    names = config["layout"]["names"]
    assert set(codes) <= set(names)  # integer-coded columns reached embedding tables
    assert len(names) == len(census.NOMINAL) and config["layout"]["numeric"] == len(census.NUMERIC)
    job = JobSpec.model_validate(spec)
    data = load_table_dataset(table, fmt="csv", tasks=job.tasks, targets={"income": "income",
                              "never_married": "never_married"}, features=features, split_column="split",
                              encoding="embedding", categorical=codes)
    out = _onnx_matches_torch(tmp_path / "out", data.x_test, ["income", "never_married"])
    for task in ("income", "never_married"):
        entry = results["tasks"][task]
        assert {"teacher", "student", "baseline"} <= set(entry)
        accuracy = float(((out[task][:, 0] > 0) == (data.y_test[task].numpy() > 0.5)).mean())
        assert accuracy == pytest.approx(entry["all"]["student"]["accuracy"], abs=1e-6)
    assert results["tasks"]["never_married"]["all"]["teacher"]["auc"] > 0.9
