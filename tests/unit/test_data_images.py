"""Image and file checks: missing, unreadable, truncated, wrong format, size disagreeing with
image_details, decompression bombs, paths escaping the data root; messages asserted."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from automl_vision.data import InvalidDataError, problems as P
from automl_vision.data.images import DEFAULT_MAX_PIXELS, inspect_image
from automl_vision.data.load import load_dataset
from automl_vision.data.storage import StorageConfig
from automl_vision.data.validate import ValidationOptions, validate_dataset
from automl_vision.spec.tasks import ImageTask
from image_bytes import png_claiming

MC = ImageTask.IMAGE_CLASSIFICATION
OD = ImageTask.IMAGE_OBJECT_DETECTION


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _bytes(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def _dataset(tmp_path: Path, files: dict[str, bytes], lines: list) -> Path:
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return jsonl


GOOD_PNG = _bytes(_noise(24, 16), "PNG")
GOOD_JPG = _bytes(_noise(24, 16), "JPEG")
BIG_JPG = _bytes(_noise(240, 160), "JPEG")
SMALL_PNG = _bytes(_noise(8, 8), "PNG")


def _line(url: str, **extra) -> dict:
    return {"image_url": url, "label": "cat", **extra}


CASES = [
    # (id, files, bad line, options, rule, fragment)
    ("missing", {}, _line("ghost.png"), {}, P.IMAGE_MISSING, "image_url='ghost.png': image not found at {root}/ghost.png"),
    ("empty-file", {"e.png": b""}, _line("e.png"), {}, P.IMAGE_UNREADABLE, "image file {root}/e.png is empty (0 bytes)"),
    ("not-an-image", {"t.png": b"hello, not pixels" * 10}, _line("t.png"), {}, P.IMAGE_UNREADABLE,
     "cannot read {root}/t.png: not an image file Pillow recognizes"),
    ("truncated-jpeg", {"t.jpg": BIG_JPG[: len(BIG_JPG) * 3 // 4]}, _line("t.jpg"), {}, P.IMAGE_TRUNCATED,
     "image_url='t.jpg': image {root}/t.jpg is truncated (image file is truncated"),
    ("truncated-jpeg-header", {"t.jpg": GOOD_JPG[:300]}, _line("t.jpg"), {}, P.IMAGE_TRUNCATED,
     "image_url='t.jpg': image {root}/t.jpg is truncated (Truncated File Read)"),
    ("truncated-png", {"t.png": GOOD_PNG[: len(GOOD_PNG) // 2]}, _line("t.png"), {}, P.IMAGE_TRUNCATED,
     "image {root}/t.png is truncated"),
    ("gif-named-png", {"g.png": _bytes(_noise(8, 8), "GIF")}, _line("g.png"), {}, P.UNSUPPORTED_FORMAT,
     "image {root}/g.png is GIF; allowed formats: jpeg, png, bmp, tiff"),
    ("webp-named-jpg", {"w.jpg": _bytes(_noise(8, 8), "WEBP")}, _line("w.jpg"), {}, P.UNSUPPORTED_FORMAT,
     "image {root}/w.jpg is WEBP; allowed formats"),
    ("width-disagrees", {"b.png": GOOD_PNG}, _line("b.png", image_details={"width": 640, "height": 16}), {},
     P.SIZE_MISMATCH, "image_details.width=640 but the image is 24x16 (b.png); coordinates are fractions of the real size"),
    ("height-disagrees-px", {"b.png": GOOD_PNG}, _line("b.png", image_details={"width": "24px", "height": "480px"}), {},
     P.SIZE_MISMATCH, "image_details.height=480 but the image is 24x16"),
    ("over-pixel-limit", {"b.png": GOOD_PNG}, _line("b.png"), {"max_pixels": 300}, P.TOO_MANY_PIXELS,
     "image {root}/b.png is 24x16 = 384 pixels, over the limit of 300 (a decompression bomb?)"),
    ("bomb-default-limit", {"bomb.png": png_claiming(10_000, 9_000)}, _line("bomb.png"), {}, P.TOO_MANY_PIXELS,
     "is 10000x9000 = 90,000,000 pixels, over the limit of 89,478,485"),
    ("bomb-beyond-pillow", {"bomb.png": png_claiming(50_000, 50_000)}, _line("bomb.png"), {}, P.TOO_MANY_PIXELS,
     "has more pixels than Pillow will decode (a decompression bomb?)"),
    ("escapes-data-root", {}, _line("../../etc/x.png"), {}, P.PATH_ESCAPES_ROOT,
     "image_url='../../etc/x.png' resolves to {etc}/x.png, outside the data root {root}"),
]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("files, bad, options, rule, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_file_rule(tmp_path, files, bad, options, rule, fragment):
    root = tmp_path / "a" / "b"
    root.mkdir(parents=True)
    jsonl = _dataset(root, {"ok.png": SMALL_PNG, **files}, [_line("ok.png"), bad])
    report = validate_dataset(jsonl, MC, options=ValidationOptions(**options)).report
    assert [p.code for p in report.problems] == [rule], [str(p) for p in report.problems]
    text = str(report.problems[0])
    assert text.startswith(f"{jsonl}:2: ")
    assert fragment.format(root=root, etc=tmp_path / "etc") in text
    assert report.images == 1 and not report.ok


def test_real_size_and_format_come_from_the_file(tmp_path):
    jsonl = _dataset(tmp_path, {"a.jpg": GOOD_JPG, "b.bmp": _bytes(_noise(7, 5), "BMP"),
                                "c.tif": _bytes(_noise(9, 3), "TIFF")},
                     [_line("a.jpg"), _line("b.bmp"), _line("c.tif", image_details={"width": 9, "height": 3})])
    result = validate_dataset(jsonl, MC)
    assert result.report.problems == []
    assert [(r.width, r.height, r.format) for r in result.dataset.records] == [(24, 16, "jpeg"), (7, 5, "bmp"),
                                                                               (9, 3, "tiff")]
    assert result.report.stats["image_size"]["width"] == {"min": 7, "median": 9, "max": 24}


def test_format_in_details_differing_from_the_file_is_a_warning(tmp_path):
    jsonl = _dataset(tmp_path, {"a.png": GOOD_JPG}, [_line("a.png", image_details={"format": "png"})] * 1)
    report = validate_dataset(jsonl, MC).report
    assert report.problems == []
    assert any("image_details.format differs from the file" in w and "says png, the file is jpeg" in w
               for w in report.warnings)


def test_header_only_reads_size_without_decoding(tmp_path):
    jsonl = _dataset(tmp_path, {"t.jpg": BIG_JPG[: len(BIG_JPG) * 3 // 4]}, [_line("t.jpg")])
    result = validate_dataset(jsonl, MC, options=ValidationOptions(decode_images=False))
    assert result.report.problems == []
    assert (result.dataset.records[0].width, result.dataset.records[0].height) == (240, 160)
    assert validate_dataset(jsonl, MC).report.problems[0].code == P.IMAGE_TRUNCATED


def test_data_root_can_be_widened(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(GOOD_PNG)
    (tmp_path / "lists").mkdir()
    jsonl = tmp_path / "lists" / "d.jsonl"
    jsonl.write_text(json.dumps(_line("../images/a.png")) + "\n")
    refused = validate_dataset(jsonl, MC).report
    assert refused.problems[0].code == P.PATH_ESCAPES_ROOT
    assert "pass a data root that contains the images, or an absolute path" in str(refused.problems[0])
    allowed = validate_dataset(jsonl, MC, options=ValidationOptions(data_root=str(tmp_path)))
    assert allowed.report.problems == []
    assert allowed.dataset.records[0].path == str(tmp_path / "images" / "a.png")


def test_absolute_paths_are_allowed_anywhere(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    img = tmp_path / "elsewhere" / "a.png"
    img.write_bytes(GOOD_PNG)
    (tmp_path / "d").mkdir()
    jsonl = tmp_path / "d" / "d.jsonl"
    jsonl.write_text(json.dumps(_line(str(img))) + "\n")
    assert validate_dataset(jsonl, MC).report.problems == []


def test_datastore_uri_mapped_onto_a_local_store_root(tmp_path):
    store = tmp_path / "store"
    (store / "image_data").mkdir(parents=True)
    (store / "image_data" / "Image_01.png").write_bytes(GOOD_PNG)
    (store / "other").mkdir()
    (store / "other" / "x.png").write_bytes(GOOD_PNG)
    lines = [_line("AmlDatastore://image_data/Image_01.png"),
             _line("azureml://subscriptions/s/resourcegroups/r/workspaces/w/datastores/other/paths/x.png"),
             _line("AmlDatastore://image_data/../../secret.png")]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = validate_dataset(jsonl, MC, options=ValidationOptions(storage=StorageConfig(store_root=str(store))))
    assert [str(p) for p in result.report.problems] == [
        f"{jsonl}:3: image_url='AmlDatastore://image_data/../../secret.png' maps to {tmp_path}/secret.png, "
        f"outside its datastore's root {store}/image_data"]
    assert [r.path for r in result.dataset.records] == [str(store / "image_data" / "Image_01.png"),
                                                        str(store / "other" / "x.png")]


def test_load_dataset_raises_listing_every_problem(tmp_path):
    jsonl = _dataset(tmp_path, {"a.png": GOOD_PNG}, [_line("a.png"), _line("b.png"), _line("c.png")])
    with pytest.raises(InvalidDataError) as info:
        load_dataset(jsonl, MC)
    assert [p.line for p in info.value.details] == [2, 3]
    assert info.value.report.images == 1


def test_skip_mode_leaves_out_unreadable_images(tmp_path):
    jsonl = _dataset(tmp_path, {"a.png": GOOD_PNG, "t.png": b"junk"}, [_line("a.png"), _line("t.png"), _line("z.png")])
    ds = load_dataset(jsonl, MC, options=ValidationOptions(on_invalid="skip"))
    assert [r.image_url for r in ds.records] == ["a.png"]


def test_inspect_image_direct():
    assert DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS


def test_image_checks_run_in_parallel_give_the_same_answer(tmp_path):
    files = {f"i{i}.png": _bytes(_noise(8 + i % 5, 8), "PNG") for i in range(40)}
    files["i7.png"] = b"broken"
    jsonl = _dataset(tmp_path, files, [_line(name) for name in files])
    serial = validate_dataset(jsonl, MC, options=ValidationOptions(workers=1))
    parallel = validate_dataset(jsonl, MC, options=ValidationOptions(workers=8))
    assert [str(p) for p in serial.report.problems] == [str(p) for p in parallel.report.problems]
    assert serial.dataset == parallel.dataset
    assert [p.line for p in parallel.report.problems] == [8]


def test_inspect_image_returns_info(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(GOOD_JPG)
    info = inspect_image(str(path))
    assert (info.width, info.height, info.format, info.file_size) == (24, 16, "jpeg", len(GOOD_JPG))
