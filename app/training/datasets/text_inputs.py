"""TextInputs: what a model needs to know about tokenised text rows (no torch, no tokenizers).

Text rows reach every stage as x (n, 2, max_length) float32: x[:, 0] the token ids, x[:, 1] the
attention mask (1 real token, 0 padding). Ids are exact in float32 (below 2**24), so batching,
splits, the teacher-output cache and the checkpoint treat text like any other input.
"""

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TextInputs:
    """The tokenizer behind a text dataset's x, and the pretrained backbones its models load."""

    vocab_size: int  # ids in x are < vocab_size
    pad_id: int
    unk_id: int
    max_length: int
    tokenizer_json: str  # the tokenizer, serialised (exported as tokenizer.json with the student)
    tokenizer_sha256: str
    kept_ids: tuple[int, ...] = ()  # ids seen in train + special ids, sorted (vocabulary pruning)
    backbones: dict[str, Path] = field(default_factory=dict)  # arch.backbone -> checked folder
    attention_taps: bool = False  # models run eager attention and expose attention maps
