"""The console in a real headless browser: Debian's chromium driven through chromedriver by
Selenium, against the whole stack as real processes (:class:`tests.e2e_stack.Stack`: the
emulator, ``cirelay serve``, ``cirelay worker``) and real subscribers on loopback.

One stack and one browser serve the whole module (they take seconds to start); each test
makes its own jobs and subscriptions. axe-core (vendored from npm under ``vendor/``) is run in
the page; screenshots at 1280x800 go to ``docs/screenshots/`` (see the README).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_stack import API_KEY, Stack

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"
AXE = Path(__file__).parent / "vendor" / "axe-core-4.14.1.min.js"
READ_KEY = "viewer-read-key-0123456789abcdef"
ADMIN_KEY = API_KEY  # a bare key: admin, named key1

#: deliveries give up after three quick attempts, so "failed" comes fast
ENV = {
    "CIRELAY_API_KEYS": f"{API_KEY},viewer:read:{READ_KEY}",
    "CIRELAY_DELIVERY_ALLOWED_NETWORKS": "127.0.0.0/8",
    "CIRELAY_DELIVERY_RETRY_SCHEDULE": "0.2,0.2",
    "CIRELAY_DELIVERY_TIMEOUT_SECONDS": "2",
    "CIRELAY_EMULATOR_JOB_SECONDS": "1.5",
    # the quarantine test restarts the service with a fixed schema; no poll meanwhile, and CI's
    # retries of the quarantined notification over before the restart (else one of them may
    # be accepted by the fixed service first, and the replay be a duplicate)
    "CIRELAY_RECONCILE_AFTER_SECONDS": "600",
    "CIRELAY_EMULATOR_CALLBACK_RETRIES": "0.5,1",
}


def strict_schemas(directory: Path) -> Path:
    """A copy of ``schemas/`` stricter than CI: an output file's name (in a notification's
    MediaResult) at most 100 characters. A job with a longer output name has its
    notifications quarantined — until the service runs with the real schemas again."""
    target = directory / "strict-schemas"
    shutil.copytree(ROOT / "schemas", target)
    types = target / "ci-types.xsd"
    text = types.read_text()
    loose = '<xs:element name="ObjectName" type="NonEmptyString"/>\n    </xs:all>'
    strict = (
        '<xs:element name="ObjectName"><xs:simpleType><xs:restriction base="xs:string">'
        '<xs:minLength value="1"/><xs:maxLength value="100"/></xs:restriction>'
        "</xs:simpleType></xs:element>\n    </xs:all>"
    )
    assert text.count(loose) == 1, "Md5InfoType changed: update strict_schemas"
    types.write_text(text.replace(loose, strict))
    return target


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("console")
    env = ENV | {"CIRELAY_SCHEMA_DIR": str(strict_schemas(directory))}
    with Stack.start(directory, env) as running:
        try:
            yield running
        except BaseException:
            print(running.tails())
            raise


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("chromium and chromedriver are missing: `make system-deps` installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,800",
                     "--force-device-scale-factor=1", "--lang=en-US"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_window_size(1280, 800)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
