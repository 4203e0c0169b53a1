"""The web demo under load, and its screenshot for the README.

    python benchmarks/demo_check.py [--model shapes64] [--requests 200] [--clients 8] [--images 4]
                                    [--screenshot docs/demo.png]

Starts `python -m cgan.demo` in its own process on a free localhost port, then
1. (with --screenshot) drives the page in headless Chromium (Debian's chromium + chromium-driver):
   types the README's prompt, picks style and background, presses Generate, and saves the page;
2. sends --requests requests with distinct prompts from --clients concurrent clients through
   Gradio's own client (the page's queue), and prints how many were answered, p50 / p95 latency,
   and the server's resident memory before and after (the prompt cache is bounded, so it stays flat).
"""
from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "diamond"]
RELATIONS = ["left of", "right of", "above", "below"]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prompt_number(k: int) -> str:
    """A distinct prompt per k (the first 576 all differ, then a number is added)."""
    a, b = COLOURS[k % 6], COLOURS[(k // 6) % 6]
    s, t = SHAPES[(k // 36) % 4], SHAPES[(k // 144) % 4]
    prompt = f"a {a} {s} {RELATIONS[k % 4]} a {b} {t}"
    return prompt if k < 576 else f"{prompt} number {k}"


def screenshot(url: str, out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1050"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"))
    try:
        driver.get(url)
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#generate"))
        driver.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys("a red circle left of a blue square")
        for name, value in (("style", "flat"), ("background", "light")):
            driver.find_element(By.CSS_SELECTOR, f"#attr-{name} input").click()
            WebDriverWait(driver, 10).until(lambda d: next(
                (li for li in d.find_elements(By.CSS_SELECTOR, "ul[role=listbox] li") if li.text.strip() == value),
                None)).click()
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        WebDriverWait(driver, 120).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery img")) >= 4)
        time.sleep(1)
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
        print(f"screenshot: {out}")
    finally:
        driver.quit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes64")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--images", type=int, default=4, help="images per request")
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen([sys.executable, "-m", "cgan.demo", "--model", args.model, "--port", str(port)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"the demo exited: {server.stderr.read()[-2000:]}")
                time.sleep(0.5)
        print(f"demo of {args.model} on {url}; CPU {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores; torch threads: default")
        if args.screenshot:
            screenshot(url, args.screenshot)
        from gradio_client import Client

        client = Client(url, verbose=False)
        client.predict("a red circle", 0, 1, 1.0, "(unset)", "(unset)", False, 0.5, api_name="/generate")  # warm-up
        before = rss_mib(server.pid)

        def one(k: int) -> tuple[float, bool]:
            start = time.perf_counter()
            images, _, _, message = Client(url, verbose=False).predict(
                prompt_number(k), k, args.images, 1.0, ["flat", "outline", "shaded"][k % 3], ["light", "dark"][k % 2],
                True, (k % 10) / 10, api_name="/generate")
            return time.perf_counter() - start, len(images) == args.images and not message.startswith("**Error")

        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - start
        after = rss_mib(server.pid)
        latencies = sorted(t for t, _ in results)
        answered = sum(ok for _, ok in results)
        p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
        print(f"{answered}/{args.requests} requests answered with {args.images} images each, {args.clients} clients, "
              f"distinct prompts; wall {wall:.1f} s ({args.requests / wall:.2f} requests/s)")
        print(f"latency p50 {statistics.median(latencies):.2f} s, p95 {p95:.2f} s (queued: one request runs at a time)")
        print(f"server memory (RSS) {before:.0f} MiB before, {after:.0f} MiB after")
        return 0 if answered == args.requests else 1
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
