"""Compute settings shared by every step that runs a model (compute.* in the config)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ComputeConfig:
    """Base of the step configs that load a model: where and how it runs. Subclasses add their own fields."""

    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N"})
    dtype: str = field(default="auto", metadata={"help": "compute dtype: auto (bf16 on GPU, fp32 on CPU) or explicit"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch default)"})
    device_map: str | None = field(default=None, metadata={"help": "from_pretrained device_map (auto, balanced, "
                                                                   "sequential) to shard over the GPUs; none = one"})
    require_gpu: bool = field(default=False, metadata={"help": "fail instead of falling back to the CPU"})
