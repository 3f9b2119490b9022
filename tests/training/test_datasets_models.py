"""Built-in dataset matches its catalog entry; the zoo builds the right heads and taps."""

import torch

from app.training.datasets.catalog import BUILTIN_DATASETS
from app.training.datasets.registry import BUILTIN_LOADERS, import_loaders, load_dataset
from app.training.models import build_model, count_params
from app.training.spec import ArchSpec, JobSpec
from tests.training.conftest import tiny_spec_dict
from tests.training.test_datasets_builtin import TOO_LARGE_FOR_THE_SUITE


def test_every_catalog_dataset_has_a_loader_that_matches_it():
    import_loaders()
    assert set(BUILTIN_LOADERS) == set(BUILTIN_DATASETS)
    for name, meta in BUILTIN_DATASETS.items():
        if name in TOO_LARGE_FOR_THE_SUITE or not meta["available"]:
            continue  # checked on slices / skipped with a reason in test_datasets_builtin.py
        splits = BUILTIN_LOADERS[name]()
        assert list(splits.input_shape) == meta["input_shape"]
        assert (len(splits.x_train), len(splits.x_test)) == (meta["n_train"], meta["n_test"])
        assert set(splits.y_train) == set(meta["tasks"])


def test_digits_split_is_fixed_stratified_and_targets_derive_from_digit():
    spec = JobSpec.model_validate(tiny_spec_dict())
    first = load_dataset(spec.dataset, tasks=spec.tasks)
    again = load_dataset(spec.dataset, tasks=spec.tasks)
    assert torch.equal(first.x_test, again.x_test)
    assert 0.0 <= first.x_train.min() and first.x_train.max() <= 1.0
    digit = first.y_test["digit"]
    assert torch.equal(first.y_test["parity"], digit % 2)
    assert torch.equal(first.y_test["large"], (digit >= 5).float())
    assert torch.bincount(digit, minlength=10).min() >= 43  # stratified: ~45 of each digit


def test_load_dataset_keeps_only_the_spec_tasks():
    data = tiny_spec_dict()
    data["tasks"] = data["tasks"][:1]
    data["teachers"] = [{**data["teachers"][0]}]
    spec = JobSpec.model_validate(data)
    assert set(load_dataset(spec.dataset, tasks=spec.tasks).y_train) == {"digit"}


def test_mlp_has_a_head_per_task_and_a_trunk_tap():
    spec = JobSpec.model_validate(tiny_spec_dict())
    model = build_model(ArchSpec(trunk=[16], head=[8]), input_shape=[64], tasks=spec.tasks)
    logits, taps = model.forward_features(torch.zeros(5, 64))
    assert {task: tuple(z.shape) for task, z in logits.items()} == {
        "digit": (5, 10), "parity": (5, 2), "large": (5, 1)}
    assert tuple(taps["trunk"].shape) == (5, 16)
    trunk = 64 * 16 + 16
    heads = sum(16 * 8 + 8 + 8 * out + out for out in (10, 2, 1))
    assert count_params(model) == trunk + heads
