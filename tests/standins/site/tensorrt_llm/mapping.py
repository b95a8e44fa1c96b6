"""Stand-in for tensorrt_llm/mapping.py: Mapping with the real constructor, attribute names and to_dict()."""

from __future__ import annotations

from typing import Any


class Mapping:
    """Rank layout of a tp x pp (x cp) model; ranks are tp-major as in TensorRT-LLM."""

    def __init__(self, world_size: int = 1, rank: int = 0, gpus_per_node: int = 8, *, cp_size: int = 1,
                 cp_config: dict | None = None, tp_size: int = 1, pp_size: int = 1,
                 pp_partition: list[int] | None = None, moe_cluster_size: int = -1, moe_tp_size: int = -1,
                 moe_ep_size: int = -1, attn_tp_size: int = -1, attn_cp_size: int = -1,
                 enable_attention_dp: bool = False, enable_lm_head_tp_in_adp: bool = False,
                 auto_parallel: bool = False) -> None:
        if pp_size * tp_size * cp_size != world_size:
            raise ValueError(f"world_size must equal to tp_size * pp_size * cp_size, but got {world_size} != "
                             f"{tp_size} * {pp_size} * {cp_size}")
        if moe_cluster_size == -1:
            moe_cluster_size = 1
        if moe_tp_size == -1 and moe_ep_size == -1:
            moe_tp_size, moe_ep_size = tp_size // moe_cluster_size, 1
        elif moe_tp_size == -1:
            moe_tp_size = tp_size // (moe_ep_size * moe_cluster_size)
        elif moe_ep_size == -1:
            moe_ep_size = tp_size // (moe_tp_size * moe_cluster_size)
        if attn_tp_size == -1 and attn_cp_size == -1:
            attn_tp_size, attn_cp_size = tp_size, cp_size
        self.world_size = world_size
        self.rank = rank
        self.gpus_per_node = gpus_per_node
        self.cp_size = cp_size
        self.cp_config = cp_config if cp_config is not None else {}
        self.tp_size = tp_size
        self.pp_size = pp_size
        self.pp_partition = pp_partition
        self.moe_cluster_size = moe_cluster_size
        self.moe_tp_size = moe_tp_size
        self.moe_ep_size = moe_ep_size
        self.attn_tp_size = attn_tp_size
        self.attn_cp_size = attn_cp_size
        self.enable_attention_dp = enable_attention_dp
        self.enable_lm_head_tp_in_adp = enable_lm_head_tp_in_adp
        self.auto_parallel = auto_parallel

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def cp_rank(self) -> int:
        return self.rank // self.tp_size % self.cp_size

    @property
    def pp_rank(self) -> int:
        return self.rank // (self.tp_size * self.cp_size)

    def is_first_pp_rank(self) -> bool:
        return self.pp_rank == 0

    def is_last_pp_rank(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    def pp_layers(self, num_layers: int) -> list[int]:
        """Layers of this pp rank; the first ranks get one extra layer when it does not divide evenly."""
        if self.pp_partition is not None:
            start = sum(self.pp_partition[:self.pp_rank])
            return list(range(start, start + self.pp_partition[self.pp_rank]))
        base, rem = divmod(num_layers, self.pp_size)
        start = self.pp_rank * base + min(self.pp_rank, rem)
        return list(range(start, start + base + (1 if self.pp_rank < rem else 0)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.world_size, self.rank, self.tp_size, self.pp_size, self.cp_size))

    def __repr__(self) -> str:
        return (f"Mapping(world_size={self.world_size}, rank={self.rank}, tp_size={self.tp_size}, "
                f"pp_size={self.pp_size})")

    @classmethod
    def from_dict(cls, mapping: dict[str, Any]) -> Mapping:
        return cls(**mapping)

    def to_dict(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size, "rank": self.rank, "gpus_per_node": self.gpus_per_node,
            "cp_size": self.cp_size, "tp_size": self.tp_size, "pp_size": self.pp_size,
            "moe_tp_size": self.moe_tp_size, "moe_cluster_size": self.moe_cluster_size,
            "moe_ep_size": self.moe_ep_size, "attn_tp_size": self.attn_tp_size, "attn_cp_size": self.attn_cp_size,
            "cp_config": self.cp_config, "enable_attention_dp": self.enable_attention_dp,
            "enable_lm_head_tp_in_adp": self.enable_lm_head_tp_in_adp,
        }
