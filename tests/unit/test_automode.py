"""AutoMode: the declared table becomes a valid search space for every task, data size and start;
what the job fixes stays out of it; the budget and warm-start settings are checked; the dataset
fingerprint and the warm start read real files."""

from __future__ import annotations

import itertools
import time
import json
import math
from pathlib import Path

import pytest

from automl_vision.errors import ConfigError
from automl_vision.spec.automode import (
    AUTOMODE_ROWS,
    MAX_TRIALS,
    SMALL_DATA_IMAGES,
    DatasetFingerprint,
    automode_space,
    fingerprint_distance,
)
from automl_vision.spec.distributions import Choice
from automl_vision.spec.job import parse_job
from automl_vision.spec.tasks import ImageTask
from automl_vision.sweep.automode import describe_space, fits_space, prepare_automode, warm_start_seeds
from automl_vision.sweep.core import TrialRecord

CLS = {"task": "image_classification", "training_data": "train.jsonl"}
DET = {"task": "image_object_detection", "training_data": "train.jsonl"}


def _fp(task: ImageTask, images: int, side: float | None, **kw) -> DatasetFingerprint:
    return DatasetFingerprint(task.value, images, kw.pop("classes", 4), side, kw.pop("aspect", 1.0), **kw)


@pytest.mark.parametrize("task, images, side, pretrained", list(itertools.product(
    ImageTask, (100, SMALL_DATA_IMAGES * 5), (32, 113, 480, None), (False, True))))
def test_every_space_is_a_valid_job(task, images, side, pretrained):
    fingerprint = _fp(task, images, side) if side else None
    job = parse_job({"task": task.value, "training_data": "t.jsonl", "limits": {"max_trials": 20},
                     "training_parameters": {"pretrained": pretrained}})
    assert job.automode
    prepared = prepare_automode(job, fingerprint)
    space = prepared.job.search_space
    assert space and not prepared.job.automode  # the space is written into the job the sweep runs
    assert prepared.job.sweep.early_termination.type == "asha"
    models = {m for e in space for m in (e["model_name"].values if isinstance(e["model_name"], Choice)
                                         else [e["model_name"]])}
    assert models <= set(task.models)
    for e in space:  # every entry searches the augmentation level and the learning rate
        assert "augmentation" in e and "learning_rate" in e


def test_small_scratch_classification_space_follows_the_image_size():
    fridge = _fp(ImageTask.IMAGE_CLASSIFICATION, 134, 113)
    plan = automode_space(ImageTask.IMAGE_CLASSIFICATION, fridge, fixed={"pretrained": False})
    assert plan.sizes == [64, 128]  # never enlarged past the photos' own 113 px
    assert [(e["train_crop_size"], e["optimizer"]) for e in plan.entries] == [
        (64, "sgd"), (64, "adamw"), (128, "sgd"), (128, "adamw")]
    first = plan.entries[0]
    assert first["model_name"] == {"type": "choice", "values": ["resnet18", "resnet34"]}
    assert first["valid_resize_size"] == 73 and first["valid_crop_size"] == 64
    digits = _fp(ImageTask.IMAGE_CLASSIFICATION, 500, 32)
    assert automode_space(ImageTask.IMAGE_CLASSIFICATION, digits, fixed={"pretrained": False}).sizes == [32, 64]
    # pretrained weights: their own 224 px, and the larger backbones
    tuned = automode_space(ImageTask.IMAGE_CLASSIFICATION, fridge)
    assert tuned.sizes == [224] and "vits16r224" in tuned.entries[0]["model_name"]["values"]


def test_the_starting_point_is_a_sound_default_at_the_datas_own_size():
    digits = automode_space(ImageTask.IMAGE_CLASSIFICATION, _fp(ImageTask.IMAGE_CLASSIFICATION, 400, 32),
                            fixed={"pretrained": False})
    assert digits.start == {"model_name": "resnet18", "train_crop_size": 32, "valid_resize_size": 37,
                            "valid_crop_size": 32, "optimizer": "sgd", "learning_rate": 0.02, "number_of_epochs": 20,
                            "training_batch_size": 32, "augmentation": "light"}
    photos = automode_space(ImageTask.IMAGE_CLASSIFICATION, _fp(ImageTask.IMAGE_CLASSIFICATION, 400, 480),
                            fixed={"pretrained": False})
    assert photos.sizes == [128, 224] and photos.start["train_crop_size"] == 224
    shapes = automode_space(ImageTask.IMAGE_OBJECT_DETECTION, _fp(ImageTask.IMAGE_OBJECT_DETECTION, 80, 128))
    assert shapes.start == {"model_name": "yolov5", "img_size": 128, "model_size": "medium", "learning_rate": 0.01,
                            "number_of_epochs": 40, "augmentation": "default", "early_stopping_delay": 15}
    # a point of the space the sweep runs, with what the job fixes left to the job
    job = parse_job({**CLS, "limits": {"max_trials": 6}, "training_parameters": {"pretrained": False, "model_name": "resnet34"}})
    prepared = prepare_automode(job, _fp(ImageTask.IMAGE_CLASSIFICATION, 400, 32))
    assert "model_name" not in prepared.plan.start and fits_space(prepared.plan.start, prepared.job)


def test_detection_space_has_rcnns_and_yolov5_sizes():
    shapes = _fp(ImageTask.IMAGE_OBJECT_DETECTION, 80, 128, objects_per_image=2.0, object_size=0.2)
    plan = automode_space(ImageTask.IMAGE_OBJECT_DETECTION, shapes)
    by_model = {e["model_name"]: e for e in plan.entries if e.get("min_size") == 128 or e.get("img_size") == 128}
    assert by_model["fasterrcnn_resnet18_fpn"]["max_size"] == 213
    assert by_model["yolov5"]["model_size"] == {"type": "choice", "values": ["medium", "small"]}
    assert by_model["yolov5"]["early_stopping_delay"] == 15  # it scores 0 for its first epochs from scratch
    large = automode_space(ImageTask.IMAGE_OBJECT_DETECTION, _fp(ImageTask.IMAGE_OBJECT_DETECTION, 50_000, 600))
    assert "fasterrcnn_resnet50_fpn" in {e["model_name"] for e in large.entries}


def test_what_the_job_fixes_stays_out_of_the_space():
    job = parse_job({**CLS, "limits": {"max_trials": 8},
                     "training_parameters": {"model_name": "resnet18", "pretrained": False, "train_crop_size": 96,
                                             "number_of_epochs": 5}})
    prepared = prepare_automode(job, _fp(ImageTask.IMAGE_CLASSIFICATION, 300, 113))
    for e in prepared.job.search_space:
        assert not {"model_name", "train_crop_size", "valid_crop_size", "valid_resize_size", "number_of_epochs"} & set(e)
    assert prepared.plan.fixed == ["number_of_epochs", "train_crop_size"]
    # ASHA's largest rung bound comes from the fixed epochs
    assert prepared.job.sweep.early_termination.max_resource == 5 and prepared.job.sweep.early_termination.min_resource == 2


def test_the_jobs_own_early_termination_is_kept():
    policy = {"type": "bandit", "slack_factor": 0.5}
    job = parse_job({**CLS, "limits": {"max_trials": 4}, "sweep": {"early_termination": policy}})
    prepared = prepare_automode(job)
    assert prepared.job.sweep.early_termination.type == "bandit" and not prepared.policy_added


def test_one_trial_or_a_written_space_is_not_automode():
    assert not parse_job(CLS).automode
    job = parse_job({**CLS, "limits": {"max_trials": 3},
                     "search_space": [{"learning_rate": {"type": "uniform", "min_value": 0.001, "max_value": 0.01}}]})
    assert not job.automode and prepare_automode(job).job is job


def test_a_budget_alone_bounds_the_sweep():
    job = parse_job({**CLS, "limits": {"budget": 0.5, "max_concurrent_trials": 2}})
    assert job.limits.max_trials == MAX_TRIALS and job.limits.max_concurrent_trials == 2 and job.automode
    capped = parse_job({**CLS, "limits": {"budget": 0.5, "max_trials": 6}})
    assert capped.limits.max_trials == 6
    # the job as written back reads the same
    assert parse_job(job.to_dict()) == job


@pytest.mark.parametrize("data, problem", [
    ({**CLS, "limits": {"budget": 0}}, "limits.budget=0: Input should be greater than 0"),
    ({**CLS, "limits": {"max_trials": 5}, "sweep": {"sampling_algorithm": "grid"}},
     "sweep.sampling_algorithm=grid: AutoMode (max_trials > 1 or a budget, and no search_space) samples its own "
     "space at random"),
    ({**CLS, "limits": {"max_trials": 5}, "sweep": {"sampling_algorithm": "bayesian", "warm_start": ["runs/a"]},
      "search_space": [{"learning_rate": {"type": "uniform", "min_value": 0.001, "max_value": 0.01}}]},
     "sweep.warm_start: a bayesian sweep cannot start from earlier runs' settings"),
])
def test_mistakes_are_named(data, problem):
    with pytest.raises(ConfigError) as e:
        parse_job(data)
    assert problem in str(e.value)


def test_fingerprint_distance():
    a = _fp(ImageTask.IMAGE_CLASSIFICATION, 134, 113, classes=4, labels_per_image=1.0)
    assert fingerprint_distance(a, a) == 0
    twice = _fp(ImageTask.IMAGE_CLASSIFICATION, 268, 113, classes=4, labels_per_image=1.0)
    assert fingerprint_distance(a, twice) == pytest.approx(0.5 * math.log(2), abs=1e-4)
    other_task = _fp(ImageTask.IMAGE_CLASSIFICATION_MULTILABEL, 134, 113)
    assert math.isinf(fingerprint_distance(a, other_task))
    far = _fp(ImageTask.IMAGE_CLASSIFICATION, 100_000, 600, classes=1000)
    assert fingerprint_distance(a, far) > 3


def test_fingerprint_of_real_files(tmp_path, make_dataset):
    from automl_vision.data.fingerprint import dataset_fingerprint
    from automl_vision.data.load import load_dataset
    from det_testdata import make_detection_dataset

    cls = make_dataset(tmp_path / "c", n_per_class=3, classes=("red", "blue"), size=20)
    fp = dataset_fingerprint(load_dataset(cls, "image_classification"))
    assert (fp.images, fp.classes, fp.image_side, fp.aspect, fp.labels_per_image) == (6, 2, 20.0, 1.0, 1.0)
    det = make_detection_dataset(tmp_path / "d", n=4, size=(96, 80))
    fp = dataset_fingerprint(load_dataset(det, "image_object_detection"))
    assert (fp.images, fp.classes, fp.image_side, fp.objects_per_image) == (4, 2, 80.0, 1.5)
    assert 0.2 < fp.object_size < 0.35  # 18-30 px shapes in a 96x80 image


def _earlier_run(folder: Path, fingerprint: DatasetFingerprint, trials: list[tuple[dict, float, str]]) -> Path:
    folder.mkdir(parents=True)
    recs = [TrialRecord(f"trial-{i:04d}", i, params, status=status, best_value=value).to_json("accuracy")
            for i, (params, value, status) in enumerate(trials)]
    (folder / "sweep.json").write_text(json.dumps({"goal": "maximize", "dataset_fingerprint": fingerprint.to_json(),
                                                   "trials": recs}))
    return folder


def test_warm_start_takes_the_best_fitting_settings_of_similar_runs(tmp_path):
    fridge = _fp(ImageTask.IMAGE_CLASSIFICATION, 134, 113)
    job = prepare_automode(parse_job({**CLS, "limits": {"max_trials": 12},
                                      "sweep": {"warm_start": [str(tmp_path / "runs")]},
                                      "training_parameters": {"pretrained": False}}), fridge).job
    point = {"model_name": "resnet18", "train_crop_size": 64, "valid_resize_size": 73, "valid_crop_size": 64,
             "optimizer": "sgd", "learning_rate": 0.05, "number_of_epochs": 10, "training_batch_size": 32,
             "augmentation": "light"}
    assert fits_space(point, job)
    outside = {**point, "learning_rate": 0.9}  # beyond the sgd range
    bigger = {**point, "train_crop_size": 224, "valid_resize_size": 256, "valid_crop_size": 224}
    _earlier_run(tmp_path / "runs" / "a", _fp(ImageTask.IMAGE_CLASSIFICATION, 150, 113),
                 [(point, 0.81, "completed"), (outside, 0.9, "completed"), ({**point, "optimizer": "adamw",
                  "learning_rate": 0.001}, 0.5, "terminated"), ({**point, "augmentation": "none"}, 0.95, "failed")])
    _earlier_run(tmp_path / "runs" / "b", _fp(ImageTask.IMAGE_CLASSIFICATION, 140, 480), [(bigger, 0.99, "completed")])
    _earlier_run(tmp_path / "runs" / "c", _fp(ImageTask.IMAGE_CLASSIFICATION_MULTILABEL, 134, 113),
                 [(point, 0.99, "completed")])
    lines: list[str] = []
    warm = warm_start_seeds(job, fridge, job.limits.max_trials, lines.append)
    assert warm.runs_read == 3 and warm.runs_used == 1
    # the best fitting trials of run a, best first; 'outside' does not fit, the failed one does not count
    assert [s.parameters["learning_rate"] for s in warm.seeds] == [0.05, 0.001]
    assert warm.seeds[0].source.endswith("a trial-0000")
    assert any("runs/b: none of its best trials fits" in s for s in warm.skipped)
    assert any("runs/c: dataset not similar (another task)" in s for s in warm.skipped)
    assert "the first 2 trial(s) try the best settings of 1 similar earlier run(s) (3 read)" in lines[0]


def test_warm_start_from_a_folder_that_does_not_exist(tmp_path):
    job = prepare_automode(parse_job({**CLS, "limits": {"max_trials": 4},
                                      "sweep": {"warm_start": [str(tmp_path / "nowhere")]}})).job
    with pytest.raises(ConfigError, match="nowhere does not exist"):
        warm_start_seeds(job, _fp(ImageTask.IMAGE_CLASSIFICATION, 10, 20), 4, print)


def test_validate_job_prints_the_automode_space(tmp_path, make_dataset, cli_main):
    data = make_dataset(tmp_path / "d", n_per_class=3, classes=("red", "blue"), size=40)
    job = tmp_path / "job.yaml"
    job.write_text(f"task: image_classification\ntraining_data: {data}\nlimits: {{budget: 0.2}}\n"
                   "training_parameters: {pretrained: false}\n")
    done = cli_main("validate-job", job)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("# AutoMode: 4 search-space entries over resnet18, resnet34; sizes 32, 64 "
                          "(6 training image(s), small data)\n")
    assert "#   early termination: asha (min_resource 2, max_resource 20, reduction_factor 3.0) (AutoMode's default)" in out
    import yaml

    printed = yaml.safe_load(out)  # the comments aside, it is the job the sweep runs
    assert len(printed["search_space"]) == 4 and printed["limits"]["budget"] == 0.2


def test_describe_space_names_every_entry():
    prepared = prepare_automode(parse_job({**DET, "limits": {"max_trials": 10}}),
                                _fp(ImageTask.IMAGE_OBJECT_DETECTION, 80, 128))
    text = describe_space(prepared)
    assert text.count("\n  [") == len(prepared.job.search_space)
    assert "learning_rate loguniform 0.001..0.02" in text


def test_rows_are_documented():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "sweeps.md").read_text()
    for row in AUTOMODE_ROWS:
        assert ", ".join(row.models) in docs, row.models
    assert all(row.why for row in AUTOMODE_ROWS)


def _budget_sweep(tmp_path, policy=None):
    from automl_vision.sweep.local import _Sweep

    data = {**CLS, "training_data": str(tmp_path / "t.jsonl"), "limits": {"budget": 0.01},  # 36 device-seconds
            "training_parameters": {"pretrained": False, "number_of_epochs": 6}}
    if policy:
        data["sweep"] = {"early_termination": policy}
    job = prepare_automode(parse_job(data), _fp(ImageTask.IMAGE_CLASSIFICATION, 100, 32)).job
    sweep = _Sweep(job, tmp_path / "run", "cpu", print, False)
    sweep.threads = sweep.cores = 2  # one trial holding the whole machine: a share of 1
    params, _ = sweep._suggest(0)
    done = TrialRecord("trial-0000", 0, dict(params), status="completed", epochs_completed=6, device_share=1.0)
    # 5 s to start, then 2 s an epoch
    done.epochs, done.report_s, done.duration_s = [1, 2, 3, 4, 5, 6], [7.0, 9.0, 11.0, 13.0, 15.0, 17.0], 17.5
    sweep.state.add(done)
    return sweep, done


def test_budget_estimates_a_trial_to_its_first_rung_under_asha(tmp_path):
    """The scheduler's own arithmetic, on a trial recorded with known report times (no process runs)."""
    sweep, done = _budget_sweep(tmp_path)
    assert sweep.job.sweep.early_termination.min_resource == 2  # AutoMode's ASHA: first rung at 2 epochs
    assert sweep._cost_model(sweep._suggest(1)[0]) == (5.0, 2.0)
    # 17.5 used + (5 + 2 epochs x 2 s) = 26.5 <= 36
    assert sweep._budget_allows(1)
    done.duration_s = 28.0  # 28 + 9 > 36
    assert not sweep._budget_allows(1)
    assert sweep.stopped_because.startswith("the budget of 0.01 CPU-hours")
    assert "the next trial would need about 0.0025 more" in sweep.stopped_because  # 9 s
    assert sweep.budget_json()["used"] == round(28 / 3600, 5)


def test_budget_estimates_a_trial_to_its_end_under_other_policies(tmp_path):
    sweep, done = _budget_sweep(tmp_path, {"type": "bandit", "slack_factor": 0.2})
    # 17.5 used + (5 + 6 epochs x 2 s) = 34.5 <= 36; at 19.5 used it is 36.5
    assert sweep._budget_allows(1)
    done.duration_s = 19.5
    assert not sweep._budget_allows(1)


def test_settings_fixed_for_every_trial_keep_out_the_models_they_do_not_apply_to():
    # the spec's usual detection settings: min_size and tiling, which only the torchvision detectors take
    job = parse_job({**DET, "limits": {"budget": 1}, "training_parameters": {"min_size": 320, "tile_grid_size": "2x1"}})
    prepared = prepare_automode(job, _fp(ImageTask.IMAGE_OBJECT_DETECTION, 200, 480))
    assert {e["model_name"] for e in prepared.job.search_space} == {"fasterrcnn_resnet18_fpn"}
    assert prepared.plan.sizes == [] and "min_size" not in prepared.job.search_space[0]
    yolo = prepare_automode(parse_job({**DET, "limits": {"budget": 1}, "training_parameters": {"model_size": "small"}}))
    assert [e["model_name"] for e in yolo.job.search_space] == ["yolov5", "yolov5"]
    with pytest.raises(ConfigError, match="min_size does not apply to task image_classification"):
        parse_job({**CLS, "limits": {"budget": 1}, "training_parameters": {"min_size": 320}})


def _automode_sweep(tmp_path, budget: float):
    """A scheduler over an AutoMode job with ``budget`` (device-hours) for 100 digit-sized images, as if it
    held one core's worth of the machine per trial (a share of 1); nothing runs."""
    from automl_vision.sweep.local import _Sweep

    prepared = prepare_automode(parse_job({**CLS, "training_data": str(tmp_path / "t.jsonl"), "limits": {"budget": budget},
                                           "training_parameters": {"pretrained": False}}),
                                _fp(ImageTask.IMAGE_CLASSIFICATION, 100, 32))
    sweep = _Sweep(prepared.job, tmp_path / "run", "cpu", print, False, automode=prepared)
    sweep.threads = sweep.cores = 2
    return prepared, sweep


def test_automode_keeps_the_end_of_its_budget_for_training_its_best_settings_longer(tmp_path):
    prepared, sweep = _automode_sweep(tmp_path, 0.06)
    best_params = dict(sweep.automode.plan.start)  # 20 epochs
    done = TrialRecord("trial-0000", 0, best_params, status="completed", best_value=0.9, epochs_completed=20,
                       device_share=1.0, duration_s=100.0)
    done.epochs, done.report_s = list(range(1, 21)), [5.0 + 2 * e for e in range(1, 21)]  # 5 s, then 2 s an epoch
    sweep.state.add(done)
    # 100 used + 9 for the next trial's first rung fits the 70% the search may use (151.2 of 216 s)
    assert sweep._budget_allows(1) and sweep._suggest(1)[1] != {"automode_refit": "trial-0000"}
    sweep.suggested.clear()
    done.duration_s = 145.0  # 145 + 9 > 151.2: the rest trains the best settings, 0.9 * (71 - 5) / 2 = 29 epochs
    assert sweep._budget_allows(1)
    params, sampler = sweep._suggest(1)
    assert sampler == {"automode_refit": "trial-0000"}
    assert params == {**best_params, "number_of_epochs": 29, "early_stopping": False}
    # once it is started, no other trial fits
    sweep.refit_started = True
    assert not sweep._refit_pending()


def test_no_final_training_when_the_rest_would_not_train_longer(tmp_path):
    prepared, sweep = _automode_sweep(tmp_path, 0.06)
    done = TrialRecord("trial-0000", 0, dict(prepared.plan.start), status="completed", best_value=0.9,
                       epochs_completed=20, device_share=1.0, duration_s=180.0)
    done.epochs, done.report_s = list(range(1, 21)), [5.0 + 2 * e for e in range(1, 21)]
    sweep.state.add(done)
    # 0.9 * (36 - 5) / 2 = 13 epochs <= its 20: the search goes on with the whole budget
    assert sweep._budget_allows(1) and "automode_refit" not in sweep._suggest(1)[1]
    assert sweep.refit_started and not sweep._refit_pending()


def test_a_promoted_trial_keeps_to_the_searchs_share_of_the_budget(tmp_path):
    """A trial ASHA lets go on past a rung stops there when its next stage would eat into the final
    training's share."""
    from automl_vision.sweep.local import _Running

    prepared, sweep = _automode_sweep(tmp_path, 0.06)
    done = TrialRecord("trial-0000", 0, dict(prepared.plan.start), status="completed", best_value=0.9,
                       epochs_completed=20, device_share=1.0, duration_s=100.0)
    done.epochs, done.report_s = list(range(1, 21)), [5.0 + 2 * e for e in range(1, 21)]
    sweep.state.add(done)
    rec = TrialRecord("trial-0001", 1, dict(prepared.plan.start), status="running", device_share=1.0,
                      planned_epochs=20, planned_intervals=20)
    rec.epochs, rec.values, rec.report_s = [1, 2], [0.3, 0.5], [7.0, 9.0]
    sweep.state.add(rec)
    running = _Running(rec, proc=None, console=None, trial_dir=tmp_path, started=time.monotonic() - 9.0)
    sweep.running[rec.trial_id] = running
    # at its rung 2, after 9 s: to rung 6 costs 8 s more; 100 + 9 + 8 <= 151.2 (70% of 216)
    assert sweep._budget_allows_going_on(running)
    done.duration_s = 140.0  # 140 + 9 + 8 > 151.2, though it fits the whole budget
    assert not sweep._budget_allows_going_on(running)
    sweep.refit_started = True
    assert sweep._budget_allows_going_on(running)


def test_a_small_budget_leaves_more_to_the_final_training(tmp_path):
    prepared, sweep = _automode_sweep(tmp_path, 0.06)
    assert sweep._search_limit() == pytest.approx(0.7 * 216)  # nothing measured yet
    start = TrialRecord("trial-0000", 0, dict(prepared.plan.start), {"automode_start": True}, status="completed",
                        duration_s=50.0, device_share=1.0)
    sweep.state.add(start)
    assert sweep._search_limit() == pytest.approx(0.1 * 216 / 50 * 216)  # 4.3 such trials: 43%
    start.duration_s = 150.0
    assert sweep._search_limit() == pytest.approx(0.3 * 216)  # at least 30%
    start.duration_s = 10.0
    assert sweep._search_limit() == pytest.approx(0.7 * 216)  # 21 such trials: at most 70%


def test_the_starting_point_is_not_stopped_at_a_rung_for_lack_of_budget(tmp_path):
    from automl_vision.sweep.local import _Running

    prepared, sweep = _automode_sweep(tmp_path, 0.01)
    verdicts = {}
    for name, sampler in (("start", {"automode_start": True}), ("search", {"search_space_entry": 0})):
        rec = TrialRecord("trial-0000", 0, dict(prepared.plan.start), sampler, status="running", device_share=1.0,
                          planned_epochs=20, planned_intervals=20)
        # 16 s to start, 2 s an epoch: at its rung 2 after 20 s, its next stage (to rung 6) needs 8 s more,
        # 28 s in all, past the search's 70% of 36 s
        rec.epochs, rec.values, rec.report_s = [1, 2], [0.3, 0.5], [18.0, 20.0]
        sweep.state.trials = {rec.trial_id: rec}
        running = _Running(rec, proc=None, console=None, trial_dir=tmp_path, started=time.monotonic() - 20.0)
        sweep.running = {rec.trial_id: running}
        verdicts[name] = sweep._budget_allows_going_on(running)
    assert verdicts == {"start": True, "search": False}


def test_an_automode_job_with_detector_settings_is_previewed_and_written_before_its_space_exists():
    """min_size and tiling (the spec's usual detection settings) do not apply to the task's default yolov5:
    before the sweep has chosen AutoMode's space, the preview shows AutoMode's models and the run folder's
    resolved job leaves the models to the sweep."""
    from automl_vision.report.preview import search_space_models
    from automl_vision.spec.job import resolved

    fixed = {"pretrained": False, "min_size": 320, "tile_grid_size": "2x1"}
    assert search_space_models("image_object_detection", [], fixed) == [("fasterrcnn_resnet18_fpn", fixed)]
    job = parse_job({**DET, "limits": {"budget": 0.1}, "training_parameters": fixed})
    assert resolved(job)["hyperparameters_by_model"] == {}
    with pytest.raises(ConfigError, match="min_size does not apply to model yolov5"):
        search_space_models("image_object_detection", [{"model_name": {"type": "choice", "values": ["yolov5"]}}],
                            fixed)


def test_a_trial_stopped_for_the_budget_is_not_counted_as_saved_by_early_termination():
    from automl_vision.sweep.core import SweepState

    state = SweepState("accuracy", True)
    for i, reason in enumerate(["terminated by asha at interval 2 (epoch 2): asha: ...",
                                "stopped: the sweep's budget of 0.06 CPU-hours is spent"]):
        state.add(TrialRecord(f"trial-000{i}", i, {}, status="terminated", reason=reason, epochs_completed=2,
                              planned_epochs=20, duration_s=4.0))
    compute = state.compute()
    # the one ASHA stopped would have run 20 epochs; the one the budget stopped, only what it ran
    assert (compute["trial_epochs"], compute["trial_epochs_without_early_termination"]) == (4, 22)
