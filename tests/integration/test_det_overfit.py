"""A tiny set is overfitted: our training step drives a randomly initialized detector to a perfect
VOC score on its own two training images."""

from __future__ import annotations

import pytest
import torch

from automl_vision.models.detections import ImageGroundTruth
from automl_vision.evaluation.voc import voc_evaluate
from automl_vision.models.detection import DetectorSettings, build_detector, predict_tensors
from automl_vision.training.detection import train_step

pytestmark = pytest.mark.slow


def test_fasterrcnn_overfits_two_images():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        settings = DetectorSettings(min_size=64, max_size=64, box_score_thresh=0.05)
        model = build_detector("fasterrcnn", 18, 2, pretrained=False, settings=settings)
        model.roi_heads.fg_bg_sampler.batch_size_per_image = 64  # cheaper on a CPU, same step
        g = torch.Generator().manual_seed(0)
        images = [torch.rand(3, 64, 64, generator=g) * 0.3 + 0.35 for _ in range(2)]
        boxes, labels = [[8.0, 10, 40, 44], [20.0, 16, 56, 52]], [1, 2]
        colours = {1: [0.9, 0.1, 0.1], 2: [0.1, 0.2, 0.9]}
        for im, b, c in zip(images, boxes, labels):
            x0, y0, x1, y1 = map(int, b)
            im[:, y0:y1, x0:x1] = torch.tensor(colours[c]).view(3, 1, 1)
        targets = [{"boxes": torch.tensor([b]), "labels": torch.tensor([c])} for b, c in zip(boxes, labels)]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        losses = []
        for _ in range(16):
            model.train()
            loss = train_step(model, images, targets, scaler, torch.device("cpu"))
            scaler.step(optimizer)
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss))
        model.eval()
        predictions = predict_tensors(model, images, settings)
        truth = [ImageGroundTruth(64, 64, [b], [c - 1]) for b, c in zip(boxes, labels)]
        result = voc_evaluate(truth, predictions, ["red", "blue"], iou_threshold=0.5)
    finally:
        torch.set_num_threads(before)
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses
    assert result.mean_average_precision == 1.0, (result.per_label, losses)
