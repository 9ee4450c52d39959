"""Tasks (loss and metrics per task type) and heads."""

from mtmm_train.tasks.base import Task
from mtmm_train.tasks.binary import BinaryTask
from mtmm_train.tasks.heads import MLPHead
from mtmm_train.tasks.multiclass import MulticlassTask
from mtmm_train.tasks.multilabel import MultilabelTask
from mtmm_train.tasks.regression import RegressionTask

TASK_TYPES: dict[str, type[Task]] = {
    "multiclass": MulticlassTask,
    "binary": BinaryTask,
    "multilabel": MultilabelTask,
    "regression": RegressionTask,
}

__all__ = ["TASK_TYPES", "BinaryTask", "MLPHead", "MulticlassTask", "MultilabelTask", "RegressionTask", "Task"]
