"""The MLflow UI as a user sees it, in headless Chromium (Debian's `chromium` package), driven over
the DevTools protocol: after a tiny sweep logged to a real `mlflow server`, the link the summary
prints opens the runs table (not MLflow 3's GenAI overview), and expanding the sweep's parent run
shows every child by its readable name. Skipped where no chromium binary is installed
(`apt-get install chromium`). Set SOBOLEV_SCREENSHOTS=DIR to keep the screenshots."""

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from pipeline_helpers import free_port, mlflow_children, tiny_config, wait_http

from pipeline.driver import run_sweep
from pipeline.tracking import chart_link

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium binary (apt-get install chromium)")


class Page:
    """One browser tab over the Chrome DevTools protocol (aiohttp's websocket client, no extra package)."""

    def __init__(self, ws):
        self.ws, self.next_id = ws, 0

    async def call(self, method: str, **params):
        self.next_id += 1
        await self.ws.send_str(json.dumps(dict(id=self.next_id, method=method, params=params)))
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg["result"]

    async def js(self, expression: str):
        res = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return res["result"].get("value")

    async def wait_text(self, words: list[str], timeout: float = 90.0) -> str:
        deadline = time.time() + timeout
        while True:
            text = await self.js("document.body ? document.body.innerText : ''") or ""
            if all(w in text for w in words):
                return text
            if time.time() > deadline:
                missing = [w for w in words if w not in text]
                raise AssertionError(f"not shown within {timeout} s: {missing}\n{text[:3000]}")
            await asyncio.sleep(0.5)

    async def screenshot(self, name: str) -> None:
        keep = os.environ.get("SOBOLEV_SCREENSHOTS")
        if keep:
            data = (await self.call("Page.captureScreenshot", format="png"))["data"]
            Path(keep).mkdir(parents=True, exist_ok=True)
            (Path(keep) / name).write_bytes(base64.b64decode(data))


async def look(devtools: str, runs_url: str, parent: str, children: list[str], chart_url: str) -> str:
    import aiohttp

    with urllib.request.urlopen(f"{devtools}/json/list", timeout=10) as r:
        ws_url = next(t["webSocketDebuggerUrl"] for t in json.load(r) if t["type"] == "page")
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
        page = Page(ws)
        await page.call("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1,
                        mobile=False)
        await page.call("Page.navigate", url=runs_url)
        text = await page.wait_text(["Training runs", parent])
        assert "No data" not in text and "Traces" not in text.split(parent)[0].split("Training runs")[-1]
        await page.js("document.querySelector('button[data-component-id*=\"runnamecellrenderer\"]').click()")
        text = await page.wait_text(children)
        await page.screenshot("runs_table.png")
        await page.call("Page.navigate", url=chart_url)
        await page.wait_text(["curve.rel_loss vs curve.bound_rel", "Relative Time", "Completed Runs"])
        await asyncio.sleep(2)  # the plot draws after its data arrive
        await page.screenshot("rel_loss_vs_flow_time.png")
        return text


@pytest.mark.slow  # a sweep on a local Ray, a real mlflow server and headless Chromium
def test_mlflow_ui_shows_the_runs_table_with_named_children(local_ray, tmp_path):
    port, devtools_port = free_port(), free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--default-artifact-root", str(tmp_path / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    browser = None
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_http(uri + "/health", timeout=120)
        cfg = tiny_config(name="ui", grid=dict(n=[4], m=[16], bias=[False, True]), seeds=dict(init=2))
        report = run_sweep(cfg, out=tmp_path / "out", tracking_uri=uri, progress=False)
        link = next(line.split("MLflow runs: ")[1] for line in report.lines() if line.startswith("MLflow runs: "))
        assert link == f"{uri}/#/experiments/{report.experiment_id}/runs"
        children = mlflow_children(uri, "ui")
        names = sorted(c.info.run_name for c in children.values())
        chart = chart_link(uri, report.experiment_id, [c.info.run_id for c in children.values()][:2])
        browser = subprocess.Popen(
            [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--remote-debugging-port={devtools_port}", f"--user-data-dir={tmp_path / 'profile'}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_http(f"http://127.0.0.1:{devtools_port}/json/version", timeout=60)
        text = asyncio.run(look(f"http://127.0.0.1:{devtools_port}", link, "#1 run ui", names, chart))
        assert all(name in text for name in names)
    finally:
        for proc in (browser, server):
            if proc is not None:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=30)
