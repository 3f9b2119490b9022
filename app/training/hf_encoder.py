"""Load a Hugging Face encoder folder safely: config as JSON, weights from safetensors, no code from the folder.

A folder holds config.json, model.safetensors and a tokenizer (tokenizer.json, or a WordPiece
vocab.txt). The config is parsed and checked by hf_config.read_hf_config (an accepted family, no
`auto_map`), the model is built with `AutoModel.from_config` (transformers' own classes:
`trust_remote_code` is never set) and its weights are read with safetensors, never from
pytorch_model.bin or any other pickle. Every key and shape of the file is compared with the model
first: a difference is a "mismatched config" error, not a silently half-loaded teacher.

Keys may carry the family's prefix (`bert.embeddings...`, as a *ForSequenceClassification
checkpoint saves them) or not (`embeddings...`, as AutoModel saves them); keys outside the encoder
(a task head such as `classifier.*`) are returned in `HFEncoder.extra_keys`, unused here.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from app.training.errors import TrainingError
from app.training.hf_config import BUILTIN_BACKBONES, hf_error, read_hf_config

if TYPE_CHECKING:  # torch loads with the loader, not with this module: spec checks import BUILTIN_BACKBONES
    from tokenizers import Tokenizer
    from torch import nn

__all__ = ["BUILTIN_BACKBONES", "HFEncoder", "builtin_backbone_folder", "load_hf_encoder", "load_hf_zip",
           "load_tokenizer"]
WEIGHTS_FILE = "model.safetensors"


@dataclass
class HFEncoder:
    """A loaded encoder, the tokenizer it was trained with, and what else the weights file held."""

    model: "nn.Module"  # a transformers PreTrainedModel (BertModel, RobertaModel, ...), in eval mode
    tokenizer: "Tokenizer"
    tokenizer_path: Path  # tokenizer.json, or vocab.txt for a WordPiece folder
    config: dict  # config.json as checked
    extra_keys: list[str] = field(default_factory=list)  # weights outside the encoder (task heads)


def builtin_backbone_folder(name: str) -> Path:
    """Return the folder of a built-in backbone (`minilm-l6`) from its installed package."""
    import importlib.util

    package = BUILTIN_BACKBONES.get(name)
    if package is None:
        raise hf_error(f"unknown built-in backbone {name!r}; one of {', '.join(BUILTIN_BACKBONES)}")
    found = importlib.util.find_spec(package)
    if found is None or found.origin is None:
        raise hf_error(f"the built-in backbone {name!r} needs the package {package.replace('_', '-')} installed")
    return Path(found.origin).parent / "model"


def load_tokenizer(folder: Path) -> tuple["Tokenizer", Path]:
    """Build a `tokenizers` tokenizer from tokenizer.json, else from a WordPiece vocab.txt."""
    from tokenizers import Tokenizer
    from tokenizers.implementations import BertWordPieceTokenizer

    if (folder / "tokenizer.json").is_file():
        path = folder / "tokenizer.json"
        try:
            return Tokenizer.from_file(str(path)), path
        except Exception as exc:  # the file is the uploader's: any parse failure is theirs
            raise hf_error(f"tokenizer.json cannot be read by tokenizers: {exc}") from exc
    if (folder / "vocab.txt").is_file():
        path = folder / "vocab.txt"
        lowercase = True  # BERT's default; tokenizer_config.json says otherwise for cased models
        settings = folder / "tokenizer_config.json"
        if settings.is_file():
            try:
                lowercase = bool(json.loads(settings.read_text(encoding="utf-8")).get("do_lower_case", True))
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
                raise hf_error(f"tokenizer_config.json is not a JSON object: {exc}") from exc
        try:
            wordpiece = BertWordPieceTokenizer(str(path), lowercase=lowercase)
        except Exception as exc:
            raise hf_error(f"vocab.txt cannot be read as a WordPiece vocabulary: {exc}") from exc
        return wordpiece._tokenizer, path
    raise hf_error("the checkpoint has no tokenizer: give tokenizer.json (or a WordPiece vocab.txt)")


def load_hf_encoder(folder: Path, *, attn_implementation: str | None = None) -> HFEncoder:
    """Build the encoder from config.json, load model.safetensors into it after checking every key and shape."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    folder = Path(folder)
    config_path, weights_path = folder / "config.json", folder / WEIGHTS_FILE
    if not config_path.is_file():
        raise hf_error("the checkpoint has no config.json")
    if not weights_path.is_file():
        found = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
        hint = f" (found {', '.join(found)}: pickles, which are never loaded)" if found else ""
        raise hf_error(f"the checkpoint has no {WEIGHTS_FILE}{hint}; save it with save_pretrained(..., "
                       "safe_serialization=True)", "pickle" if found else "invalid")
    config = read_hf_config(config_path.read_bytes())
    tokenizer, tokenizer_path = load_tokenizer(folder)
    hf_config = CONFIG_MAPPING[config["model_type"]].from_dict(
        {k: v for k, v in config.items() if k != "model_type"})
    options = {"attn_implementation": attn_implementation} if attn_implementation else {}
    # First on the meta device (no memory): a config whose sizes the file does not hold (a vocabulary
    # of a million rows, say) is refused before anything that large is allocated.
    with torch.device("meta"):
        shell = AutoModel.from_config(hf_config, **options)
    try:
        with safe_open(str(weights_path), framework="pt") as weights:
            encoder_keys, extra = _encoder_keys(list(weights.keys()), shell.base_model_prefix)
            _drop_absent_pooler(shell, encoder_keys)
            _check_keys_and_shapes(shell, {name: list(weights.get_slice(key).get_shape())
                                           for name, key in encoder_keys.items()})
            state = {name: weights.get_tensor(key) for name, key in encoder_keys.items()}
    except TrainingError:
        raise
    except Exception as exc:  # safetensors' errors for a broken or truncated file: the uploader's
        raise hf_error(f"{WEIGHTS_FILE} is not a readable safetensors file: {exc}") from exc
    model = AutoModel.from_config(hf_config, **options)
    _drop_absent_pooler(model, encoder_keys)
    persistent = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k in persistent}, strict=True)
    model.eval()
    return HFEncoder(model=model, tokenizer=tokenizer, tokenizer_path=tokenizer_path, config=config,
                     extra_keys=sorted(extra))


def _encoder_keys(keys: list[str], prefix: str) -> tuple[dict[str, str], list[str]]:
    """Map the model's own key names to the file's keys; keys outside the encoder are returned apart."""
    if any(key.startswith(prefix + ".") for key in keys):
        inside = {key[len(prefix) + 1:]: key for key in keys if key.startswith(prefix + ".")}
        return inside, [key for key in keys if not key.startswith(prefix + ".")]
    return {key: key for key in keys}, []


def _drop_absent_pooler(model: "nn.Module", encoder_keys: dict[str, str]) -> None:
    """A checkpoint saved without the pooler (a masked-LM one) gets a model without it, not a random one."""
    if getattr(model, "pooler", None) is not None and not any(k.startswith("pooler.") for k in encoder_keys):
        model.pooler = None


def _check_keys_and_shapes(model: "nn.Module", shapes: dict[str, list[int]]) -> None:
    expected = {name: list(t.shape) for name, t in model.state_dict().items()}
    buffers = {name for name, _ in model.named_buffers()}  # non-persistent buffers older files still hold
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected) - buffers)
    wrong = [f"{name} is {shapes[name]}, the config builds {expected[name]}"
             for name in sorted(set(shapes) & set(expected)) if shapes[name] != expected[name]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} weight(s) the config needs are missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} weight(s) the config has no place for (e.g. {', '.join(unexpected[:3])})")
    problems.extend(wrong[:3])
    if problems:
        raise hf_error("mismatched config: config.json does not describe model.safetensors: " + "; ".join(problems),
                       "mismatched_config")


def load_hf_zip(path: Path, workdir: Path, *, attn_implementation: str | None = None) -> HFEncoder:
    """Check an uploaded teacher_hf zip, extract the files the loader reads into `workdir`, and load them."""
    from app.training.hf_archive import extract_hf_archive

    return load_hf_encoder(extract_hf_archive(path, workdir), attn_implementation=attn_implementation)
