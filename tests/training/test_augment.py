"""training.augment: random padded crops and flips, the spec's rules, and a job that resumes exactly."""

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from app.training import stage
from app.training.augment import augment_images, crop_and_flip
from app.training.catalog import AUGMENTATIONS
from app.training.checkpoint import capture_rng, restore_rng
from app.training.errors import TrainingError
from app.training.loop import Result, train
from app.training.spec import JobSpec
from app.training.spec_sections import AugmentSpec
from app.training.teachers import ModelTeacher
from tests.training.conftest import tiny_spec_dict
from tests.training.test_archs import digit_images
from tests.training.test_loop import Recorder

CROP_AND_FLIP = {"crop_padding": 1, "flip": True}


def images(*shape: int) -> torch.Tensor:
    """Return a seeded batch with no zero pixel, so a window of the padded image is unique."""
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0)) + 1


def window(image: torch.Tensor, padding: int, top: int, left: int, flipped: bool) -> torch.Tensor:
    """Cut one image's window out of its zero-padded copy by hand (image: ([C,] H, W))."""
    height, width = image.shape[-2:]
    padded = torch.zeros(*image.shape[:-2], height + 2 * padding, width + 2 * padding)
    padded[..., padding:padding + height, padding:padding + width] = image
    cut = padded[..., top:top + height, left:left + width]
    return cut.flip(-1) if flipped else cut


def test_crop_and_flip_matches_a_per_image_loop():
    x = images(6, 2, 4, 5)  # (batch, C, H, W)
    offsets = torch.tensor([[0, 4, 2, 1, 3, 0], [4, 0, 2, 3, 1, 4]])  # (2, batch): top, left
    flipped = torch.tensor([False, True, False, True, True, False])
    out = crop_and_flip(x, offsets=offsets, flipped=flipped, padding=2)
    assert out.shape == x.shape
    for i in range(len(x)):
        want = window(x[i], 2, int(offsets[0, i]), int(offsets[1, i]), bool(flipped[i]))
        assert torch.equal(out[i], want)


def test_random_crops_are_windows_of_the_zero_padded_images():
    x = images(8, 5, 6)  # (batch, H, W): rank-2 images
    torch.manual_seed(0)
    out = augment_images(x, crop_padding=2, flip=False)
    assert out.shape == x.shape
    shifts = []
    for i in range(len(x)):
        found = [(top, left) for top in range(5) for left in range(5)
                 if torch.equal(out[i], window(x[i], 2, top, left, False))]
        assert len(found) == 1
        shifts.append(found[0])
    assert len(set(shifts)) > 1  # each image draws its own crop


def test_flip_mirrors_exactly_the_flagged_images():
    x = images(6, 1, 3, 4)
    flipped = torch.tensor([True, False, False, True, True, False])
    out = crop_and_flip(x, offsets=torch.zeros(2, 6, dtype=torch.long), flipped=flipped, padding=0)
    assert torch.equal(out[flipped], x[flipped].flip(-1))
    assert torch.equal(out[~flipped], x[~flipped])

    torch.manual_seed(0)
    out = augment_images(x, crop_padding=0, flip=True)
    mirrored = [torch.equal(out[i], x[i].flip(-1)) for i in range(len(x))]
    assert all(m or torch.equal(out[i], x[i]) for i, m in enumerate(mirrored))
    assert 0 < sum(mirrored) < len(x)  # p = 0.5 per image


def test_a_no_op_config_returns_the_input_and_draws_nothing():
    x = images(4, 1, 3, 3)
    before = torch.get_rng_state()
    assert augment_images(x, crop_padding=0, flip=False) is x
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("shape", [(4, 64), (4, 1, 1, 8, 8)])
def test_inputs_that_are_not_images_are_refused(shape: tuple[int, ...]):
    with pytest.raises(TrainingError) as caught:
        augment_images(torch.zeros(shape), crop_padding=1, flip=True)
    assert caught.value.code == "invalid_data"
    assert "training.augment" in caught.value.message and str(list(shape[1:])) in caught.value.message


def test_draws_come_from_the_global_rng_that_checkpoints_capture():
    x = images(16, 1, 6, 6)
    rng = capture_rng(torch.Generator(), torch.device("cpu"))
    first = augment_images(x, crop_padding=2, flip=True)
    restore_rng(rng, torch.Generator(), torch.device("cpu"))
    assert torch.equal(augment_images(x, crop_padding=2, flip=True), first)


def test_the_catalog_lists_every_augment_field():
    assert set(AUGMENTATIONS) == set(AugmentSpec.model_fields)


def image_file_spec(**sections: Any) -> dict[str, Any]:
    """Return the tiny spec on an uploaded file, whose shape validation cannot know."""
    data = tiny_spec_dict(**sections)
    data["dataset"] = {"file": "images.npz", "format": "npz"}
    return data


def test_augment_with_cached_teacher_targets_is_refused_naming_both_fields():
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(image_file_spec(training={"augment": {"flip": True}}))
    error = caught.value.errors()[0]
    assert error["loc"] == ("training",) and error["type"] == "augment_without_online"
    assert "training.augment" in error["msg"] and "distillation.online" in error["msg"]
    spec = JobSpec.model_validate(image_file_spec(training={"augment": {"flip": True}},
                                                  distillation={"online": True}))
    assert spec.model_dump(mode="json")["training"]["augment"] == {"crop_padding": 0, "flip": True}
    # A config that changes nothing needs no online teachers.
    JobSpec.model_validate(image_file_spec(training={"augment": {}}))


def test_augment_on_a_builtin_dataset_without_images_is_refused():
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(tiny_spec_dict(training={"augment": CROP_AND_FLIP},
                                              distillation={"online": True}))
    error = caught.value.errors()[0]
    assert error["type"] == "augment_input_rank"
    assert "training.augment" in error["msg"] and "'digits-mt' has inputs [64]" in error["msg"]
    tasks = [{"name": "left", "kind": "multiclass", "num_classes": 10}]
    JobSpec.model_validate(tiny_spec_dict(
        dataset={"builtin": "multimnist-5k"}, tasks=tasks, distillation={"online": True},
        teachers=[{"name": "t", "tasks": ["left"], "source": {"train": {"arch": {"type": "mlp"}}}}],
        training={"augment": CROP_AND_FLIP}))


def augmented_spec(directory: Path) -> JobSpec:
    """Return a tiny online-KD job on 8x8 digit images with crops and flips."""
    data = tiny_spec_dict(distillation={"online": True}, export=[],
                          training={"epochs": 2, "batch_size": 256, "augment": CROP_AND_FLIP})
    data["dataset"] = {"file": str(digit_images(directory)), "format": "npz"}
    data["student"] = {"type": "cnn2d", "channels": [4], "kernel_size": 3, "trunk": []}
    for entry in data["teachers"]:
        entry["source"]["train"]["epochs"] = 1
    return JobSpec.model_validate(data)


@pytest.fixture(scope="module")
def augmented_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Train the augmented job once, recording each augmentation and each teacher input."""
    directory = tmp_path_factory.mktemp("augmented")
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []  # (batch before, batch after)
    teacher_inputs: list[torch.Tensor] = []

    def recording_augment(x: torch.Tensor, **config: Any) -> torch.Tensor:
        out = augment_images(x, **config)
        calls.append((x, out))
        return out

    def recording_outputs(self: ModelTeacher, x: torch.Tensor) -> Any:
        teacher_inputs.append(x)
        return real_outputs(self, x)

    real_outputs = ModelTeacher.outputs
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stage, "augment_images", recording_augment)
        patch.setattr(ModelTeacher, "outputs", recording_outputs)
        result = train(augmented_spec(directory), directory / "job", job_id="job-augment")
    yield {"result": result, "workdir": directory / "job", "data": directory, "calls": calls,
           "teacher_inputs": teacher_inputs}


def test_the_student_and_baseline_train_on_augmented_batches_the_teachers_label(
        augmented_run: dict[str, Any]):
    steps = {s["name"]: s["steps"] for s in augmented_run["result"].results["stages"]}
    calls = augmented_run["calls"]
    assert len(calls) == steps["student"] + steps["baseline"]  # teachers train on clean rows
    assert all(after.shape == before.shape for before, after in calls)
    assert not all(torch.equal(before, after) for before, after in calls)
    augmented = [after for _, after in calls]
    labelled = [x for x in augmented_run["teacher_inputs"] if any(x is out for out in augmented)]
    assert len(labelled) == 2 * steps["student"]  # both online teachers, every student step


def test_resume_after_a_crash_repeats_an_augmented_run(augmented_run: dict[str, Any],
                                                       tmp_path: Path):
    spec = augmented_spec(augmented_run["data"])
    with pytest.raises(RuntimeError, match="worker died"):
        train(spec, tmp_path, callbacks=Recorder(crash_at=("student", 1)), job_id="job-augment")
    resumed = train(spec, tmp_path, job_id="job-augment")
    reference: Result = augmented_run["result"]
    assert resumed.results["tasks"] == reference.results["tasks"]

    def rows(workdir: Path) -> list[dict[str, str]]:
        with open(workdir / "artifacts" / "metrics.csv", newline="") as handle:
            return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]

    assert rows(tmp_path) == rows(augmented_run["workdir"])
