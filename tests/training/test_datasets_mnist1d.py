"""MNIST-1D comes from the package's generator; transfer sets are new, fixed by seed, cached."""

import numpy as np
import pytest
import torch

from app.training.datasets import mnist1d
from app.training.datasets.registry import generate_transfer_set, load_builtin
from app.training.errors import TrainingError


@pytest.fixture
def small_chunks(monkeypatch):
    """Make transfer chunks small so that multi-chunk behaviour is tested in milliseconds."""
    monkeypatch.setattr(mnist1d, "CHUNK", 20)


def test_mnist1d_is_the_papers_dataset_with_derived_tasks():
    from mnist1d.data import get_dataset_args, make_dataset

    reference = make_dataset(get_dataset_args())
    splits = load_builtin("mnist1d-mt")
    assert torch.equal(splits.x_test, torch.tensor(reference["x_test"], dtype=torch.float32))
    assert torch.equal(splits.y_train["digit"], torch.tensor(reference["y"]))
    digit = splits.y_test["digit"]
    assert torch.equal(splits.y_test["parity"], digit % 2)
    assert torch.equal(splits.y_test["large"], (digit >= 5).float())


def test_loading_leaves_the_global_rngs_alone():
    mnist1d._canonical.cache_clear()
    np.random.seed(7)
    expected = np.random.rand(3)
    np.random.seed(7)
    load_builtin("mnist1d-mt")
    assert np.array_equal(np.random.rand(3), expected)


def test_transfer_normalisation_is_the_datasets_own():
    # Re-drawing the seed-42 pool and normalising it with the stored stats gives the dataset back.
    mean, std = mnist1d._canonical_raw_stats()
    with mnist1d._seeded_global_rng(mnist1d.CANONICAL_SEED):
        raw = mnist1d._raw_signals(np.repeat(np.arange(10), 500))
    ours = ((raw - mean) / std).astype(np.float32)
    split = load_builtin("mnist1d-mt")
    theirs = torch.cat([split.x_train, split.x_test]).numpy()
    order = lambda x: x[np.lexsort(x.T[::-1])]  # noqa: E731  (rows sorted: make_dataset shuffles)
    assert np.allclose(order(ours), order(theirs), atol=1e-6)


def test_transfer_sets_are_fixed_by_seed_and_grow_by_prefix(small_chunks):
    first = generate_transfer_set("mnist1d-mt", 50, seed=3)
    assert first.shape == (50, 40) and first.dtype == torch.float32
    assert torch.isfinite(first).all()
    assert torch.equal(first, generate_transfer_set("mnist1d-mt", 50, seed=3))
    assert torch.equal(first[:30], generate_transfer_set("mnist1d-mt", 30, seed=3))
    assert not torch.equal(first, generate_transfer_set("mnist1d-mt", 50, seed=4))
    assert len({row.numpy().tobytes() for row in first}) == 50


def test_transfer_chunk_seeds_are_apart_from_the_datasets_seed():
    seeds = {mnist1d.chunk_seed(seed, index) for seed in range(20) for index in range(50)}
    assert len(seeds) == 1000 and mnist1d.CANONICAL_SEED not in seeds


def test_transfer_set_shares_no_input_with_the_dataset_and_has_its_units(monkeypatch):
    monkeypatch.setattr(mnist1d, "CHUNK", 1000)
    transfer = generate_transfer_set("mnist1d-mt", 2000, seed=0)
    splits = load_builtin("mnist1d-mt")
    dataset = {row.numpy().tobytes() for row in torch.cat([splits.x_train, splits.x_test])}
    assert not any(row.numpy().tobytes() in dataset for row in transfer)
    assert abs(transfer.mean() - splits.x_train.mean()) < 0.1
    assert abs(transfer.std() / splits.x_train.std() - 1) < 0.1


def test_a_transfer_input_equal_to_a_dataset_input_is_replaced(small_chunks, monkeypatch):
    plain = generate_transfer_set("mnist1d-mt", 25, seed=1)
    taken = mnist1d._dataset_rows() | {plain[0].numpy().tobytes()}
    monkeypatch.setattr(mnist1d, "_dataset_rows", lambda: taken)
    guarded = generate_transfer_set("mnist1d-mt", 25, seed=1)
    assert torch.equal(guarded[:24], plain[1:])
    assert not torch.equal(guarded[24], plain[0])


def test_transfer_chunks_are_cached_on_disk(small_chunks, tmp_path, monkeypatch):
    fresh = generate_transfer_set("mnist1d-mt", 30, seed=2, cache_dir=tmp_path)
    assert len(list((tmp_path / "mnist1d-mt").glob("*.npy"))) == 2
    monkeypatch.setattr(mnist1d, "_generate_chunk", lambda seed, index: pytest.fail("regenerated"))
    assert torch.equal(generate_transfer_set("mnist1d-mt", 30, seed=2, cache_dir=tmp_path), fresh)


def test_only_generative_datasets_make_transfer_sets():
    with pytest.raises(TrainingError) as error:
        generate_transfer_set("digits-mt", 10, seed=0)
    assert error.value.code == "no_transfer_generator"
    with pytest.raises(TrainingError):
        generate_transfer_set("mnist1d-mt", 0, seed=0)
