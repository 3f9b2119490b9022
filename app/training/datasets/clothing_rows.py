"""The registry's loader of clothing-reviews: its default tokenisation as plain tensors.

Text jobs tokenise through text.load_text_data (the teacher's tokenizer when there is one, the
spec's max_length and vocabulary); this loader gives what a job without those choices would see
(both text columns, a WordPiece of DEFAULT_VOCAB trained on train, max_length 128), so the
registry and GET /v1/catalog describe the dataset like every other built-in.
"""

import numpy as np
import torch

from app.training.datasets.clothing import NAME, folder, load_clothing
from app.training.datasets.registry import register_builtin
from app.training.datasets.splits import DatasetSplits
from app.training.text import encode_texts, join_columns, train_wordpiece

DEFAULT_VOCAB, DEFAULT_LENGTH = 8000, 128


@register_builtin(NAME)
def load_default_rows() -> DatasetSplits:
    """Return (n, 2, 128) float32 rows of both text columns and the five targets."""
    from tokenizers import Tokenizer

    raw = load_clothing()
    columns = list(raw.texts_train)
    train = join_columns(raw.texts_train, columns)
    saved = folder() / f"wordpiece-{DEFAULT_VOCAB}.json"  # derived once, like the token rows
    if saved.is_file():
        tokenizer = Tokenizer.from_file(str(saved))
    else:
        tokenizer = train_wordpiece(train, DEFAULT_VOCAB)
        tokenizer.save(str(saved.with_suffix(".tmp")))
        saved.with_suffix(".tmp").replace(saved)

    def rows(texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(encode_texts(tokenizer, texts, max_length=DEFAULT_LENGTH,
                                             cache_dir=folder()).astype(np.float32))

    return DatasetSplits(x_train=rows(train), x_test=rows(join_columns(raw.texts_test, columns)),
                         y_train={t: torch.from_numpy(y) for t, y in raw.y_train.items()},
                         y_test={t: torch.from_numpy(y) for t, y in raw.y_test.items()}, notes=raw.notes)
