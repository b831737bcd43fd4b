"""The web console in a real browser: headless Chromium (the system's) driven by Playwright, against a
real ``ward gateway`` process (the one ``ward up`` runs, here in front of the fake worker) and the real
test OpenID provider.

One gateway, one provider and one browser for the module; each flow has its own browser context (its
own cookies). Without Chromium or Playwright the module fails in CI (``CI`` set) and is skipped, with
the reason, elsewhere; ``./ward.sh test`` installs both.

``WARD_CONSOLE_SCREENSHOTS=DIR`` saves the main pages as PNG files in DIR (docs/ keeps them).
"""
from __future__ import annotations

import os
import pathlib
import shutil

import httpx
import pytest
from e2e_support import ProcessStack, clean_env, free_port
from oidc_provider.provider import OIDCProvider, User, WebClient, new_signing_key

AUDIENCE = "https://ward.test/v1"
ADMIN_KEY = "console-platform-admin-key-0123456789"
CLIENT_ID, CLIENT_SECRET = "ward-console", "console-secret-0123456789"
MODEL = "fake-chat"
USERS = [
    User("dr.admin", {"ward_team": "platform", "ward_roles": ["platform_admin"]}),
    User("compliance", {"ward_team": "platform", "ward_roles": ["auditor"]}),
    User("dr.both", {"ward_team": ["platform", "cardiology"], "ward_roles": ["team_admin"]}),
]
AXE = pathlib.Path(__file__).resolve().parent / "browser_tools" / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = os.environ.get("WARD_CONSOLE_SCREENSHOTS")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI runs the browser tests; ./ward.sh test installs what they need)")
    pytest.skip(reason)


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    _unavailable("Chromium is not installed (apt-get install chromium)")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("console-browser")
    procs = ProcessStack(workdir)
    idp = None
    try:
        worker = procs.start_fake_worker("fake-chat", MODEL)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        idp = OIDCProvider(workdir, AUDIENCE, [], [new_signing_key("k1")],
                           web_clients=[WebClient(CLIENT_ID, CLIENT_SECRET, [f"{url}/console/oidc/callback"])],
                           users=USERS).start()
        env = clean_env(WARD_AUTH__ADMIN_KEY=ADMIN_KEY, WARD_OIDC_ISSUER=idp.issuer, WARD_OIDC_AUDIENCE=AUDIENCE,
                        WARD_OIDC_TEAM_CLAIM="ward_team", WARD_OIDC_ROLES_CLAIM="ward_roles",
                        WARD_OIDC_CLIENT_ID=CLIENT_ID, WARD_OIDC_CLIENT_SECRET=CLIENT_SECRET)
        config = {"auth": {"api_key_cache_ttl_s": 0, "oidc": {"scopes": ["inference"]}}}
        procs.start_gateway({MODEL: [worker.address]}, config=config, env=env, port=port)
        yield {"url": url, "idp": idp}
    finally:
        procs.close()
        if idp is not None:
            idp.stop()


def shot(page, name: str) -> None:
    if SHOTS:
        directory = pathlib.Path(SHOTS)
        directory.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(directory / f"console-{name}.png"), full_page=True)


def sign_in_with_provider(page, stack, login: str) -> None:
    page.goto(stack["url"] + "/console")
    page.get_by_role("heading", name="Sign in").wait_for()
    assert not page.get_by_role("button", name="Sign out").is_visible()
    assert not page.get_by_role("navigation").is_visible()
    shot(page, "sign-in")
    page.get_by_role("link", name="Sign in with the hospital's account").click()
    page.locator("input[name=login]").fill(login)
    page.locator("input[name=password]").fill("any password")
    page.locator("button[type=submit]").click()
    page.get_by_role("button", name="Continue").click()  # the provider's consent page
    page.wait_for_url(stack["url"] + "/console")
    page.get_by_text(f"{login} · team ").wait_for()


def test_an_admin_signs_in_with_sso_makes_a_team_key_and_quota_and_sees_usage(browser, stack):
    from playwright.sync_api import expect

    context = browser.new_context()
    page = context.new_page()
    sign_in_with_provider(page, stack, "dr.admin")
    expect(page.get_by_role("heading", name="Teams and keys")).to_be_visible()
    shot(page, "teams")
    page.get_by_label("Team name").fill("radiology")
    page.get_by_label("Display name").fill("Radiology")
    page.get_by_role("button", name="Create team").click()
    expect(page.get_by_role("status")).to_have_text("Team radiology created.")
    expect(page.get_by_role("heading", name="Team radiology")).to_be_focused()
    page.get_by_label("Description").fill("PACS assistant")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_label("The new API key")
    expect(secret).to_be_focused()
    key = secret.inner_text()
    assert key.startswith("ward-")
    page.get_by_label("Requests per minute").fill("120")
    page.get_by_role("button", name="Save quotas").click()
    expect(page.get_by_role("status")).to_have_text("Quotas of radiology saved.")
    shot(page, "team")
    with httpx.Client(base_url=stack["url"], timeout=30) as http:
        quotas = http.get("/admin/teams/radiology/quotas", headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()
        assert quotas["limits"]["requests_per_minute"] == 120
        body = {"model": MODEL, "messages": [{"role": "user", "content": "handover"}], "max_tokens": 4}
        for _ in range(3):
            assert http.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}).status_code == 200
    page.get_by_role("button", name="Usage").click()
    page.get_by_label("Team", exact=True).select_option("radiology")
    page.get_by_role("button", name="Show usage").click()
    expect(page.get_by_role("img", name="Requests: 3 in total, at most 3 in one period")).to_be_visible()
    expect(page.get_by_role("cell", name=f"radiology / {MODEL}")).to_be_visible()
    shot(page, "usage")
    page.get_by_role("button", name="Models and workers").click()
    expect(page.get_by_role("cell", name="ready", exact=True)).to_be_visible()
    shot(page, "models")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
    expect(page.get_by_role("heading", name="Teams and keys")).to_be_hidden()
    assert page.evaluate("fetch('/admin/teams').then(r => r.status)") == 401
    context.close()


def test_an_auditor_searches_opens_verifies_and_sees_no_admin_views(browser, stack):
    from playwright.sync_api import expect

    context = browser.new_context()
    page = context.new_page()
    sign_in_with_provider(page, stack, "compliance")
    nav = page.get_by_role("navigation", name="Console sections")
    expect(nav.get_by_role("button")).to_have_count(1)  # the audit log, nothing an auditor may not do
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    page.get_by_label("Team", exact=True).fill("radiology")
    page.get_by_label("Kind").select_option("request")
    page.get_by_role("button", name="Search").click()
    first = page.get_by_role("button", name="Open record").first
    expect(first).to_be_visible()
    first.click()
    expect(page.get_by_role("table", name="Position in the chain")).to_be_visible()
    page.get_by_role("button", name="Verify the log now").click()
    expect(page.locator("#verification-result")).to_contain_text("Intact:")
    shot(page, "audit")
    assert page.evaluate("fetch('/admin/teams').then(r => r.status)") == 403  # refused by the API too
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    context.close()


def test_csrf_and_the_content_security_policy_hold_in_the_browser(browser, stack):
    context = browser.new_context()
    page = context.new_page()
    page.goto(stack["url"] + "/console")
    page.get_by_label("API key").fill(ADMIN_KEY)
    page.get_by_role("button", name="Sign in with the key").click()
    page.get_by_role("heading", name="Teams and keys").wait_for()
    # the page's own origin, but without the session's token: refused
    status = page.evaluate("""fetch('/admin/teams', {method: 'POST', headers: {'content-type': 'application/json'},
                                                      body: JSON.stringify({name: 'forged'})}).then(r => r.status)""")
    assert status == 403
    # an injected inline script does not run
    ran = page.evaluate("""new Promise((resolve) => {
        document.addEventListener('securitypolicyviolation', () => resolve(window.injected === true));
        const s = document.createElement('script'); s.textContent = 'window.injected = true'; document.body.append(s);
    })""")
    assert ran is False
    # another site's form posting to the gateway: the cookie stays home, nothing is created
    other = context.new_page()
    other.route("http://other.test/**", lambda route: route.fulfill(content_type="text/html", body=(
        f"<form id=f method=post action='{stack['url']}/admin/teams' enctype='text/plain'>"
        "<input name='{\"name\":\"forged\",\"x\":\"' value='\"}'></form>"
        "<script>document.getElementById('f').submit()</script>")))
    with other.expect_response(f"{stack['url']}/admin/teams") as answer:
        other.goto("http://other.test/")
    assert answer.value.status in (401, 403)
    names = page.evaluate("fetch('/admin/teams').then(r => r.json()).then(b => b.data.map(t => t.name))")
    assert "forged" not in names
    context.close()


def test_keyboard_only_sign_in_and_labelled_controls(browser, stack):
    from playwright.sync_api import expect

    context = browser.new_context(bypass_csp=AXE.exists())  # bypassed only to inject the checker
    page = context.new_page()
    page.goto(stack["url"] + "/console")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    for _ in range(3):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "api-key":
            break
    assert page.evaluate("document.activeElement.id") == "api-key"
    page.keyboard.type(ADMIN_KEY)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Teams and keys")).to_be_focused()
    page.get_by_role("button", name="Usage").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Usage")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_label("Team", exact=True)).to_be_focused()
    unlabeled = page.evaluate("""[...document.querySelectorAll('input, select, button')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
        .map(e => e.outerHTML)""")
    assert unlabeled == []
    if not AXE.exists():
        _unavailable(f"axe-core is not installed ({AXE.parent.parent.parent}: npm install)")
    page.add_script_tag(path=str(AXE))
    for view in ("Teams and keys", "Usage", "Models and workers", "Audit log"):
        page.get_by_role("button", name=view, exact=True).click()
        page.get_by_role("heading", name=view, exact=True).wait_for()
        violations = page.evaluate("""axe.run(document, {runOnly: ['wcag2a', 'wcag2aa']})
            .then(r => r.violations.map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', ')))""")
        assert violations == [], view
    context.close()


def test_a_person_in_two_teams_works_as_one_and_switches(browser, stack):
    from playwright.sync_api import expect

    with httpx.Client(base_url=stack["url"], timeout=30) as http:
        made = http.post("/admin/teams", json={"name": "cardiology"}, headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert made.status_code in (201, 409)
    context = browser.new_context()
    page = context.new_page()
    sign_in_with_provider(page, stack, "dr.both")
    choice = page.get_by_label("Working as team")
    expect(choice).to_have_value("cardiology")  # the first of the token's teams
    expect(page.get_by_role("button", name="Manage team cardiology")).to_be_visible()
    expect(page.get_by_role("button", name="Manage team platform")).to_have_count(0)
    choice.select_option("platform")
    expect(page.get_by_role("status")).to_have_text("Working as team platform.")
    expect(page.get_by_role("button", name="Manage team platform")).to_be_visible()
    expect(page.get_by_role("button", name="Manage team cardiology")).to_have_count(0)
    context.close()
