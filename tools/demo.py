"""One-command demo: start ComfyUI headless with this pack, queue a workflow, show progress, save the image.

    python tools/demo.py --tiny                     # tiny random checkpoints: runs anywhere, no weights needed
    python tools/demo.py --models ~/ComfyUI/models/kandinsky --out cat.png

The workflow is an API-format prompt (default: tools/demo_text_to_image.json). ComfyUI comes from COMFYUI_DIR or
`.comfyui/ComfyUI`; on a fresh clone, `bash tools/quickstart.sh` installs it and everything else, then runs this.
"""
import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

from comfy_server import TERMINAL_MESSAGES, ComfyServer  # noqa: E402
from kandinsky_core.kandinsky2 import tiny  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workflow", default=os.path.join(HERE, "demo_text_to_image.json"), help="API-format prompt JSON")
    p.add_argument("--tiny", action="store_true", help="generate tiny random checkpoints and use them")
    p.add_argument("--models", help="a models/kandinsky folder with the published checkpoint folders")
    p.add_argument("--out", default="kandinsky_demo.png")
    p.add_argument("--timeout", type=float, default=3600)
    return p.parse_args()


def prepare_models(base, args):
    """Put checkpoints where the server looks: <base>/models/kandinsky."""
    target = os.path.join(base, "models", "kandinsky")
    if args.tiny:
        print("writing tiny checkpoints ...", flush=True)
        tiny.write_all(target)
    elif args.models:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(os.path.abspath(args.models), target)
    else:
        sys.exit("give --tiny or --models DIR")


def show_progress(message, titles):
    """Print one terminal line per progress message."""
    data = message["data"]
    done, total = data["value"], data["max"]
    bar = "#" * (30 * done // max(total, 1))
    end = "\n" if done >= total else ""
    print(f"\r  {titles.get(data['node'], data['node']):<28} [{bar:<30}] {done}/{total}", end=end, flush=True)


def follow(ws, prompt_id, titles, timeout):
    """Print progress as the websocket reports it, until the prompt ends."""
    seen, deadline = 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = ws.for_prompt(prompt_id)
        for message in messages[seen:]:
            if message["type"] == "progress":
                show_progress(message, titles)
        seen = len(messages)
        if any(m["type"] in TERMINAL_MESSAGES for m in messages):
            return
        time.sleep(0.1)


def main():
    args = parse_args()
    with open(args.workflow) as f:
        prompt = json.load(f)
    titles = {k: v["class_type"] for k, v in prompt.items()}
    base = tempfile.mkdtemp(prefix="kandinsky-demo-")
    prepare_models(base, args)
    print("starting ComfyUI ...", flush=True)
    with ComfyServer(base, pack_dir=REPO, pack_name="comfyui-kandinsky2") as server, server.listen() as ws:
        prompt_id = server.queue(prompt)
        follow(ws, prompt_id, titles, args.timeout)
        entry = server.wait(prompt_id, timeout=args.timeout)
        status = entry["status"]
        if status["status_str"] != "success":
            errors = [m[1].get("exception_message", "") for m in status["messages"] if m[0] == "execution_error"]
            sys.exit(f"the workflow failed: {' '.join(errors) or status}")
        image = next(img for out in entry["outputs"].values() for img in out.get("images", []))
        with open(args.out, "wb") as f:
            f.write(server.get_image(image["filename"], image["subfolder"], image["type"]))
    print(f"saved {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main()
