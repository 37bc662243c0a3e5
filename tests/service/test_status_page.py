"""The status page in a real browser (headless Chromium through selenium): sign in with a key, see the jobs and the
preview of a finished one, loaded with the HttpOnly cookie the sign-in set."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.service.conftest import dicom_files
from tests.service.peers import chromium_driver
from training.bench.service_process import KEYS, ServiceProcess, wait_for_job
from training.phantom import PhantomOptions, generate_study

#: How long the browser waits for a page or the preview image.
BROWSER_WAIT_S = 20


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A study of its own (a seed no other test posts), so the job it makes is new and no other test touches it."""
    study = generate_study(PhantomOptions(seed=31, size="small"), tmp_path_factory.mktemp("status-page") / "seed31")
    return dicom_files(study.dicom_dir)


def _sign_in(driver: WebDriver, key: str) -> None:
    field = driver.find_element(By.ID, "key")
    field.clear()
    field.send_keys(key)
    driver.execute_script("window.gadsynthOldPage = true")  # gone once the answer to the form replaced the page
    driver.find_element(By.ID, "sign-in").click()
    # Not staleness_of(<html>): while the old document is torn down Chromium may answer "Node ... does not belong
    # to the document" instead of a stale-element error, which that condition does not expect.
    wait = WebDriverWait(driver, BROWSER_WAIT_S, ignored_exceptions=(WebDriverException,))
    wait.until(
        lambda d: d.execute_script("return window.gadsynthOldPage === undefined && document.readyState === 'complete'")
    )


def _job_rows(driver: WebDriver) -> dict[str, list[str]]:
    """Each job row of the page (by its id) with the text of its cells, read in one go (the page refreshes itself)."""
    script = (
        "return Array.from(document.querySelectorAll(\"tr[id^='job-']\"),"
        " r => [r.id, Array.from(r.cells, c => c.textContent.trim())]);"
    )
    return dict(driver.execute_script(script))


def test_status_page_signs_in_and_shows_the_job_with_its_preview(
    service: ServiceProcess, client: httpx.Client, study_files: list[Path]
) -> None:
    posted = client.post(
        "/synthesize", files=[("files", (p.name, p.read_bytes(), "application/dicom")) for p in study_files]
    )
    assert posted.status_code == 202, posted.text
    job_id = posted.json()["id"]

    with chromium_driver() as driver:
        driver.set_page_load_timeout(BROWSER_WAIT_S)
        # Without a key: the sign-in form, and not a word about the jobs (the job exists: it was just accepted).
        driver.get(f"{service.url}/")
        assert driver.find_element(By.ID, "key").get_attribute("type") == "password"
        assert driver.find_element(By.ID, "sign-in").is_displayed()
        assert _job_rows(driver) == {} and job_id not in driver.page_source
        assert "GadSynth jobs" not in driver.title

        # A wrong key: the form again, with the error, and still no jobs.
        _sign_in(driver, "not-a-key-at-all")
        assert driver.find_element(By.CSS_SELECTOR, "p.failed").text == "That key is not valid."
        assert _job_rows(driver) == {} and job_id not in driver.page_source
        assert driver.get_cookies() == []

        job = wait_for_job(client, job_id, timeout=180)
        assert job["state"] == "succeeded", job
        assert job["model"], job

        # The reader key: the table of jobs, with this one succeeded and its model, and its preview loaded.
        _sign_in(driver, KEYS["reader"][0])
        assert driver.title == "GadSynth jobs"
        cookies = driver.get_cookies()
        assert [c["name"] for c in cookies] == ["gadsynth_key"] and cookies[0]["httpOnly"], cookies
        assert driver.execute_script("return document.cookie") == ""  # HttpOnly: no script can read the key
        driver.get(f"{service.url}/")  # a reload: the cookie alone signs in
        cells = _job_rows(driver).get(f"job-{job_id}")
        assert cells, _job_rows(driver)
        assert cells[0] == job_id and cells[1] == "succeeded", cells
        assert cells[4] == job["model"], cells
        # the verdict on the inputs and the uncertainty, as the API gives them (the shipped model has both files)
        trust = job["trust"]
        assert trust is not None and trust["ood_score"] is not None, job
        verdict = "OUTSIDE validated range" if trust["outside_validated_range"] else "validated range"
        assert cells[7] == f"{verdict} (score {trust['ood_score']:.1f})", cells
        assert trust["uncertainty_median_brain"] > 0 and trust["low_confidence_ml"] is not None, trust
        details = driver.find_element(By.ID, f"detail-{job_id}").text
        assert "Uncertainty (std of the synthetic image" in details, details

        preview = f"/v1/jobs/{job_id}/preview.png"
        script = (
            "const img = document.querySelector(`img.preview[src='${arguments[0]}']`);"
            "return img && img.complete ? {width: img.naturalWidth, height: img.naturalHeight} : null;"
        )
        wait = WebDriverWait(driver, BROWSER_WAIT_S, ignored_exceptions=(StaleElementReferenceException,))
        size = wait.until(lambda d: d.execute_script(script, preview))
        assert size["width"] > 0 and size["height"] > 0, f"the preview {preview} did not load: {size}"
