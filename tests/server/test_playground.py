"""The playground page (``GET /``) in a real browser: Debian's headless Chromium driven by Selenium
(``/usr/bin/chromedriver``), against a real ``serve`` on a tiny random CPU checkpoint.

Run by ``nox -s browser``, which installs ``chromium`` and ``chromium-driver`` with apt; the
``tests`` session leaves this file out. Screenshots are kept in ``test-artifacts/playground/``
(git-ignored)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed: run `nox -s browser`"
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

from chatterbox_vllm.controls import CONTROLS  # noqa: E402

API_KEY = "playground-key"
RATE = 24_000
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "playground"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Chromium on a machine without network: without these it waits on connections it cannot make.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required",
    "--window-size=1280,1000",
)  # fmt: skip
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def server(chatterbox_checkpoint: Path, tmp_path_factory, launch_server) -> Iterator[dict]:
    log = tmp_path_factory.mktemp("playground-log") / "server.log"
    with launch_server(chatterbox_checkpoint, log, api_key=API_KEY) as running:
        yield running


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(server, downloads, tmp_path_factory) -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed: run `nox -s browser`")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition: Callable[[], Any], seconds: float = 120, what: str = "") -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds} s waiting for {what or condition}")


def text_of(driver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def listed_voices(driver) -> list[str]:
    script = "return [...document.querySelectorAll('#voices li')].map((li) => li.dataset.voice)"
    return list(driver.execute_script(script))


def console_errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def server_error(server, body: dict) -> tuple[int, str]:
    """What the server itself answers to ``body`` (status, error message)."""
    response = httpx.post(
        server["base"] + "/v1/audio/speech",
        json={"model": "chatterbox", **body},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    return response.status_code, response.json()["error"]["message"]


def set_control(driver, name: str, value: str) -> None:
    field = driver.find_element(By.ID, f"control-{name}")
    field.clear()
    field.send_keys(value)


def speak(driver, text: str) -> list[tuple[int, str]]:
    """Types ``text``, presses Speak and follows the page until it is done or failed; returns
    what the page showed (bytes received, state) at every poll."""
    box = driver.find_element(By.ID, "text")
    box.clear()
    driver.execute_script("arguments[0].value = arguments[1];", box, text)  # long texts: fast
    driver.find_element(By.ID, "speak").click()
    seen: list[tuple[int, str]] = []

    def finished() -> bool:
        seen.append((int(text_of(driver, "bytes-received")), text_of(driver, "state")))
        return (
            seen[-1][1] in ("done", "failed") and driver.find_element(By.ID, "speak").is_enabled()
        )

    wait_for(finished, 300, "the speech request to end")
    return seen


def voiced_recording(path: Path, seconds: float = 3.0) -> Path:
    t = np.arange(int(RATE * seconds)) / RATE
    signal = 0.3 * np.sin(2 * np.pi * 160 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    soundfile.write(path, signal.astype(np.float32), RATE)
    return path


def test_page_loads_asks_for_the_key_and_lists_voices_and_controls(server, browser) -> None:
    browser.get(server["base"] + "/")
    # The server has an API key: its 401 makes the page ask for it.
    wait_for(lambda: browser.find_element(By.ID, "key-box").is_displayed(), 30, "the key form")
    browser.find_element(By.ID, "api-key").send_keys(API_KEY)
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait_for(lambda: listed_voices(browser), 30, "the voice list")
    assert listed_voices(browser) == ["default"]
    assert Select(browser.find_element(By.ID, "model")).first_selected_option.text == "chatterbox"
    assert text_of(browser, "server-status") == "english model · ok"
    for name, control in CONTROLS.items():  # every control of the contract, with its range
        field = browser.find_element(By.ID, f"control-{name}")
        if control.choices is None:
            # (as JavaScript numbers: the seed's upper end is 2**63 - 1 rounded to a double)
            assert float(field.get_attribute("min")) == float(control.low), name
            assert float(field.get_attribute("max")) == float(control.high), name
    # No console errors except the one 401 that asked for the key.
    errors = console_errors(browser)
    assert all("401" in entry["message"] for entry in errors), errors
    assert not browser.find_element(By.ID, "error").text


def test_uploads_a_voice(server, browser, tmp_path) -> None:
    recording = voiced_recording(tmp_path / "mine.wav")
    browser.find_element(By.ID, "voice-name").send_keys("browservoice")
    browser.find_element(By.ID, "voice-file").send_keys(str(recording))
    browser.find_element(By.CSS_SELECTOR, "#upload-form button").click()
    wait_for(lambda: text_of(browser, "voice-message") == "uploaded browservoice", 120, "upload")
    listed = httpx.get(
        server["base"] + "/v1/voices", headers={"Authorization": f"Bearer {API_KEY}"}
    ).json()["data"]
    assert [v["name"] for v in listed] == ["default", "browservoice"] == listed_voices(browser)
    assert Select(browser.find_element(By.ID, "voice")).first_selected_option.text == "browservoice"


def test_speaks_while_streaming_and_downloads_what_it_played(server, browser, downloads) -> None:
    set_control(browser, "max_new_tokens", "60")
    set_control(browser, "seed", "7")
    Select(browser.find_element(By.ID, "format")).select_by_value("wav")
    seen = speak(browser, "Streaming into the browser, piece by piece.")
    assert text_of(browser, "state") == "done", text_of(browser, "error")
    # Audio was received (and scheduled for playback) before the request ended.
    assert any(received > 0 and state == "streaming" for received, state in seen), seen[-5:]
    log = browser.execute_script("return window.playground.state.log")
    audio = [entry for entry in log if entry["type"] == "audio"]
    done = next(entry for entry in log if entry["type"] == "done")
    assert len(audio) >= 2 and audio[0]["t"] < done["t"] and audio[0]["bytes"] < done["bytes"]
    assert text_of(browser, "first-audio").endswith(" ms")
    assert float(text_of(browser, "rtf").split(" ")[0]) > 0
    browser.save_screenshot(str(ARTIFACTS / "spoken.png"))

    browser.find_element(By.ID, "download").click()
    file = wait_for(lambda: (downloads / "speech.wav").is_file() and downloads / "speech.wav", 30)
    samples, rate = soundfile.read(file, dtype="int16")
    assert rate == RATE and samples.size * 2 == int(text_of(browser, "bytes-received"))
    # What the page played is what the server sends for the same request.
    direct = httpx.post(
        server["base"] + "/v1/audio/speech",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": "chatterbox", "input": "Streaming into the browser, piece by piece.",
              "voice": "browservoice", "response_format": "pcm", "max_new_tokens": 60, "seed": 7},
        timeout=300,
    )  # fmt: skip
    assert np.array_equal(samples, np.frombuffer(direct.content, "<i2"))


def test_speed_and_a_download_the_server_encodes(server, browser, downloads) -> None:
    played = int(text_of(browser, "bytes-received")) // 2  # the last test's audio, speed 1
    set_control(browser, "speed", "2")
    Select(browser.find_element(By.ID, "format")).select_by_value("flac")
    speak(browser, "Streaming into the browser, piece by piece.")
    assert text_of(browser, "state") == "done", text_of(browser, "error")
    fast = int(text_of(browser, "bytes-received")) // 2
    assert abs(fast / (played / 2) - 1) < 0.02  # twice as fast: half the samples
    wait_for(lambda: browser.find_element(By.ID, "download").is_displayed(), 120, "the flac")
    browser.find_element(By.ID, "download").click()
    file = wait_for(lambda: (downloads / "speech.flac").is_file() and downloads / "speech.flac", 30)
    samples, rate = soundfile.read(file, dtype="int16")
    assert rate == RATE and abs(samples.size / fast - 1) < 0.02
    set_control(browser, "speed", "1")


@pytest.mark.parametrize(
    ("text", "status"), [("", 400), ("x" * 4097, 413)], ids=["empty", "4097-characters"]
)
def test_shows_the_servers_error_message(server, browser, text: str, status: int) -> None:
    expected_status, message = server_error(server, {"input": text, "voice": "browservoice"})
    assert expected_status == status
    speak(browser, text)
    assert text_of(browser, "state") == "failed"
    assert text_of(browser, "error") == message
    browser.save_screenshot(str(ARTIFACTS / f"error-{status}.png"))


def test_deletes_the_voice_and_the_console_stayed_clean(server, browser) -> None:
    item = browser.find_element(By.CSS_SELECTOR, '#voices li[data-voice="browservoice"]')
    item.find_element(By.TAG_NAME, "button").click()
    wait_for(lambda: text_of(browser, "voice-message") == "deleted browservoice", 30, "delete")
    assert listed_voices(browser) == ["default"]
    # The only console errors are the failed requests the error test made on purpose.
    errors = console_errors(browser)
    assert all(" 400 " in e["message"] or " 413 " in e["message"] for e in errors), errors
    browser.save_screenshot(str(ARTIFACTS / "final.png"))
    assert (ARTIFACTS / "final.png").read_bytes().startswith(b"\x89PNG")
