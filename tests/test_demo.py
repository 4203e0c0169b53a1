"""The web demo, driven in a real headless Chromium (Debian's chromium + chromium-driver, Selenium):
the images on the page are the pipeline's pixels for that prompt, attributes and seed; a bad input
shows its message, not a traceback. Skipped locally without the browser or the `demo` extra; in CI
(CI=true) missing pieces fail, and .ci/run installs them."""
import io
import os
import shutil
import socket
import urllib.request

import numpy as np
import pytest

from cgan.pipeline import CGANPipeline
from conftest import export_tiny_model

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _need(ok: bool, what: str) -> None:
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing; .ci/run installs it")
        pytest.skip(f"{what} is missing")


@pytest.fixture(scope="module")
def served(tmp_path_factory, shapes_schema):
    """The demo of a tiny model served on a local port (the API tests need nothing more)."""
    import importlib.util

    _need(importlib.util.find_spec("gradio") is not None, 'gradio (pip install -e ".[demo]")')
    from cgan.demo import build_demo

    pipe = CGANPipeline.from_pretrained(export_tiny_model(tmp_path_factory.mktemp("demo") / "model", shapes_schema))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = build_demo(pipe, "tiny")
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", pipe
    finally:
        demo.close()


@pytest.fixture(scope="module")
def page(served):
    _need(CHROMIUM is not None and DRIVER is not None, "chromium and chromium-driver (apt-get install)")
    import importlib.util

    _need(importlib.util.find_spec("selenium") is not None, 'selenium (pip install -e ".[test]")')
    from selenium import webdriver

    url, pipe = served
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    try:
        yield driver, url, pipe
    finally:
        driver.quit()


def _set_number(driver, css: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, css)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(value, Keys.TAB)


def _choose(driver, elem_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input").click()
    option = WebDriverWait(driver, 10).until(lambda d: next(
        (li for li in d.find_elements(By.CSS_SELECTOR, "ul[role=listbox] li") if li.text.strip() == value), None))
    option.click()


def _generate(driver, url: str, prompt: str, seed: str, count: str, style: str | None = None):
    from selenium.webdriver.common.by import By

    driver.get(url)
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#generate"))
    driver.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys(prompt)
    if style:
        _choose(driver, "attr-style", style)
    driver.find_element(By.CSS_SELECTOR, "#set-size input").click()
    _set_number(driver, "#attr-size input[type=number]", "0.7")
    _set_number(driver, "#seed input", seed)
    _set_number(driver, "#num-images input[type=number]", count)
    driver.find_element(By.CSS_SELECTOR, "#generate").click()


def test_page_generates_the_pipeline_pixels(page, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver, url, pipe = page
    _generate(driver, url, "a red circle", "5", "2", style="outline")
    images = WebDriverWait(driver, 60).until(
        lambda d: (found := d.find_elements(By.CSS_SELECTOR, "#gallery img")) and len(found) >= 2 and found)
    expected = pipe("a red circle", {"style": "outline", "size": 0.7}, num_images=2, seed=5)
    for image, want in zip(images[:2], expected):
        got = Image.open(io.BytesIO(urllib.request.urlopen(image.get_attribute("src"), timeout=30).read()))
        difference = np.abs(np.asarray(got.convert("RGB"), np.int16) - np.asarray(want, np.int16))
        assert difference.max() <= 1  # the same image (the page's path may round one level differently)
    assert "style=outline" in driver.find_element(By.CSS_SELECTOR, "#message").text
    assert driver.find_elements(By.CSS_SELECTOR, "#attention img")  # the tiny model has cross-attention
    driver.save_screenshot(str(tmp_path / "demo.png"))
    assert Image.open(tmp_path / "demo.png").size[0] > 0


def test_bad_input_shows_the_message_not_a_traceback(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver, url, _ = page
    _generate(driver, url, "a red circle", "-3", "1")
    expected = "seed: expected a whole number from 0"
    # the error is raised as gr.Error: Gradio shows it in an error toast on the page
    message = WebDriverWait(driver, 60).until(lambda d: next(
        (e.text for e in d.find_elements(By.CSS_SELECTOR, '[data-testid="toast-body"], #message')
         if expected in e.text), None))
    assert expected in message and "Traceback" not in driver.page_source


def test_api_names_its_inputs_raises_errors_and_warns_of_unknown_words(served):
    from gradio_client import Client

    url, pipe = served
    client = Client(url, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")
    names = [p["parameter_name"] for p in api["named_endpoints"]["/generate"]["parameters"]]
    assert names == ["prompt", "seed", "num_images", "truncation", "style", "background", "set_size", "size"]
    images, _, _, message = client.predict(prompt="a red circle", seed=3, num_images=1, truncation=1.0,
                                           style="outline", background="(unset)", set_size=True, size=0.7,
                                           api_name="/generate")
    assert len(images) == 1 and "style=outline" in message and "Warning" not in message
    with pytest.raises(Exception, match="seed: expected a whole number from 0"):  # an error, not an empty answer
        client.predict("a red circle", -3, 1, 1.0, "(unset)", "(unset)", False, 0.5, api_name="/generate")
    _, _, _, message = client.predict("a pink hexagon", 0, 1, 1.0, "(unset)", "(unset)", False, 0.5,
                                      api_name="/generate")
    assert "**Warning:** 'pink', 'hexagon' never appeared in this model's training captions" in message
