"""CGC (Tang et al., 2020): one level of task-specific and shared experts with per-task gates."""

from __future__ import annotations

from mtmm_train.mtl.ple import PLE


class CGC(PLE):
    """Customized gate control: each task's gate mixes its own experts and the shared experts
    (the single-level case of :class:`~mtmm_train.mtl.ple.PLE`, from `Progressive Layered
    Extraction <https://dl.acm.org/doi/10.1145/3383313.3412236>`_). Unlike MMoE, a task's own
    experts receive no gradient from the other tasks.

    ``shared`` is the concatenation of ``z`` and the shared experts' outputs.

    Args:
        in_dim: size of the fused representation (passed in by the recipe).
        tasks: task names (passed in by the recipe).
        num_task_experts: experts of each task.
        num_shared_experts: shared experts.
        expert_dims: each expert's MLP layer sizes; the last is ``out_dim``.
        dropout: dropout inside the experts.
    """

    def __init__(self, in_dim: int, tasks: list[str], num_task_experts: int = 1, num_shared_experts: int = 2,
                 expert_dims: tuple[int, ...] = (128,), dropout: float = 0.0) -> None:
        super().__init__(in_dim, tasks, num_levels=1, num_task_experts=num_task_experts,
                         num_shared_experts=num_shared_experts, expert_dims=expert_dims, dropout=dropout)
