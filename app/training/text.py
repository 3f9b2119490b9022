"""Text datasets: raw texts (built-in clothing-reviews, or a CSV/Parquet upload's `dataset.text`
columns) tokenised with Hugging Face `tokenizers` into x (n, 2, max_length) float32 rows.

The tokenizer: the teachers' when a teacher is a pretrained transformer (`backbone`; every such
teacher must share one), otherwise a WordPiece (BERT normaliser and pre-tokeniser, lowercase)
trained on the train split's texts with `dataset.vocab_size` entries. Rows are [CLS] text [SEP],
truncated to max_length and padded with [PAD]; the mask is 1 on real tokens. Several text columns
are joined with ". " in the order given. Token ids are cached content-addressed
(<cache_dir>/tokens/<sha256 of tokenizer, max_length and texts>.npy), so a second job with the
same texts and tokenizer does not tokenise again.
"""

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.training.datasets.clothing import RawTextSplits, load_clothing
from app.training.datasets.splits import DatasetSplits
from app.training.datasets.text_inputs import TextInputs
from app.training.errors import TrainingError
from app.training.files import FileResolver
from app.training.hf_archive import extract_hf_archive
from app.training.hf_encoder import (
    BUILTIN_BACKBONES,
    builtin_backbone_folder,
    load_tokenizer,
)
from app.training.spec import DatasetSpec, JobSpec, TaskSpec

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def is_text_job(spec: JobSpec) -> bool:
    """The job's dataset is text: dataset.text given, or a built-in text dataset."""
    from app.training.datasets.catalog import BUILTIN_DATASETS

    dataset = spec.dataset
    return dataset.text is not None or bool(
        dataset.builtin and BUILTIN_DATASETS[dataset.builtin].get("text"))


def backbone_folders(spec: JobSpec, *, resolver: FileResolver, cache_dir: Path) -> dict[str, Path]:
    """Return arch.backbone -> folder for every pretrained teacher (uploads unpacked once)."""
    folders: dict[str, Path] = {}
    for teacher in spec.teachers:
        source = teacher.source.train or teacher.source.weights
        backbone = None if source is None else source.arch.backbone
        if backbone is None or backbone in folders:
            continue
        if backbone in BUILTIN_BACKBONES:
            folders[backbone] = builtin_backbone_folder(backbone)
        else:  # an uploaded teacher_hf zip: checked again and its known files copied out, once
            path = resolver.resolve(backbone)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            folders[backbone] = cache_dir / "hf" / digest
            if not (folders[backbone] / "config.json").is_file():
                extract_hf_archive(path, folders[backbone])
    return folders


def train_wordpiece(texts: list[str], vocab_size: int) -> Any:
    """Train a lowercase BERT-style WordPiece tokenizer on `texts`."""
    from tokenizers import (
        Tokenizer,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    from tokenizers import decoders

    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def encode_texts(tokenizer: Any, texts: list[str], *, max_length: int,
                 cache_dir: Path | None = None) -> np.ndarray:
    """Return (n, 2, max_length) int32 ids and mask, from the cache when these texts were seen."""
    key = hashlib.sha256(json.dumps([tokenizer.to_str(), max_length]).encode())
    for text in texts:
        key.update(text.encode() + b"\0")
    path = None if cache_dir is None else cache_dir / "tokens" / f"{key.hexdigest()}.npy"
    if path is not None and path.is_file():
        return np.load(path, allow_pickle=False)
    pad_id = tokenizer.token_to_id("[PAD]")
    pad_id = 0 if pad_id is None else pad_id
    tokenizer = tokenizer.__class__.from_str(tokenizer.to_str())  # a copy to set options on
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(length=max_length, pad_id=pad_id, pad_token="[PAD]")
    out = np.zeros((len(texts), 2, max_length), dtype=np.int32)
    for row, encoding in enumerate(tokenizer.encode_batch(texts)):
        out[row, 0], out[row, 1] = encoding.ids, encoding.attention_mask
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, out, allow_pickle=False)
        os.replace(tmp, path)
    return out


def join_columns(texts: dict[str, list[str]], columns: list[str]) -> list[str]:
    """Join the chosen text columns of each row with '. ' (empty values skipped)."""
    return [". ".join(v for v in values if v.strip()) for values in zip(*(texts[c] for c in columns))]


def read_text_table(spec: DatasetSpec, *, tasks: list[TaskSpec], resolver: FileResolver) -> RawTextSplits:
    """Read an uploaded CSV/Parquet's text and target columns (labels as uploaded.py encodes them)."""
    from app.training.datasets.uploaded import (
        TEST,
        VALIDATION,
        encode_labels,
        read_table,
        split_roles,
    )
    from app.training.spec_files import dataset_files

    frame = read_table([resolver.resolve(ref) for ref in dataset_files(spec)], spec.format or "")
    columns = list(spec.text or [])
    targets = {t.name: (spec.targets or {}).get(t.name, t.name) for t in tasks}
    missing = [c for c in columns + [c for v in targets.values() for c in ([v] if isinstance(v, str) else v)]
               + ([spec.split_column] if spec.split_column else []) if c not in frame.columns]
    if missing:
        raise TrainingError(code="invalid_data", message=(
            f"dataset.text / targets: columns {missing} are not in the file (columns: {list(frame.columns)[:20]})"))
    notes: list[str] = []
    total = len(frame)
    target_columns = [c for v in targets.values() for c in ([v] if isinstance(v, str) else v)]
    frame = frame.dropna(subset=target_columns)
    texts = {c: frame[c].fillna("").astype(str).tolist() for c in columns}
    joined = join_columns(texts, columns)
    keep = np.array([bool(t.strip()) for t in joined], dtype=bool)
    if len(frame) < total or not keep.all():
        notes.append(f"dataset: {total - len(frame)} rows without a target and {int((~keep).sum())} "
                     f"without text dropped ({int(keep.sum())} of {total} kept)")
    frame = frame[keep]
    texts = {c: [t for t, k in zip(v, keep) if k] for c, v in texts.items()}
    y = {t.name: encode_labels(t, frame[targets[t.name]].to_numpy(), notes) for t in tasks}
    strat = next((y[t.name] for t in tasks if t.kind in ("multiclass", "binary")), None)
    roles = split_roles(len(frame), frame[spec.split_column].to_numpy() if spec.split_column else None,
                         strat)
    train, test = np.flatnonzero(roles != TEST), np.flatnonzero(roles == TEST)
    return RawTextSplits(texts_train={c: [v[i] for i in train] for c, v in texts.items()},
                         texts_test={c: [v[i] for i in test] for c, v in texts.items()},
                         y_train={k: v[train] for k, v in y.items()}, y_test={k: v[test] for k, v in y.items()},
                         notes=tuple(notes), split_test=(roles[train] == VALIDATION) if (roles == VALIDATION).any() else None)


def load_text_data(spec: JobSpec, *, resolver: FileResolver, cache_dir: Path) -> DatasetSplits:
    """Load the job's texts, choose and apply the tokenizer; x (n, 2, max_length) float32."""
    dataset = spec.dataset
    raw = (load_clothing() if dataset.builtin == "clothing-reviews"
           else read_text_table(dataset, tasks=list(spec.tasks), resolver=resolver))
    raw = _subsample(raw, train=dataset.max_train_rows, test=dataset.max_test_rows)
    columns = list(dataset.text or raw.texts_train)
    unknown = [c for c in columns if c not in raw.texts_train]
    if unknown:
        raise TrainingError(code="invalid_data", message=(
            f"dataset.text: {unknown} are not text columns of the dataset ({list(raw.texts_train)})"))
    train_texts, test_texts = join_columns(raw.texts_train, columns), join_columns(raw.texts_test, columns)
    folders = backbone_folders(spec, resolver=resolver, cache_dir=cache_dir)
    tokenizers = {hashlib.sha256(load_tokenizer(f)[0].to_str().encode()).hexdigest(): f
                  for f in folders.values()}
    if len(tokenizers) > 1:
        raise TrainingError(code="tokenizer_mismatch", message=(
            "teachers: the pretrained teachers use different tokenizers; the student reads one "
            "token sequence, so every transformer teacher must share its tokenizer"))
    tokenizer = (load_tokenizer(next(iter(folders.values())))[0] if folders
                 else train_wordpiece(train_texts, dataset.vocab_size or 8000))
    max_length = dataset.max_length or 128
    x_train = encode_texts(tokenizer, train_texts, max_length=max_length, cache_dir=cache_dir)
    x_test = encode_texts(tokenizer, test_texts, max_length=max_length, cache_dir=cache_dir)
    kept = sorted(set(np.unique(x_train[:, 0][x_train[:, 1] > 0]).tolist())
                  | {i for i in (tokenizer.token_to_id(t) for t in SPECIALS) if i is not None})
    serialised = tokenizer.to_str()
    info = TextInputs(vocab_size=tokenizer.get_vocab_size(), pad_id=tokenizer.token_to_id("[PAD]") or 0,
                      unk_id=tokenizer.token_to_id("[UNK]") or 0, max_length=max_length,
                      tokenizer_json=serialised,
                      tokenizer_sha256=hashlib.sha256(serialised.encode()).hexdigest(),
                      kept_ids=tuple(kept), backbones=folders,
                      attention_taps="attention" in (spec.distillation.terms or []))
    def as_tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array.astype(np.float32))

    splits = DatasetSplits(x_train=as_tensor(x_train), x_test=as_tensor(x_test),
                           y_train={t: torch.from_numpy(y) for t, y in raw.y_train.items()},
                           y_test={t: torch.from_numpy(y) for t, y in raw.y_test.items()},
                           notes=raw.notes, text=info)
    if raw.split_test is not None:  # the upload named its validation rows
        val = torch.from_numpy(raw.split_test)
        splits = replace(splits, x_train=splits.x_train[~val], x_val=splits.x_train[val],
                         y_train={t: y[~val] for t, y in splits.y_train.items()},
                         y_val={t: y[val] for t, y in splits.y_train.items()})
    return splits


def _subsample(raw: RawTextSplits, *, train: int | None, test: int | None) -> RawTextSplits:
    """Keep at most `train` / `test` rows of each split: the first of one fixed permutation (seed 0,
    the same for every job seed, so seeds differ in their training only), in file order."""
    notes = list(raw.notes)
    parts = {}
    for split, rows in (("train", train), ("test", test)):
        texts, y = getattr(raw, f"texts_{split}"), getattr(raw, f"y_{split}")
        n = len(next(iter(y.values())))
        keep = np.arange(n) if rows is None or rows >= n else np.sort(
            np.random.default_rng(0).permutation(n)[:rows])
        if len(keep) < n:
            notes.append(f"dataset.max_{split}_rows: {rows} of {n} {split} rows used")
        parts[split] = keep
        texts = {c: [v[i] for i in keep] for c, v in texts.items()}
        raw = replace(raw, **{f"texts_{split}": texts, f"y_{split}": {t: v[keep] for t, v in y.items()}})
    if raw.split_test is not None:
        raw = replace(raw, split_test=raw.split_test[parts["train"]])
    return replace(raw, notes=tuple(notes))
