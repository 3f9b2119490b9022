"""Hugging Face encoders load safely: config as data, safetensors weights, every key and shape checked."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from app.training.errors import TrainingError
from app.training.hf_config import (
    HF_ENCODER_FAMILIES,
    check_tensor_shapes,
    read_hf_config,
)
from app.training.hf_encoder import builtin_backbone_folder, load_hf_encoder

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "dress", "fits", "well", "too", "small", "##es"]


def tiny_bert_config(**overrides: int) -> BertConfig:
    sizes = {"vocab_size": len(VOCAB), "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 32, "max_position_embeddings": 32}
    return BertConfig(**{**sizes, **overrides})


def save_tiny_bert(folder: Path, model: torch.nn.Module | None = None, **overrides: int) -> torch.nn.Module:
    """Save a tiny random BERT as save_pretrained does (safetensors) with a WordPiece vocab.txt."""
    torch.manual_seed(0)
    model = model or BertModel(tiny_bert_config(**overrides))
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return model


def encode(loaded, text: str) -> dict[str, torch.Tensor]:
    ids = loaded.tokenizer.encode(text).ids
    return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}


def test_builtin_minilm_loads_with_its_tokenizer() -> None:
    folder = builtin_backbone_folder("minilm-l6")
    loaded = load_hf_encoder(folder)
    assert loaded.config["model_type"] == "bert" and loaded.tokenizer_path.name == "tokenizer.json"
    assert sum(p.numel() for p in loaded.model.parameters()) == pytest.approx(22.7e6, rel=0.01)
    batch = encode(loaded, "This dress fits well")
    assert batch["input_ids"][0, 0].item() == loaded.tokenizer.token_to_id("[CLS]")
    with torch.no_grad():
        hidden = loaded.model(**batch).last_hidden_state
    assert hidden.shape == (1, batch["input_ids"].shape[1], 384)
    # the weights came from the file, not the random init: the word embeddings equal the stored ones
    stored = load_file(str(folder / "model.safetensors"))["embeddings.word_embeddings.weight"]
    assert torch.equal(loaded.model.embeddings.word_embeddings.weight, stored)


def test_unknown_builtin_backbone_is_named() -> None:
    with pytest.raises(TrainingError, match="unknown built-in backbone 'bert-huge'"):
        builtin_backbone_folder("bert-huge")


def test_a_tiny_saved_bert_loads_and_answers_as_the_original(tmp_path: Path) -> None:
    original = save_tiny_bert(tmp_path).eval()
    loaded = load_hf_encoder(tmp_path)
    assert loaded.tokenizer_path.name == "vocab.txt" and loaded.extra_keys == []
    batch = encode(loaded, "the dresses fits too small")
    assert loaded.tokenizer.encode("the dresses").tokens == ["[CLS]", "the", "dress", "##es", "[SEP]"]
    with torch.no_grad():
        want, got = original(**batch), loaded.model(**batch)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(got.pooler_output, want.pooler_output, rtol=0, atol=0)


def test_a_classification_checkpoint_gives_its_encoder_and_names_the_head(tmp_path: Path) -> None:
    torch.manual_seed(1)
    full = BertForSequenceClassification(tiny_bert_config(num_labels=3)).eval()
    save_tiny_bert(tmp_path, model=full)
    loaded = load_hf_encoder(tmp_path)
    assert loaded.extra_keys == ["classifier.bias", "classifier.weight"]
    batch = encode(loaded, "the dress")
    with torch.no_grad():
        want = full.bert(**batch).last_hidden_state
        got = loaded.model(**batch).last_hidden_state
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_checkpoint_without_pooler_gets_no_random_pooler(tmp_path: Path) -> None:
    save_tiny_bert(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("pooler.")}, str(tmp_path / "model.safetensors"))
    assert load_hf_encoder(tmp_path).model.pooler is None


def test_other_families_load_too(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DistilBertModel(DistilBertConfig(vocab_size=len(VOCAB), dim=16, n_layers=2, n_heads=2, hidden_dim=32,
                                             max_position_embeddings=32)).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    loaded = load_hf_encoder(tmp_path)
    batch = encode(loaded, "the dress")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(**batch).last_hidden_state, model(**batch).last_hidden_state)


@pytest.mark.parametrize("edit, message", [
    ({"num_hidden_layers": 3}, "mismatched config.*missing"),
    ({"num_hidden_layers": 1}, "mismatched config.*no place for"),
    ({"intermediate_size": 64}, r"mismatched config.*intermediate.dense.weight is \[32, 16\]"),
])
def test_a_config_that_does_not_describe_the_weights_is_refused(tmp_path: Path, edit: dict, message: str) -> None:
    save_tiny_bert(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(TrainingError, match=message) as caught:
        load_hf_encoder(tmp_path)
    assert caught.value.code == "invalid_hf_checkpoint"


@pytest.mark.parametrize("edit, message", [
    ({"auto_map": {"AutoModel": "modeling_evil.EvilModel"}}, "auto_map: it asks to run code"),
    ({"model_type": "gpt2"}, "model_type 'gpt2' is not an accepted encoder family"),
    ({"model_type": "evil"}, "model_type 'evil' is not an accepted"),
    ({"hidden_size": -4}, "hidden_size must be a positive integer"),
    ({"num_attention_heads": 3}, "not a multiple of the 3 attention heads"),
])
def test_configs_that_would_run_code_or_cannot_build_are_refused(tmp_path: Path, edit: dict, message: str) -> None:
    save_tiny_bert(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **edit}))
    # a module that would run if transformers imported the checkpoint's code
    (tmp_path / "modeling_evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('x')\n")
    with pytest.raises(TrainingError, match=message):
        load_hf_encoder(tmp_path)
    assert not (tmp_path / "ran").exists()


def test_pickled_weights_are_never_loaded(tmp_path: Path) -> None:
    model = save_tiny_bert(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(TrainingError, match=r"no model.safetensors \(found pytorch_model.bin: pickles"):
        load_hf_encoder(tmp_path)


def test_a_folder_without_a_tokenizer_is_refused(tmp_path: Path) -> None:
    save_tiny_bert(tmp_path)
    (tmp_path / "vocab.txt").unlink()
    with pytest.raises(TrainingError, match="has no tokenizer"):
        load_hf_encoder(tmp_path)


def test_a_truncated_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    save_tiny_bert(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(TrainingError, match="not a readable safetensors file"):
        load_hf_encoder(tmp_path)


def test_the_family_table_matches_transformers_defaults() -> None:
    """The API checks shapes without transformers: its defaults must be transformers' own."""
    for model_type, family in HF_ENCODER_FAMILIES.items():
        defaults = CONFIG_MAPPING[model_type]().to_dict()
        for key, default in (family.hidden, family.layers, family.intermediate, family.heads):
            assert defaults[key] == default, (model_type, key)
        assert defaults["vocab_size"] == family.vocab, model_type
        assert defaults["max_position_embeddings"] == 512, model_type
        if family.embedding is not None:
            assert defaults["embedding_size"] == family.embedding, model_type


@pytest.mark.parametrize("model_type", sorted(HF_ENCODER_FAMILIES))
def test_header_shape_rules_accept_every_family_and_catch_a_wrong_hidden_size(model_type: str) -> None:
    """The torch-free shape check passes on each family's real key names and fails on a resized config."""
    from transformers import AutoModel

    family = HF_ENCODER_FAMILIES[model_type]
    sizes = {family.hidden[0]: 16, family.layers[0]: 2, family.intermediate[0]: 24, family.heads[0]: 2,
             "vocab_size": 40, "max_position_embeddings": 24}
    if family.embedding is not None:
        sizes["embedding_size"] = 8
    config = CONFIG_MAPPING[model_type](**sizes).to_dict()
    model = AutoModel.from_config(CONFIG_MAPPING[model_type](**sizes))
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    checked = read_hf_config(json.dumps(config))
    check_tensor_shapes(checked, shapes)
    with pytest.raises(TrainingError, match="mismatched config"):
        check_tensor_shapes({**checked, family.hidden[0]: 32}, shapes)
    with pytest.raises(TrainingError, match="mismatched config"):
        layers = "num_hidden_groups" if model_type == "albert" else family.layers[0]
        check_tensor_shapes({**checked, layers: 3}, shapes)


def test_minilm_folder_copy_loads_from_anywhere(tmp_path: Path) -> None:
    shutil.copytree(builtin_backbone_folder("minilm-l6"), tmp_path / "m")
    assert load_hf_encoder(tmp_path / "m").config["hidden_size"] == 384


def test_a_huge_config_is_refused_before_anything_that_large_is_allocated(tmp_path: Path) -> None:
    """A 2**20 x 2**20 embedding (4 TiB) built for real would fail to allocate; the meta check refuses it first."""
    save_tiny_bert(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "vocab_size": 1 << 20, "hidden_size": 1 << 20}))
    with pytest.raises(TrainingError, match="mismatched config"):
        load_hf_encoder(tmp_path)
