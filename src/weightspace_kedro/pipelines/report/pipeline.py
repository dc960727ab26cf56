"""Cross-method report: ``kedro run --pipelines=report``.

Reads every method pipeline's ``<method>.metrics`` and ``<method>.provenance`` through the
catalog (D2NWG, fusion, distill, WeightFormer, SuperWeights) and writes, under
``data/08_reporting/report``: ``comparison.md`` and ``comparison.csv`` (every variant of
every method, grouped by comparable zoo + task, with commit and config hash), one model
card per method (``cards/<method>.md``), two plots (accuracy vs cost to obtain, vs
inference cost) and ``metrics.json``. Absent method outputs are reported before the run
starts (see :mod:`weightspace_kedro.pipelines.report.inputs`).
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from weightspace.reporting.comparison import METHODS
from weightspace_kedro.pipelines.report import nodes

INPUTS = {f"{m}_{kind}": f"{m}.{kind}" for m in METHODS for kind in ("metrics", "provenance")}
"""Node argument -> catalog name of every method output the report reads."""


def create_pipeline(**kwargs) -> Pipeline:
    """Settings -> rows of every method -> tables, cards, plots."""
    report = Pipeline(
        [
            Node(nodes.build_settings, "params:settings", "settings", name="build_settings"),
            Node(
                nodes.compare,
                {"settings": "settings", **INPUTS},
                "comparison",
                name="compare",
            ),
            Node(
                nodes.tables,
                "comparison",
                ["comparison_md", "comparison_csv", "metrics"],
                name="tables",
            ),
            Node(nodes.cards, "comparison", "cards", name="cards"),
            Node(
                nodes.plots,
                "comparison",
                ["plot_accuracy_vs_obtain_cost", "plot_accuracy_vs_inference_cost"],
                name="plots",
            ),
        ],
        tags=["report"],
    )
    return Pipeline(
        report,
        namespace="report",
        inputs=set(INPUTS.values()),
        prefix_datasets_with_namespace=True,
    )
