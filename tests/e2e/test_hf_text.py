"""A user's own Hugging Face teacher over real HTTP: a tiny BERT made here with transformers, zipped and
uploaded as teacher_hf, a CSV of review texts, a job on a real worker, and a downloaded student that
answers raw strings (torch and ONNX agree) with the uploaded checkpoint's tokenizer."""

import random
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
from app.training.export import load_student
from app.training.hf_encoder import load_hf_encoder
from tests.hf_zips import save_tiny_bert, zip_folder
from tests.procs import api_argv, env_for, free_port, running, wait_http, worker_argv

pytestmark = pytest.mark.slow

ITEMS = ["dress", "jeans", "sweater"]
GOOD, BAD = ["lovely", "great", "soft"], ["awful", "itchy", "torn"]
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "this", "is", "and", "the", "fit", "ok", "snug"]
         + ITEMS + GOOD + BAD)


def _reviews(n: int = 120) -> pd.DataFrame:
    """Review texts whose words decide `sentiment` (binary) and `item` (3 classes)."""
    rng = random.Random(0)
    rows = []
    for index in range(n):
        item, good = ITEMS[index % 3], (index // 3) % 2 == 0
        word = rng.choice(GOOD if good else BAD)
        rows.append({"review": f"this {item} is {word} and the fit is {rng.choice(['ok', 'snug'])}",
                     "sentiment": int(good), "item": item})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_an_uploaded_hf_checkpoint_teaches_a_student_that_answers_strings(settings: Settings, tmp_path: Path) -> None:
    checkpoint = save_tiny_bert(tmp_path / "tiny-bert", vocab=VOCAB, layers=2, hidden=16)
    archive = zip_folder(checkpoint, tmp_path / "tiny-bert.zip", top="tiny-bert/")
    encoder_params = sum(p.numel() for p in load_hf_encoder(checkpoint).model.parameters())
    csv_path = tmp_path / "reviews.csv"
    _reviews().to_csv(csv_path, index=False)
    with session_scope(settings.resolved_database_url) as db:
        key = create_api_key(db=db, tenant_name="acme")[1]
    port = free_port()
    env = env_for(settings)
    with running(api_argv(port), env=env, log=tmp_path / "api.log"), \
            running(worker_argv("hf-text"), env=env, log=tmp_path / "worker.log") as worker:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=90)
        with Client(f"http://127.0.0.1:{port}", key) as client:
            teacher = client.upload(archive, purpose="teacher_hf")
            assert teacher.meta["model_type"] == "bert" and teacher.meta["layers"] == 2
            data_id = client.upload(csv_path, purpose="dataset").id
            spec = {
                "name": "hf-text",
                "dataset": {"file": data_id, "format": "csv", "text": ["review"], "max_length": 16},
                "tasks": [{"name": "sentiment", "kind": "binary"},
                          {"name": "item", "kind": "multiclass", "num_classes": 3}],
                "teachers": [{"name": "bert", "tasks": ["sentiment", "item"], "source": {"train": {
                    "arch": {"type": "transformer", "backbone": teacher.id, "finetune": "all"},
                    "epochs": 4, "lr": 0.003, "batch_size": 16}}}],
                "student": {"type": "transformer", "layers": 1, "hidden_size": 8, "attention_heads": 2,
                            "intermediate_size": 16},
                "training": {"epochs": 4, "batch_size": 16, "lr": 0.005, "seed": 0},
                "export": ["safetensors", "onnx"],
            }
            job = client.wait(client.submit(spec).id, poll=0.5, timeout=420)
            assert job.status == "succeeded", (job, worker.output()[-3000:])
            results = client.results(job.id)
            client.download_all(job.id, tmp_path / "out")
    # the uploaded encoder was the teacher's backbone: its parameters plus the task heads
    assert results["params"]["teacher"] >= encoder_params > results["params"]["student"]
    assert set(results["tasks"]) == {"sentiment", "item"}
    student = load_student(tmp_path / "out")
    # the student speaks the uploaded checkpoint's tokenizer (its vocab.txt), exported as tokenizer.json
    assert set(student.tokenizer.get_vocab()) == set(VOCAB)
    strings = ["this dress is lovely", "this sweater is torn and the fit is snug", "jeans"]
    answers = student.predict(strings)
    assert len(answers["sentiment"]) == len(answers["item"]) == 3
    assert set(answers["sentiment"]) <= {0, 1} and set(answers["item"]) <= {0, 1, 2}
    # ONNX (input_ids, attention_mask) answers as the torch student does, on the same encoding
    rows = student.encode(strings)  # (batch, 2, max_length)
    session = ort.InferenceSession(str(tmp_path / "out" / "student.onnx"))
    onnx_out = dict(zip(["sentiment", "item"], session.run(["sentiment", "item"], {
        "input_ids": rows[:, 0].long().numpy(), "attention_mask": rows[:, 1].long().numpy()})))
    with torch.no_grad():
        torch_out = {k: v.numpy() for k, v in student.model(rows).items()}
    for task in ("sentiment", "item"):
        assert np.abs(torch_out[task] - onnx_out[task]).max() <= 1e-4
    assert answers["item"] == torch_out["item"].argmax(1).tolist()
