"""ResNet-50 training images/s on one GPU: mixed precision, channels_last, batch 256 at 224x224.

    python benchmarks/gpu_resnet50.py            # about 2-4 minutes including start-up

Prints our training step's images/s (fed uint8 images with the colour jitter on the GPU, as
the loaders feed it in a trial, and fed the same float tensors as the bare loop), a minimal
hand-written loop's images/s with the same model, batch and tensors, and the ratio of ours to
2,470 img/s, NVIDIA's published ResNet-50 training figure for a single A100 in mixed precision.
Another GPU model (an H100 is faster) makes that ratio a comparison across hardware.
Inputs come from memory, so this measures the step, not the disk.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_throughput  # noqa: E402

NVIDIA_A100_IMAGES_PER_S = 2470


def main(argv=None) -> int:
    if not torch.cuda.is_available():
        print("gpu_resnet50: no CUDA device here; run it on a machine with a GPU")
        return 2
    extra = list(argv if argv is not None else sys.argv[1:])
    args = train_throughput.parse(["--model", "resnet50", "--size", "224", "--batch", "256", "--device", "cuda",
                                   "--steps", "20", "--rounds", "4", *extra])
    t0 = time.time()
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"GPU {torch.cuda.get_device_name(0)}", flush=True)
    m = train_throughput.measure(args)
    train_throughput.report(args, m)
    med, info = m["median"], m["info"]
    ours = med.get("ours_uint8_jitter", med["ours"])
    print()
    print(f"RESULT resnet50 {info['precision']} channels_last {info['channels_last']} batch {args.batch}: "
          f"{ours:.0f} img/s (our step, uint8 input, GPU jitter); {med['ours']:.0f} img/s (our step, float input); "
          f"{med['bare']:.0f} img/s (bare loop)")
    print(f"RESULT ratio to NVIDIA's single-A100 figure ({NVIDIA_A100_IMAGES_PER_S} img/s): "
          f"{ours / NVIDIA_A100_IMAGES_PER_S:.3f}   ratio ours / bare loop: {med['ours'] / med['bare']:.3f}")
    if info["peak_memory_gib"] is not None:
        print(f"peak GPU memory {info['peak_memory_gib']:.1f} GiB; total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
