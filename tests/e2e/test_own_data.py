"""A new user's own data over real HTTP: a CSV dataset and an ONNX teacher exported in the test,
uploaded, distilled by a real worker; student.onnx and student.safetensors agree with each other
and with the job's reported metrics."""

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from app.auth import create_api_key
from app.client import Client
from app.config import Settings
from app.db import session_scope
from app.training.datasets.uploaded import load_table_dataset
from app.training.export import load_student
from app.training.spec import JobSpec
from tests.procs import api_argv, env_for, free_port, running, wait_http, worker_argv

pytestmark = pytest.mark.slow


def _table(n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4))
    cls = np.array(["low", "mid", "high"])[np.digitize(x[:, 0] + 0.5 * x[:, 1], [-0.5, 0.5])]
    return pd.DataFrame({"f0": x[:, 0], "f1": x[:, 1], "f2": x[:, 2], "f3": x[:, 3], "band": cls,
                         "positive": (x[:, 2] > 0).astype(int)})


class Teacher(torch.nn.Module):
    """A teacher trained elsewhere on the raw feature columns f0..f3."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU())
        self.band, self.positive = torch.nn.Linear(32, 3), torch.nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.band(h), self.positive(h)


def _fit_teacher(frame: pd.DataFrame) -> Teacher:
    torch.manual_seed(0)
    x = torch.tensor(frame[["f0", "f1", "f2", "f3"]].to_numpy(), dtype=torch.float32)
    band = torch.tensor(pd.Categorical(frame["band"], categories=["high", "low", "mid"]).codes, dtype=torch.long)
    pos = torch.tensor(frame["positive"].to_numpy(), dtype=torch.float32)
    teacher = Teacher()
    opt = torch.optim.Adam(teacher.parameters(), lr=0.01)
    for _ in range(300):
        b, p = teacher(x)
        loss = torch.nn.functional.cross_entropy(b, band) + torch.nn.functional.binary_cross_entropy_with_logits(p[:, 0], pos)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return teacher.eval()


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_csv_dataset_and_onnx_teacher_to_a_student(settings: Settings, tmp_path: Path) -> None:
    frame = _table()
    csv_path = tmp_path / "data.csv"
    frame.to_csv(csv_path, index=False)
    onnx_path = tmp_path / "teacher.onnx"
    torch.onnx.export(_fit_teacher(frame), (torch.zeros(1, 4),), str(onnx_path), input_names=["x"],
                      output_names=["band", "positive"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
    with session_scope(settings.resolved_database_url) as db:
        key = create_api_key(db=db, tenant_name="acme")[1]
    port = free_port()
    env = env_for(settings)
    with running(api_argv(port), env=env, log=tmp_path / "api.log"), \
            running(worker_argv("own-data"), env=env, log=tmp_path / "worker.log"):
        wait_http(f"http://127.0.0.1:{port}/readyz")
        with Client(f"http://127.0.0.1:{port}", key) as client:
            data_id = client.upload(csv_path, purpose="dataset").id
            teacher_id = client.upload(onnx_path, purpose="teacher_onnx").id
            spec = {
                "name": "own-data",
                "dataset": {"file": data_id, "format": "csv", "features": ["f0", "f1", "f2", "f3"],
                            "standardize": False},
                "tasks": [{"name": "band", "kind": "multiclass", "num_classes": 3},
                          {"name": "positive", "kind": "binary"}],
                "teachers": [{"name": "external", "tasks": ["band", "positive"], "source": {"onnx": {"file": teacher_id}}}],
                "student": {"type": "mlp", "trunk": [16], "head": []},
                "training": {"epochs": 20, "batch_size": 64, "lr": 0.01, "seed": 0},
                "export": ["safetensors", "onnx"],
            }
            summary = client._request("POST", "/v1/jobs/validate", json=spec).json()["summary"]
            assert summary["dataset"]["input_shape"] == [4]
            job = client.wait(client.submit(spec).id, poll=0.5, timeout=240)
            assert job.status == "succeeded", job
            results = client.results(job.id)
            client.download_all(job.id, tmp_path / "out")
    data = load_table_dataset(csv_path, fmt="csv", tasks=JobSpec.model_validate(spec).tasks,
                              targets={"band": "band", "positive": "positive"}, features=["f0", "f1", "f2", "f3"],
                              split_column=None, standardize=False)
    torch_out = {k: v.detach().numpy() for k, v in load_student(tmp_path / "out")(data.x_test).items()}
    session = ort.InferenceSession(str(tmp_path / "out" / "student.onnx"))
    onnx_out = dict(zip(["band", "positive"], session.run(["band", "positive"], {"x": data.x_test.numpy()})))
    for task in ("band", "positive"):
        assert np.abs(torch_out[task] - onnx_out[task]).max() <= 1e-4
    accuracy = float((torch_out["band"].argmax(1) == data.y_test["band"].numpy()).mean())
    assert accuracy == pytest.approx(results["tasks"]["band"]["student"], abs=1e-6)
    assert results["tasks"]["band"]["teacher"] > 0.8  # the uploaded teacher was really used
