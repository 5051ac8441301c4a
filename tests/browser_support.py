"""Drive the real ComfyUI frontend, as served by the `comfy` test server, in headless Chromium through Playwright.

Test modules import the fixtures (`from browser_support import browser_fixture, frontend_fixture`). Without Playwright or Chromium
they skip; CI installs both (Debian's `chromium` package and `pip install playwright`: Playwright's own browser
download is not used).
"""
import json
import os
import time
import urllib.request
from pathlib import Path

import pytest

from comfy_server import REPO

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# One folder per CI run (.ci/run sets TEST_ARTIFACTS), so the runs on different ComfyUI versions keep their own.
SCREENSHOTS = REPO / os.environ.get("TEST_ARTIFACTS", "test-artifacts") / "screenshots"
VIEWPORT = {"width": 1600, "height": 1000}
# A returning user: no template browser on first start, no minimap over the graph.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}
# Console errors of an offline machine: the frontend's look-ups on api.comfy.org (blocked by the server's content
# security policy) and the missing-models dialog asking huggingface.co for file sizes. Failed loads of optional
# files (favicons, absent node docs, user data not yet written) are not app errors either.
OFFLINE_NOISE = ("Content Security Policy", "Error fetching file size", "Failed to load resource")

# Loads a workflow the way File > Open does and records which missing nodes and missing models the frontend tells
# the user about (its dialogs and panels still open, as for a user). Frontends up to 1.3x hand both lists to
# app.showMissing*Error for their dialogs. Newer ones (1.47 pinned by ComfyUI 0.30.0, 1.58) check the model widgets
# after loading and, once per load (later if files are missing: they fetch download details first), set what the
# error overlay and the Issues panel show in the `missingModel` store.
LOAD = """async ([workflow, name]) => {
  const seen = {nodes: [], models: [], modelsBy: "dialog"};
  const showNodes = app.showMissingNodesError, showModels = app.showMissingModelsError;
  const stores = document.querySelector("#vue-app")?.__vue_app__?.config.globalProperties.$pinia?._s;
  const store = showModels ? null : stores?.get("missingModel");
  const setModels = store?.setMissingModels;
  let surfaced = null;
  app.showMissingNodesError = function (types) {
    seen.nodes.push(...types.map(t => typeof t === "string" ? t : t.type));
    return showNodes?.apply(this, arguments);
  };
  if (showModels) {
    app.showMissingModelsError = function (models) {
      seen.models.push(...models.map(m => `${m.directory}/${m.name}`));
      return showModels.apply(this, arguments);
    };
  } else if (store) {
    seen.modelsBy = "widgets";
    store.setMissingModels = function (candidates) {
      surfaced = candidates ?? [];
      return setModels.apply(this, arguments);
    };
  }
  try {
    await app.loadGraphData(workflow, true, true, name);
    for (const deadline = Date.now() + 15000; store && surfaced === null && Date.now() < deadline;) {
      await new Promise(resolve => setTimeout(resolve, 50));
    }
  } finally {
    app.showMissingNodesError = showNodes;
    if (showModels) app.showMissingModelsError = showModels;
    if (store) store.setMissingModels = setModels;
  }
  seen.models.push(...(surfaced ?? []).filter(m => m.isMissing).map(m => `${m.directory}/${m.name}`));
  return seen;
}"""

# Problems the frontend would show on the loaded nodes: widget values that did not survive loading (a schema
# mismatch shifts or drops them) and combo values that are not among the options.
WIDGET_ERRORS = """(workflow) => {
  const errors = [];
  for (const saved of workflow.nodes) {
    const node = app.graph.getNodeById(saved.id);
    if (!node) { errors.push(`node ${saved.id} (${saved.type}) did not load`); continue; }
    const now = JSON.stringify(node.serialize().widgets_values ?? []);
    if (now !== JSON.stringify(saved.widgets_values ?? [])) {
      errors.push(`${saved.type} #${saved.id}: widgets_values ${JSON.stringify(saved.widgets_values)} became ${now}`);
    }
  }
  return errors;
}"""

BAD_COMBOS = """() => app.graph.nodes.flatMap(node => (node.widgets ?? [])
  .filter(w => w.type === "combo" && Array.isArray(w.options?.values) && !w.options.values.includes(w.value))
  .map(w => `${node.type} #${node.id}: ${w.name} = ${JSON.stringify(w.value)} is not one of ${JSON.stringify(w.options.values)}`))"""

SET_WIDGET = """([type, name, value]) => {
  const nodes = app.graph.nodes.filter(n => n.type === type);
  for (const node of nodes) {
    const widget = node.widgets.find(w => w.name === name);
    widget.value = value;
    widget.callback?.(value);
  }
  return nodes.length;
}"""

# Queues like the Run button (the frontend converts the graph itself) and resolves with the queued prompt's id.
QUEUE = """async () => {
  const api = window.comfyAPI.api.api;
  const started = new Promise(resolve => api.addEventListener("execution_start", e => resolve(e.detail.prompt_id), {once: true}));
  await app.queuePrompt(0);
  return await started;
}"""

IMAGES_SHOWN = """(ids) => ids.every(id => {
  const imgs = app.graph.getNodeById(id)?.imgs;
  return imgs?.length > 0 && imgs.every(img => img.complete && img.naturalWidth > 0);
})"""


def post_settings(server, settings):
    """Store frontend settings for the server's default user."""
    request = urllib.request.Request(server.url + "/settings", data=json.dumps(settings).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()


class Frontend:
    """One browser page with the ComfyUI app open, and the actions a user takes on it."""

    def __init__(self, page, server):
        self.page, self.server = page, server
        self.errors = []  # uncaught page errors and console errors (but OFFLINE_NOISE)
        page.on("pageerror", lambda err: self.errors.append(str(err)))
        page.on("console", self._console)

    def _console(self, message):
        if message.type == "error" and not any(noise in message.text for noise in OFFLINE_NOISE):
            self.errors.append(message.text)

    def open(self):
        """Load the app and wait until the graph and the node definitions are there."""
        self.page.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
        self.page.goto(self.server.url)
        self.page.wait_for_function("window.app?.graph && Object.keys(LiteGraph.registered_node_types).length > 0",
                                    timeout=180_000)
        self.errors.clear()  # startup noise of the bare test server (no user workflows, no templates) is not ours

    def load(self, workflow, name):
        """Open a UI-format workflow; returns what the frontend lists as missing nodes and missing models, and
        `modelsBy`: "dialog" (the workflow's `models` entries it does not find) or "widgets" (newer frontends: only
        model widgets whose value is a model file name that the server does not offer)."""
        return self.page.evaluate(LOAD, [workflow, name])

    def widget_errors(self, workflow):
        """Widget values that did not load as saved."""
        return self.page.evaluate(WIDGET_ERRORS, workflow)

    def bad_combos(self):
        """Combo widgets whose value is not among their options."""
        return self.page.evaluate(BAD_COMBOS)

    def set_widget(self, node_type, name, value):
        """Set a widget on every node of a type, as typing into it would; returns how many nodes have it."""
        return self.page.evaluate(SET_WIDGET, [node_type, name, value])

    def evaluate(self, script, arg=None):
        """Run a script in the page."""
        return self.page.evaluate(script, arg)

    def api_prompt(self):
        """The API-format prompt the frontend makes of the graph (what Run sends)."""
        return self.page.evaluate("async () => (await app.graphToPrompt()).output")

    def queue(self, timeout=120):
        """Queue the graph through the frontend and wait for the run to end; returns (prompt_id, history entry)."""
        prompt_id = self.page.evaluate(QUEUE)
        return prompt_id, self.server.wait(prompt_id, timeout=timeout)

    def wait_for_images(self, node_ids, timeout=120):
        """Wait until each node shows its loaded output image(s)."""
        self.page.wait_for_function(IMAGES_SHOWN, arg=[int(i) for i in node_ids], timeout=timeout * 1000)

    def close_dialogs(self):
        """Close open dialogs, as Escape does."""
        deadline = time.monotonic() + 5
        while self.page.locator(".p-dialog").count() and time.monotonic() < deadline:
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(100)

    def screenshot(self, name):
        """Save a full-window screenshot as test-artifacts/screenshots/<name>.png; returns its path."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path


@pytest.fixture(scope="session", name="browser")
def browser_fixture():
    """Headless Debian Chromium under Playwright, for the whole session; skips when either is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install playwright)")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(name="frontend")
def frontend_fixture(browser, comfy):
    """A fresh page with the ComfyUI frontend of the `comfy` server open."""
    post_settings(comfy, SETTINGS)
    context = browser.new_context(viewport=VIEWPORT)
    ui = Frontend(context.new_page(), comfy)
    ui.open()
    yield ui
    context.close()
