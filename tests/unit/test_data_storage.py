"""Where image_url points: relative, absolute, s3://, azureml:// and AmlDatastore:// on a store root;
storage settings from the environment, with credentials kept out of every repr."""

from __future__ import annotations

import pytest

from automl_vision.data.jsonl import local_jsonl
from automl_vision.data.load import load_dataset
from automl_vision.data.storage import LocationError, StorageConfig, cache_path, parse_datastores, resolve_url
from automl_vision.data.validate import ValidationOptions, validate_dataset
from automl_vision.errors import ConfigError, DataError

BASE = "/data/set"
S3_STORE = StorageConfig(store_root="s3://bucket/prefix")
LOCAL_STORE = StorageConfig(store_root="/mnt/store", datastores=(("special", "s3://other/root"),))

RESOLVED = [
    ("relative", "images/a.jpg", None, "/data/set/images/a.jpg", None, None),
    ("dot-segments", "images/../b.jpg", None, "/data/set/b.jpg", None, None),
    ("absolute", "/elsewhere/a.jpg", None, "/elsewhere/a.jpg", None, None),
    ("s3", "s3://bkt/dir/a.jpg", None, "s3://bkt/dir/a.jpg", "bkt", "dir/a.jpg"),
    ("amldatastore-on-s3", "AmlDatastore://image_data/Image_01.png", S3_STORE,
     "s3://bucket/prefix/image_data/Image_01.png", "bucket", "prefix/image_data/Image_01.png"),
    ("azureml-long-on-s3", "azureml://subscriptions/x/resourcegroups/r/workspaces/w/datastores/blobs/paths/odFridge/a.jpg",
     S3_STORE, "s3://bucket/prefix/blobs/odFridge/a.jpg", "bucket", "prefix/blobs/odFridge/a.jpg"),
    ("azureml-short", "azureml://datastores/blobs/paths/a.jpg", LOCAL_STORE, "/mnt/store/blobs/a.jpg", None, None),
    ("named-datastore-root", "AmlDatastore://special/x/a.jpg", LOCAL_STORE, "s3://other/root/x/a.jpg", "other",
     "root/x/a.jpg"),
    ("bucket-root", "AmlDatastore://ds/a.jpg", StorageConfig(store_root="s3://bucket"), "s3://bucket/ds/a.jpg",
     "bucket", "ds/a.jpg"),
]


@pytest.mark.parametrize("url, config, uri, bucket, key", [c[1:] for c in RESOLVED], ids=[c[0] for c in RESOLVED])
def test_resolve(url, config, uri, bucket, key):
    loc = resolve_url(url, BASE, BASE, config)
    assert (loc.uri, loc.bucket, loc.key) == (uri, bucket, key)
    assert loc.is_local is (bucket is None)


REFUSED = [
    ("escape", "../x.jpg", None, "path_escapes_root",
     "image_url='../x.jpg' resolves to /data/x.jpg, outside the data root /data/set"),
    ("escape-deep", "a/../../x.jpg", None, "path_escapes_root", "outside the data root /data/set"),
    ("sibling-prefix", "../set2/x.jpg", None, "path_escapes_root", "resolves to /data/set2/x.jpg, outside"),
    ("s3-no-key", "s3://bucket", None, "unsupported_uri", "'s3://bucket' must be s3://bucket/key"),
    ("https", "https://host/a.jpg", None, "unsupported_uri", "scheme https:// is not supported; allowed: a relative"),
    ("gs", "gs://b/a.jpg", None, "unsupported_uri", "scheme gs:// is not supported"),
    ("no-store", "AmlDatastore://ds/a.jpg", None, "unsupported_uri",
     "names datastore 'ds' but no store root is configured; set --store-root or AUTOML_VISION_STORE_ROOT"),
    ("amldatastore-no-path", "AmlDatastore://ds", S3_STORE, "unsupported_uri", "must be AmlDatastore://<datastore>/<path>"),
    ("datastore-escape-s3", "AmlDatastore://ds/../../../x.jpg", S3_STORE, "path_escapes_root",
     "maps outside its datastore's root s3://bucket/prefix/ds"),
    ("datastore-escape-local", "AmlDatastore://ds/../other/x.jpg", LOCAL_STORE, "path_escapes_root",
     "maps to /mnt/store/other/x.jpg, outside its datastore's root /mnt/store/ds"),
]


@pytest.mark.parametrize("url, config, code, message", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused(url, config, code, message):
    with pytest.raises(LocationError) as info:
        resolve_url(url, BASE, BASE, config)
    assert info.value.code == code
    assert message in str(info.value)


def test_data_root_wider_than_the_jsonl_folder():
    assert resolve_url("../images/a.jpg", "/data/lists", "/data", None).uri == "/data/images/a.jpg"


def test_from_env_and_secrets_never_in_repr():
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY",
           "AWS_SECRET_ACCESS_KEY": "top-secret-value", "AWS_SESSION_TOKEN": "token-value",
           "AWS_DEFAULT_REGION": "eu-west-1", "AUTOML_VISION_STORE_ROOT": "s3://bucket/p",
           "AUTOML_VISION_DATASTORES": "a=/mnt/a, b=s3://bb/x"}
    config = StorageConfig.from_env(env)
    assert config.endpoint == "http://127.0.0.1:9000" and config.region == "eu-west-1"
    assert config.access_key == "AKIAEXAMPLEKEY" and config.secret_key == "top-secret-value"
    assert config.datastores == (("a", "/mnt/a"), ("b", "s3://bb/x"))
    text = repr(config) + str(config)
    for secret in ("AKIAEXAMPLEKEY", "top-secret-value", "token-value"):
        assert secret not in text
    assert StorageConfig.from_env({**env, "AWS_ENDPOINT_URL_S3": "http://s3only:1"}).endpoint == "http://s3only:1"
    assert StorageConfig.from_env(env, store_root="/flag/wins").store_root == "/flag/wins"


def test_datastores_setting_errors():
    with pytest.raises(ConfigError, match=r"AUTOML_VISION_DATASTORES: 'oops' must be datastore=root"):
        parse_datastores("a=/x,oops", "AUTOML_VISION_DATASTORES")


def test_cache_path_is_stable_and_keeps_the_extension(tmp_path):
    a = cache_path(tmp_path, "s3://b/x/a.JPG")
    assert a == cache_path(tmp_path, "s3://b/x/a.JPG")
    assert a != cache_path(tmp_path, "s3://b/y/a.JPG")
    assert a.suffix == ".jpg" and a.parent.parent == tmp_path


# --- a JSONL file in object storage: relative image_url values name objects beside it --------------

S3_BASE = "s3://bkt/sets/fridge"

RELATIVE_TO_S3 = [
    ("beside", "images/a.jpg", S3_BASE, "s3://bkt/sets/fridge/images/a.jpg", "sets/fridge/images/a.jpg"),
    ("dot-segments", "./images/../b.jpg", S3_BASE, "s3://bkt/sets/fridge/b.jpg", "sets/fridge/b.jpg"),
    ("wider-root", "../shared/c.jpg", "s3://bkt/sets", "s3://bkt/sets/shared/c.jpg", "sets/shared/c.jpg"),
    ("bucket-root", "../../d.jpg", "s3://bkt", "s3://bkt/d.jpg", "d.jpg"),
]


@pytest.mark.parametrize("url, root, uri, key", [c[1:] for c in RELATIVE_TO_S3], ids=[c[0] for c in RELATIVE_TO_S3])
def test_relative_to_an_s3_jsonl(url, root, uri, key):
    loc = resolve_url(url, S3_BASE, root, None)
    assert (loc.uri, loc.bucket, loc.key, loc.is_local) == (uri, "bkt", key, False)


def test_an_s3_jsonl_resolves_relative_urls_and_keeps_absolute_ones():
    assert resolve_url("images/a.jpg", S3_BASE, S3_BASE, None).uri == "s3://bkt/sets/fridge/images/a.jpg"
    assert resolve_url("/mnt/data/a.jpg", S3_BASE, S3_BASE, None).uri == "/mnt/data/a.jpg"
    assert resolve_url("s3://other/x/a.jpg", S3_BASE, S3_BASE, None).uri == "s3://other/x/a.jpg"
    assert resolve_url("AmlDatastore://ds/a.jpg", S3_BASE, S3_BASE, S3_STORE).uri == "s3://bucket/prefix/ds/a.jpg"


@pytest.mark.parametrize("url, root, shown", [
    ("../x.jpg", S3_BASE, "resolves to s3://bkt/sets/x.jpg, outside the data root s3://bkt/sets/fridge"),
    ("../fridge2/x.jpg", S3_BASE, "resolves to s3://bkt/sets/fridge2/x.jpg, outside the data root"),
    ("../../../x.jpg", "s3://bkt", "resolves to s3://bkt/../x.jpg, outside the data root s3://bkt"),
    ("images/a.jpg", "s3://elsewhere/sets/fridge",
     "resolves to s3://bkt/sets/fridge/images/a.jpg, outside the data root s3://elsewhere/sets/fridge"),
], ids=["parent", "sibling-prefix", "above-the-bucket", "other-bucket"])
def test_relative_to_an_s3_jsonl_may_not_leave_the_data_root(url, root, shown):
    with pytest.raises(LocationError) as info:
        resolve_url(url, S3_BASE, root, None)
    assert info.value.code == "path_escapes_root"
    assert shown in str(info.value)


@pytest.mark.parametrize("source, message", [
    ("gs://bkt/train.jsonl", "gs://bkt/train.jsonl: scheme gs:// is not supported for a JSONL file; allowed: a "
                             "path on this machine or s3://bucket/key"),
    ("s3://bkt", "s3://bkt: a JSONL file in object storage must be given as s3://bucket/key (the key of the "
                 "file itself, not of a folder)"),
    ("s3://bkt/sets/", "s3://bkt/sets/: a JSONL file in object storage must be given as s3://bucket/key (the key "
                       "of the file itself, not of a folder)"),
], ids=["other-scheme", "bucket-only", "folder"])
def test_jsonl_locations_refused_before_any_request(source, message):
    with pytest.raises(DataError) as info:
        local_jsonl(source, config=StorageConfig(endpoint="http://127.0.0.1:9"))
    assert str(info.value) == message


def test_a_local_jsonl_keeps_its_name_and_resolves_against_its_folder(tmp_path):
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "t.jsonl").write_text("")
    jsonl = local_jsonl(str(tmp_path / "sets" / "t.jsonl"))
    assert (jsonl.name, jsonl.path, jsonl.base, jsonl.remote) == (
        str(tmp_path / "sets" / "t.jsonl"), tmp_path / "sets" / "t.jsonl", str(tmp_path / "sets"), False)
    assert local_jsonl(jsonl) is jsonl


def test_a_data_root_of_the_other_kind_than_the_jsonl_is_refused(tmp_path):
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"image_url": "a.png", "label": "x"}\n')
    with pytest.raises(ConfigError) as info:
        validate_dataset(jsonl, "image_classification", options=ValidationOptions(data_root="s3://bkt/sets"))
    assert str(info.value) == (f"data_root='s3://bkt/sets' cannot hold the images of {jsonl}, which is on this "
                               "machine; give a local folder that contains them, or no data root (the JSONL "
                               "file's own folder)")


def test_an_ingested_dataset_is_not_read_from_object_storage():
    with pytest.raises(DataError) as info:
        load_dataset("s3://bkt/runs/ingested/manifest.parquet", "image_classification")
    assert str(info.value).startswith("s3://bkt/runs/ingested/manifest.parquet: an ingested dataset is read from "
                                      "a folder on this machine (or a mounted volume), not from object storage")
