"""Fixtures for the serving tests: real `devops-model serve` processes on free loopback ports, and a
headless Chromium driven over the DevTools protocol.

* ``start_server(model, *flags)`` starts ``devops-model serve`` (the real CLI, uvicorn, the batching
  engine) on 127.0.0.1 and waits for /health; the process is stopped at the end of the test session.
* ``bpe_server``: the tiny BPE model, --max-concurrency 4, with a lineage file (session).
* ``qwen_server``: the tiny model with the real Qwen tokenizer, behind an API key (session).
* ``tiny_qwen25`` / ``qwen25_server``: the same model with Qwen2.5-Instruct's chat template (tools
  in the system turn, ``<tool_call>`` answers), copied from the released tokenizer_config.json
  (Apache-2.0) into ``tests/plugins/data/qwen2.5-instruct.jinja``.
* ``chromium``: a fresh headless Chromium (Debian's ``chromium``) and a :class:`DevTools` session on a
  blank page. In CI (CI=true) a missing Chromium is a failure, elsewhere a skip that says how to get it.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from devops_workloads.processes import free_port

REPO = Path(__file__).resolve().parents[2]

LINEAGE = {
    "lineage": ["PretrainRun/tiny-pt", "SFTRun/tiny-sft", "QuantizeRun/tiny-int4"],
    "artifact": {"uri": "pvc://models/tiny-int4", "format": "gptq-int4"},
    "scores": {
        "overall": [{"shots": 0, "style": "base", "correct": 31, "total": 50, "accuracy": 0.62}],
        "exams": [{"exam": "devops-eval-k8s", "shots": 0, "style": "base", "correct": 31, "total": 50, "accuracy": 0.62}],
    },
}
API_KEY = "test-key-0123456789"



def cli() -> list[str]:
    exe = Path(sys.executable).parent / "devops-model"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "devops_cli"]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path
    model: Path
    name: str

    def health(self) -> int:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _stop(server: Server) -> None:
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    """Factory: start_server(model_dir, *extra_flags, name=...) -> Server (healthy).
    model_dir None with ``--upstream URL`` in the flags starts the web chat proxy."""
    started: list[Server] = []
    counter = itertools.count()

    def start(model: Path | None, *flags: str, name: str = "tiny", timeout: float = 180) -> Server:
        port = free_port()
        log = tmp_path_factory.mktemp(f"serve-{next(counter)}") / "serve.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.Popen(
            [*cli(), "serve", *(["--model", str(model)] if model else []), "--host", "127.0.0.1", "--port", str(port),
             "--served-model-name", name, "--log-level", "warning", *flags],
            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=REPO,
        )
        server = Server(f"http://127.0.0.1:{port}", proc, log, Path(model) if model else None, name)
        started.append(server)
        deadline = time.time() + timeout
        while server.health() != 200:
            if proc.poll() is not None:
                raise RuntimeError(f"devops-model serve exited with {proc.returncode}:\n{server.log_tail()}")
            if time.time() > deadline:
                raise RuntimeError(f"devops-model serve not healthy after {timeout}s:\n{server.log_tail()}")
            time.sleep(0.3)
        return server

    yield start
    for server in started:
        _stop(server)


@pytest.fixture(scope="session")
def bpe_server(start_server, tiny_bpe, tmp_path_factory):
    lineage = tmp_path_factory.mktemp("lineage") / "lineage.json"
    lineage.write_text(json.dumps(LINEAGE))
    return start_server(tiny_bpe, "--max-concurrency", "4", "--lineage-file", str(lineage), name="tiny-bpe")


@pytest.fixture(scope="session")
def qwen_server(start_server, tiny_qwen, tmp_path_factory):
    key = tmp_path_factory.mktemp("key") / "api-key"
    key.write_text(API_KEY + "\n")
    return start_server(tiny_qwen, "--api-key-file", str(key), name="tiny-qwen")


QWEN25_TEMPLATE = Path(__file__).parent / "data" / "qwen2.5-instruct.jinja"


@pytest.fixture(scope="session")
def tiny_qwen25(tiny_qwen, tmp_path_factory):
    """The tiny Qwen model with Qwen2.5-Instruct's chat template (which renders tools)."""
    dest = tmp_path_factory.mktemp("tiny-qwen25") / "model"
    shutil.copytree(tiny_qwen, dest)
    (dest / "chat_template.jinja").write_text(QWEN25_TEMPLATE.read_text(encoding="utf-8"), encoding="utf-8")
    return dest


@pytest.fixture(scope="session")
def qwen25_server(start_server, tiny_qwen25):
    return start_server(tiny_qwen25, "--max-concurrency", "8", name="tiny-qwen25")


# ----------------------------------------------------------------------------- Chromium

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
    "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
    "--no-default-browser-check", "--mute-audio", "--hide-scrollbars", "--window-size=1280,860",
    "--remote-debugging-port=0", "--remote-allow-origins=*",
]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


class DevTools:
    """A minimal Chrome DevTools Protocol session over one page's websocket (websocket-client)."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    def send(self, method: str, **params):
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def eval(self, expression: str):
        """Evaluate JavaScript in the page (promises awaited) and return its JSON value."""
        res = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if res.get("exceptionDetails"):
            raise RuntimeError(f"JS error: {res['exceptionDetails']}")
        return res["result"].get("value")

    def navigate(self, url: str, timeout: float = 30) -> None:
        self.send("Page.enable")
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", timeout)

    def wait_for(self, expression: str, timeout: float = 30, interval: float = 0.05):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for: {expression}")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def chromium(tmp_path):
    exe = chromium_path()
    if exe is None:
        msg = "Debian's chromium is not installed (apt-get install -y chromium; tests/run_all.sh does it)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path))
    proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "chromium.log").open("w"),
                            start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("chromium did not start:\n" + (tmp_path / "chromium.log").read_text()[-2000:])
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
        tools = DevTools(pages[0]["webSocketDebuggerUrl"])
        try:
            yield tools
        finally:
            tools.close()
    finally:
        from devops_workloads.processes import stop_group

        stop_group(proc, timeout=10)
