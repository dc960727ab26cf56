"""Model zoos: batched training of many models, checkpoints, index, resume.

Under ``torchrun`` the members of one zoo are sharded across the processes
(``train_zoo(..., world=...)``, :mod:`weightspace.zoo.sharded`); a member's weights do not
depend on the number of processes.
"""

from weightspace.zoo.build import ZooRunOptions, ZooRunReport, train_zoo
from weightspace.zoo.grid import expand_grid, expand_tasks, expand_train_configs
from weightspace.zoo.spec import MemberSpec, TrainConfig
from weightspace.zoo.train import StackHParams, train_stack
from weightspace.zoo.zoo import Zoo

__all__ = [
    "MemberSpec",
    "StackHParams",
    "TrainConfig",
    "Zoo",
    "ZooRunOptions",
    "ZooRunReport",
    "expand_grid",
    "expand_tasks",
    "expand_train_configs",
    "train_stack",
    "train_zoo",
]
