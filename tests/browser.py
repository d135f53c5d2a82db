"""Headless Chromium for the tests that look at pages as people do: Debian's chromium and chromium-driver
(.ci/run installs them), driven by Selenium pointed at them, so nothing is downloaded. Where they are
missing, the tests that need them skip and say why."""
import shutil

import pytest


def start_chromium():
    """A headless Chromium WebDriver, or pytest.skip naming what is missing."""
    binary, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("no headless browser here: apt-get install -y chromium chromium-driver (as .ci/run does)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: pip install -r requirements-dev.txt")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,1600", "--force-device-scale-factor=1"):
        options.add_argument(argument)  # --no-sandbox: CI runs as root, where Chromium's sandbox won't start
    return webdriver.Chrome(options=options, service=Service(driver))


@pytest.fixture(scope="session")
def chromium():
    browser = start_chromium()
    yield browser
    browser.quit()


def loaded_resources(browser):
    """The URLs the open page fetched (images, styles, scripts), as the browser recorded them."""
    return browser.execute_script("return performance.getEntriesByType('resource').map(entry => entry.name)")
