"""The web page (/ui/) in a real browser: Debian's chromium, driven by selenium through
chromedriver, against real Berth servers holding what real clients (skopeo, oras-py) pushed.

Every page the browser visits is saved as a screenshot; each path is printed (pytest -s or -rA).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import oras.client
import oras.oci
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from registry.azurite import Azurite
from tests.auth.support import ADMIN_PASSWORD, ADMIN_USER, create_scoped_token
from tests.clients.layouts import image_layout, multiarch_layout, read_blob
from tests.conftest import Server, require_tool
from tests.helpers import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, push_image, put_manifest, sha256

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 15  # seconds for a page to load
ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
COSIGN_SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"
SPDX = "application/spdx+json"


# --- the browser ------------------------------------------------------------------------------

class Browser:
    """One chromium for the module; every page it lands on is saved as a screenshot."""

    def __init__(self, driver: WebDriver, shots: Path):
        self.driver = driver
        self.shots = shots
        self.count = 0

    def visit(self, url: str) -> None:
        self.driver.get(url)
        self._settled()

    def navigate(self, action: Callable[[], None]) -> None:
        """Do something that loads another page (a click, Enter in a form); wait for that page."""
        old = self.driver.find_element(By.TAG_NAME, "html")
        action()

        def replaced(driver: WebDriver) -> bool:
            try:
                old.is_enabled()
            except StaleElementReferenceException:
                return True
            except WebDriverException as error:  # chromium, mid-navigation: "does not belong to the document"
                if "does not belong to the document" in str(error):
                    return True
                raise
            return False

        WebDriverWait(self.driver, WAIT).until(replaced)
        self._settled()

    def follow(self, element: WebElement) -> None:
        self.navigate(element.click)

    def _settled(self) -> None:
        WebDriverWait(self.driver, WAIT).until(
            lambda driver: driver.execute_script("return document.readyState") == "complete")
        self.shot()

    def shot(self) -> None:
        self.count += 1
        test = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[-1].split(" ")[0].removeprefix("test_")
        url = urlsplit(self.driver.current_url)
        slug = re.sub(r"[^a-z0-9]+", "-", f"{url.path} {url.query}".lower()).strip("-")[:80] or "page"
        path = self.shots / f"{self.count:03d}-{test[:40]}-{slug}.png"
        assert self.driver.save_screenshot(str(path)), path
        print(f"screenshot: {path}")

    # reading the page
    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def has(self, css: str) -> bool:
        return bool(self.find_all(css))

    def text(self, css: str) -> str:
        return self.find(css).text.strip()

    def texts(self, css: str) -> list[str]:
        return [element.text.strip() for element in self.find_all(css)]

    def value(self, css: str) -> str:
        return self.find(css).get_attribute("value") or ""

    @property
    def path(self) -> str:
        return urlsplit(self.driver.current_url).path

    @property
    def source(self) -> str:
        return self.driver.page_source

    def script(self, code: str, *args: object) -> object:
        return self.driver.execute_script(code, *args)

    def rows(self, table: str) -> list[list[str]]:
        """A table's body rows, each the text of its cells (the row header first)."""
        return [[cell.text.strip() for cell in row.find_elements(By.CSS_SELECTOR, "th, td")]
                for row in self.find_all(f"{table} tbody tr")]

    def sign_in(self, username: str, password: str) -> None:
        self.find("#username").clear()
        self.find("#username").send_keys(username)
        self.find("#password").clear()
        self.find("#password").send_keys(password)
        self.follow(self.find("#sign-in"))
        # Signed in or not, the answer is a page of the site (not, say, an API error in JSON).
        assert self.has("main#main"), f"signing in answered: {self.find('body').text[:300]}"


def require_browser() -> None:
    """chromium and chromedriver from Debian; in CI missing is a failure, locally a skip."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{', '.join(missing)} not installed; .ci/run installs chromium and chromium-driver")
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    # An explicit chromedriver: selenium-manager never looks for (or downloads) one.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        shots = tmp_path_factory.mktemp("ui-screenshots")
        print(f"screenshots in {shots}")
        yield Browser(driver, shots)
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def skopeo() -> str:
    return require_tool("skopeo")


# --- pushing ----------------------------------------------------------------------------------

def unique(prefix: str = "ui") -> str:
    """A repository namespace no other test uses; "0" sorts it before other tests' repositories,
    so it is on the first page of the catalog."""
    return f"0{prefix}{uuid.uuid4().hex[:10]}"


def skopeo_copy(skopeo: str, source: str, destination: str, *flags: str) -> None:
    result = subprocess.run([skopeo, "copy", "--src-tls-verify=false", "--dest-tls-verify=false", *flags,
                             source, destination], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"skopeo copy {source} {destination}\n{result.stdout}\n{result.stderr}"


def manifest(server: Server, repo: str, reference: str, token: str | None = None) -> tuple[str, bytes]:
    """(digest, bytes) of a stored manifest, as a client pulls it."""
    headers = {"Accept": ACCEPT, **({"Authorization": f"Bearer {token}"} if token else {})}
    response = httpx.get(f"{server.url}/v2/{repo}/manifests/{reference}", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return sha256(response.content), response.content


def size_text(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 1024 / 1024:.1f} MiB"


def image_size(body: bytes) -> int:
    """An image's size as the registry reports it: the manifest plus everything it references."""
    document = json.loads(body)
    return (len(body) + document.get("config", {}).get("size", 0)
            + sum(item["size"] for item in document.get("layers", []) + document.get("manifests", [])))


def short(digest: str) -> str:
    return digest.split(":", 1)[1][:12]


def page_of(server: Server, repo: str, digest: str | None = None) -> str:
    if digest is None:
        return f"{server.url}/ui/repo/{repo}"
    return f"{server.url}/ui/repo/{repo}@{quote(digest, safe=':')}"


def oras_push_referrer(server: Server, repo: str, tag: str, subject_digest: str, subject_size: int,
                       artifact_type: str, filename: str, content: str,
                       annotations: dict[str, str] | None = None) -> str:
    """oras-py pushes `filename` as an artifact whose subject is the image; returns its digest.
    (oras-py's push has no artifactType: the config's media type is the referrer's artifactType.)"""
    Path(filename).write_text(content)
    client = oras.client.OrasClient(hostname=server.host, insecure=True)
    subject = oras.oci.Subject(mediaType=OCI_MANIFEST, digest=subject_digest, size=subject_size)
    response = client.push(target=f"{server.host}/{repo}:{tag}", files=[filename], subject=subject,
                           manifest_config=f"no-config-file:{artifact_type}",
                           manifest_annotations=annotations or {})
    assert response.status_code == 201, response.text
    assert response.headers["OCI-Subject"] == subject_digest
    return response.headers["Docker-Content-Digest"]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # oras-py refuses files outside the working directory
    return tmp_path


# --- 1. the repositories page -----------------------------------------------------------------

def test_repositories_page_lists_searches_and_links(browser: Browser, server: Server, skopeo: str,
                                                    tmp_path: Path) -> None:
    prefix = unique()
    image_layout(tmp_path / "src", "v1")
    for name in ("alpha", "beta"):
        skopeo_copy(skopeo, f"oci:{tmp_path / 'src'}:v1", f"docker://{server.host}/{prefix}/{name}:v1")

    browser.visit(f"{server.url}/ui/")
    assert browser.driver.title.startswith("Repositories")
    listed = browser.texts("#repositories li a")
    assert f"{prefix}/alpha" in listed and f"{prefix}/beta" in listed, listed

    # Type a prefix and press Enter: only the repository it starts.
    box = browser.find("#q")
    box.clear()
    box.send_keys(f"{prefix}/a")
    browser.navigate(lambda: box.send_keys(Keys.ENTER))
    assert browser.path == "/ui/"
    assert browser.texts("#repositories li a") == [f"{prefix}/alpha"]
    assert browser.value("#q") == f"{prefix}/a"  # the box keeps what was searched for
    assert not browser.has("#next-page")

    # The namespace alone finds both; the Search button submits as Enter does.
    box = browser.find("#q")
    box.clear()
    box.send_keys(prefix.upper() + "/")  # names are lower case; so is the search
    browser.follow(browser.find("form.search button[type=submit]"))
    assert browser.texts("#repositories li a") == [f"{prefix}/alpha", f"{prefix}/beta"]

    # A prefix nothing starts with says so.
    box = browser.find("#q")
    box.clear()
    box.send_keys(f"{prefix}/zzz")
    browser.navigate(lambda: box.send_keys(Keys.ENTER))
    assert not browser.has("#repositories")
    assert f"{prefix}/zzz" in browser.text("#no-repositories")

    # Back to the alpha search, then follow the link: the repository's page.
    browser.visit(f"{server.url}/ui/?q={prefix}/a")
    browser.follow(browser.find("#repositories li a"))
    assert browser.path == f"/ui/repo/{prefix}/alpha"
    assert browser.text("h1") == f"{prefix}/alpha"
    assert [row[0] for row in browser.rows("#tags")] == ["v1"]


# --- 2. a repository's tags: OCI and Docker images --------------------------------------------

def test_repository_page_shows_tags_kinds_sizes_and_pull_commands(browser: Browser, server: Server, skopeo: str,
                                                                  tmp_path: Path) -> None:
    repo = f"{unique()}/kinds"
    image_layout(tmp_path / "src", "v1")
    skopeo_copy(skopeo, f"oci:{tmp_path / 'src'}:v1", f"docker://{server.host}/{repo}:oci", "--preserve-digests")
    skopeo_copy(skopeo, f"oci:{tmp_path / 'src'}:v1", f"docker://{server.host}/{repo}:docker",
                "--format", "v2s2")
    oci_digest, oci_body = manifest(server, repo, "oci")
    docker_digest, docker_body = manifest(server, repo, "docker")
    assert json.loads(oci_body)["mediaType"] == OCI_MANIFEST
    assert json.loads(docker_body)["mediaType"] == DOCKER_MANIFEST

    browser.visit(page_of(server, repo))
    assert browser.text("h1") == repo
    rows = browser.rows("#tags")
    # Tag, digest, type, size, created, updated, locks; tags in name order.
    assert [row[:4] for row in rows] == [
        ["docker", short(docker_digest), "Docker image", size_text(image_size(docker_body))],
        ["oci", short(oci_digest), "OCI image", size_text(image_size(oci_body))],
    ]
    assert browser.texts("#tags .kind") == ["Docker image", "OCI image"]
    for row in rows:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", row[4]), row
    # The full digest is there for the reader who hovers.
    assert [code.get_attribute("title") for code in browser.find_all("#tags tbody code")] == [
        docker_digest, oci_digest]

    assert browser.value("#pull-tag") == f"docker pull {server.host}/{repo}:docker"
    pull_digest = browser.value("#pull-digest")
    assert "@sha256:" in pull_digest
    assert pull_digest.endswith(f" {server.host}/{repo}@{docker_digest}"), pull_digest
    # Both commands are read-only fields a reader copies from, each with its label.
    for field in ("#pull-tag", "#pull-digest"):
        assert browser.find(field).get_attribute("readonly") is not None

    # Clicking a tag opens its manifest.
    browser.follow(browser.find_all("#tags tbody th a")[1])
    assert browser.path == f"/ui/repo/{repo}@{oci_digest}"
    assert browser.text("#digest") == oci_digest
    assert browser.text("#kind") == "OCI image"
    assert browser.value("#pull-digest") == f"docker pull {server.host}/{repo}@{oci_digest}"
    assert browser.text("#platform") == "linux/amd64"
    assert browser.has("#no-referrers")

    browser.visit(page_of(server, repo))
    browser.follow(browser.find_all("#tags tbody th a")[0])
    assert browser.text("#digest") == docker_digest
    assert browser.text("#kind") == "Docker image"
    assert browser.text("#platform") == "linux/amd64"
    layers = json.loads(docker_body)["layers"]
    assert [row[3] for row in browser.rows("#layers")] == [size_text(layer["size"]) for layer in layers]
    # The raw manifest (in a closed <details>) is the stored document.
    assert json.loads(browser.find("#raw").get_attribute("textContent")) == json.loads(docker_body)


# --- 3. a multi-arch index --------------------------------------------------------------------

def test_multi_arch_index_links_each_platform(browser: Browser, server: Server, skopeo: str,
                                              tmp_path: Path) -> None:
    repo = f"{unique()}/multi"
    index_digest = multiarch_layout(tmp_path / "src", "multi")
    skopeo_copy(skopeo, f"oci:{tmp_path / 'src'}:multi", f"docker://{server.host}/{repo}:multi", "--all",
                "--preserve-digests")
    index = json.loads(read_blob(tmp_path / "src", index_digest))
    children = {f"{entry['platform']['os']}/{entry['platform']['architecture']}": entry
                for entry in index["manifests"]}
    assert set(children) == {"linux/amd64", "linux/arm64"}

    browser.visit(page_of(server, repo))
    assert browser.rows("#tags")[0][:3] == ["multi", short(index_digest), "OCI index"]
    browser.follow(browser.find("#tags tbody th a"))
    assert browser.text("#digest") == index_digest
    assert browser.text("#kind") == "OCI index"
    assert [row[:4] for row in browser.rows("#platforms")] == [
        [platform, short(entry["digest"]), "OCI image", size_text(entry["size"])]
        for platform, entry in children.items()
    ]
    assert not browser.has("#layers")  # an index has no layers of its own

    for number, (platform, entry) in enumerate(children.items()):
        if number:
            browser.visit(page_of(server, repo, index_digest))
        browser.follow(browser.find_all("#platforms tbody td a")[number])
        assert browser.path == f"/ui/repo/{repo}@{entry['digest']}"
        assert browser.text("#digest") == entry["digest"]
        assert browser.text("#kind") == "OCI image"
        assert browser.text("#platform") == platform
        child = json.loads(read_blob(tmp_path / "src", entry["digest"]))
        assert browser.rows("#layers") == [
            [str(position), short(layer["digest"]), layer["mediaType"], size_text(layer["size"])]
            for position, layer in enumerate(child["layers"], start=1)
        ]
        assert [code.get_attribute("title") for code in browser.find_all("#layers code")] == [
            layer["digest"] for layer in child["layers"]]
        # The breadcrumb leads back to the repository.
        assert browser.find(".crumbs a[href$='/multi']").text == repo


# --- 4. referrers -----------------------------------------------------------------------------

def test_referrers_are_grouped_and_link_both_ways(browser: Browser, server: Server, skopeo: str,
                                                  workdir: Path) -> None:
    repo = f"{unique()}/signed"
    image_digest = image_layout(workdir / "src", "v1")
    skopeo_copy(skopeo, f"oci:{workdir / 'src'}:v1", f"docker://{server.host}/{repo}:v1", "--preserve-digests")
    _, image_body = manifest(server, repo, "v1")
    sbom = oras_push_referrer(server, repo, "sbom", image_digest, len(image_body), SPDX, "sbom.spdx.json",
                              '{"spdxVersion": "SPDX-2.3", "packages": []}')
    signature = oras_push_referrer(server, repo, "signature", image_digest, len(image_body), COSIGN_SIGNATURE,
                                   "signature.sig", "not really a signature",
                                   {"dev.cosignproject.cosign/signature": "MEUCIQDx"})

    browser.visit(page_of(server, repo))
    browser.follow(browser.find("#tags tbody th a[href*='" + short(image_digest) + "']"))
    assert browser.text("#digest") == image_digest
    assert not browser.has("#no-referrers")
    sections = browser.find_all("#referrers section")
    grouped = {section.get_attribute("aria-label"):
               [link.text.strip() for link in section.find_elements(By.CSS_SELECTOR, "a.referrer")]
               for section in sections}
    assert grouped == {SPDX: [short(sbom)], COSIGN_SIGNATURE: [short(signature)]}
    assert list(grouped) == sorted(grouped)  # groups in artifactType order
    for section in sections:
        assert section.find_element(By.TAG_NAME, "h3").text == f"{section.get_attribute('aria-label')} (1)"
    assert "dev.cosignproject.cosign/signature: MEUCIQDx" in browser.text("#referrers")

    # The SBOM's own page refers back to the image.
    browser.follow(browser.find(f"#referrers section[aria-label='{SPDX}'] a.referrer"))
    assert browser.path == f"/ui/repo/{repo}@{sbom}"
    assert browser.text("#digest") == sbom
    assert browser.text("#subject") == short(image_digest)
    assert browser.find("#subject").get_attribute("href") == page_of(server, repo, image_digest)
    assert browser.has("#no-referrers")
    raw = json.loads(browser.find("#raw").get_attribute("textContent"))
    assert raw["subject"]["digest"] == image_digest and raw["config"]["mediaType"] == SPDX
    browser.follow(browser.find("#subject"))
    assert browser.path == f"/ui/repo/{repo}@{image_digest}"
    assert browser.text("#digest") == image_digest
    assert browser.has("#referrers")


# --- 5. paging ----------------------------------------------------------------------------------

def test_sixty_tags_are_shown_fifty_at_a_time(browser: Browser, server: Server) -> None:
    repo = f"{unique()}/paged"
    tags = [f"t{number:02d}" for number in range(60)]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        digest, body = push_image(client, repo, tags[0])

        # One after another: tags put at once onto one manifest contend for its row (503, retry later).
        for name in tags[1:]:
            response = put_manifest(client, repo, name, body)
            assert response.status_code == 201, response.text

    browser.visit(page_of(server, repo))
    assert browser.text(".facts").startswith("Tags in name order")
    rows = browser.rows("#tags")
    assert [row[0] for row in rows] == tags[:50]
    assert {row[1] for row in rows} == {short(digest)}
    assert browser.value("#pull-tag") == f"docker pull {server.host}/{repo}:t00"

    browser.follow(browser.find("#next-page"))
    assert browser.path == f"/ui/repo/{repo}"
    assert [row[0] for row in browser.rows("#tags")] == tags[50:]
    assert not browser.has("#next-page")
    assert browser.value("#pull-tag") == f"docker pull {server.host}/{repo}:t50"


# --- 6. keyboard and accessibility ------------------------------------------------------------

def assert_accessible(browser: Browser) -> None:
    assert browser.find("html").get_attribute("lang") == "en"
    assert browser.driver.title.endswith("· Berth")
    inputs = [element for element in browser.find_all("input") if element.get_attribute("type") != "hidden"]
    assert inputs or browser.path.startswith("/ui/repo/"), "every page tested here has a field"
    for field in inputs:
        name = field.get_attribute("id")
        assert name, f"an <input> without an id on {browser.path}: {field.get_attribute('outerHTML')}"
        labels = browser.find_all(f"label[for='{name}']")
        assert len(labels) == 1, f"#{name} on {browser.path} has {len(labels)} labels"
        assert labels[0].text.strip(), f"the label of #{name} on {browser.path} is empty"
    assert len(browser.find_all("h1")) == 1
    assert browser.has("main#main")


def test_labels_language_and_keyboard(browser: Browser, server: Server) -> None:
    repo = f"{unique()}/a11y"
    with httpx.Client(base_url=server.url, timeout=60) as client:
        digest, _ = push_image(client, repo, "v1")

    for url in (f"{server.url}/ui/", page_of(server, repo), page_of(server, repo, digest), f"{server.url}/ui/login",
                f"{server.url}/ui/repo/{unique()}/missing"):
        browser.visit(url)
        assert_accessible(browser)

    # From the top of the page, Tab reaches the search box (after the Berth link), which shows
    # a visible focus ring.
    browser.visit(f"{server.url}/ui/")
    browser.find("body").send_keys(Keys.TAB)
    reached = [browser.driver.switch_to.active_element.get_attribute("id")]
    for _ in range(8):
        if reached[-1] == "q":
            break
        ActionChains(browser.driver).send_keys(Keys.TAB).perform()
        reached.append(browser.driver.switch_to.active_element.get_attribute("id"))
    assert reached[-1] == "q", f"Tab went through {reached} without reaching the search box"
    focused = browser.driver.switch_to.active_element
    assert browser.script("return getComputedStyle(arguments[0]).outlineStyle", focused) == "solid"
    # Typing and Enter from the keyboard alone search.
    browser.navigate(lambda: ActionChains(browser.driver).send_keys(repo, Keys.ENTER).perform())
    assert browser.texts("#repositories li a") == [repo]


# --- 7. a phone --------------------------------------------------------------------------------

def assert_no_horizontal_overflow(browser: Browser) -> None:
    widths = browser.script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert isinstance(widths, list)
    if widths[0] > widths[1] + 1:
        # Name the widest elements that reach past the window (not those inside a .scroll).
        culprits = browser.script("""
            const seen = [];
            for (const element of document.querySelectorAll('body *')) {
              if (element.closest('.scroll')) continue;
              const box = element.getBoundingClientRect();
              if (box.right > window.innerWidth + 1) {
                seen.push(`${element.tagName.toLowerCase()}${element.id ? '#' + element.id : ''}`
                          + `${element.className ? '.' + element.className : ''} right=${Math.round(box.right)}`
                          + ` "${element.textContent.trim().slice(0, 60)}"`);
              }
            }
            return seen.slice(-6);""")
        pytest.fail(f"{browser.path} is {widths[0]} px wide in a {widths[1]} px window; past its edge: {culprits}")


@contextmanager
def phone(browser: Browser) -> Iterator[None]:
    """A phone's window (390 x 844 CSS px) for the `with` block, then the desktop one again."""
    browser.driver.set_window_size(390, 844)
    try:
        assert browser.script("return window.innerWidth") <= 390
        yield
    finally:
        browser.driver.set_window_size(1280, 900)


def test_narrow_window_scrolls_tables_not_the_page(browser: Browser, server: Server, skopeo: str,
                                                   tmp_path: Path) -> None:
    repo = f"{unique()}/phone"
    long_tag = "2024.06.01-build.1234-linux-amd64"
    image_digest = image_layout(tmp_path / "src", "v1")
    skopeo_copy(skopeo, f"oci:{tmp_path / 'src'}:v1", f"docker://{server.host}/{repo}:{long_tag}",
                "--preserve-digests")

    with phone(browser):
        browser.visit(page_of(server, repo))
        table = browser.find("#tags")
        container = browser.script("return arguments[0].parentElement", table)
        assert isinstance(container, WebElement)
        assert "scroll" in (container.get_attribute("class") or "").split()
        assert browser.script("return getComputedStyle(arguments[0]).overflowX", container) in ("auto", "scroll")
        # Seven columns do not fit a phone: the container scrolls sideways, the page does not.
        scroll_width, client_width = browser.script(
            "return [arguments[0].scrollWidth, arguments[0].clientWidth]", container)
        assert scroll_width > client_width
        browser.script("arguments[0].scrollLeft = 80", container)
        assert browser.script("return arguments[0].scrollLeft", container) > 0
        assert_no_horizontal_overflow(browser)

        for url in (f"{server.url}/ui/", page_of(server, repo, image_digest), f"{server.url}/ui/login"):
            browser.visit(url)
            assert_no_horizontal_overflow(browser)
        browser.visit(page_of(server, repo, image_digest))
        assert browser.find("#layers").find_element(By.XPATH, "..").get_attribute("class") == "scroll"


# --- 8. signing in with a scoped token ----------------------------------------------------------

def push_to_auth_server(skopeo: str, auth_server: Server, layout: Path, repo: str, tag: str) -> None:
    skopeo_copy(skopeo, f"oci:{layout}:v1", f"docker://{auth_server.host}/{repo}:{tag}", "--preserve-digests",
                "--dest-creds", f"{ADMIN_USER}:{ADMIN_PASSWORD}")


def test_token_sign_in_shows_only_what_the_token_may_pull(browser: Browser, auth_server: Server, azurite: Azurite,
                                                          skopeo: str, tmp_path: Path) -> None:
    prefix = unique()
    readable, other = f"{prefix}/readable", f"{prefix}/other"
    secret_tag = f"secret-{uuid.uuid4().hex[:8]}"
    image_layout(tmp_path / "a", "v1")
    other_digest = image_layout(tmp_path / "b", "v1")
    push_to_auth_server(skopeo, auth_server, tmp_path / "a", readable, "v1")
    push_to_auth_server(skopeo, auth_server, tmp_path / "b", other, secret_tag)
    name = f"ui-{uuid.uuid4().hex[:8]}"
    password = create_scoped_token(azurite, name, f"{readable}=content/read")

    browser.visit(f"{auth_server.url}/ui/login")
    browser.driver.delete_all_cookies()

    # Not signed in: the login page.
    browser.visit(f"{auth_server.url}/ui/")
    assert browser.path == "/ui/login"
    assert browser.has("#username") and browser.has("#password")
    assert not browser.has("#signed-in-as")

    # Wrong credentials: an error, still the login page, no cookie.
    browser.sign_in(f"nobody-{uuid.uuid4().hex[:8]}", "not-the-password")
    assert browser.path == "/ui/login"
    assert browser.text("#login-error") == "Those credentials were not accepted."
    assert not browser.has("#signed-in-as")
    assert browser.driver.get_cookies() == []

    # The token's name and password: signed in, as the token.
    browser.sign_in(name, password)
    assert browser.path == "/ui/"
    assert browser.text("#signed-in-as") == name
    cookies = {cookie["name"]: cookie for cookie in browser.driver.get_cookies()}
    assert set(cookies) == {"berth_ui"}
    assert cookies["berth_ui"]["httpOnly"] is True
    assert cookies["berth_ui"]["sameSite"] == "Strict"
    assert cookies["berth_ui"]["path"] == "/ui"

    # Only what the token may pull is listed.
    listed = browser.texts("#repositories li a")
    assert readable in listed
    assert other not in listed
    assert other not in browser.source
    browser.visit(f"{auth_server.url}/ui/?q={prefix}/")
    assert browser.texts("#repositories li a") == [readable]
    browser.follow(browser.find("#repositories li a"))
    assert [row[0] for row in browser.rows("#tags")] == ["v1"]

    # The other repository's pages, asked for directly: the error page, and nothing of it.
    for url in (page_of(auth_server, other), page_of(auth_server, other, other_digest),
                f"{page_of(auth_server, other)}?last=a"):
        browser.visit(url)
        assert browser.has("#error-message"), url
        assert not browser.has("#tags") and not browser.has("#digest")
        source = browser.source
        assert secret_tag not in source, url
        assert other_digest not in source and short(other_digest) not in source, url
        assert browser.text("#signed-in-as") == name

    # Sign out: the login page, and /ui/ asks to sign in again.
    browser.visit(f"{auth_server.url}/ui/")
    browser.follow(browser.find("header form[action='/ui/logout'] button"))
    assert browser.path == "/ui/login"
    assert not browser.has("#signed-in-as")
    assert browser.driver.get_cookies() == []
    browser.visit(f"{auth_server.url}/ui/")
    assert browser.path == "/ui/login"
    browser.visit(page_of(auth_server, readable))
    assert browser.path == "/ui/login"


# --- beyond the brief: what a reader of the page expects ----------------------------------------

def test_sign_in_returns_to_the_page_asked_for(browser: Browser, auth_server: Server, azurite: Azurite,
                                               skopeo: str, tmp_path: Path) -> None:
    """A link to a repository's page, opened signed out, lands there after signing in: the
    redirect to the login page names it in `next`, the form carries it, the sign-in honours it."""
    repo = f"{unique()}/linked"
    image_layout(tmp_path / "src", "v1")
    push_to_auth_server(skopeo, auth_server, tmp_path / "src", repo, "v1")
    name = f"ui-{uuid.uuid4().hex[:8]}"
    password = create_scoped_token(azurite, name, f"{repo}=content/read")

    browser.visit(f"{auth_server.url}/ui/login")
    browser.driver.delete_all_cookies()
    browser.visit(page_of(auth_server, repo))
    assert browser.path == "/ui/login"
    assert urlsplit(browser.driver.current_url).query == f"next={quote(f'/ui/repo/{repo}', safe='')}"
    carried = browser.find("form.login input[name=next]").get_attribute("value")
    assert carried == f"/ui/repo/{repo}", f"the login form sends next={carried!r}, not the page asked for"
    browser.sign_in(name, password)
    try:
        assert browser.text("#signed-in-as") == name
        assert browser.path == f"/ui/repo/{repo}"
    finally:
        if browser.has("header form[action='/ui/logout'] button"):
            browser.follow(browser.find("header form[action='/ui/logout'] button"))


def test_pull_commands_name_the_same_client(browser: Browser, server: Server) -> None:
    """The repository page's two pull commands (by tag, by digest) and the manifest page's one
    are all the same `docker pull`, so they can be copied into the same shell."""
    repo = f"{unique()}/pull"
    with httpx.Client(base_url=server.url, timeout=60) as client:
        digest, _ = push_image(client, repo, "v1")
    browser.visit(page_of(server, repo))
    assert browser.value("#pull-tag") == f"docker pull {server.host}/{repo}:v1"
    assert browser.value("#pull-digest") == f"docker pull {server.host}/{repo}@{digest}"
    browser.visit(page_of(server, repo, digest))
    assert browser.value("#pull-digest") == f"docker pull {server.host}/{repo}@{digest}"


def test_narrow_window_fits_a_signed_images_page(browser: Browser, server: Server, skopeo: str,
                                                 workdir: Path) -> None:
    """A phone shows the page of an image cosign signed (artifactType
    application/vnd.dev.cosign.artifact.sig.v1+json, the commonest referrer) without sideways
    scrolling of the whole page."""
    repo = f"{unique()}/phone-signed"
    image_digest = image_layout(workdir / "src", "v1")
    skopeo_copy(skopeo, f"oci:{workdir / 'src'}:v1", f"docker://{server.host}/{repo}:v1", "--preserve-digests")
    _, image_body = manifest(server, repo, "v1")
    signature = oras_push_referrer(server, repo, "signature", image_digest, len(image_body), COSIGN_SIGNATURE,
                                   "signature.sig", "not really a signature")
    with phone(browser):
        browser.visit(page_of(server, repo, image_digest))
        assert browser.texts("#referrers a.referrer") == [short(signature)]
        assert_no_horizontal_overflow(browser)
