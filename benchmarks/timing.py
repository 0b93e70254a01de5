"""Wall-clock timing shared by the benchmarks (CUDA work is synchronised around each call)."""
import time

import torch


def seconds(function, device: torch.device) -> float:
    """Seconds one call of ``function()`` takes."""
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - start
