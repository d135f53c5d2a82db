"""The screenshots in docs/figures: evaluate.py's report.html and serve.py's page, made by the suite itself.

    python benchmarks/screenshots.py --model-dir benchmarks/results/models/compare_best

evaluate.py scores a copy of the model (so its own evaluation.json and report.html stay) on the first
--reviews reviews of its test data, then serve.py serves it and a review is typed into its page; headless Chromium (the
tests' own, tests/browser.py) saves both as docs/figures/report.png and docs/figures/page.png.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import common  # noqa: I001  (puts the repository on sys.path)

sys.path.insert(0, os.path.join(common.ROOT, "tests"))  # browser, serving_client: the tests' harness
import browser  # noqa: E402
import serving_client  # noqa: E402

FIGURES = os.path.join(common.ROOT, "docs", "figures")
REVIEW = ("I expected little from a film with such a dull title, but the acting is wonderful and the "
          "story moved me. The ending drags a bit; still, one of the best films I saw this year.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--reviews", type=int, default=500)
    args = parser.parse_args(argv)
    copy = os.path.join(tempfile.mkdtemp(), os.path.basename(os.path.abspath(args.model_dir)))
    shutil.copytree(args.model_dir, copy)
    args.model_dir = copy
    subprocess.run([sys.executable, os.path.join(common.ROOT, "evaluate.py"), "--model-dir", args.model_dir,
                    "--max-examples", str(args.reviews), "--show-errors", "3",
                    "--plots-dir", os.path.join(common.RESULTS, "plots", "screenshots")], check=True)
    chromium = browser.start_chromium()
    try:
        chromium.set_window_size(1200, 2400)
        chromium.get("file://" + os.path.abspath(os.path.join(args.model_dir, "report.html")))
        chromium.save_screenshot(os.path.join(FIGURES, "report.png"))
        server = serving_client.ServerProcess(args.model_dir, os.path.join(common.RESULTS, "screenshots_serve.log"),
                                              startup_seconds=300)
        try:
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support import expected_conditions
            from selenium.webdriver.support.ui import WebDriverWait
            chromium.set_window_size(1000, 1100)
            chromium.get(server.url + "/")
            chromium.find_element(By.ID, "text").send_keys(REVIEW)
            chromium.find_element(By.ID, "classify").click()
            WebDriverWait(chromium, 300).until(expected_conditions.visibility_of_element_located((By.ID, "result")))
            chromium.save_screenshot(os.path.join(FIGURES, "page.png"))
        finally:
            server.stop()
    finally:
        chromium.quit()
    shutil.rmtree(os.path.dirname(copy))
    print(f"wrote {os.path.join(FIGURES, 'report.png')} and {os.path.join(FIGURES, 'page.png')}")


if __name__ == "__main__":
    main()
