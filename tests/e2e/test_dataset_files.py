"""One dataset in several Parquet files over real HTTP: two parts uploaded, a job naming both in
`dataset.files` with `data_placement: "disk"` trained by a real worker; its report counts the
rows of both files."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app.auth import create_api_key
from app.client import Client
from app.config import Settings
from app.db import session_scope
from tests.procs import api_argv, env_for, free_port, running, wait_http, worker_argv

pytestmark = pytest.mark.slow


def _table(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3))
    return pd.DataFrame({"f0": x[:, 0], "f1": x[:, 1], "f2": x[:, 2],
                         "shop": rng.choice(["north", "south", "east"], size=n),
                         "band": np.digitize(x[:, 0] + x[:, 1], [-0.5, 0.5]),
                         "positive": (x[:, 2] > 0).astype(int)})


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_two_uploaded_parquet_parts_train_as_one_streamed_dataset(settings: Settings, tmp_path: Path) -> None:
    frame = _table(1000)
    paths = [tmp_path / "part-0.parquet", tmp_path / "part-1.parquet"]
    frame.iloc[:600].to_parquet(paths[0], index=False, row_group_size=200)
    frame.iloc[600:].to_parquet(paths[1], index=False, row_group_size=200)
    with session_scope(settings.resolved_database_url) as db:
        key = create_api_key(db=db, tenant_name="acme")[1]
    port = free_port()
    env = env_for(settings)
    with running(api_argv(port), env=env, log=tmp_path / "api.log"), \
            running(worker_argv("parts"), env=env, log=tmp_path / "worker.log"):
        wait_http(f"http://127.0.0.1:{port}/readyz")
        with Client(f"http://127.0.0.1:{port}", key) as client:
            ids = [client.upload(path, purpose="dataset").id for path in paths]
            spec = {
                "name": "parts",
                "dataset": {"files": ids},
                "tasks": [{"name": "band", "kind": "multiclass", "num_classes": 3},
                          {"name": "positive", "kind": "binary"}],
                "teachers": [{"name": "t", "tasks": ["band", "positive"], "source": {
                    "train": {"arch": {"type": "mlp", "hidden": [32]}, "epochs": 8, "lr": 0.01}}}],
                "student": {"type": "mlp", "trunk": [16], "head": []},
                "training": {"epochs": 4, "batch_size": 64, "lr": 0.01, "seed": 0,
                             "data_placement": "disk"},
                "export": ["safetensors"],
            }
            job = client.wait(client.submit(spec).id, poll=0.5, timeout=240)
            assert job.status == "succeeded", job
            results = client.results(job.id)
    rows = results["rows"]
    assert rows["train"] + rows["validation"] + rows["test"] == len(frame)  # both files' rows
    assert set(results["data_placement"].values()) == {"disk"}
    assert results["tasks"]["band"]["teacher"] > 0.7  # rows and labels line up across the files
