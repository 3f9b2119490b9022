"""The teacher_hf zip check (no extraction) and the worker's extraction, on real and hostile zips."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from app.training import hf_archive
from app.training.hf_archive import check_hf_archive, extract_hf_archive
from app.training.hf_config import HFCheckpointError
from app.training.hf_encoder import (
    builtin_backbone_folder,
    load_hf_encoder,
    load_hf_zip,
)
from tests.hf_zips import hostile_zips, save_tiny_bert, zip_folder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def hostile(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str, str]]:
    return hostile_zips(folder, tmp_path_factory.mktemp("hostile"))


def test_a_good_zip_is_summarised_and_extracts_to_the_same_model(folder: Path, tmp_path: Path) -> None:
    archive = zip_folder(folder, tmp_path / "good.zip")
    summary = check_hf_archive(archive)
    assert summary == {"format": "hf_zip", "model_type": "bert", "tokenizer": "vocab.txt", "layers": 2,
                       "hidden_size": 16, "vocab_size": 22, "tensors": summary["tensors"],
                       "params": sum(t.numel() for t in load_hf_encoder(folder).model.state_dict().values())}
    loaded = load_hf_zip(archive, tmp_path / "work")
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    original = load_hf_encoder(folder)
    ids = torch.tensor([loaded.tokenizer.encode("the dress fits").ids])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=ids).last_hidden_state,
                                   original.model(input_ids=ids).last_hidden_state, rtol=0, atol=0)


def test_a_zipped_folder_and_the_minilm_snapshot_are_accepted(folder: Path, tmp_path: Path) -> None:
    nested = zip_folder(folder, tmp_path / "nested.zip", top="my-model/")
    assert check_hf_archive(nested)["layers"] == 2
    assert (extract_hf_archive(nested, tmp_path / "out") / "config.json").is_file()
    # the real MiniLM snapshot with its extra files (1_Pooling/, README.md, modules.json ...) passes too
    minilm = tmp_path / "minilm.zip"
    with zipfile.ZipFile(minilm, "w", zipfile.ZIP_DEFLATED) as out:
        source = builtin_backbone_folder("minilm-l6")
        for path in sorted(source.rglob("*")):
            if path.is_file():
                out.write(path, str(path.relative_to(source)))
    assert check_hf_archive(minilm) | {"params": 0} == {
        "format": "hf_zip", "model_type": "bert", "tokenizer": "tokenizer.json", "layers": 6, "hidden_size": 384,
        "vocab_size": 30522, "tensors": 104, "params": 0}


@pytest.mark.parametrize("case", ["pickle_bin", "pickle_magic", "auto_map", "python_member", "family", "traversal",
                                  "absolute", "symlink", "zip_bomb", "mismatched_config", "mismatched_layers"])
def test_hostile_zips_are_refused_by_the_rule_that_names_them(hostile: dict, case: str, tmp_path: Path) -> None:
    path, reason, phrase = hostile[case]
    with pytest.raises(HFCheckpointError, match=phrase) as caught:
        check_hf_archive(path)
    assert caught.value.reason == reason
    with pytest.raises(HFCheckpointError):  # the worker's extraction runs the same check first
        extract_hf_archive(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_declared_total_and_member_count_are_capped(folder: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    archive = zip_folder(folder, tmp_path / "good.zip")
    monkeypatch.setattr(hf_archive, "MAX_UNPACKED_BYTES", (folder / "model.safetensors").stat().st_size)
    with pytest.raises(HFCheckpointError, match="declares more than") as caught:
        check_hf_archive(archive)
    assert caught.value.reason == "zip_bomb"
    monkeypatch.setattr(hf_archive, "MAX_MEMBERS", 2)
    with pytest.raises(HFCheckpointError, match="members, more than 2"):
        check_hf_archive(archive)


@pytest.mark.parametrize("edit, phrase", [
    (lambda zf, data: zf.writestr("x/config.json", data["config.json"]), "no config.json"),
    (lambda zf, data: [zf.writestr(n, d) for n, d in data.items() if n != "vocab.txt"], "no tokenizer"),
    (lambda zf, data: [zf.writestr(n, d if n != "model.safetensors" else d[:-8]) for n, d in data.items()],
     "truncated or padded"),
    (lambda zf, data: [zf.writestr(n, d) for n, d in data.items()] + [zf.writestr("model-00002.safetensors", b"")],
     "sharded"),
    (lambda zf, data: [zf.writestr(n, d) for n, d in data.items()] + [zf.writestr("model.onnx", b"x")],
     "not part of an encoder checkpoint"),
    (lambda zf, data: [zf.writestr(n, d) for n, d in data.items()] + [zf.writestr("config.json", b"{}")],
     "appears twice"),
])
@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_incomplete_or_odd_zips_say_what_is_wrong(folder: Path, tmp_path: Path, edit, phrase: str) -> None:
    data = {p.name: p.read_bytes() for p in folder.iterdir()}
    path = tmp_path / "odd.zip"
    with zipfile.ZipFile(path, "w") as archive:
        if phrase == "no config.json":
            [archive.writestr(n, d) for n, d in data.items() if n != "config.json"]
        edit(archive, data)
    with pytest.raises(HFCheckpointError, match=phrase):
        check_hf_archive(path)


def test_a_member_whose_data_changed_under_its_header_is_refused(folder: Path, tmp_path: Path) -> None:
    archive = zip_folder(folder, tmp_path / "good.zip")
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("vocab.txt")
    raw = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + 1] ^= 0xFF  # flip a byte of the stored (deflated) vocab.txt data
    archive.write_bytes(bytes(raw))
    with pytest.raises(HFCheckpointError, match="not a readable zip|corrupt"):
        extract_hf_archive(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.zip"]  # no folder, no staging left


def test_extraction_is_all_or_nothing_and_a_second_one_keeps_the_first(folder: Path, tmp_path: Path) -> None:
    archive = zip_folder(folder, tmp_path / "good.zip")
    first = extract_hf_archive(archive, tmp_path / "cache" / "abc")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert extract_hf_archive(archive, tmp_path / "cache" / "abc") == first  # as a concurrent job would
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["abc"]  # the second's staging folder is gone


def test_the_check_imports_no_torch(folder: Path, tmp_path: Path) -> None:
    """The API process runs the check (and spec checks import hf_encoder's names): it must stay torch-free."""
    archive = zip_folder(folder, tmp_path / "good.zip")
    code = ("import sys\nfrom pathlib import Path\nfrom app.files.hf_check import check_hf_zip\n"
            "import app.files.refs, app.training.hf_encoder\n"
            f"print(check_hf_zip(Path({str(archive)!r}))['model_type'])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["bert", "[]"]
