"""The zoo's accuracy figure: one box per task for a few tasks, a summary for many."""

import numpy as np
import pandas as pd

from weightspace.reporting.zoo_plots import zoo_accuracy_figure


def _index(n_tasks: int, per_task: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = n_tasks * per_task
    return pd.DataFrame({
        "task": [f"t{i // per_task:04d}" for i in range(n)],
        "arch": ["mlp" if i % 2 else "linear" for i in range(n)],
        "test_accuracy": rng.uniform(0.5, 1.0, n),
        "is_final": [True] * (n - 1) + [False],
    })  # fmt: skip


def test_a_few_tasks_get_one_labelled_row_each():
    index = _index(6)
    fig = zoo_accuracy_figure(index)
    ax_task = fig.axes[1]
    labels = [t.get_text() for t in ax_task.get_yticklabels()]
    assert labels == sorted(index["task"].unique())
    assert len(ax_task.patches) == 12  # a box per (task, arch): 6 tasks x 2 archs


def test_many_tasks_are_summarised_in_a_figure_of_fixed_size():
    index = _index(500)
    fig = zoo_accuracy_figure(index, max_tasks=40)
    assert tuple(fig.get_size_inches()) == (13.0, 4.5)
    ax_hist, ax_task = fig.axes
    final = index[index["is_final"]]
    # left: every final model counted once; right: every task once per architecture
    assert sum(p.get_height() for p in ax_hist.patches) == len(final)
    filled = [p for p in ax_task.patches if p.get_fill()]
    per_arch = final.groupby("arch")["task"].nunique().sum()
    assert sum(p.get_height() for p in filled) == per_arch
    assert "500 tasks" in ax_task.get_title()
