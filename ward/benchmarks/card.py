"""The card's own ceilings, measured in the same run: copy bandwidth and bf16 matmul rate."""
from __future__ import annotations

import torch


def _time_cuda(fn, iters: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    times.sort()
    return times[len(times) // 2]


def measure_card() -> dict:
    """Name, copy bandwidth (bytes read + written per second) and bf16 matmul FLOP/s, on random data."""
    if not torch.cuda.is_available():
        return {"device": "cpu"}
    props = torch.cuda.get_device_properties(0)
    n = 1 << 30  # 1 GiB per buffer, far larger than L2
    a = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    b = torch.empty_like(a)
    t = _time_cuda(lambda: b.copy_(a), 20)
    bandwidth = 2 * n / t
    del a, b
    m = 8192
    x = torch.randn(m, m, dtype=torch.bfloat16, device="cuda")
    y = torch.randn(m, m, dtype=torch.bfloat16, device="cuda")
    t = _time_cuda(lambda: torch.matmul(x, y), 20)
    flops = 2 * m**3 / t
    del x, y
    torch.cuda.empty_cache()
    return {
        "device": torch.cuda.get_device_name(0),
        "sms": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "copy_bandwidth_tb_s": round(bandwidth / 1e12, 3),
        "bf16_matmul_tflop_s": round(flops / 1e12, 1),
        "torch": torch.__version__,
    }
