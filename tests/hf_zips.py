"""Tiny Hugging Face checkpoints made with transformers, zipped as a user would upload them, and hostile variants."""

import io
import json
import pickle
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "dress", "fits", "well", "too", "small", "big",
         "love", "it", "not", "great", "runs", "large", "fabric", "soft", "##s", "##es"]


def save_tiny_bert(folder: Path, *, seed: int = 0, layers: int = 2, hidden: int = 16,
                   vocab: list[str] = VOCAB) -> Path:
    """Save a tiny random BertModel with save_pretrained (safetensors) and a WordPiece vocab.txt."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                                 num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64))
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return folder


def zip_folder(folder: Path, out: Path, *, top: str = "", extra: dict[str, bytes] | None = None,
               edit_config: Callable[[dict], dict] | None = None, leave_out: tuple[str, ...] = ()) -> Path:
    """Zip a checkpoint folder's files (under `top` if given), with extra members and an edited config."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            if path.name in leave_out or not path.is_file():
                continue
            data = path.read_bytes()
            if path.name == "config.json" and edit_config is not None:
                data = json.dumps(edit_config(json.loads(data))).encode()
            archive.writestr(top + path.name, data)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return out


def with_symlink(source: Path, out: Path, name: str = "tokenizer_config.json", target: str = "/etc/passwd") -> Path:
    """Copy a zip and add a member stored as a symbolic link (as `zip --symlinks` writes it)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        link = zipfile.ZipInfo(name)
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        dst.writestr(link, target)
    return out


def with_zero_bomb(source: Path, out: Path, *, megabytes: int = 8) -> Path:
    """Copy a zip and add a README.md of zeros that deflates about a thousand times."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        with dst.open("README.md", "w") as fh:
            for _ in range(megabytes):
                fh.write(bytes(1 << 20))
    return out


def pickled_state_dict(folder: Path) -> bytes:
    """The weights as torch.save writes them (pytorch_model.bin): a zip-wrapped pickle."""
    import torch
    from safetensors.torch import load_file

    buffer = io.BytesIO()
    torch.save(load_file(str(folder / "model.safetensors")), buffer)
    return buffer.getvalue()


def plain_pickle() -> bytes:
    """A protocol-4 pickle that would run os.system when loaded."""

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("touch /tmp/distillery-pwned",))

    return pickle.dumps(Evil(), protocol=4)


def hostile_zips(folder: Path, out_dir: Path) -> dict[str, tuple[Path, str, str]]:
    """Name -> (zip, the rule that must refuse it, a phrase the refusal must say)."""
    good = zip_folder(folder, out_dir / "good.zip")
    cases = {
        "pickle_bin": (zip_folder(folder, out_dir / "bin.zip", leave_out=("model.safetensors",),
                                  extra={"pytorch_model.bin": pickled_state_dict(folder)}), "pickle", "pytorch_model.bin"),
        "pickle_magic": (zip_folder(folder, out_dir / "magic.zip", extra={"tokenizer_config.json": plain_pickle()}),
                         "pickle", "is a pickle"),
        "auto_map": (zip_folder(folder, out_dir / "auto_map.zip", edit_config=lambda c: {
            **c, "auto_map": {"AutoModel": "modeling_evil.EvilModel"}}), "remote_code", "auto_map"),
        "python_member": (zip_folder(folder, out_dir / "py.zip", extra={"modeling_evil.py": b"import os\n"}),
                          "remote_code", "modeling_evil.py"),
        "family": (zip_folder(folder, out_dir / "family.zip", edit_config=lambda c: {**c, "model_type": "gpt2"}),
                   "family", "'gpt2' is not an accepted encoder family"),
        "traversal": (zip_folder(folder, out_dir / "dotdot.zip", extra={"../../evil.json": b"{}"}),
                      "traversal", "leaves the checkpoint folder"),
        "absolute": (zip_folder(folder, out_dir / "abs.zip", extra={"/etc/evil.json": b"{}"}),
                     "traversal", "leaves the checkpoint folder"),
        "symlink": (with_symlink(good, out_dir / "link.zip"), "traversal", "symbolic link"),
        "zip_bomb": (with_zero_bomb(good, out_dir / "bomb.zip"), "zip_bomb", "zip bomb"),
        "mismatched_config": (zip_folder(folder, out_dir / "mismatch.zip", edit_config=lambda c: {
            **c, "hidden_size": 32, "intermediate_size": 64}), "mismatched_config", "mismatched config"),
        "mismatched_layers": (zip_folder(folder, out_dir / "layers.zip", edit_config=lambda c: {
            **c, "num_hidden_layers": 3}), "mismatched_config", "mismatched config"),
    }
    return cases
