"""The Dagster UI end to end in headless Debian Chromium (issue 10).

`dagster dev` (webserver + daemon, what `make ui` runs) starts on a free loopback port with a
temporary DAGSTER_HOME and a params file whose paths point into the test's tmp folder. The
tiny pipeline is launched through the UI's GraphQL API, and the asset graph pages must then
show every asset of the run as materialised. Screenshots land in the test's tmp folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from system_tools import require_tool

from orchestration.params import REPO_ROOT, params_path

pytestmark = pytest.mark.browser

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
LOCATION = "orchestration.definitions"
SERVER_START_TIMEOUT_S = 240
RUN_TIMEOUT_S = 420
PAGE_TIMEOUT_S = 60
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1800,1100",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def graphql(base_url: str, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{base_url}/graphql", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.load(response)
    assert "errors" not in payload, payload
    return payload["data"]


def wait_for_location(base_url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    query = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
    while time.monotonic() < deadline:
        assert server.poll() is None, f"dagster dev exited:\n{log.read_text()[-3000:]}"
        try:
            entries = graphql(base_url, query)["workspaceOrError"]["locationEntries"]
            if any(e["name"] == LOCATION and e["loadStatus"] == "LOADED" for e in entries):
                return
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(
        f"code location not loaded in {SERVER_START_TIMEOUT_S}s:\n{log.read_text()[-3000:]}"
    )


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`dagster dev` on a free loopback port; every path it writes is under tmp."""
    root = tmp_path_factory.mktemp("ui")
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "orchestration" / "dagster.yaml", home / "dagster.yaml")
    params = yaml.safe_load(params_path().read_text())
    params["paths"] = {
        name: str(root / name) for name in ("data", "artifacts", "metrics", "incoming")
    }
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "LUNGJEPA_PROFILE": "tiny",
        "LUNGJEPA_PARAMS": str(params_file),
    }
    log = root / "dagster_dev.log"
    dagster = Path(sys.executable).parent / "dagster"
    command = [str(dagster), "dev", "-m", LOCATION, "-h", "127.0.0.1", "-p", str(port)]
    with log.open("w") as out:
        server = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_location(base_url, server, log)
        yield base_url, root
    finally:
        # dagster dev shuts its webserver, daemon and code servers down on SIGTERM (sent to
        # it alone, so they are stopped in order); whatever is left of its group goes after
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)


LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchPipelineExecution(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
  }
}"""
RUN_STATUS = "query Run($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"


def launch_and_wait(base_url: str, root: Path) -> str:
    params = {
        "selector": {
            "repositoryLocationName": LOCATION,
            "repositoryName": "__repository__",
            "jobName": "full_pipeline",
        },
        "runConfigData": {
            "ops": {"evaluation": {"config": {"results_markdown": str(root / "RESULTS.md")}}}
        },
        "mode": "default",
    }
    launched = graphql(base_url, LAUNCH, {"params": params})["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        status = graphql(base_url, RUN_STATUS, {"id": run_id})["runOrError"]["status"]
        if status in {"SUCCESS", "FAILURE", "CANCELED"}:
            assert status == "SUCCESS", f"run {run_id} ended {status}"
            return run_id
        time.sleep(2)
    raise TimeoutError(f"run {run_id} not finished in {RUN_TIMEOUT_S}s")


def chromium(profile_dir: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for binary in (CHROMIUM, CHROMEDRIVER):
        assert require_tool(binary.name) == str(binary), f"expected Debian's {binary}"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    return driver


def node_text(driver, asset: str) -> str:
    """The text of the asset's node box in the graph ('' while it is not drawn)."""
    from selenium.webdriver.common.by import By

    xpath = f"//div[contains(@class, 'assetNodeBox')][.//*[normalize-space(text())='{asset}']]"
    boxes = driver.find_elements(By.XPATH, xpath)
    return boxes[0].text if boxes else ""


SKIP_BUTTON = "//button[normalize-space()='Skip']"
DIALOG_TITLE = "Join the Dagster community"


def dismiss_dialog(driver) -> None:
    """A fresh profile is greeted by a newsletter dialog over the graph; skip it once.

    The UI remembers the answer in the profile, so later pages come without it.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, PAGE_TIMEOUT_S).until(
        expected_conditions.element_to_be_clickable((By.XPATH, SKIP_BUTTON))
    ).click()
    WebDriverWait(driver, PAGE_TIMEOUT_S).until(
        lambda d: DIALOG_TITLE not in d.find_element(By.TAG_NAME, "body").text
    )


def test_ui_materialises_the_tiny_pipeline(dagster_ui: tuple[str, Path]) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    from orchestration.definitions import defs

    base_url, root = dagster_ui
    job = defs.resolve_job_def("full_pipeline")
    graph = defs.resolve_asset_graph()
    groups: dict[str, list[str]] = {}
    for key in job.asset_layer.executable_asset_keys:
        groups.setdefault(graph.get(key).group_name, []).append(key.to_user_string())

    driver = chromium(root / "chromium_profile")
    try:
        driver.get(f"{base_url}/asset-groups")  # the global asset graph
        WebDriverWait(driver, PAGE_TIMEOUT_S).until(
            lambda d: all(g in d.find_element("tag name", "body").text for g in groups)
        )
        dismiss_dialog(driver)
        run_id = launch_and_wait(base_url, root)

        screens = root / "screens"
        screens.mkdir()
        for group, assets in sorted(groups.items()):
            driver.get(f"{base_url}/locations/{LOCATION}/asset-groups/{group}")
            WebDriverWait(driver, PAGE_TIMEOUT_S).until(
                lambda d, assets=assets: all("Materialized" in node_text(d, a) for a in assets),
                message=f"group {group}: not every asset shows as materialised",
            )
            for asset in assets:
                assert "Never materialized" not in node_text(driver, asset)
            assert DIALOG_TITLE not in driver.find_element("tag name", "body").text
            shot = screens / f"{group}.png"
            assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
            print(f"screenshot: {shot}")

        driver.get(f"{base_url}/runs/{run_id}")
        WebDriverWait(driver, PAGE_TIMEOUT_S).until(
            lambda d: "Success" in d.find_element("tag name", "body").text
        )
    finally:
        driver.quit()
    assert (root / "artifacts" / "models" / "production.json").is_file()
