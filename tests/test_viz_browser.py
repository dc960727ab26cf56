"""The kedro-viz site in a real browser: ``kedro viz build``, served, opened in Chromium.

One build (in a scratch copy of the project: no data needed) is served on 127.0.0.1 and
opened in headless Chromium (Debian's ``chromium``; Playwright drives it and downloads
nothing). Every registered pipeline is selected with its modular pipelines expanded, and
the task labels drawn in the flowchart must be exactly the pipeline's node names, with no
console error and no page error. Requests that leave 127.0.0.1 (the site's Google Fonts
stylesheet) get an empty answer: the test is offline; any other outside request fails it.

``kedro viz build`` (12.5) leaves out ``api/metadata``, which the page fetches (it is
served only by ``kedro viz run``): the site is completed with kedro-viz's own answer for
it, ``benchmarks/dag_png.py`` does the same. Without Chromium the test is skipped, except
in CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from kedro.pipeline import Pipeline

from weightspace_kedro.pipeline_registry import available_pipelines

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import dag_png

pytestmark = pytest.mark.slow

FONT_HOSTS = {"fonts.googleapis.com", "fonts.gstatic.com"}
LAYERS = {"intermediate", "primary", "feature", "models", "model_output", "reporting"}
TASK_LABELS = ".pipeline-node--task .pipeline-node__text"


def registered_pipelines() -> dict[str, Pipeline]:
    """What ``register_pipelines`` returns, without configuring a Kedro project globally."""
    found = {
        name: importlib.import_module(
            f"weightspace_kedro.pipelines.{name}.pipeline"
        ).create_pipeline()
        for name in available_pipelines()
    }
    return {**found, "__default__": sum(found.values())}


def node_labels(pipeline: Pipeline) -> Counter:
    """The label kedro-viz draws for each task: the node name without its namespace."""
    return Counter(
        n.name.removeprefix(f"{n.namespace}.") if n.namespace else n.name for n in pipeline.nodes
    )


def label_mismatch(expected: Counter, rendered: Counter) -> dict[str, list[str]]:
    """Labels missing from the drawing and labels drawn that the pipeline does not have."""
    return {
        "missing": sorted((expected - rendered).elements()),
        "unexpected": sorted((rendered - expected).elements()),
    }


@dataclass
class Rendered:
    """What one pipeline's page drew and complained about."""

    labels: Counter
    layers: set[str]
    errors: list[str] = field(default_factory=list)
    outside: set[str] = field(default_factory=set)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    try:
        importlib.import_module("playwright.sync_api")
    except ImportError:
        path = None
    if path is None:
        reason = "needs Debian's chromium (apt-get install chromium) and playwright"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI: {reason}; .ci/run installs chromium when it is missing")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory, chromium) -> Path:
    """``kedro viz build`` in a scratch copy of the project, completed with api/metadata
    (``benchmarks/dag_png.py``'s ``build_site``, which draws the README's pictures)."""
    build = dag_png.build_site(tmp_path_factory.mktemp("viz") / "build")
    assert (build / "index.html").is_file() and (build / "api" / "main").is_file()
    assert (build / "api" / "metadata").is_file()
    return build


@pytest.fixture(scope="module")
def url(site) -> Iterator[str]:
    with dag_png.serve(site) as address:
        yield address


@pytest.fixture(scope="module")
def rendered(url, chromium) -> dict[str, Rendered]:
    """Every registered pipeline drawn once, modular pipelines expanded."""
    from playwright.sync_api import sync_playwright

    expected = {name: sum(node_labels(p).values()) for name, p in registered_pipelines().items()}
    results: dict[str, Rendered] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            for name, count in expected.items():
                results[name] = _render(browser, url, name, count)
        finally:
            browser.close()
    return results


def _render(browser, url: str, pipeline: str, count: int) -> Rendered:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    result = Rendered(Counter(), set())

    def outside(route) -> None:
        host = urlsplit(route.request.url).hostname or ""
        result.outside.add(host)
        route.fulfill(status=200, body="", content_type="text/css")

    page.route(lambda u: not u.startswith(url) and not u.startswith(("blob:", "data:")), outside)
    page.on(
        "console",
        lambda m: m.type == "error" and result.errors.append(f"console: {m.text} @ {m.location}"),
    )
    page.on("pageerror", lambda e: result.errors.append(f"pageerror: {e}"))
    query = f"?pid={pipeline}&expandAllPipelines=true&sizewarning=false"
    page.goto(url + query, wait_until="networkidle")
    try:  # layout runs in a worker: wait until as many task labels as nodes are drawn
        page.wait_for_function(
            f"document.querySelectorAll({TASK_LABELS!r}).length >= {count}", timeout=30_000
        )
    except PlaywrightTimeout as exc:  # the label comparison then reports what is missing
        warnings.warn(f"{pipeline}: fewer task labels than nodes after 30 s ({exc})", stacklevel=1)
    page.wait_for_timeout(300)  # a late console error still lands in this pipeline's list
    result.labels = Counter(page.locator(TASK_LABELS).all_text_contents())
    result.layers = set(page.locator(".pipeline-layer-name").all_text_contents())
    page.close()
    return result


# --------------------------------------------------------------------------------- tests
def test_site_lists_every_registered_pipeline(site):
    import json

    main = json.loads((site / "api" / "main").read_text())
    assert {p["id"] for p in main["pipelines"]} == set(registered_pipelines())
    for name in registered_pipelines():
        assert (site / "api" / "pipelines" / name).is_file(), name
    assert set(main["layers"]) == LAYERS


def test_every_pipeline_draws_exactly_its_node_names(rendered):
    pipelines = registered_pipelines()
    assert set(rendered) == set(pipelines)
    wrong = {}
    for name, pipeline in pipelines.items():
        mismatch = label_mismatch(node_labels(pipeline), rendered[name].labels)
        if mismatch["missing"] or mismatch["unexpected"]:
            wrong[name] = mismatch
    assert not wrong, f"flowchart labels differ from the node names: {wrong}"


def test_no_console_or_page_error_and_nothing_fetched_from_outside(rendered):
    errors = {name: r.errors for name, r in rendered.items() if r.errors}
    assert not errors, errors
    outside = set().union(*(r.outside for r in rendered.values()))
    assert outside <= FONT_HOSTS, f"the site fetched from {outside - FONT_HOSTS}"


def test_layers_are_drawn(rendered):
    assert rendered["__default__"].layers == LAYERS
    assert {"primary", "reporting"} <= rendered["d2nwg"].layers


def test_label_check_fails_on_a_node_that_is_not_drawn(rendered):
    """The comparison is real: a node name missing from the drawing is reported."""
    labels = rendered["zoo"].labels
    assert labels, "nothing was drawn for the zoo pipeline"
    expected = node_labels(registered_pipelines()["zoo"])
    assert label_mismatch(expected + Counter(["no_such_node"]), labels)["missing"] == [
        "no_such_node"
    ]
    dropped = Counter(labels)
    gone = next(iter(labels))
    dropped[gone] -= 1
    assert label_mismatch(expected, +dropped)["missing"] == [gone]


# ------------------------------------------------------------- namespaces (no browser)
def test_no_namespace_is_interrupted():
    """Each namespace is one contiguous block of every DAG (Kedro warns otherwise)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registered_pipelines()
    interrupted = [str(w.message) for w in caught if "is interrupted by" in str(w.message)]
    assert not interrupted, interrupted


def test_nested_zoo_nodes_keep_their_dataset_names():
    """D2NWG's zoos sit in the scenario namespaces by node name only: their datasets keep
    the zoo names the catalog, DVC and the tests use."""
    d2nwg = registered_pipelines()["d2nwg"]
    names = d2nwg.datasets()
    for scenario, zoos in {
        "d2nwg_heads": ("zoo_d2nwg_backbones", "zoo_d2nwg_heads"),
        "d2nwg_networks": ("zoo_d2nwg_networks",),
    }.items():
        assert not {d for d in names if d.startswith(f"{scenario}.zoo_d2nwg_")}
        for zoo in zoos:
            for suffix in ("zoo_models", "zoo_previous", "zoo_metrics", "zoo_dataset_cards"):
                assert f"{zoo}.{suffix}" in names
            train = d2nwg.filter(node_names=[f"{scenario}.{zoo}.train_zoo"]).nodes[0]
            assert train.inputs[-1] == f"params:{zoo}.run"
