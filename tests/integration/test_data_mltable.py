"""MLTable folders as training_data / validation_data: local, in object storage (moto's S3 server on
127.0.0.1) and behind a datastore URI; read by train, ingest and validate; and the parts of the MLTable
format that are not read refused with a message naming them."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from minio import Minio
from moto.server import ThreadedMotoServer

from automl_vision.cli import main
from automl_vision.data import problems as P
from automl_vision.data.load import load_dataset
from automl_vision.data.manifest import ingest, read_manifest
from automl_vision.data.storage import StorageConfig
from automl_vision.data.validate import ValidationOptions, validate_dataset
from automl_vision.errors import DataError
from automl_vision.spec.tasks import ImageTask

MC = ImageTask.IMAGE_CLASSIFICATION
BUCKET = "automl-mltable"
ACCESS_KEY = "AKIAMLTABLETESTKEY1"
SECRET_KEY = "mltable-s3cr3t-not-for-printing"

# What the original product's image examples write (prepare_data.py of the fridge-items jobs).
PRODUCT_MLTABLE = """paths:
  - file: ./{name}
transformations:
  - read_json_lines:
        encoding: utf8
        invalid_lines: error
        include_path_column: false
  - convert_column_types:
      - columns: image_url
        column_type: stream_info
"""


def _mltable_folder(folder: Path, jsonl: Path, text: str | None = None) -> Path:
    (folder / "MLTable").write_text(text if text is not None else PRODUCT_MLTABLE.format(name=jsonl.name))
    return folder


@pytest.fixture
def fridge(tmp_path, make_dataset):
    """The product's layout: data/training-mltable-folder/{MLTable, train_annotations.jsonl} and
    data/validation-mltable-folder/{MLTable, validation_annotations.jsonl}, each beside its images."""
    data = tmp_path / "data"
    train = make_dataset(data / "training-mltable-folder", n_per_class=4, size=16, name="train_annotations.jsonl")
    val = make_dataset(data / "validation-mltable-folder", n_per_class=2, size=16, seed=1,
                       name="validation_annotations.jsonl")
    return _mltable_folder(train.parent, train), _mltable_folder(val.parent, val)


def test_ingest_and_validate_read_local_mltable_folders(fridge, tmp_path, capsys):
    train, val = fridge
    done = ingest(train, MC, tmp_path / "ingested", validation=val)
    assert done.report.files == [f"{train}/MLTable -> {train}/train_annotations.jsonl",
                                 f"{val}/MLTable -> {val}/validation_annotations.jsonl"]
    records = read_manifest(tmp_path / "ingested", MC).records
    assert [r.split for r in records] == ["train"] * 8 + ["validation"] * 4
    assert all(Path(r.path).is_file() for r in records)
    # the MLTable file itself may be given, too
    assert len(load_dataset(train / "MLTable", MC).records) == 8
    code = main(["data", "validate", str(train), "--task", MC.value, "--validation_data", str(val)])
    assert code == 0, capsys.readouterr().err


def test_problems_name_the_mltable_and_its_jsonl_line(fridge):
    train, _ = fridge
    jsonl = train / "train_annotations.jsonl"
    rows = jsonl.read_text().splitlines()
    rows[2] = json.dumps({"image_url": "images/ghost.png", "label": "red"})
    jsonl.write_text("\n".join(rows) + "\n")
    report = validate_dataset(train, MC).report
    assert [(p.line, p.code) for p in report.problems] == [(3, P.IMAGE_MISSING)]
    assert str(report.problems[0]).startswith(
        f"{train}/MLTable -> {jsonl}:3: image_url='images/ghost.png': image not found at ")


def test_invalid_lines_drop_and_other_encodings(fridge, tmp_path):
    train, _ = fridge
    jsonl = train / "train_annotations.jsonl"
    rows = jsonl.read_text().splitlines()
    rows.insert(1, '{"image_url": "images/broken.png", "label": ')
    text = "\n".join(rows) + "\n"
    jsonl.write_bytes(text.encode("utf-16"))
    mltable = PRODUCT_MLTABLE.format(name=jsonl.name).replace("encoding: utf8", "encoding: utf16")
    _mltable_folder(train, jsonl, mltable)
    options = ValidationOptions(cache_dir=str(tmp_path / "cache"))
    report = validate_dataset(train, MC, options=options).report
    assert [(p.line, p.code) for p in report.problems] == [(2, P.BAD_JSON)]
    _mltable_folder(train, jsonl, mltable.replace("invalid_lines: error", "invalid_lines: drop"))
    ds = load_dataset(train, MC, options=options)
    assert len(ds.records) == 8
    assert [r.line for r in ds.records] == [1, 3, 4, 5, 6, 7, 8, 9]  # the dropped line keeps the others' numbers
    assert all(Path(r.path).is_file() for r in ds.records)
    assert jsonl.read_bytes() == text.encode("utf-16")  # the user's file is never rewritten


UNSUPPORTED = [
    ("take", "  - take: 5\n", "transformations[2]: transformation 'take' is not supported; allowed: read_json_lines "
                             "(encoding, invalid_lines, include_path_column) and convert_column_types of image_url "
                             "to stream_info"),
    ("convert-label", "  - convert_column_types:\n      - columns: label\n        column_type: string\n",
     "transformations[2]: convert_column_types {'columns': 'label', 'column_type': 'string'} is not supported"),
]


@pytest.mark.parametrize("extra, message", [c[1:] for c in UNSUPPORTED], ids=[c[0] for c in UNSUPPORTED])
def test_other_transformations_are_refused(fridge, extra, message, capsys):
    train, _ = fridge
    _mltable_folder(train, train / "train_annotations.jsonl",
                    PRODUCT_MLTABLE.format(name="train_annotations.jsonl") + extra)
    code = main(["data", "validate", str(train), "--task", MC.value])
    assert code == 2
    assert f"{train}/MLTable: {message}" in capsys.readouterr().err


BAD_MLTABLES = [
    ("read-parquet",
     "paths:\n  - file: ./x.parquet\ntransformations:\n  - read_parquet:\n      include_path_column: false\n",
     "transformations[0]: transformation 'read_parquet' is not supported"),
    ("no-transformations", "paths:\n  - file: ./train_annotations.jsonl\n",
     "transformations must be a list starting with read_json_lines"),
    ("encoding", PRODUCT_MLTABLE.replace("utf8", "ebcdic"),
     "transformations[0]: read_json_lines encoding: 'ebcdic'; allowed: utf8, utf8bom, ascii, iso88591, latin1, "
     "windows1252, utf16, utf32"),
    ("invalid-lines", PRODUCT_MLTABLE.replace("invalid_lines: error", "invalid_lines: skip"),
     "transformations[0]: read_json_lines invalid_lines: 'skip'; allowed: error, drop"),
    ("unknown-key", "path: ./train_annotations.jsonl\n" + PRODUCT_MLTABLE,
     "key 'path' is not an MLTable key; allowed: $schema, type, paths, transformations, traits, metadata"),
    ("https", PRODUCT_MLTABLE.replace("./{name}", "https://example.com/train.jsonl"),
     "paths[0]: 'https://example.com/train.jsonl': scheme https:// is not supported"),
    ("two-files", PRODUCT_MLTABLE.replace("- file: ./{name}", "- pattern: ./*.jsonl"),
     "paths name 2 JSONL files ("),
    ("missing-file", PRODUCT_MLTABLE.replace("./{name}", "./nowhere.jsonl"),
     "the JSONL file it names is not found at "),
]


@pytest.mark.parametrize("text, message", [c[1:] for c in BAD_MLTABLES], ids=[c[0] for c in BAD_MLTABLES])
def test_unsupported_or_broken_mltable_files(fridge, text, message):
    train, _ = fridge
    (train / "extra.jsonl").write_text((train / "train_annotations.jsonl").read_text())
    _mltable_folder(train, train / "train_annotations.jsonl", text.replace("{name}", "train_annotations.jsonl"))
    with pytest.raises(DataError) as info:
        validate_dataset(train, MC)
    assert f"{train}/MLTable: {message}" in str(info.value)


# --- object storage and datastore URIs ---------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_server():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    yield server.get_host_and_port()
    server.stop()


def _upload_folder(s3_server, folder: Path, prefix: str) -> None:
    client = Minio(f"{s3_server[0]}:{s3_server[1]}", access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False,
                   region="us-east-1")
    if not client.bucket_exists(BUCKET):
        client.make_bucket(BUCKET)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            client.put_object(BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}", io.BytesIO(data), len(data))


def _storage(port: int, **changes) -> StorageConfig:
    return StorageConfig(endpoint=f"http://127.0.0.1:{port}", access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                         region="us-east-1", backoff_s=0.01, **changes)


def test_mltable_folders_in_object_storage_and_behind_a_datastore_uri(s3_server, fridge, tmp_path):
    train, val = fridge
    val_text = PRODUCT_MLTABLE.replace("- file: ./{name}", "- folder: ./")  # every .jsonl under the folder
    _mltable_folder(val, val / "validation_annotations.jsonl", val_text)
    _upload_folder(s3_server, train.parent, "root/workspaceblobstore/fridge")
    options = ValidationOptions(storage=_storage(s3_server[1]), cache_dir=str(tmp_path / "cache"))
    uri = f"s3://{BUCKET}/root/workspaceblobstore/fridge/training-mltable-folder"
    val_uri = f"s3://{BUCKET}/root/workspaceblobstore/fridge/validation-mltable-folder/MLTable"  # the file itself
    done = ingest(uri, MC, tmp_path / "ingested", validation=val_uri, options=options)
    assert done.report.files == [f"{uri}/MLTable -> {uri}/train_annotations.jsonl",
                                 f"{val_uri} -> {val_uri[:-len('MLTable')]}validation_annotations.jsonl"]
    records = read_manifest(tmp_path / "ingested", MC).records
    assert len(records) == 12 and records[0].uri.startswith(f"{uri}/images/")
    assert all((tmp_path / "cache") in Path(r.path).parents for r in records)  # fetched into the cache

    # the same folder named as the product names it, mapped onto the store root
    datastore = ("azureml://subscriptions/sub/resourcegroups/rg/workspaces/ws/datastores/workspaceblobstore/paths/"
                 "fridge/training-mltable-folder")
    options = ValidationOptions(storage=_storage(s3_server[1], store_root=f"s3://{BUCKET}/root"),
                                cache_dir=str(tmp_path / "cache"))
    report = validate_dataset(datastore, MC, options=options).report
    assert report.ok and report.images == 8
    assert report.files == [f"{datastore}/MLTable -> {uri}/train_annotations.jsonl"]

    with pytest.raises(DataError) as info:
        validate_dataset(f"s3://{BUCKET}/root/workspaceblobstore/fridge/nothing-here", MC, options=options)
    assert (f"cannot read s3://{BUCKET}/root/workspaceblobstore/fridge/nothing-here/MLTable: object not found "
            "(NoSuchKey)") in str(info.value)
    assert "an MLTable folder holds a file named MLTable" in str(info.value)
    assert SECRET_KEY not in str(info.value)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_train_reads_an_mltable_folder_in_object_storage(s3_server, fridge, tmp_path, monkeypatch, capsys):
    """What a trial pod runs with an MLTable training_data: the folder only in the bucket."""
    train, val = fridge
    _upload_folder(s3_server, train.parent, "trial/data")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{s3_server[1]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = tmp_path / "trial"
    root_logger, handlers = logging.getLogger(), list(logging.getLogger().handlers)
    try:
        code = main(["train", "--task", MC.value,
                     "--training_data", f"s3://{BUCKET}/trial/data/training-mltable-folder",
                     "--validation_data", f"s3://{BUCKET}/trial/data/validation-mltable-folder",
                     "--model_name", "resnet18", "--pretrained", "0", "--number_of_epochs", "1",
                     "--train_crop_size", "16", "--valid_resize_size", "16", "--valid_crop_size", "16",
                     "--training_batch_size", "4", "--validation_batch_size", "4", "--device", "cpu",
                     "--num_workers", "0", "--output-dir", str(out)])
    finally:
        for handler in root_logger.handlers:
            if handler not in handlers:
                handler.close()
        root_logger.handlers[:] = handlers
    assert code == 0, capsys.readouterr().err[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "completed" and result["epochs_completed"] == 1
