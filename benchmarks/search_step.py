"""Benchmark one search step (architecture step + weight step): idarts against pcdarts.

Both modes run interleaved in one process on the same inputs, so machine load
affects them alike. Prints the median step time, the peak resident memory seen
during the steps of each mode, and the idarts / pcdarts ratios.

    .venv/bin/python benchmarks/search_step.py --steps 30
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
from torch import nn

from idarts.architect import ArchitectOptimizer
from idarts.config import SearchConfig
from idarts.reproducibility import resolve_device
from idarts.supernet import SearchNetwork


class PeakMemory:
    """Track the largest memory growth within one block, over all blocks it measured.

    On CPU it samples the resident set size every millisecond and keeps the
    peak minus the size at the start of the block, which is the memory the
    step allocated (activations, gradients, optimizer temporaries). On CUDA
    it uses the allocator's peak statistics in the same way.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0
        self._start_bytes = 0
        self._block_peak = 0
        self._running = False
        self._thread: threading.Thread | None = None

    def _rss_bytes(self) -> int:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * 4096

    def _sample(self) -> None:
        while self._running:
            self._block_peak = max(self._block_peak, self._rss_bytes())
            time.sleep(0.001)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            self._start_bytes = self._block_peak = self._rss_bytes()
            self._running = True
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self._block_peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._running = False
            assert self._thread is not None
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._block_peak - self._start_bytes)


class StepRunner:
    """One supernet with its two optimizers, taking full search steps."""

    def __init__(self, config: SearchConfig, device: torch.device) -> None:
        torch.manual_seed(config.seed)
        self.network = SearchNetwork(
            3, 10, config.init_channels, config.layers, config.partial_k
        ).to(device)
        # The same memory format as Searcher picks by default.
        self.memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
        self.network.to(memory_format=self.memory_format)
        self.architect = ArchitectOptimizer(self.network, config)
        self.optimizer = torch.optim.SGD(
            self.network.weight_parameters(), lr=config.lr, momentum=config.momentum
        )
        self.criterion = nn.CrossEntropyLoss()
        self.device = device

    def step(self, batch: tuple[torch.Tensor, ...]) -> float:
        images, labels, arch_images, arch_labels = batch
        images = images.contiguous(memory_format=self.memory_format)
        arch_images = arch_images.contiguous(memory_format=self.memory_format)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()

        self.architect.step(arch_images, arch_labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.criterion(self.network(images), labels)
        loss.backward()
        nn.utils.clip_grad_norm_(self.network.weight_parameters(), 5.0)
        self.optimizer.step()

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


def main() -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # glibc keeps freed heap memory in the process, which hides the per-step peak
        # from the resident set size. Serving every block over 64 KiB with mmap makes
        # freed tensors leave the process, so the sampled size follows live memory.
        environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        os.execve(sys.executable, [sys.executable, *sys.argv], environment)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="measured steps per mode")
    parser.add_argument("--warmup-steps", type=int, default=3, help="unmeasured steps per mode")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--init-channels", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--partial-k", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    base = SearchConfig(
        init_channels=args.init_channels,
        layers=args.layers,
        partial_k=args.partial_k,
        batch_size=args.batch_size,
        threshold=0.0,
        device=str(device),
    )
    runners = {
        "pcdarts": StepRunner(base.replace(mode="pcdarts"), device),
        "idarts": StepRunner(base.replace(mode="idarts"), device),
    }
    generator = torch.Generator().manual_seed(0)

    def make_batch() -> tuple[torch.Tensor, ...]:
        shape = (args.batch_size, 3, 32, 32)
        tensors = (
            torch.randn(shape, generator=generator),
            torch.randint(0, 10, (args.batch_size,), generator=generator),
            torch.randn(shape, generator=generator),
            torch.randint(0, 10, (args.batch_size,), generator=generator),
        )
        return tuple(tensor.to(device) for tensor in tensors)

    times: dict[str, list[float]] = {mode: [] for mode in runners}
    peaks = {mode: PeakMemory(device) for mode in runners}
    for index in range(args.warmup_steps + args.steps):
        batch = make_batch()
        # Alternate which mode goes first, so neither always runs on a warmer cache.
        order = list(runners.items()) if index % 2 == 0 else list(runners.items())[::-1]
        for mode, runner in order:
            with peaks[mode]:
                elapsed = runner.step(batch)
            if index >= args.warmup_steps:
                times[mode].append(elapsed)

    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"device {device}, torch {torch.__version__}")
    print(f"setting: batch {args.batch_size}, 32x32x3 input, C {args.init_channels}, "
          f"{args.layers} layers, K {args.partial_k}, {args.steps} steps per mode")
    print(f"{'mode':<10}{'median step (ms)':>18}{'step peak memory (MiB)':>25}")
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    for mode in runners:
        print(f"{mode:<10}{1000 * medians[mode]:>18.1f}{peaks[mode].peak_bytes / 2**20:>25.1f}")
    print(f"ratio idarts / pcdarts: time {medians['idarts'] / medians['pcdarts']:.3f}, "
          f"memory {peaks['idarts'].peak_bytes / peaks['pcdarts'].peak_bytes:.3f}")


if __name__ == "__main__":
    main()
