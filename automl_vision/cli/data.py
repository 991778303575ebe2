"""``data`` (validate, convert, export, split labelled image data) and ``preview`` (augmented samples)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from automl_vision.cli.common import TASKS_HELP, add_hyperparameter_flags, given_hyperparameters, setup_logging, \
    task_flag
from automl_vision.errors import EXIT_BAD_INPUT, EXIT_OK, ConfigError


def add_data(sub) -> None:
    p = sub.add_parser("data", help="validate, convert, export and split labelled image data",
                       description="Work with JSON Lines datasets (spec section 2). Exit 2 when the data has problems.")
    verbs = p.add_subparsers(dest="data_command", required=True, metavar="VERB")

    v = verbs.add_parser("validate", help="check a JSONL file and summarize it; --output-dir ingests it",
                         description="Check every line and image, print counts per class, image sizes and every "
                                     "problem with file:line. With --output-dir, write the ingested dataset "
                                     "(manifest.parquet, stats.json, report.json) that train/run accept as data.")
    v.add_argument("data", help="JSONL file")
    v.add_argument("--task", required=True, help=TASKS_HELP)
    v.add_argument("--validation_data", help="validation JSONL file (else split_ratio of the data is held out)")
    v.add_argument("--output-dir", help="write the ingested dataset here")
    v.add_argument("--json", action="store_true", help="print the machine-readable report instead of the summary")
    v.add_argument("--on-invalid", choices=("fail", "skip"), default="fail",
                   help="fail (default): refuse data with problems; skip: leave out invalid images and objects")
    v.add_argument("--images", choices=("decode", "header", "none"), default="decode",
                   help="decode (default): read every image fully; header: size and format only; none: "
                        "only check that the files exist")
    v.add_argument("--max-pixels", type=int, default=None, help="refuse larger images (default 89,478,485)")
    v.add_argument("--classes", help="comma-separated allowed class names; others are reported as unknown")
    _add_storage_flags(v)
    v.add_argument("--split_ratio", type=float, default=0.2, help="validation share when ingesting (default 0.2)")
    v.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    v.set_defaults(func=cmd_data, data_func=_data_validate)

    c = verbs.add_parser("convert", help="convert COCO, Pascal VOC, YOLO, class folders or CSV to JSONL")
    c.add_argument("--from", dest="source_format", required=True, choices=("coco", "voc", "yolo", "folders", "csv"))
    c.add_argument("source", help="COCO json | VOC folder (or its folder of XML files) | YOLO folder or data yaml | "
                                  "class-folder root | CSV file")
    c.add_argument("--out", required=True, help="JSONL file to write")
    c.add_argument("--task", help=f"{TASKS_HELP} (default: detection for coco/voc/yolo, classification otherwise)")
    c.add_argument("--images-dir", help="coco, csv: folder the file names are relative to; voc: folder of the "
                                        "images (searched first)")
    c.add_argument("--image-set", help="voc: convert only ImageSets/Main/<name>.txt; yolo: only this split of the "
                                       "data yaml (train, val or test)")
    c.add_argument("--masks-dir", help="voc: instance masks folder (default SegmentationObject/)")
    c.add_argument("--skip-difficult", action="store_true", help="voc: leave out objects marked <difficult>")
    c.add_argument("--names", help="yolo: class-name file (txt, one per line, or a data yaml)")
    c.add_argument("--label-separator", help="csv: separator between labels (default: spaces)")
    c.set_defaults(func=cmd_data, data_func=_data_convert)

    e = verbs.add_parser("export", help="write a JSONL dataset as COCO json")
    e.add_argument("data", help="JSONL file")
    e.add_argument("--to", dest="target_format", required=True, choices=("coco",))
    e.add_argument("--out", required=True, help="COCO json file to write")
    e.add_argument("--task", default="image_object_detection",
                   help="image_object_detection (default) | image_instance_segmentation")
    e.add_argument("--images-dir", help="make file_name relative to this folder (default: image_url as written)")
    _add_storage_flags(e)
    e.set_defaults(func=cmd_data, data_func=_data_export)

    s = verbs.add_parser("split", help="hold out split_ratio of a JSONL file (the split a trial makes)")
    s.add_argument("data", help="JSONL file")
    s.add_argument("--task", required=True, help=TASKS_HELP)
    s.add_argument("--split_ratio", type=float, default=0.2, help="validation share (default 0.2)")
    s.add_argument("--seed", type=int, default=0, help="seed (default 0, as trials)")
    s.add_argument("--output-dir", required=True, help="folder for train.jsonl and validation.jsonl")
    s.set_defaults(func=cmd_data, data_func=_data_split)


def _add_storage_flags(p) -> None:
    p.add_argument("--data-root", help="relative image_url may not leave this folder (default: the JSONL's folder)")
    p.add_argument("--store-root", help="folder or s3://bucket/prefix holding azureml:// and AmlDatastore:// "
                                        "paths as <datastore>/<path> (default: $AUTOML_VISION_STORE_ROOT)")
    p.add_argument("--cache-dir", help="cache for remote images (default: OUTPUT_DIR/cache or ~/.cache/automl-vision)")
    p.add_argument("--workers", type=int, default=16, help="parallel downloads (default 16)")


def _data_options(args, **changes):
    from automl_vision.data.storage import StorageConfig  # lazy: CLI start-up
    from automl_vision.data.validate import ValidationOptions  # lazy: CLI start-up

    # The environment is read here, once; credentials stay inside StorageConfig (hidden from repr).
    storage = StorageConfig.from_env(os.environ, store_root=getattr(args, "store_root", None),
                                     workers=getattr(args, "workers", None))
    values = dict(storage=storage, data_root=getattr(args, "data_root", None),
                  cache_dir=getattr(args, "cache_dir", None))
    values.update(changes)
    return ValidationOptions(**values)


def cmd_data(args) -> int:
    setup_logging(args.verbose)
    return args.data_func(args)


def _data_validate(args) -> int:
    from automl_vision.data.summary import format_report  # lazy: CLI start-up
    from automl_vision.data.validate import validate_dataset  # lazy: CLI start-up

    task = task_flag(args.task)
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip()) if args.classes else None
    extra = {"classes": classes, "on_invalid": args.on_invalid, "check_images": args.images != "none",
             "decode_images": args.images == "decode"}
    if args.max_pixels is not None:
        extra["max_pixels"] = args.max_pixels
    if args.output_dir and not args.cache_dir:
        extra["cache_dir"] = str(Path(args.output_dir) / "cache")
    options = _data_options(args, **extra)
    result = validate_dataset(args.data, task, validation=args.validation_data, options=options,
                              split_ratio=args.split_ratio if args.output_dir and not args.validation_data else None,
                              seed=args.seed)
    report = result.report
    manifest = None
    if args.output_dir and report.ok:
        from automl_vision.data.manifest import write_ingested  # lazy: parquet only when ingesting

        manifest = write_ingested(result, args.output_dir).manifest
    if args.json:
        print(json.dumps({**report.to_json(), "manifest": str(manifest) if manifest else None}, indent=2))
    else:
        print(format_report(report))
        if manifest:
            print(f"ingested: {manifest} (train and run accept {args.output_dir} as training_data)")
    return EXIT_OK if report.ok else EXIT_BAD_INPUT


def _data_convert(args) -> int:
    from automl_vision.data.convert import DEFAULT_TASK, convert  # lazy: CLI start-up

    task = task_flag(args.task) if args.task else DEFAULT_TASK[args.source_format]
    option_names = {"coco": ("images_dir",), "voc": ("image_set", "images_dir", "masks_dir", "skip_difficult"),
                    "yolo": ("names", "image_set"), "folders": (), "csv": ("images_dir", "label_separator")
                    }[args.source_format]
    given = {"images_dir": args.images_dir, "image_set": args.image_set, "masks_dir": args.masks_dir,
             "skip_difficult": args.skip_difficult or None, "names": args.names,
             "label_separator": args.label_separator}
    unused = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None and k not in option_names]
    if unused:
        raise ConfigError(f"{', '.join(unused)} do(es) not apply to --from {args.source_format}")
    options = {("separator" if k == "label_separator" else k): v for k, v in given.items()
               if k in option_names and v is not None}
    conversion = convert(args.source_format, args.source, args.out, task=task, **options)
    what = f"{len(conversion.lines):,} images"
    if not task.is_classification:
        what += f", {conversion.objects:,} objects"
    print(f"wrote {args.out}: {what}, {len(conversion.classes)} classes ({', '.join(conversion.classes[:20])}"
          f"{' ...' if len(conversion.classes) > 20 else ''})")
    for note in conversion.notes:
        print(f"note: {note}")
    print(f"next: automl-vision data validate {args.out} --task {task.value}")
    return EXIT_OK


def _data_export(args) -> int:
    from automl_vision.data.convert import export_coco  # lazy: CLI start-up
    from automl_vision.data.load import load_dataset  # lazy: CLI start-up

    task = task_flag(args.task)
    dataset = load_dataset(args.data, task, options=_data_options(args, decode_images=False))
    coco = export_coco(dataset, args.out, images_dir=args.images_dir)
    print(f"wrote {args.out}: {len(coco['images']):,} images, {len(coco['annotations']):,} annotations, "
          f"{len(coco['categories'])} categories")
    return EXIT_OK


def _data_split(args) -> int:
    from automl_vision.data.load import split_jsonl  # lazy: CLI start-up

    files = split_jsonl(args.data, task_flag(args.task), args.output_dir, ratio=args.split_ratio, seed=args.seed)
    print(f"wrote {files.train} ({files.train_images:,} images) and {files.validation} "
          f"({files.validation_images:,} images)")
    return EXIT_OK


# --- preview -----------------------------------------------------------------------------------

def add_preview(sub) -> None:
    p = sub.add_parser("preview", help="draw training samples as the model receives them after augmentation",
                       description="Draw training images through the train-time augmentation of the task and "
                                   "model (several draws per image) with their labels, boxes and masks, into "
                                   "OUT/preview.png and OUT/preview.html. Hyperparameter flags (e.g. "
                                   "--train_crop_size) change the augmentation as they change training.")
    p.add_argument("data", help="training JSONL file")
    p.add_argument("--task", required=True, help=TASKS_HELP)
    p.add_argument("--out", required=True, help="folder for preview.png, preview.html and preview.json")
    p.add_argument("--count", type=int, default=16, help="augmented samples in all (default: 16)")
    p.add_argument("--draws", type=int, default=4, help="augmented samples per image (default: 4)")
    add_hyperparameter_flags(p)
    p.set_defaults(func=cmd_preview)


def cmd_preview(args) -> int:
    from automl_vision.report import write_preview  # lazy: CLI start-up

    setup_logging(args.verbose)
    given = given_hyperparameters(args)
    result = write_preview(args.data, args.task, args.out, count=args.count, draws=args.draws,
                           model_name=given.pop("model_name", None), hyperparameters=given)
    print(f"preview of {result.samples} augmented samples from {result.images} images ({result.task.value}, "
          f"{result.model_name}):\n  {result.png}\n  {result.html}", flush=True)
    return EXIT_OK
