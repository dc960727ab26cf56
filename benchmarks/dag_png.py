"""PNG pictures of the project's DAG, taken from the kedro-viz site in headless Chromium.

Builds the kedro-viz site (``kedro viz build`` in a scratch copy of the project: no data
needed) or reuses one, serves it on 127.0.0.1 and screenshots the flowchart with
Playwright driving Debian's ``chromium`` (nothing is downloaded):

- ``docs/dag.png``: every pipeline (``__default__``) at a glance, one box per namespace
  (datasets hidden: the ~170 of them do not fit a readable picture);
- ``docs/dag_<pipeline>.png``: each registered pipeline with its namespaces expanded,
  every node and dataset drawn in its data layer (``--overview-only`` skips these).

``kedro viz build`` (12.5) leaves out ``api/metadata``, which the page fetches (only
``kedro viz run`` serves it; a static site logs a 404 and a console error without it):
the site is completed with kedro-viz's own answer. ``--complete-only`` does just that to a
site built with ``kedro viz build`` (e.g. ``build/``)::

    python benchmarks/dag_png.py                     # build, then docs/dag*.png
    python benchmarks/dag_png.py --overview-only     # only docs/dag.png
    python benchmarks/dag_png.py --site build        # reuse build/ (completes it)
    python benchmarks/dag_png.py --site build --complete-only
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
KEDRO = str(Path(sys.executable).with_name("kedro"))
# kedro-viz keeps its settings in localStorage["KedroViz"]: a light, uncluttered picture
VIEW = {
    "theme": "light",
    "showFeatureHints": False,
    "visible": {"sidebar": False, "miniMap": False},
    "display": {"sidebar": False, "miniMap": False},
}


def build_site(out: Path) -> Path:
    """``kedro viz build`` of this project into ``out`` (completed); returns ``out``."""
    with tempfile.TemporaryDirectory(prefix="viz_build_") as tmp:
        project = Path(tmp)
        for name in ("pyproject.toml", ".telemetry"):
            if (ROOT / name).exists():
                shutil.copy(ROOT / name, project / name)
        shutil.copytree(ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
        (project / "conf" / "local").mkdir()
        (project / "src").mkdir()  # the package itself is the installed one
        env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DVC_NO_ANALYTICS": "1"}
        proc = subprocess.run(
            [KEDRO, "viz", "build"], cwd=project, env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise SystemExit(f"kedro viz build failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(project / "build", out)
    return complete_site(out)


def complete_site(site: Path) -> Path:
    """Write ``api/metadata`` (what ``kedro viz run`` answers) into a static site."""
    from kedro_viz.api.rest.responses.metadata import MetadataAPIResponse
    from kedro_viz.api.rest.utils import get_package_compatibilities

    if not (site / "api" / "main").is_file():
        raise SystemExit(f"{site} is not a kedro-viz site (no api/main): run `kedro viz build`")
    answer = MetadataAPIResponse(package_compatibilities=get_package_compatibilities())
    (site / "api" / "metadata").write_text(answer.model_dump_json())
    return site


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        """No access log."""


@contextlib.contextmanager
def serve(site: Path) -> Iterator[str]:
    """Serve ``site`` on 127.0.0.1 (a free port) while the block runs; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=site))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def screenshot(browser, url: str, query: str, size: tuple[int, int], path: Path) -> list[str]:
    """The flowchart at ``url + query`` as a PNG; returns the console errors it logged."""
    page = browser.new_page(viewport={"width": size[0], "height": size[1]}, device_scale_factor=1)
    errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    # offline: the Google Fonts stylesheet gets an empty answer (the system font is used)
    page.route(
        lambda u: urlsplit(u).hostname not in ("127.0.0.1", None),
        lambda route: route.fulfill(status=200, body="", content_type="text/css"),
    )
    page.add_init_script(f"localStorage.setItem('KedroViz', {json.dumps(json.dumps(VIEW))})")
    page.goto(f"{url}?{query}&sizewarning=false", wait_until="networkidle")
    page.wait_for_selector(".pipeline-node")
    page.wait_for_timeout(1500)  # layout and the zoom-to-fit transition
    page.screenshot(path=str(path))
    page.close()
    return errors


def main(argv: list[str] | None = None) -> None:
    """Build or reuse the site, then write the PNGs."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--site", type=Path, help="a site from `kedro viz build` to reuse")
    ap.add_argument("--complete-only", action="store_true", help="only complete --site")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "dag.png")
    ap.add_argument("--overview-only", action="store_true", help="no dag_<pipeline>.png")
    ap.add_argument("--size", default="1600x700", help="viewport WIDTHxHEIGHT of dag.png")
    args = ap.parse_args(argv)
    if args.complete_only:
        if args.site is None:
            raise SystemExit("--complete-only needs --site (the folder `kedro viz build` wrote)")
        print(f"completed {complete_site(args.site)}")
        return
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with contextlib.ExitStack() as stack:
        if args.site is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="viz_site_")))
            site = build_site(tmp / "build")
        else:
            site = complete_site(args.site)
        main = json.loads((site / "api" / "main").read_text())
        pipelines = [p["id"] for p in main["pipelines"] if p["id"] != "__default__"]
        url = stack.enter_context(serve(site))
        pw = stack.enter_context(sync_playwright())
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        width, height = (int(v) for v in args.size.split("x"))
        shots = [
            ("pid=__default__&expandAllPipelines=false&types=nodes", (width, height), args.out)
        ]
        for p in [] if args.overview_only else pipelines:
            side = _side(site, p)
            query = f"pid={p}&expandAllPipelines=true"
            shots.append((query, (side, side), args.out.with_name(f"dag_{p}.png")))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        failed = False
        for query, size, path in shots:
            errors = screenshot(browser, url, query, size, path)
            failed |= bool(errors)
            print(
                f"{path} ({size[0]}x{size[1]}, ?{query})"
                + "".join(f"\n  error: {e}" for e in errors)
            )
        browser.close()
    if failed:
        raise SystemExit("the page logged console errors (above)")


def _side(site: Path, pipeline: str) -> int:
    """A square viewport that keeps an expanded pipeline's labels legible."""
    graph = json.loads((site / "api" / "pipelines" / pipeline).read_text())
    drawn = sum(n["type"] in ("task", "data") for n in graph["nodes"])
    return min(2600, max(1400, 24 * drawn))


if __name__ == "__main__":
    main()
