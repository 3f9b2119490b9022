"""The `teacher_hf` upload: a zipped Hugging Face encoder checkpoint, checked without extracting it.

The rules live in the engine (app/training/hf_archive.py) because the worker applies them again when
it extracts; this module turns a refusal into a 400 naming the file and the rule that refused it.
"""

from pathlib import Path
from typing import Any

from app.files.uploads import BadUpload


def check_hf_zip(path: Path) -> dict[str, Any]:
    """Return the checkpoint's summary (family, sizes, tokenizer) or raise BadUpload saying what is refused."""
    from app.training.hf_archive import check_hf_archive
    from app.training.hf_config import HFCheckpointError

    with path.open("rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            raise BadUpload("a teacher_hf file is a zip of a Hugging Face checkpoint folder (config.json, "
                            "model.safetensors and tokenizer files)",
                            errors=[{"field": "body.file", "message": "not a zip archive", "type": "invalid"}])
    try:
        return check_hf_archive(path)
    except HFCheckpointError as exc:
        raise BadUpload(exc.message, errors=[{"field": "body.file", "message": exc.message,
                                              "type": exc.reason}]) from exc
