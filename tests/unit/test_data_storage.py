"""Where image_url points: relative, absolute, s3://, azureml:// and AmlDatastore:// on a store root;
storage settings from the environment, with credentials kept out of every repr."""

from __future__ import annotations

import pytest

from automl_vision.data.storage import (
    LocationError,
    StorageConfig,
    cache_path,
    parse_datastores,
    resolve_url,
)
from automl_vision.errors import ConfigError

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
