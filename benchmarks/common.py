"""Shared set-up for the benchmark scripts: the host imported in-process, timing and peak memory."""
import os
import statistics
import sys
import threading
import time
import types

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
from comfy_client import load_manifest  # noqa: E402

# What `python3 scripts/ta.py run benchmarks/NAME.py` provisioned for the chosen host.
MANIFEST = load_manifest()
DEFAULT_COMFYUI = MANIFEST["comfyui"]
CHECKPOINTS = MANIFEST["checkpoints"]
CLIPS = MANIFEST["clips"]  # {file name: path} of the sample clips


def import_host(comfy_dir=DEFAULT_COMFYUI, host_args=()):
    """Import the host in this process with --cpu (plus `host_args`, e.g. "--use-pytorch-cross-attention"),
    and our package as `temporal_adapter` (without its __init__). Returns the host's `comfy.sd` module."""
    if comfy_dir not in sys.path:
        sys.path.insert(0, comfy_dir)
    argv, sys.argv = sys.argv, [sys.argv[0], "--cpu", *host_args]
    try:
        import comfy.options
        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401  (parses --cpu)
        import comfy.sd
    finally:
        sys.argv = argv
    register_package()
    return comfy.sd


def register_package():
    """Make the repo importable as `temporal_adapter` without running its (host-needing) __init__."""
    if "temporal_adapter" not in sys.modules:
        package = types.ModuleType("temporal_adapter")
        package.__path__ = [REPO]
        sys.modules["temporal_adapter"] = package


def seconds(fn, repeats):
    """Median wall time of fn() over `repeats` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class PeakRSS:
    """Highest resident set size seen while the block runs (sampled every millisecond)."""

    def __enter__(self):
        self.process, self.peak, self.running = psutil.Process(), 0, True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
