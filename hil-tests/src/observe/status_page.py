# The status page in a real browser: headless Chromium (Debian's, driven by Playwright for
# Python) opens https://NODE:6443/ui/ on the rig's client host, and checks what a user sees.
#
#   status_page.py URL TOKEN_FILE SHOTS_DIR PROGRESS_FILE POD STEP_TIMEOUT_S
#
# Steps, each reported as one JSON line appended to PROGRESS_FILE (the scenario waits for them
# and acts in between):
#   {"step": "refused"}  a wrong token is refused with a message, nothing is shown
#   {"step": "nodes", "first_load_bytes": B, "first_load_s": S, "three_nodes_s": S, "leader": N}
#                        signed in with the token, 3 nodes Ready, the Cluster section shows
#                        3 members and one leader
#   {"step": "pod"}      the pod POD (namespace/name, created by the scenario) appears Running
#   {"step": "notready", "node": N, "leader": L}  a node shows NotReady (the scenario cut its
#                        power) and the Cluster section shows a leader L that is not that node
#   {"error": "..."}     a step failed (then the script exits 1)
# Screenshots (PNG, a phone-sized viewport) go to SHOTS_DIR.
import json
import os
import signal
import sys
import time
import traceback

from playwright.sync_api import sync_playwright

# Stopped with SIGTERM: close the browser on the way out.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

url, token_file, shots, progress, pod, step_timeout = sys.argv[1:7]
step_ms = int(float(step_timeout) * 1000)
os.makedirs(shots, exist_ok=True)


def say(**kw):
    with open(progress, "a") as f:
        f.write(json.dumps(kw) + "\n")


def shot(page, name):
    page.screenshot(path=os.path.join(shots, name), full_page=True)


def main():
    token = open(token_file).read().strip()
    chromium = os.environ.get("SHOAL_CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            run(browser, token)
        finally:
            browser.close()


def no_overflow(page, step):
    """The page body never scrolls sideways at phone width: wide tables wrap or scroll inside."""
    w = page.evaluate(
        "() => ({inner: window.innerWidth, doc: document.documentElement.scrollWidth,"
        " body: document.body.scrollWidth})"
    )
    if max(w["doc"], w["body"]) > w["inner"]:
        raise RuntimeError(f"{step}: the page is {max(w['doc'], w['body'])} px wide in a {w['inner']} px window")


LEADERS = "() => [...document.querySelectorAll('#cluster tr[data-leader=\"true\"]')].map(r => r.dataset.member)"


def run(browser, token):
    # The cluster CA is not in the browser's store: its certificate errors are ignored.
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 390, "height": 844})
    page = ctx.new_page()
    loaded = {}
    page.on("response", lambda r: loaded.setdefault(r.url, r))

    # First load: the page, its script and its style sheet.
    t0 = time.monotonic()
    page.goto(url, wait_until="load", timeout=step_ms)
    first_load_s = time.monotonic() - t0
    first_load_bytes = 0
    for u, r in loaded.items():
        if "/ui/" in u:
            if r.status != 200:
                raise RuntimeError(f"{u}: HTTP {r.status}")
            first_load_bytes += len(r.body())

    # A wrong token: refused with a message, the views stay hidden.
    page.fill("#token", "not-a-token")
    page.click("button[type=submit]")
    page.wait_for_function("() => document.getElementById('error').textContent.includes('401')", timeout=step_ms)
    if page.is_visible("#views"):
        raise RuntimeError("the views are shown after a refused token")
    shot(page, "ui-0-refused.png")
    say(step="refused", message=page.inner_text("#error"))

    # Signed in: 3 nodes Ready.
    t1 = time.monotonic()
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_function(
        "() => document.querySelectorAll('#nodes tr[data-ready=\"True\"]').length === 3", timeout=step_ms
    )
    three_nodes_s = time.monotonic() - t0
    if page.is_visible("#signin"):
        raise RuntimeError("the sign-in form is still shown after signing in")
    signin_to_nodes_s = time.monotonic() - t1
    # The Cluster section: 3 members, exactly one of them the leader (from the leader Lease).
    page.wait_for_function(
        "() => document.querySelectorAll('#cluster tr[data-member]').length === 3"
        " && document.querySelectorAll('#cluster tr[data-leader=\"true\"]').length === 1",
        timeout=step_ms,
    )
    leader = page.evaluate(LEADERS)[0]
    shot(page, "ui-1-three-nodes.png")
    no_overflow(page, "nodes")
    say(
        step="nodes",
        first_load_bytes=first_load_bytes,
        first_load_s=first_load_s,
        three_nodes_s=three_nodes_s,
        signin_to_nodes_s=signin_to_nodes_s,
        leader=leader,
    )

    # The pod the scenario creates now appears, Running (from the watch, no reload).
    page.wait_for_selector(f'#pods tr[data-pod="{pod}"][data-phase="Running"]', timeout=step_ms)
    shot(page, "ui-2-pod.png")
    no_overflow(page, "pod")
    say(step="pod")

    # The node whose power the scenario cuts shows NotReady.
    page.wait_for_function(
        "() => [...document.querySelectorAll('#nodes tr[data-node]')].some(r => r.dataset.ready !== 'True')",
        timeout=step_ms,
    )
    down = page.evaluate(
        "() => [...document.querySelectorAll('#nodes tr[data-node]')]"
        ".filter(r => r.dataset.ready !== 'True').map(r => r.dataset.node)"
    )
    # A leader is still shown, and not the node that is down (the leader may have changed).
    page.wait_for_function(
        f"() => {{ const l = ({LEADERS})(); return l.length === 1 && !{json.dumps(down)}.includes(l[0]); }}",
        timeout=step_ms,
    )
    leader = page.evaluate(LEADERS)[0]
    shot(page, "ui-3-node-not-ready.png")
    no_overflow(page, "notready")
    say(step="notready", node=",".join(down), leader=leader)


try:
    main()
except Exception as e:  # noqa: BLE001 - any failure is reported to the scenario
    say(error=f"{type(e).__name__}: {e}", trace=traceback.format_exc()[-1500:])
    sys.exit(1)
