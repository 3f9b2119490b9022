"""Pretrained transformer teachers: a zipped tiny BERT as `backbone`, fine-tuned heads, given heads,
the DistilBERT-style student start and vocabulary pruning."""

import torch
from safetensors.torch import save_file

from app.training import train
from app.training.archs_text import TextEncoderNet, teacher_init_state
from app.training.export import load_student
from app.training.files import LocalFileResolver
from app.training.hf_encoder import load_hf_encoder
from app.training.models import build_model
from app.training.spec import JobSpec
from app.training.text import load_text_data
from tests.hf_zips import save_tiny_bert, zip_folder
from tests.training.text_fixtures import ITEMS, text_spec, write_reviews

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "this", "is", "and", "the", "fit", "ok", "fine",
         "snug", *ITEMS, "lovely", "great", "perfect", "soft", "awful", "itchy", "cheap", "torn", "unused"]


def _backbone(tmp_path):
    folder = save_tiny_bert(tmp_path / "bert", vocab=WORDS, layers=2, hidden=16)
    return zip_folder(folder, tmp_path / "bert.zip", top="bert/")


def test_backbone_teacher_with_distilbert_init_and_pruning(tmp_path):
    archive, csv = _backbone(tmp_path), write_reviews(tmp_path / "r.csv")
    spec = JobSpec.model_validate(text_spec(
        csv, teacher_arch={"type": "transformer", "backbone": str(archive), "pooling": "mean"},
        student={"type": "transformer", "layers": 1, "hidden_size": 16, "attention_heads": 2,
                 "intermediate_size": 32, "init_from_teacher": True, "prune_vocab": True},
        terms=["soft", "hidden"]))
    assert spec.teachers[0].source.train.arch.finetune == "heads"
    data = load_text_data(spec, resolver=LocalFileResolver(), cache_dir=tmp_path / "cache")
    assert data.text.vocab_size == len(WORDS)  # the teacher's tokenizer, not a trained WordPiece
    assert WORDS.index("unused") not in data.text.kept_ids
    teacher = build_model(spec.teachers[0].source.train.arch, input_shape=data.input_shape,
                          tasks=list(spec.tasks), text=data.text)
    frozen = [p.requires_grad for p in teacher.encoder.parameters()]
    assert not any(frozen) and all(p.requires_grad for p in teacher.heads.parameters())
    student = build_model(spec.student, input_shape=data.input_shape, tasks=list(spec.tasks), text=data.text)
    state = teacher_init_state(student, teacher, kept_ids=data.text.kept_ids)
    source = teacher.encoder.state_dict()
    kept = torch.tensor(data.text.kept_ids)
    # embeddings: the kept rows of the teacher's; layer 0 of the student is teacher layer 0 (k = 2)
    assert torch.equal(state["encoder.embeddings.word_embeddings.weight"],
                       source["embeddings.word_embeddings.weight"][kept])
    assert torch.equal(state["encoder.encoder.layer.0.attention.self.query.weight"],
                       source["encoder.layer.0.attention.self.query.weight"])
    student.load_state_dict(state)
    x = data.x_train[:4]
    ids = x[:, 0].long()
    # the pruned student looks its ids up through id_map: the same vectors as the teacher's
    assert torch.equal(student.encoder.embeddings.word_embeddings(student.id_map[ids]),
                       teacher.encoder.embeddings.word_embeddings(ids))

    result = train(spec, tmp_path / "job")
    assert result.results["params"]["student"] < result.results["params"]["teacher"]
    answers = load_student(tmp_path / "job" / "artifacts").predict(["this dress is lovely"])
    assert set(answers) == {"sentiment", "item"}


def test_given_heads_teacher_loads_heads_only(tmp_path):
    archive, csv = _backbone(tmp_path), write_reviews(tmp_path / "r.csv")
    arch = {"type": "transformer", "backbone": str(archive), "pooling": "cls"}
    encoder = load_hf_encoder(tmp_path / "bert").model
    heads = TextEncoderNet(encoder, pooling="cls", head=[], outputs={"sentiment": 1, "item": 3}).heads
    torch.manual_seed(3)
    for parameter in heads.parameters():
        torch.nn.init.normal_(parameter)
    save_file({f"heads.{k}": v.contiguous() for k, v in heads.state_dict().items()}, str(tmp_path / "heads.safetensors"))
    spec_dict = text_spec(csv)
    spec_dict["teachers"][0]["source"] = {"weights": {"file": str(tmp_path / "heads.safetensors"), "arch": arch}}
    spec_dict["baseline"] = False
    result = train(JobSpec.model_validate(spec_dict), tmp_path / "job")
    stages = [stage["name"] for stage in result.results["stages"]]
    assert stages == ["student"]  # no teacher stage: it came with its heads
    assert result.results["teacher_cache"]["t"] == "miss"
