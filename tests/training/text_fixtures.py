"""Tiny text data for the text tests: reviews whose words decide two tasks."""

import random
from pathlib import Path

import pandas as pd

ITEMS = {"dress": 0, "jeans": 1, "sweater": 2}
GOOD, BAD = ["lovely", "great", "perfect", "soft"], ["awful", "itchy", "cheap", "torn"]


def review_rows(n: int = 90, seed: int = 0) -> pd.DataFrame:
    """Rows with `title`, `body`, `sentiment` (good/bad) and `item` (dress/jeans/sweater)."""
    rng = random.Random(seed)
    rows = []
    for index in range(n):
        item = list(ITEMS)[index % 3]
        good = (index // 3) % 2 == 0
        word = rng.choice(GOOD if good else BAD)
        rows.append({"title": f"{word} {item}" if index % 4 else "",
                     "body": f"this {item} is {word} and the fit is {rng.choice(['ok', 'fine', 'snug'])}",
                     "sentiment": "good" if good else "bad", "item": item})
    return pd.DataFrame(rows)


def write_reviews(path: Path, n: int = 90) -> Path:
    review_rows(n).to_csv(path, index=False)
    return path


def text_spec(csv: Path, *, student: dict | None = None, teacher_arch: dict | None = None,
              terms: list[str] | None = None, **extra: object) -> dict:
    """A text job on the reviews CSV: an in-job transformer teacher and a smaller student."""
    spec = {
        "name": "text-tiny",
        "dataset": {"file": str(csv), "format": "csv", "text": ["title", "body"], "max_length": 16,
                    "vocab_size": 120},
        "tasks": [{"name": "sentiment", "kind": "binary"},
                  {"name": "item", "kind": "multiclass", "num_classes": 3}],
        "teachers": [{"name": "t", "tasks": ["sentiment", "item"], "source": {"train": {
            "arch": teacher_arch or {"type": "transformer", "layers": 2, "hidden_size": 16,
                                     "attention_heads": 2, "intermediate_size": 32},
            "epochs": 3, "lr": 0.005, "batch_size": 16}}}],
        "student": student or {"type": "transformer", "layers": 1, "hidden_size": 8,
                               "attention_heads": 2, "intermediate_size": 16},
        "distillation": {"terms": terms or ["soft"]},
        "training": {"epochs": 2, "batch_size": 16, "lr": 0.005},
    }
    spec.update(extra)
    return spec
