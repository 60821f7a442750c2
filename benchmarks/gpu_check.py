"""One prepared run on a CUDA device: check the GPU path against the CPU, then time it.

1. Correctness: every measure on CUDA tensors (float32 and float64 inputs) equals the CPU value
   within 1e-8, and the moments stay on the device.
2. Timing: distances to final for every layer of a ResNet-18-sized model (the channel widths of
   its 20 conv/linear layers, conv positions capped at 8,192 rows as the monitor stores them),
   20 snapshots each, SVCCA and PWCCA, with the final representation prepared once per layer.

Run: ``python benchmarks/gpu_check.py`` (exits with a message when no GPU is present).
Prints one line per check and the total time; nonzero exit status if a check fails.
"""

import sys
import time

import torch

from cca_monitor.convergence import layer_distances
from cca_monitor.similarity import MEASURES, PairMoments, Representation

TOLERANCE = 1e-8
ROWS = 8192
SNAPSHOTS = 20
MEASURES_TIMED = ["svcca", "pwcca"]
RESNET18_WIDTHS = [64] + [64] * 4 + [128] * 5 + [256] * 5 + [512] * 5 + [1000]
"""Output channels of ResNet-18's conv layers (stem, 4 stages with downsampling convs), fc."""


def check_against_cpu(device: torch.device) -> bool:
    generator = torch.Generator().manual_seed(0)
    ok = True
    for dtype in (torch.float32, torch.float64):
        latent = torch.randn(4000, 16, generator=generator, dtype=torch.float64)
        x = (latent @ torch.randn(16, 64, generator=generator, dtype=torch.float64)).to(dtype)
        y = (latent @ torch.randn(16, 48, generator=generator, dtype=torch.float64)).to(dtype)
        y = y + 0.5 * torch.randn(y.shape, generator=generator).to(dtype)
        for name, fn in MEASURES.items():
            cpu, gpu = fn(x, y), fn(x.to(device), y.to(device))
            good = abs(cpu - gpu) <= TOLERANCE
            ok &= good
            print(
                f"{'ok ' if good else 'BAD'} {name:<11} {str(dtype):<14} cpu {cpu:.10f} "
                f"gpu {gpu:.10f}"
            )
        moments = PairMoments.from_data(x.to(device), y.to(device))
        on_device = moments.scatter_xy.device.type == device.type
        ok &= on_device
        print(f"{'ok ' if on_device else 'BAD'} moments stay on {moments.scatter_xy.device}")
    return ok


def time_resnet18_to_final(device: torch.device) -> float:
    generator = torch.Generator(device=device).manual_seed(0)
    layers = [
        torch.randn(ROWS, width, generator=generator, device=device) for width in RESNET18_WIDTHS
    ]
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    for final in layers:
        reference = Representation(final)
        for step in range(SNAPSHOTS):
            snapshot = final + 0.05 * (SNAPSHOTS - step) * torch.randn(
                final.shape, generator=generator, device=device
            )
            layer_distances(reference, snapshot, MEASURES_TIMED)
    torch.cuda.synchronize(device)
    return time.perf_counter() - started


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    ok = check_against_cpu(device)
    time_resnet18_to_final(device)  # warm-up: kernels and cuSOLVER handles
    seconds = time_resnet18_to_final(device)
    print(
        f"ResNet-18 widths ({len(RESNET18_WIDTHS)} layers), {SNAPSHOTS} snapshots of {ROWS} "
        f"rows, {'+'.join(MEASURES_TIMED)} to final: {seconds:.2f} s (target < 2 s)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
