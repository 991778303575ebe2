"""The "bad input" policy of docs/data.md, one test per row: images too thin to resize, JSON nested too
deeply, s3:// URIs and endpoints holding ':' or '@', symbolic links leaving the data folder, and EXIF
orientation (an image is what a viewer shows). Each refusal is a data or config problem (exit 2)
naming the file:line, the value and what is allowed."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from automl_vision.cli import main
from automl_vision.data import problems as P
from automl_vision.data.classification import ClassificationSample
from automl_vision.data.convert.common import image_size
from automl_vision.data.images import as_displayed, displayed_size, inspect_image, read_rgb, shape_problem
from automl_vision.data.jsonl import local_jsonl
from automl_vision.data.load import load_dataset
from automl_vision.data.storage import StorageConfig, minio_client, parse_s3
from automl_vision.data.validate import ValidationOptions, validate_dataset
from automl_vision.errors import ConfigError, DataError
from automl_vision.models.preprocessing import valid_transform
from automl_vision.report.evaluation import _open
from automl_vision.spec.tasks import ImageTask
from automl_vision.training.classification_data import ImageClassificationDataset
from automl_vision.training.detection_common import read_image
from image_bytes import png_claiming

MC = ImageTask.IMAGE_CLASSIFICATION
OD = ImageTask.IMAGE_OBJECT_DETECTION
SECRET = "pw-never-shown-7c1"


def _png(image: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **save)
    return buf.getvalue()


def _write(folder: Path, lines: list, name: str = "train.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


# --- images too thin to resize ----------------------------------------------------------------------

def test_thin_image_refused_from_the_header_naming_file_line_size_and_limit(tmp_path, capsys):
    (tmp_path / "ok.png").write_bytes(_png(Image.new("RGB", (32, 24))))
    (tmp_path / "thin.png").write_bytes(png_claiming(5_000_000, 1))  # 5,000,000 pixels: under the pixel limit
    data = _write(tmp_path, [{"image_url": "ok.png", "label": "a"}, {"image_url": "thin.png", "label": "b"}])
    for decode in (False, True):
        report = validate_dataset(data, MC, options=ValidationOptions(decode_images=decode)).report
        assert [(p.code, p.line) for p in report.problems] == [(P.ASPECT_RATIO, 2)]
        text = str(report.problems[0])
        assert text.startswith(f"{data}:2: image_url='thin.png'")
        assert "is 5000000x1, an aspect ratio of 5,000,000:1, over the limit of 100:1" in text
    assert main(["data", "validate", str(data), "--task", "image_classification"]) == 2
    assert "over the limit of 100:1" in capsys.readouterr().out


def test_resized_size_limit():
    assert shape_problem(4000, 3000) is None
    assert shape_problem(100, 1, input_size=800) is None  # 80,000 x 800: 64 million pixels
    code, text = shape_problem(100, 1, input_size=1000)  # 100,000 x 1,000 once resized
    assert code == P.TOO_MANY_PIXELS
    assert "resized to a shorter side of 1000 it would be 100000x1000 = 100,000,000 pixels, over the limit" in text
    assert shape_problem(101, 1)[0] == P.ASPECT_RATIO


def test_training_readers_refuse_a_thin_image_before_resizing_it(tmp_path):
    """The trial's readers check the image again (a manifest may predate the rule): a data problem at
    file:line instead of the resize asking for hundreds of gigabytes."""
    thin = tmp_path / "thin.png"
    Image.new("RGB", (1_000_000, 1), (9, 9, 9)).save(thin)
    assert thin.stat().st_size < 10_000
    hp = {"valid_resize_size": 256, "valid_crop_size": 224, "train_crop_size": 224}
    ds = ImageClassificationDataset([ClassificationSample(str(thin), ("a",), 7, "train.jsonl")], ["a", "b"],
                                    valid_transform(hp), False, input_size=256)
    with pytest.raises(DataError, match=r"^train\.jsonl:7: image .*thin\.png is 1000000x1, an aspect ratio of "
                                        r"1,000,000:1, over the limit of 100:1"):
        ds[0]
    with pytest.raises(DataError, match=r"^train\.jsonl:3: image .*thin\.png is 1000000x1"):
        read_image(str(thin), "train.jsonl:3")
    with pytest.raises(DataError, match=r"^x\.jsonl:1: image .* it would be 256000000x256 = 65,536,000,000 pixels"):
        read_rgb(str(tmp_path / "thin.png"), where="x.jsonl:1", input_size=256, max_aspect_ratio=10**7)


# --- JSON nested too deeply ---------------------------------------------------------------------------

def test_deeply_nested_json_is_a_problem_at_file_line(tmp_path, capsys):
    deep = '{"image_url": "a.jpg", "label": ' + "[" * 100_000 + "]" * 100_000 + "}"
    data = _write(tmp_path, [{"image_url": "b.jpg", "label": []}, deep])
    report = validate_dataset(data, OD, options=ValidationOptions(check_files=False)).report
    assert [(p.code, p.line) for p in report.problems] == [(P.BAD_JSON, 2)]
    assert str(report.problems[0]).startswith(f"{data}:2: JSON nested too deeply")
    assert main(["data", "validate", str(data), "--task", "image_object_detection", "--images", "none"]) == 2
    assert f"{data}:2: JSON nested too deeply" in capsys.readouterr().out


# --- s3:// URIs and endpoints with ':' or '@' ----------------------------------------------------------

@pytest.mark.parametrize("url, fragment", [
    ("s3://buc:ket/a.jpg", "bucket name 'buc:ket' cannot hold ':'"),
    ("s3://bucket:9000/a.jpg", "set AWS_ENDPOINT_URL=http://host:port"),
    (f"s3://user:{SECRET}@bucket/a.jpg", "a user name or password cannot be written in an s3:// URI"),
    ("s3://Bad_Bucket!/a.jpg", "bucket name 'Bad_Bucket!' is not valid; allowed: 3-63"),
])
def test_invalid_s3_uri_is_a_problem_naming_it(tmp_path, url, fragment):
    data = _write(tmp_path, [{"image_url": url, "label": "a"}])
    report = validate_dataset(data, MC, options=ValidationOptions(storage=StorageConfig(attempts=1))).report
    assert [(p.code, p.line) for p in report.problems] == [(P.UNSUPPORTED_URI, 1)]
    assert fragment in str(report.problems[0])
    assert SECRET not in json.dumps(report.to_json())
    with pytest.raises(DataError) as e:
        local_jsonl(url.replace("a.jpg", "train.jsonl"))
    assert SECRET not in str(e.value)


@pytest.mark.parametrize("endpoint, fragment", [
    (f"http://user:{SECRET}@minio:9000", "'http://***@minio:9000' (AWS_ENDPOINT_URL) holds a user name or password"),
    (f"http://user:{SECRET}@minio:port", "'http://***@minio:port' (AWS_ENDPOINT_URL) is not a valid URL"),
    ("http://minio:port", "'http://minio:port' (AWS_ENDPOINT_URL) is not a valid URL"),
    ("ftp://minio:21", "has scheme ftp://"),
    ("http://minio:9000/bucket", "without a path"),
])
def test_bad_endpoint_is_a_config_problem_without_the_password(tmp_path, monkeypatch, capsys, endpoint, fragment):
    with pytest.raises(ConfigError) as e:
        StorageConfig(endpoint=endpoint)
    assert fragment in str(e.value) and SECRET not in str(e.value)
    data = _write(tmp_path, [{"image_url": "s3://bucket/a:b@c.jpg", "label": "a"}])
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    assert main(["data", "validate", str(data), "--task", "image_classification"]) == 2
    out = capsys.readouterr()
    assert fragment in out.err and SECRET not in out.err + out.out


def test_s3_key_with_colon_and_at_is_fetched_bucket_with_colon_refused(tmp_path):
    """Against a real S3 endpoint (moto's server on 127.0.0.1): the key a:b@c.png is read as it is; a
    bucket name with ':' is a problem naming the line."""
    moto_server = pytest.importorskip("moto.server")

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        config = StorageConfig(endpoint=f"http://{host}:{port}", access_key="AKIATESTKEY", secret_key="testsecret",
                               region="us-east-1", attempts=1)
        client = minio_client(config)
        client.make_bucket("bucket")
        data = _png(Image.new("RGB", (20, 10), (200, 0, 0)))
        client.put_object("bucket", "set/a:b@c.png", io.BytesIO(data), len(data))
        assert parse_s3("s3://bucket/set/a:b@c.png") == ("bucket", "set/a:b@c.png")
        jsonl = _write(tmp_path, [{"image_url": "s3://bucket/set/a:b@c.png", "label": "a"},
                                  {"image_url": "s3://bucket:9000/set/a.png", "label": "a"}])
        result = validate_dataset(jsonl, MC, options=ValidationOptions(storage=config, on_invalid="skip",
                                                                       cache_dir=str(tmp_path / "cache")))
        ds = result.raise_if_invalid()
        assert [(r.uri, r.width, r.height) for r in ds.records] == [("s3://bucket/set/a:b@c.png", 20, 10)]
        # the bucket with a colon is refused as a URI problem before any request, not a failed fetch
        assert [(p.code, p.line) for p in result.report.problems] == [(P.UNSUPPORTED_URI, 2)]
    finally:
        server.stop()


# --- symbolic links leaving the data folder -------------------------------------------------------------

def test_symlink_out_of_the_data_folder_is_refused(tmp_path):
    root, outside = tmp_path / "set", tmp_path / "elsewhere"
    (root / "images").mkdir(parents=True)
    outside.mkdir()
    png = _png(Image.new("RGB", (8, 8)))
    (root / "images" / "real.png").write_bytes(png)
    (outside / "secret.png").write_bytes(png)
    os.symlink(outside / "secret.png", root / "images" / "file_link.png")
    os.symlink(outside, root / "dir_link")
    os.symlink(root / "images" / "real.png", root / "inside_link.png")  # stays inside: fine
    data = _write(root, [{"image_url": "images/real.png", "label": "a"},
                         {"image_url": "images/file_link.png", "label": "a"},
                         {"image_url": "dir_link/secret.png", "label": "b"},
                         {"image_url": "inside_link.png", "label": "b"}])
    result = validate_dataset(data, MC)
    problems = result.report.problems
    assert [(p.code, p.line) for p in problems] == [(P.PATH_ESCAPES_ROOT, 2), (P.PATH_ESCAPES_ROOT, 3)]
    assert (f"image_url='images/file_link.png': {root}/images/file_link.png is a symbolic link to "
            f"{outside}/secret.png, outside the data root {root}") in str(problems[0])
    assert f"{root}/dir_link is a symbolic link to {outside}, outside the data root" in str(problems[1])
    with pytest.raises(DataError):
        load_dataset(data, MC)
    kept = validate_dataset(data, MC, options=ValidationOptions(on_invalid="skip")).raise_if_invalid()
    # what training reads is the checked file itself, never a path through a link
    assert [r.path for r in kept.records] == [str(root / "images" / "real.png")] * 2
    # a data root that contains the target allows it
    wide = validate_dataset(data, MC, options=ValidationOptions(data_root=str(tmp_path)))
    assert wide.report.problems == []


# --- EXIF orientation: the displayed image ------------------------------------------------------------

def _displayed() -> Image.Image:
    """24 x 16 as displayed: red in the top-left 8 x 4 corner, blue elsewhere."""
    a = np.zeros((16, 24, 3), dtype=np.uint8)
    a[...] = (0, 0, 255)
    a[:4, :8] = (255, 0, 0)
    return Image.fromarray(a)


def _stored_with_orientation(fmt: str) -> bytes:
    """The displayed image stored turned 90 degrees, with EXIF Orientation 6 (a phone held upright)."""
    stored = _displayed().transpose(Image.Transpose.ROTATE_90)  # 16 x 24 in the file
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("fmt, ext", [("JPEG", "jpg"), ("PNG", "png")])
def test_exif_orientation_sizes_pixels_and_boxes_are_the_displayed_ones(tmp_path, fmt, ext):
    path = tmp_path / f"phone.{ext}"
    path.write_bytes(_stored_with_orientation(fmt))
    with Image.open(path) as im:
        assert im.size == (16, 24)  # the pixels as stored
        assert displayed_size(im) == (24, 16)  # what converters writing image_details should use
    for decode in (False, True):
        info = inspect_image(str(path), decode=decode)
        assert (info.width, info.height) == (24, 16)
    # the red corner box, annotated on the displayed image (as labelling tools show it)
    box = {"label": "corner", "topX": 0.0, "topY": 0.0, "bottomX": 8 / 24, "bottomY": 4 / 16}
    data = _write(tmp_path, [{"image_url": path.name, "image_details": {"width": 24, "height": 16}, "label": [box]}])
    record = load_dataset(data, OD).records[0]
    assert (record.width, record.height) == (24, 16)
    x1, y1, x2, y2 = (round(v) for v in record.objects[0].box_pixels(record.width, record.height))

    pil = np.asarray(read_rgb(str(path), where="t"))
    tensor = read_image(str(path)).permute(1, 2, 0).numpy()
    for pixels in (pil, tensor):
        assert pixels.shape == (16, 24, 3)
        inside = pixels[y1:y2, x1:x2].reshape(-1, 3).mean(0)
        assert inside[0] > 200 and inside[2] < 60, inside  # red under the box
    np.testing.assert_array_equal(np.asarray(as_displayed(Image.open(path)).convert("RGB")), pil)
    # image_details with the stored (unrotated) size disagrees with the displayed image
    stored_size = _write(tmp_path, [{"image_url": path.name, "image_details": {"width": 16, "height": 24},
                                     "label": [box]}], "stored.jsonl")
    assert {p.code for p in validate_dataset(stored_size, OD).report.problems} == {P.SIZE_MISMATCH}


def test_converters_and_report_pictures_see_the_displayed_image(tmp_path):
    """image_details written by the converters, and the pictures the reports draw boxes on, are the
    displayed image too (else a rotated photo's converted size disagrees with validation's)."""
    path = tmp_path / "upright.jpg"
    path.write_bytes(_stored_with_orientation("JPEG"))
    assert image_size(path) == (24, 16)
    picture = _open(str(path))
    assert picture.size == (24, 16)
    assert picture.getpixel((2, 1))[0] > 200 and picture.getpixel((20, 12))[2] > 200  # red top-left, blue elsewhere
