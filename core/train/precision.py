"""One precision setting for every training loop (and the default of inference): ``auto|fp32|bf16|fp16``.

The decision is a pure function of the hardware facts, so it is tested on any machine. bf16 is used only
where the hardware computes it natively: CUDA compute capability >= 8.0 (``torch.cuda.is_bf16_supported()``
also says yes on T4/V100, through a slow emulation) and CPUs with AVX512-BF16/AMX (without them bf16
matmuls are ~100x slower than fp32). fp16 needs a GradScaler (loss scaling) against gradient underflow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRECISION_HELP = ("autocast: auto = bf16 where the hardware has it natively (CUDA 8.0+, AMX/AVX512-BF16 CPUs), "
                  "fp16 on older GPUs, else fp32")


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype | None       # autocast dtype; None = plain fp32
    grad_scaler: bool = False       # fp16: scale the loss, unscale before clipping

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def decide_precision(setting: str, device_type: str, cuda_capability: tuple[int, int] | None = None,
                     cpu_native_bf16: bool = False) -> Precision:
    """``setting`` on a ``device_type`` ("cuda", "cpu", ...) with the given hardware facts."""
    if setting not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {setting!r}")
    if setting == "fp32":
        return Precision(None)
    if device_type == "cuda":
        native_bf16 = cuda_capability is not None and tuple(cuda_capability) >= (8, 0)
        if setting == "bf16" and not native_bf16:
            raise ValueError(f"bf16 needs a GPU with compute capability 8.0 or newer (this one has "
                             f"{'.'.join(map(str, cuda_capability or ()))}); use --precision fp16 or auto")
        if setting == "fp16" or not native_bf16:
            return Precision(torch.float16, grad_scaler=True)
        return Precision(torch.bfloat16)
    if setting == "fp16":
        raise ValueError("fp16 autocast needs CUDA; use bf16 or fp32 on CPU")
    if device_type == "cpu" and cpu_native_bf16:
        return Precision(torch.bfloat16)
    if setting == "bf16":
        raise ValueError(f"bf16 on {device_type}: no native bf16 here (on a CPU it needs AVX512-BF16/AMX, "
                         f"else it is ~100x slower than fp32); use --precision fp32 or auto")
    return Precision(None)


def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(setting: str, device: torch.device | str) -> Precision:
    """:func:`decide_precision` with this machine's facts for ``device``."""
    device = torch.device(device)
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return decide_precision(setting, device.type, capability, device.type == "cpu" and cpu_has_native_bf16())


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The ``auto`` autocast dtype on ``device`` (None = fp32)."""
    return resolve_precision("auto", device).dtype


@dataclass(frozen=True)
class CudaMath:
    cudnn_benchmark: bool           # autotune convolutions: the image size is fixed, the choice is reused
    tf32: bool                      # fp32 matmuls/convolutions on TF32 tensor cores (10-bit mantissa)


def decide_cuda_math(setting: str, cuda_capability: tuple[int, int] | None) -> CudaMath:
    """The CUDA math mode of a training run: cuDNN autotuning always; TF32 on 8.0+ GPUs for whatever stays
    fp32 under autocast, but not when the user asked for ``fp32`` (that means full fp32 everywhere)."""
    native_tf32 = cuda_capability is not None and tuple(cuda_capability) >= (8, 0)
    return CudaMath(cudnn_benchmark=True, tf32=native_tf32 and setting != "fp32")


def configure_cuda_math(setting: str, device: torch.device | str) -> CudaMath | None:
    """Set this process's CUDA math mode once, at a run's set-up (:func:`decide_cuda_math`); nothing off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    math = decide_cuda_math(setting, torch.cuda.get_device_capability(device))
    torch.backends.cudnn.benchmark = math.cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = math.tf32
    torch.backends.cudnn.allow_tf32 = math.tf32
    return math


def make_grad_scaler(precision: Precision, device: torch.device) -> "torch.amp.GradScaler | None":
    return torch.amp.GradScaler(device.type) if precision.grad_scaler else None

