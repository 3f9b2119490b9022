"""Tables with categorical columns under the embedding encoding: codes, layout, models, export, jobs."""

import json
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from app.training import DryRunError, dry_run
from app.training.datasets.catalog import BUILTIN_DATASETS
from app.training.datasets.splits import DatasetSplits, TableLayout, with_validation
from app.training.datasets.uploaded import load_table_dataset
from app.training.errors import TrainingError
from app.training.export import load_student, write_onnx, write_safetensors, write_student_config
from app.training.loop import train
from app.training.models import build_model
from app.training.spec import ArchSpec, JobSpec, TaskSpec
from app.training.tabular import TabularEmbedding, embedding_dim

COLOUR = TaskSpec(name="colour", kind="multiclass", num_classes=3)
BIG = TaskSpec(name="big", kind="binary")
TASKS = [COLOUR, BIG]


def _frame(n: int = 90) -> pd.DataFrame:
    """Rows 0..n-1; the 'city' of test rows (split 'test') includes one never seen in train."""
    rng = np.random.default_rng(0)
    split = np.where(np.arange(n) % 5 == 0, "test", "train")
    city = rng.choice(["Oslo", "Bergen", "Tromso"], n).astype(object)
    first_test = int(np.flatnonzero(split == "test")[0])
    city[first_test] = "Unseen"
    shop = np.array([f"s{i % 7}" for i in range(n)], dtype=object)
    size = rng.normal(10, 2, n)
    colour = np.array(["red", "green", "blue"])[(np.arange(n) + (city == "Oslo")) % 3]
    return pd.DataFrame({"size": size, "city": city, "shop": shop, "weight": rng.normal(0, 1, n),
                         "colour": colour, "big": (size > 10).astype(int), "split": split})


def _load(path: Path, **kwargs: object) -> DatasetSplits:
    return load_table_dataset(path, fmt="csv", tasks=TASKS, targets={"colour": "colour", "big": "big"},
                              features=None, split_column="split", **kwargs)


@pytest.fixture()
def table(tmp_path: Path) -> Path:
    path = tmp_path / "t.csv"
    _frame().to_csv(path, index=False)
    return path


def test_embedding_encoding_puts_numbers_first_then_train_codes_with_an_unknown_bucket(table: Path):
    data = _load(table, encoding="embedding")
    frame = _frame()
    assert data.layout == TableLayout(numeric=2, cardinalities=(4, 8), names=("city", "shop"))
    assert data.input_shape == (4,)
    train, test = frame[frame.split == "train"], frame[frame.split == "test"]
    cities = sorted(set(train.city))  # Bergen, Oslo, Tromso -> 1, 2, 3
    want = torch.tensor([cities.index(c) + 1 if c in cities else 0 for c in test.city], dtype=torch.float32)
    assert torch.equal(data.x_test[:, 2], want)
    assert data.x_test[0, 2] == 0  # 'Unseen' is in the unknown bucket
    assert torch.equal(data.x_train[:, 3], torch.tensor([int(s[1:]) + 1 for s in train.shop], dtype=torch.float32))
    size = train["size"].to_numpy()  # numeric columns standardised with train statistics
    assert torch.allclose(data.x_train[:, 0], torch.tensor((size - size.mean()) / size.std(), dtype=torch.float32))
    carved = with_validation(data, fraction=0.2, seed=0, stratify_by="colour")
    assert carved.layout == data.layout  # carried through the validation carve


def test_categorical_reads_integer_code_columns_as_categories(table: Path, tmp_path: Path):
    frame = _frame()
    frame["zone"] = np.arange(len(frame)) % 4 * 10  # integer codes 0, 10, 20, 30: not quantities
    frame.loc[frame.index[frame.split == "test"][0], "zone"] = 99  # a code train never had
    path = tmp_path / "z.csv"
    frame.to_csv(path, index=False)
    plain = _load(path, encoding="embedding")
    assert plain.layout.names == ("city", "shop")  # numbers unless named
    data = _load(path, encoding="embedding", categorical=["zone"])
    assert data.layout == TableLayout(numeric=2, cardinalities=(4, 8, 5), names=("city", "shop", "zone"))
    train, test = frame[frame.split == "train"], frame[frame.split == "test"]
    codes = sorted({str(z) for z in train.zone})  # "0", "10", "20", "30" -> 1..4 (text order)
    assert torch.equal(data.x_train[:, 4], torch.tensor([codes.index(str(z)) + 1 for z in train.zone],
                                                        dtype=torch.float32))
    assert data.x_test[0, 4] == 0  # 99: the unknown bucket
    onehot = _load(path, encoding="onehot", categorical=["zone"])
    assert onehot.input_shape == (2 + 3 + 7 + 4,)
    with pytest.raises(TrainingError, match=r"categorical columns \['size'\] are not feature columns"):
        load_table_dataset(path, fmt="csv", tasks=TASKS, targets={"colour": "colour", "big": "big"},
                           features=["city"], split_column="split", categorical=["size"])
    with pytest.raises(TrainingError, match=r"columns \['nowhere'\] are not in the file"):
        _load(path, categorical=["nowhere"])


def test_hash_buckets_hash_columns_with_more_train_categories(table: Path):
    data = _load(table, encoding="embedding", hash_buckets=5)
    assert data.layout.cardinalities == (4, 6)  # city (3 categories) kept, shop (7) hashed into 5
    train = _frame().query("split == 'train'")
    want = [zlib.crc32(s.encode()) % 5 + 1 for s in train.shop]
    assert data.x_train[:, 3].tolist() == want


def test_onehot_encoding_is_unchanged(table: Path):
    from app.training.datasets.registry import load_dataset
    from app.training.spec import DatasetSpec

    spec = DatasetSpec(file=str(table), format="csv", split_column="split", encoding="onehot")
    onehot = load_dataset(spec, tasks=TASKS)
    assert onehot.layout is None
    # as before the embedding encoding: features in file order, each text column a block of its
    # sorted train categories (an unseen one all zeros), numbers standardised with train statistics
    frame = _frame()
    train = frame[frame.split == "train"]
    blocks = []
    for name in ("size", "city", "shop", "weight"):
        if name in ("city", "shop"):
            cats = sorted(set(train[name]))
            blocks.append((frame[name].to_numpy()[:, None] == np.array(cats)[None, :]).astype(np.float64))
        else:
            values = frame[name].to_numpy()
            blocks.append(((values - train[name].mean()) / train[name].std(ddof=0))[:, None])
    want = torch.from_numpy(np.concatenate(blocks, axis=1).astype(np.float32))
    rows = torch.tensor((frame.split == "test").to_numpy())
    assert onehot.input_shape == (1 + 3 + 7 + 1,)
    assert torch.allclose(onehot.x_test, want[rows], atol=1e-6)
    assert torch.allclose(onehot.x_train, want[~rows], atol=1e-6)
    assert onehot.x_test[0, 1:4].sum() == 0  # 'Unseen' is all zeros


def test_spec_defaults_tables_to_embedding_and_refuses_hash_buckets_with_onehot():
    base = {"file": "t.csv", "format": "csv"}
    spec = _spec_dict(base)
    assert JobSpec.model_validate(spec).dataset.encoding == "embedding"
    assert JobSpec.model_validate(spec).model_dump(mode="json")["dataset"]["encoding"] == "embedding"
    with pytest.raises(ValueError, match="hash_buckets: only with encoding 'embedding'"):
        JobSpec.model_validate(_spec_dict({**base, "encoding": "onehot", "hash_buckets": 4}))
    with pytest.raises(ValueError, match="only for csv or parquet"):
        JobSpec.model_validate(_spec_dict({"file": "d.npz", "format": "npz", "encoding": "onehot"}))
    with pytest.raises(ValueError, match="only for csv or parquet"):
        JobSpec.model_validate(_spec_dict({"file": "d.npz", "format": "npz", "categorical": ["a"]}))
    with pytest.raises(ValueError, match=r"dataset.categorical: \['zone'\] are not among dataset.features"):
        JobSpec.model_validate(_spec_dict({**base, "features": ["city"], "categorical": ["zone"]}))
    assert "encoding" not in JobSpec.model_validate(_spec_dict({"builtin": "digits-mt"},
                                                              tasks="digits")).model_dump(mode="json")["dataset"]


def test_embedding_widths_follow_the_rule():
    assert [embedding_dim(k) for k in (2, 4, 10, 100, 10_000)] == [2, 3, 6, 21, 32]
    front = TabularEmbedding(TableLayout(numeric=2, cardinalities=(4, 10)))
    assert [t.embedding_dim for t in front.tables] == [3, 6]
    assert [t.num_embeddings for t in front.tables] == [4, 10]
    assert front.out_features == 2 + 3 + 6


def test_front_end_output_is_numbers_then_each_columns_embedding():
    torch.manual_seed(0)
    front = TabularEmbedding(TableLayout(numeric=2, cardinalities=(4, 10)))
    x = torch.tensor([[0.5, -1.0, 3.0, 9.0], [2.0, 0.0, 0.0, 1.0]])
    out = front(x)
    for row in range(2):
        want = torch.cat([x[row, :2], front.tables[0].weight[int(x[row, 2])], front.tables[1].weight[int(x[row, 3])]])
        assert torch.equal(out[row], want)


def test_convolutional_archs_refuse_a_layout():
    with pytest.raises(ValueError, match="cnn1d cannot read a table's category codes"):
        build_model(ArchSpec(type="cnn1d"), input_shape=[4], tasks=TASKS,
                    layout=TableLayout(numeric=2, cardinalities=(4, 8)))


@pytest.mark.parametrize("arch", [{"type": "mlp", "trunk": [16], "head": [8]},
                                  {"type": "mmoe", "experts": 3, "expert": [8]},
                                  {"type": "ple", "levels": 2, "expert": [8]}])
def test_embedding_students_export_to_onnx_and_reload(tmp_path: Path, arch: dict):
    layout = TableLayout(numeric=2, cardinalities=(4, 8), names=("city", "shop"))
    spec = ArchSpec.model_validate(arch)
    torch.manual_seed(0)
    model = build_model(spec, input_shape=[4], tasks=TASKS, layout=layout).eval()
    write_student_config(arch=spec, tasks=TASKS, input_shape=[4], directory=tmp_path, layout=layout)
    write_safetensors(model, directory=tmp_path)
    write_onnx(model, task_names=["colour", "big"], input_shape=[4], directory=tmp_path)
    assert json.loads((tmp_path / "student.json").read_text())["layout"] == {
        "numeric": 2, "cardinalities": [4, 8], "names": ["city", "shop"]}
    x = torch.cat([torch.randn(20, 2), torch.randint(0, 4, (20, 1)), torch.randint(0, 8, (20, 1))], 1).float()
    reloaded = load_student(tmp_path)
    with torch.no_grad():
        want, again = model(x), reloaded(x)
    session = ort.InferenceSession(str(tmp_path / "student.onnx"))
    got = session.run(None, {"x": x.numpy()})
    for name, values in zip(["colour", "big"], got, strict=True):
        assert np.abs(values - want[name].numpy()).max() <= 1e-4
        assert torch.equal(again[name], want[name])


def _spec_dict(dataset: dict, tasks: str = "table", student: dict | None = None,
               teacher: dict | None = None) -> dict:
    task_list = ([{"name": "colour", "kind": "multiclass", "num_classes": 3}, {"name": "big", "kind": "binary"}]
                 if tasks == "table" else
                 [{"name": "digit", "kind": "multiclass", "num_classes": 10}])
    names = [t["name"] for t in task_list]
    return {"name": "emb", "dataset": dataset, "tasks": task_list,
            "teachers": [{"name": "t", "tasks": names, "source": {"train": {
                "arch": teacher or {"type": "mlp", "trunk": [16]}, "epochs": 2}}}],
            "student": student or {"type": "mmoe", "experts": 2, "expert": [8]},
            "training": {"epochs": 2, "batch_size": 16}, "export": ["safetensors", "onnx"]}


@pytest.mark.parametrize("student", [{"type": "mmoe", "experts": 2, "expert": [8]},
                                     {"type": "mlp", "trunk": [8], "head": [4]}])
def test_a_job_on_a_table_with_categorical_columns_trains_and_exports(tmp_path: Path, table: Path,
                                                                       student: dict):
    spec = JobSpec.model_validate(_spec_dict({"file": str(table), "format": "csv", "split_column": "split",
                                              "hash_buckets": 5}, student=student))
    result = train(spec, tmp_path / "work")
    assert set(result.results["tasks"]) == {"colour", "big"}
    assert result.results["tasks"]["colour"]["teacher"] is not None
    artifacts = tmp_path / "work" / "artifacts"
    config = json.loads((artifacts / "student.json").read_text())
    assert config["input_shape"] == [4] and config["layout"]["cardinalities"] == [4, 6]
    data = _load(table, encoding="embedding", hash_buckets=5)
    model = load_student(artifacts)
    with torch.no_grad():
        want = model(data.x_test)
    got = ort.InferenceSession(str(artifacts / "student.onnx")).run(None, {"x": data.x_test.numpy()})
    assert all(np.abs(g - want[n].numpy()).max() <= 1e-4 for n, g in zip(["colour", "big"], got, strict=True))


def test_a_transfer_set_file_must_hold_the_tables_codes(tmp_path: Path, table: Path):
    """Under the embedding encoding a transfer set's categorical columns are the dataset's codes:
    good ones are labelled by the teacher; a code no table row has is refused before training."""
    data = _load(table, encoding="embedding")  # city 4 codes (0..3), shop 8 (0..7)
    good = data.x_train[:20].clone()
    good[:5, 2] = 0  # the unknown bucket is a valid code
    np.savez(tmp_path / "good.npz", x=good.numpy())
    spec = _spec_dict({"file": str(table), "format": "csv", "split_column": "split"})
    spec["transfer_set"] = {"file": str(tmp_path / "good.npz")}
    result = train(JobSpec.model_validate(spec), tmp_path / "ok")
    assert result.results["rows"]["transfer"] == 20
    for column, value, shown in ((3, 8.0, "8"), (2, 1.5, "1.5"), (2, -1.0, "-1")):
        bad = good.clone()
        bad[7, column] = value
        np.savez(tmp_path / "bad.npz", x=bad.numpy())
        spec["transfer_set"] = {"file": str(tmp_path / "bad.npz")}
        name = "shop" if column == 3 else "city"
        with pytest.raises(TrainingError, match=rf"column {column} of 'x' \({name}\) holds {shown} \(row 7\)"):
            train(JobSpec.model_validate(spec), tmp_path / f"bad-{column}-{shown}")
    with pytest.raises(DryRunError, match=r"\(city\) holds -1") as refused:  # validation says it first
        dry_run(JobSpec.model_validate(spec))
    assert refused.value.field == "body.transfer_set.file"
    spec["transfer_set"] = {"file": str(tmp_path / "good.npz")}
    assert dry_run(JobSpec.model_validate(spec))["dataset"]["train_rows"] > 0


def test_a_convolutional_student_on_category_codes_fails_with_invalid_data(tmp_path: Path, table: Path):
    spec = JobSpec.model_validate(_spec_dict({"file": str(table), "format": "csv", "split_column": "split"},
                                             student={"type": "cnn1d", "channels": [4], "trunk": [8]}))
    with pytest.raises(TrainingError, match="student: cnn1d cannot read a table's category codes") as err:
        train(spec, tmp_path / "work")
    assert err.value.code == "invalid_data"


def test_a_zoo_teachers_identity_names_its_layout_and_weights_teachers_embed_it(tmp_path: Path):
    from app.training.files import LocalFileResolver
    from app.training.spec import WeightsSourceSpec
    from app.training.teachers import ModelTeacher, load_weights_teacher

    layout = TableLayout(numeric=2, cardinalities=(4, 8))
    arch = ArchSpec(type="mlp", trunk=[8])
    model = build_model(arch, input_shape=[4], tasks=TASKS, layout=layout)
    plain = build_model(arch, input_shape=[4], tasks=TASKS)
    identity = json.loads(ModelTeacher(model, arch=arch, tasks=TASKS).identity)
    assert identity["settings"]["layout"] == layout.as_json()
    assert "layout" not in json.loads(ModelTeacher(plain, arch=arch, tasks=TASKS).identity)["settings"]
    write_safetensors(model, directory=tmp_path)
    loaded = load_weights_teacher(WeightsSourceSpec(file=str(tmp_path / "student.safetensors"), arch=arch),
                                  tasks=TASKS, input_shape=[4], resolver=LocalFileResolver(), name="t",
                                  layout=layout)
    x = torch.tensor([[0.1, 0.2, 3.0, 7.0]])
    assert torch.equal(loaded.outputs(x).logits["big"], model.eval()(x)["big"])


def test_a_table_without_categorical_columns_has_no_layout(tmp_path: Path):
    path = tmp_path / "n.csv"
    _frame().drop(columns=["city", "shop"]).to_csv(path, index=False)
    embedding, onehot = _load(path, encoding="embedding"), _load(path, encoding="onehot")
    assert embedding.layout is None and torch.equal(embedding.x_train, onehot.x_train)


needs_census = pytest.mark.skipif(not BUILTIN_DATASETS["census-income"]["available"],
                                  reason=BUILTIN_DATASETS["census-income"]["requires"])


@needs_census
def test_census_embedding_codes_are_the_onehot_blocks_positions():
    from app.training.datasets import census

    emb = census.load_census(max_rows=400)
    hot = census.load_census(max_rows=400, encoding="onehot")
    assert emb.layout.numeric == 7 and len(emb.layout.cardinalities) == 32
    assert emb.input_shape == (39,) and torch.equal(emb.x_test[:, :7], hot.x_test[:, :7])
    sizes = [k - 1 for k in emb.layout.cardinalities]
    assert hot.input_shape == (7 + sum(sizes),)
    start = 7
    for i, size in enumerate(sizes):
        for x_emb, x_hot in ((emb.x_train, hot.x_train), (emb.x_test, hot.x_test)):
            block = x_hot[:, start:start + size]
            want = torch.where(block.sum(1) > 0, block.argmax(1).float() + 1, torch.zeros(()))
            assert torch.equal(x_emb[:, 7 + i], want)  # 0: a category train did not have
        start += size
    assert (emb.x_test[:, 7:] == 0).any()  # this slice holds unseen test categories


def test_census_spec_defaults_to_embedding_and_checks_archs_against_the_encoding():
    census_tasks = [{"name": "income", "kind": "binary"}, {"name": "never_married", "kind": "binary"}]

    def spec(dataset: dict, student: dict) -> dict:
        return {"name": "c", "dataset": dataset, "tasks": census_tasks,
                "teachers": [{"name": "t", "tasks": ["income", "never_married"], "source": {"train": {
                    "arch": {"type": "mlp", "trunk": [8]}}}}], "student": student}

    if not BUILTIN_DATASETS["census-income"]["available"]:
        pytest.skip(BUILTIN_DATASETS["census-income"]["requires"])
    mlp, cnn = {"type": "mlp", "trunk": [8]}, {"type": "cnn1d", "channels": [4], "trunk": [8]}
    assert JobSpec.model_validate(spec({"builtin": "census-income"}, mlp)).dataset.encoding == "embedding"
    with pytest.raises(ValueError, match="cnn1d cannot read category codes"):
        JobSpec.model_validate(spec({"builtin": "census-income"}, cnn))
    onehot = JobSpec.model_validate(spec({"builtin": "census-income", "encoding": "onehot"}, cnn))
    assert onehot.dataset.encoding == "onehot"
    with pytest.raises(ValueError, match="offers no encodings"):
        JobSpec.model_validate(_spec_dict({"builtin": "digits-mt", "encoding": "onehot"}, tasks="digits"))


@needs_census
def test_a_census_job_reads_category_codes_through_the_builtin_path(tmp_path: Path, monkeypatch):
    from app.training import dry_run
    from app.training.datasets import census
    from app.training.datasets.registry import BUILTIN_LOADERS, import_loaders, load_builtin

    import_loaders()
    # A one-hot slice is narrower than the full data's 503; the codes are 39 wide on any slice.
    monkeypatch.setitem(BUILTIN_LOADERS, "census-income", lambda *, encoding: census.load_census(
        max_rows=400, encoding="onehot"))
    with pytest.raises(TrainingError, match=r"input shape \[\d+\], expected \[39\]"):
        load_builtin("census-income")  # a loader that ignores the encoding is caught
    monkeypatch.setitem(BUILTIN_LOADERS, "census-income", lambda *, encoding: census.load_census(
        max_rows=600, encoding=encoding))
    tasks = [{"name": "income", "kind": "binary"}, {"name": "never_married", "kind": "binary"}]
    spec = JobSpec.model_validate({
        "name": "census", "dataset": {"builtin": "census-income"}, "tasks": tasks,
        "teachers": [{"name": "t", "tasks": ["income", "never_married"], "source": {"train": {
            "arch": {"type": "mmoe", "experts": 2, "expert": [16]}, "epochs": 1}}}],
        "student": {"type": "mlp", "trunk": [8], "head": [4]},
        "training": {"epochs": 1, "batch_size": 64}, "export": ["safetensors", "onnx"]})
    assert dry_run(spec)["dataset"]["layout"]["numeric"] == 7
    result = train(spec, tmp_path / "work")
    assert 0.0 <= result.results["tasks"]["income"]["student"] <= 1.0
    config = json.loads((tmp_path / "work" / "artifacts" / "student.json").read_text())
    assert config["input_shape"] == [39] and len(config["layout"]["cardinalities"]) == 32
    model = load_student(tmp_path / "work" / "artifacts")
    x = census.load_census(max_rows=600).x_test
    with torch.no_grad():
        want = model(x)
    got = ort.InferenceSession(str(tmp_path / "work" / "artifacts" / "student.onnx")).run(None, {"x": x.numpy()})
    assert all(np.abs(g - want[n].numpy()).max() <= 1e-4 for n, g in zip(["income", "never_married"], got, strict=True))
