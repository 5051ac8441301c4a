"""Run a real ComfyUI server in a subprocess and drive it over HTTP and its websocket, for integration tests."""

import asyncio
import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The ComfyUI a test session runs against (one session = one version): its tree, the interpreter of its virtualenv
# (servers only; the tests themselves stay in this process) and optionally a frontend other than the one it pins.
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR", REPO / ".comfyui" / "ComfyUI"))
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON") or sys.executable
COMFYUI_FRONTEND = os.environ.get("COMFYUI_FRONTEND") or None
# COMFYUI_DYNAMIC_VRAM=1: servers start through dynamic_vram_main.py, with ComfyUI's DynamicVRAM weight path forced on.
DYNAMIC_VRAM = os.environ.get("COMFYUI_DYNAMIC_VRAM") == "1"
LAUNCHER = Path(__file__).resolve().parent / "dynamic_vram_main.py"

# Websocket message types that end a prompt's execution.
TERMINAL_MESSAGES = ("execution_success", "execution_error", "execution_interrupted")


class PromptError(Exception):
    """ComfyUI rejected a prompt (HTTP 400); `error` and `node_errors` hold its JSON answer."""

    def __init__(self, body):
        self.error = body.get("error", {})
        self.node_errors = body.get("node_errors", {})
        super().__init__(f"{self.error.get('message', self.error)}; node_errors={json.dumps(self.node_errors)}")


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent():
    # Linux only: the kernel sends SIGTERM to the server if the thread that started it dies (even without atexit).
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class ComfyServer:
    """One ComfyUI process on a free local port, with its own base directory (models, input, output, log)."""

    def __init__(self, base_dir=None, pack_dir=None, pack_name=None, comfyui_dir=COMFYUI_DIR, extra_args=(), env=None,
                 python=COMFYUI_PYTHON, frontend=COMFYUI_FRONTEND, cpu=True, dynamic_vram=DYNAMIC_VRAM):
        self.comfyui_dir = Path(comfyui_dir)
        self.python = python
        self.frontend = Path(frontend) if frontend else None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="comfyui-"))
        self.pack_dir = Path(pack_dir) if pack_dir else None
        self.pack_name = pack_name or (self.pack_dir.name if self.pack_dir else None)
        self.extra_args = list(extra_args)
        self.cpu = cpu  # False: ComfyUI picks the accelerator (benchmarks on a GPU)
        self.dynamic_vram = dynamic_vram  # True: start through dynamic_vram_main.py (a CPU stand-in for NVIDIA)
        self.env = env or {}
        self.log_path = self.base_dir / "comfyui.log"
        self.client_id = uuid.uuid4().hex
        self.port = None
        self.process = None

    @property
    def url(self):
        """Base URL of the running server."""
        return f"http://127.0.0.1:{self.port}"

    def command(self):
        """The ComfyUI command line: CPU only (unless cpu=False), offline, nothing loaded but core nodes and the pack."""
        cmd = [
            self.python, str(LAUNCHER) if self.dynamic_vram else "main.py", *(["--cpu"] if self.cpu else []),
            "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir), "--disable-auto-launch", "--disable-api-nodes",
            # The default database lives inside the ComfyUI tree; keep every write under the base directory.
            "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}",
            "--disable-all-custom-nodes",
        ]
        if self.pack_name:
            cmd += ["--whitelist-custom-nodes", self.pack_name]
        if self.frontend:
            cmd += ["--front-end-root", str(self.frontend)]
        return cmd + self.extra_args

    def _prepare_base_dir(self):
        for name in ("custom_nodes", "models", "input", "output", "user"):
            (self.base_dir / name).mkdir(parents=True, exist_ok=True)
        if self.pack_dir:
            link = self.base_dir / "custom_nodes" / self.pack_name
            if link.is_symlink():
                link.unlink()
            link.symlink_to(self.pack_dir.resolve(), target_is_directory=True)

    def start(self, timeout=300):
        """Launch the server and block until GET /system_stats answers; raise with the log tail if it does not."""
        if not (self.comfyui_dir / "main.py").is_file():
            hint = "run tools/install_comfyui.sh, or set COMFYUI_DIR"
            raise FileNotFoundError(f"no ComfyUI in {self.comfyui_dir}: {hint}")
        if self.frontend and not (self.frontend / "index.html").is_file():
            hint = "run tools/install_comfyui030.sh, or set COMFYUI_FRONTEND"
            raise FileNotFoundError(f"no frontend in {self.frontend}: {hint}")
        self._prepare_base_dir()
        self.port = _free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", **self.env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=self.comfyui_dir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"ComfyUI exited with code {code} during startup\n{self.log_tail()}")
            try:
                self._request("GET", "/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer on {self.url} within {timeout}s\n{self.log_tail()}")

    def stop(self):
        """Terminate the server (kill it if it does not exit within 10 s); safe to call more than once."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def log_tail(self, lines=60):
        """The last lines of the server log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no server log)"
        return "----- ComfyUI log tail -----\n" + "\n".join(text.splitlines()[-lines:])

    def _request(self, method, path, body=None, timeout=120):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()

    def _json(self, method, path, body=None):
        return json.loads(self._request(method, path, body))

    def queue(self, prompt):
        """POST an API-format prompt; return its prompt_id, or raise PromptError carrying ComfyUI's node_errors."""
        try:
            answer = self._json("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})
        except urllib.error.HTTPError as err:
            if err.code != 400:
                raise
            raise PromptError(json.loads(err.read())) from None
        return answer["prompt_id"]

    def wait(self, prompt_id, timeout=60):
        """Block until the prompt has finished (successfully or not) and return its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self._json("GET", f"/history/{prompt_id}")
            if prompt_id in history:
                return history[prompt_id]
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running {prompt_id}\n{self.log_tail()}")
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout}s\n{self.log_tail()}")

    def listen(self, timeout=10):
        """Open the websocket for this client and return a connected Listener (use it as a context manager)."""
        return Listener(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout)

    def rss(self):
        """Resident memory of the server process in bytes (Linux: VmRSS in /proc/<pid>/status)."""
        with open(f"/proc/{self.process.pid}/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kib * 1024

    def interrupt(self, prompt_id=None):
        """Interrupt the running prompt (only if it is `prompt_id`, when given)."""
        self._request("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def object_info(self, node=None):
        """All node definitions, or one node's definition (KeyError if ComfyUI does not know the node)."""
        if node is None:
            return self._json("GET", "/object_info")
        info = self._json("GET", f"/object_info/{urllib.parse.quote(node)}")
        if node not in info:
            raise KeyError(f"ComfyUI has no node {node!r}\n{self.log_tail()}")
        return info[node]

    def get_image(self, filename, subfolder="", type="output"):
        """Bytes of a file the server serves through /view (as listed in a history entry's outputs)."""
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        return self._request("GET", f"/view?{query}")


class Listener:
    """ComfyUI websocket reader on a background thread; collects JSON messages (binary previews are dropped)."""

    def __init__(self, url, timeout=10):
        import aiohttp  # installed by ComfyUI's own requirements

        self._aiohttp = aiohttp
        self.messages = []
        self._changed = threading.Condition()
        self._ready = threading.Event()  # set once connected, or once connecting has failed
        self._error = None
        self._ws = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._read(url),), daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            self.close()
            raise ConnectionError(f"websocket {url} did not connect within {timeout}s: {self._error!r}")

    async def _read(self, url):
        try:
            async with self._aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
                self._ws = ws
                self._ready.set()
                async for msg in ws:
                    if msg.type == self._aiohttp.WSMsgType.TEXT:
                        with self._changed:
                            self.messages.append(json.loads(msg.data))
                            self._changed.notify_all()
        except Exception as err:  # reported by wait_for/close: a background thread has nowhere to raise to
            self._error = err
        finally:
            self._ready.set()
            with self._changed:
                self._changed.notify_all()

    def for_prompt(self, prompt_id, types=None):
        """Messages received so far that belong to `prompt_id`, optionally only those of the given types."""
        with self._changed:
            return [
                m for m in self.messages
                if (m.get("data") or {}).get("prompt_id") == prompt_id and (types is None or m["type"] in types)
            ]

    def wait_for(self, prompt_id, timeout=60):
        """Block until the prompt's terminal message arrives; return the prompt's messages up to and including it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self.for_prompt(prompt_id, TERMINAL_MESSAGES):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    raise TimeoutError(f"no end of execution for {prompt_id} over the websocket: {self._error!r}")
                self._changed.wait(remaining)
            messages = self.for_prompt(prompt_id)
        # The server follows the terminal message with an `executing` for node None; cut there for a stable result.
        end = next(i for i, m in enumerate(messages) if m["type"] in TERMINAL_MESSAGES)
        return messages[: end + 1]

    def close(self):
        """Close the websocket and stop the reader thread."""
        if self._ws is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._ws.close(), self._loop).result(timeout=5)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
