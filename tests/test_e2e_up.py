"""``ward up`` as a user runs it: one command, a URL and keys printed, the openai client served with
quotas and the audit log on, and a clean stop on SIGINT or SIGTERM; a worker killed with SIGKILL is
restarted while the other model keeps serving, until the crash-loop limit; a worker that cannot start
at all ends ``ward up`` with exit 1."""
from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
from e2e_support import EMBED_MODEL, GENERATE_MODEL, ROOT, clean_env, free_port, wait_until

from gateway.auth.principal import Role
from gateway.auth.stores import KeyStore, TeamStore
from gateway.db import create_db_engine, upgrade_to_head
from ward.up_keys import DEFAULT_TEAM, KeySetupError, ensure_local_keys, store_given_key

KEY_LINE = re.compile(r"^API key \(team default, role user\): (ward-\S+)$", re.M)
ADMIN_LINE = re.compile(r"^Platform admin key: (ward-\S+)$", re.M)


class WardUp:
    """``ward up`` in a subprocess, its output in a file."""

    def __init__(self, data_dir: pathlib.Path, *args: str) -> None:
        from worker.model.registry import resolve_model

        self.port = free_port()
        self.output = data_dir.parent / f"ward-up-{self.port}.out"
        argv = [sys.executable, "-m", "ward", "up", "--data-dir", str(data_dir), "--port", str(self.port),
                # the converted default model, so the data directory need not convert it again
                "--model", resolve_model(GENERATE_MODEL), *args]
        with open(self.output, "w") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=clean_env(), cwd=ROOT)

    def text(self) -> str:
        return self.output.read_text()

    def wait_up(self, timeout_s: float = 180) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "Press Ctrl-C to stop." in self.text():
                return self.text()
            assert self.process.poll() is None, self.text()
            time.sleep(0.2)
        raise AssertionError("ward up was not ready in time:\n" + self.text())

    def children(self) -> list[int]:
        """Pids of the processes ``ward up`` started (by parent pid, from /proc)."""
        found = []
        for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                found.append(int(stat.parent.name))
        return found

    def worker_pid(self, task: str) -> int | None:
        """The pid of the running worker of ``task`` (generate or embed), if there is one."""
        for pid in self.children():
            try:
                argv = pathlib.Path(f"/proc/{pid}/cmdline").read_text().split("\0")
            except OSError:
                continue
            if "worker" in argv and f"{task}" in argv and alive(pid):
                return pid
        return None

    def lines(self, containing: str) -> list[str]:
        return [line for line in self.text().splitlines() if containing in line]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def console_in_a_browser(base: str, admin_key: str) -> None:
    """The web console of a running ``ward up`` in headless Chromium: the printed admin key signs in,
    makes a team, a key and its quota; the key is served by the real model, and its request shows in
    the usage chart; sign-out ends the session."""
    from test_console_browser import chromium_path

    executable = chromium_path()
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        page = browser.new_page()
        page.goto(base + "/console")
        page.get_by_label("API key").fill(admin_key)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Teams and keys")).to_be_visible()
        page.get_by_label("Team name").fill("oncology")
        page.get_by_role("button", name="Create team").click()
        expect(page.get_by_role("status")).to_have_text("Team oncology created.")
        page.get_by_role("button", name="Create key").click()
        key = page.get_by_label("The new API key").inner_text()
        page.get_by_label("Requests per minute").fill("60")
        page.get_by_role("button", name="Save quotas").click()
        expect(page.get_by_role("status")).to_have_text("Quotas of oncology saved.")
        with openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120) as client:
            raw = client.chat.completions.with_raw_response.create(
                model=GENERATE_MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
        assert raw.headers["x-ratelimit-limit-requests"] == "60"
        page.get_by_role("button", name="Usage").click()
        page.get_by_label("Team", exact=True).select_option("oncology")
        page.get_by_role("button", name="Show usage").click()
        expect(page.get_by_role("img", name="Requests: 1 in total, at most 1 in one period")).to_be_visible()
        expect(page.get_by_role("cell", name=f"oncology / {GENERATE_MODEL}")).to_be_visible()
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert page.evaluate("fetch('/admin/teams').then(r => r.status)") == 401
        browser.close()


def client_for(up: WardUp, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{up.port}/v1", api_key=key, max_retries=0, timeout=120)


def test_ward_up_serves_the_openai_client_with_the_printed_key_and_stops_cleanly_on_sigint(tmp_path):
    up = WardUp(tmp_path / "data")
    try:
        banner = up.wait_up()
        assert f"Ward is up: http://127.0.0.1:{up.port}/v1" in banner
        key, admin_key = KEY_LINE.search(banner).group(1), ADMIN_LINE.search(banner).group(1)
        children = up.children()
        assert len(children) == 3  # two workers and the gateway
        with client_for(up, key) as client:
            assert {m.id for m in client.models.list()} == {GENERATE_MODEL, EMBED_MODEL}
            answer = client.chat.completions.create(model=GENERATE_MODEL, max_tokens=4,
                                                    messages=[{"role": "user", "content": "Hello"}])
            assert answer.choices[0].message.content and answer.usage.completion_tokens <= 4
            assert len(client.embeddings.create(model=EMBED_MODEL, input="hello").data[0].embedding) == 384
        admin = {"authorization": f"Bearer {admin_key}"}
        teams = httpx.get(f"http://127.0.0.1:{up.port}/admin/teams", headers=admin)
        assert teams.status_code == 200 and {t["name"] for t in teams.json()["data"]} == {"default", "platform"}
        # Quotas are on: a limit set by the platform admin is in force on the next request.
        limit = httpx.put(f"http://127.0.0.1:{up.port}/admin/teams/default/quotas", headers=admin,
                          json={"requests_per_minute": 1000})
        assert limit.status_code == 200 and limit.json()["source"] == "admin"
        with client_for(up, key) as client:
            raw = client.chat.completions.with_raw_response.create(model=GENERATE_MODEL, max_tokens=1,
                                                                   messages=[{"role": "user", "content": "Hi"}])
        assert raw.headers["x-ratelimit-limit-requests"] == "1000"
        # The web console is served, and the printed admin key signs in to it.
        base = f"http://127.0.0.1:{up.port}"
        assert f"Console: {base}/console" in banner
        with httpx.Client(base_url=base, headers={"origin": base}, timeout=30) as browser:
            page = browser.get("/console")
            assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
            assert "platform_admin" in browser.post("/console/session", json={"api_key": admin_key}).json()["roles"]
            assert browser.get("/admin/teams").status_code == 200
        console_in_a_browser(base, admin_key)

        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(60) == 0
        assert not [pid for pid in children if alive(pid)]
        assert "ward up: stopping" in up.text()
    finally:
        up.kill()
    # The audit log was on: one record per request served, the quota change recorded, the chain intact.
    records = _audit_records(tmp_path / "data")
    served = [(r["endpoint"], r["http_status"]) for r in records if r["kind"] == "request"]
    served = [s for s in served if s != ("unmatched", 404)]  # the browser asks for /favicon.ico by itself
    assert sorted(served) == sorted([
        ("/v1/models", 200), ("/v1/chat/completions", 200), ("/v1/embeddings", 200), ("/v1/chat/completions", 200),
        ("/v1/chat/completions", 200), ("/admin/teams", 401)])  # the last two: the console's key, after sign-out
    actions = [r["data"]["action"] for r in records if r["kind"] == "admin"]
    assert actions[:2] == ["quota.set", "console.sign_in"]
    # the browser's session: signed in, a team, a key and a quota made, signed out, in that order
    browser_actions = [a for a in actions[2:] if a in ("console.sign_in", "team.create", "key.create", "quota.set",
                                                        "console.sign_out")]
    assert browser_actions == ["console.sign_in", "team.create", "key.create", "quota.set", "console.sign_out"], actions
    assert (tmp_path / "data" / "quotas.yaml").exists() and (tmp_path / "data" / "quota" / "overrides.json").exists()
    verify = subprocess.run([sys.executable, "-m", "ward", "audit", "verify", "--data-dir", str(tmp_path / "data")],
                            capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _audit_records(data_dir: pathlib.Path) -> list[dict]:
    from gateway.audit.reader import AuditReader, ReadScope, RecordFilter
    from gateway.audit.service import create_audit_engine

    engine = create_audit_engine(f"sqlite:///{data_dir / 'ward.db'}")
    try:
        scope = ReadScope(teams=None, content=True, kinds=None)
        return list(AuditReader(engine).iter_records(RecordFilter(), scope, through_seq=10**12))
    finally:
        engine.dispose()


def test_a_restarted_ward_up_keeps_its_keys_and_sigterm_while_a_worker_restarts_stops_everything(tmp_path):
    data = tmp_path / "data"
    engine = _database(data)
    earlier = ensure_local_keys(engine)  # what an earlier start made and printed
    given = _ward_key(engine)
    engine.dispose()
    _limit_set_by_an_earlier_start(data, requests_per_minute=500)
    up = WardUp(data, "--api-key", given)
    try:
        banner = up.wait_up()
        assert KEY_LINE.search(banner).group(1) == given
        assert "Platform admin key: shown on the first start only" in banner
        for key in (given, earlier.user_key):
            with client_for(up, key) as client:
                raw = client.chat.completions.with_raw_response.create(model=GENERATE_MODEL, max_tokens=1,
                                                                       messages=[{"role": "user", "content": "Hi"}])
                assert raw.parse().choices
                assert raw.headers["x-ratelimit-limit-requests"] == "500"  # admin-set limits survive restarts
        # A worker stopped behind ward up's back (SIGTERM: it drains and exits 0) is restarted after
        # the backoff; a SIGTERM to ward up meanwhile still stops everything and exits 0.
        os.kill(up.worker_pid("embed"), signal.SIGTERM)
        assert wait_until(lambda: up.lines("ward up: worker-embed exited (exit status 0)"), 30)
        assert up.lines("; restart 1 in 1.0 s (crash 1 of 5 allowed in 300 s; log: ")
        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(60) == 0
        assert "ward up: stopping" in up.text()
        assert wait_until(lambda: not processes_of(data), 5), processes_of(data)
    finally:
        up.kill()


@pytest.mark.slow
def test_a_killed_generation_worker_is_restarted_while_embeddings_serve_and_a_crash_loop_is_given_up(tmp_path):
    data = tmp_path / "data"
    up = WardUp(data, "--restart-limit", "2")
    base = f"http://127.0.0.1:{up.port}"
    try:
        key = KEY_LINE.search(up.wait_up()).group(1)
        address = _routes(data)[GENERATE_MODEL]
        first = up.worker_pid("generate")
        with client_for(up, key) as client:
            os.kill(first, signal.SIGKILL)
            # While it is down: its model is 503 with Retry-After, embeddings serve, /readyz stays 200.
            assert wait_until(lambda: not _model_ready(base, GENERATE_MODEL), 10)
            _assert_refused_with_retry_after(client)
            assert len(client.embeddings.create(model=EMBED_MODEL, input="during the outage").data[0].embedding) == 384
            readyz = httpx.get(f"{base}/readyz")
            assert readyz.status_code == 200
            assert {name: m["ready"] for name, m in readyz.json()["models"].items()} == {
                GENERATE_MODEL: False, EMBED_MODEL: True}  # still down: the embedding was served meanwhile
            # It comes back by itself, on the same port, and serves again.
            assert wait_until(lambda: _model_ready(base, GENERATE_MODEL), 180, 0.2), up.text()
            answer = client.chat.completions.create(model=GENERATE_MODEL, max_tokens=2,
                                                    messages=[{"role": "user", "content": "Hello again"}])
            assert answer.choices[0].message.content is not None
        second = up.worker_pid("generate")
        assert second not in (None, first)
        crash, = up.lines("ward up: worker-generate exited")
        assert crash.startswith("ward up: worker-generate exited (killed by SIGKILL) after ")
        assert "; restart 1 in 1.0 s (crash 1 of 2 allowed in 300 s; log: " in crash
        assert up.lines(f"ward up: worker-generate is serving again on port {address.rsplit(':', 1)[1]} (restart 1")
        metrics = httpx.get(f"{base}/metrics").text
        assert f'ward_gateway_worker_restarts_total{{model_name="{GENERATE_MODEL}",worker="{address}"}} 1.0' in metrics
        assert f'ward_gateway_worker_restarts_total{{model_name="{EMBED_MODEL}",' in metrics

        # A second crash within the window reaches the limit of 2: one clear line, no more restarts,
        # and ward up keeps serving the other model.
        os.kill(second, signal.SIGKILL)
        assert wait_until(lambda: up.lines("ward up: giving up on worker-generate"), 30), up.text()
        log_path = (data / "logs" / "worker-generate.log").resolve()
        given_up = (f"ward up: giving up on worker-generate (model {GENERATE_MODEL}) after 2 crashes in 300 s; "
                    f"last exit: killed by SIGKILL; log: {log_path}")
        assert up.lines("ward up: giving up") == [given_up]
        assert up.lines(f"ward up: {GENERATE_MODEL} stays down (its requests get 503) until ward up is restarted; "
                        f"still serving {EMBED_MODEL}")
        assert "--- ward up: restart 1 at " in log_path.read_text()  # the crashed run's output is kept
        time.sleep(1.5)  # longer than the first backoff: nothing restarts it
        assert up.process.poll() is None and up.worker_pid("generate") is None
        with client_for(up, key) as client:
            _assert_refused_with_retry_after(client)
            assert len(client.embeddings.create(model=EMBED_MODEL, input="after").data[0].embedding) == 384
            assert {m.id: m.model_extra["ready"] for m in client.models.list()} == {
                GENERATE_MODEL: False, EMBED_MODEL: True}
        assert httpx.get(f"{base}/readyz").status_code == 200

        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(60) == 0
        assert wait_until(lambda: not processes_of(data), 5), processes_of(data)
    finally:
        up.kill()


@pytest.mark.slow
def test_ward_up_exits_1_when_no_worker_is_left(tmp_path):
    data = tmp_path / "data"
    up = WardUp(data, "--restart-limit", "1")  # never restart
    try:
        up.wait_up()
        os.kill(up.worker_pid("generate"), signal.SIGKILL)
        assert wait_until(lambda: up.lines("ward up: giving up on worker-generate"), 30)
        assert up.process.poll() is None  # the embedding model still serves
        os.kill(up.worker_pid("embed"), signal.SIGKILL)
        assert up.process.wait(60) == 1
        assert up.lines("ward up: giving up on worker-embed (model all-minilm-l6-v2) after 1 crash in 300 s")
        assert up.lines("ward up: no worker left to serve")
        assert not up.lines(f"ward up: {EMBED_MODEL} stays down")
        assert not up.lines("restart 1 in")
        assert wait_until(lambda: not processes_of(data), 5), processes_of(data)
    finally:
        up.kill()


def test_a_worker_that_cannot_start_ends_ward_up_with_exit_1_and_its_log_without_retrying(tmp_path):
    data = tmp_path / "data"
    argv = [sys.executable, "-m", "ward", "up", "--data-dir", str(data), "--port", str(free_port()),
            "--model", str(tmp_path / "no-such-model")]
    done = subprocess.run(argv, capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=300, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ward up: worker-generate exited (exit status 1) before it was ready (log: " in done.stderr
    assert "no-such-model" in done.stderr  # the end of its log says why
    assert "restart 1 in" not in done.stderr and "Ward is up" not in done.stdout
    assert not processes_of(data)


def _routes(data_dir: pathlib.Path) -> dict[str, str]:
    """Model -> worker address, from the gateway configuration ``ward up`` wrote."""
    import yaml

    config = yaml.safe_load((data_dir / "run" / "gateway.yaml").read_text())
    return {model: route["workers"][0] for model, route in config["models"].items()}


def _model_ready(base: str, model: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=5).json()["models"][model]["ready"]
    except (httpx.HTTPError, ValueError):
        return False


def _assert_refused_with_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model=GENERATE_MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
    assert refused.value.status_code == 503 and refused.value.code == "no_ready_worker"
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert refused.value.body["type"] == "server_error" and "retry" in refused.value.body["message"]


def processes_of(data_dir: pathlib.Path) -> list[int]:
    """Live processes started for this data directory (``ward up`` gives its children WARD_DATA_DIR)."""
    marker = f"WARD_DATA_DIR={data_dir.resolve()}".encode()
    found = []
    for environ in pathlib.Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0") and alive(int(environ.parent.name)):
                found.append(int(environ.parent.name))
        except (OSError, ValueError):
            continue
    return found


def _limit_set_by_an_earlier_start(data_dir: pathlib.Path, requests_per_minute: int) -> None:
    """What PUT /admin/teams/default/quotas on an earlier ``ward up`` left in the data directory."""
    import asyncio

    from gateway.quota.limits import TEAM_SCOPE, QuotaLimits
    from gateway.quota.memory_store import InMemoryQuotaStore

    store = InMemoryQuotaStore(overrides_path=data_dir / "quota" / "overrides.json")
    asyncio.run(store.set_override(DEFAULT_TEAM, TEAM_SCOPE, QuotaLimits(requests_per_minute=requests_per_minute)))


def test_ward_up_refuses_bad_keys_and_a_busy_port_before_starting_anything(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port, free = str(busy.getsockname()[1]), str(free_port())
        for args, message in ((["--port", free, "--api-key", "sk-not-a-ward-key"], "--api-key must be a Ward key"),
                              (["--port", free, "--admin-key", "short"], "--admin-key must be at least 24 characters"),
                              (["--port", port], f"127.0.0.1:{port} is in use"),
                              (["--port", "99999"], "--port must be 1 up to 65535, got 99999"),
                              (["--port", free, "--host", "no-such-host.invalid"],
                               f"cannot bind no-such-host.invalid:{free}"),
                              (["--port", free, "--startup-timeout", "0"], "--startup-timeout must be positive"),
                              (["--port", free, "--tls-cert", str(tmp_path / "a-file"), "--tls-key",
                                str(tmp_path / "missing.key")],
                               f"cannot use --tls-cert {tmp_path / 'a-file'} with --tls-key {tmp_path / 'missing.key'}"),
                              (["--port", free, "--data-dir", str(tmp_path / "a-file")],
                               f"--data-dir {tmp_path / 'a-file'} is not a directory"),
                              # keys and prompts in the clear on the network: only with TLS, or said outright
                              (["--port", free, "--host", "0.0.0.0"], "refusing to serve plaintext on 0.0.0.0")):
            (tmp_path / "a-file").write_text("")
            done = subprocess.run([sys.executable, "-m", "ward", "up", "--data-dir", str(tmp_path), *args],
                                  capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=60)
            assert done.returncode == 2 and message in done.stderr, done.stderr
            assert "Traceback" not in done.stderr and "is in use" not in done.stderr.replace(message, "")
    assert not (tmp_path / "logs").exists()


# ---- the keys ward up hands out (database only, no processes) ---------------------------------------
def _database(directory: pathlib.Path):
    directory.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{directory / 'ward.db'}"
    upgrade_to_head(url)
    return create_db_engine(url)


def _ward_key(engine) -> str:
    """A well-formed key text that is not stored yet (made on a throwaway team, then that row removed)."""
    from sqlalchemy.orm import Session

    from gateway.db.models_identity import ApiKey

    TeamStore(engine).ensure("scratch")
    record, text = KeyStore(engine).create("scratch", Role.USER)
    with Session(engine) as session, session.begin():
        session.delete(session.get(ApiKey, record.id))
    return text


def test_local_keys_are_made_once_and_shown_once(tmp_path):
    engine = _database(tmp_path)
    first = ensure_local_keys(engine)
    assert first.user_key and first.admin_key
    again = ensure_local_keys(engine)
    assert again.user_key is None and again.admin_key is None
    active = KeyStore(engine).list(DEFAULT_TEAM, include_revoked=False)
    assert [(k.team, k.role) for k in active] == [(DEFAULT_TEAM, "user")]
    assert first.user_key.startswith(f"ward-{active[0].id}.")


def test_a_given_key_is_stored_once_and_must_not_clash(tmp_path):
    engine = _database(tmp_path)
    given = _ward_key(engine)
    assert ensure_local_keys(engine, user_key=given, admin_key="a" * 24).user_key == given
    assert ensure_local_keys(engine, user_key=given).user_key == given  # idempotent on restart
    key_id = given.split(".")[0].removeprefix("ward-")
    assert KeyStore(engine).get(key_id).team == DEFAULT_TEAM
    forged = given[:-4] + ("AAAA" if not given.endswith("AAAA") else "BBBB")
    with pytest.raises(KeySetupError, match="another key"):
        store_given_key(engine, forged, DEFAULT_TEAM, Role.USER)
    with pytest.raises(KeySetupError, match="belongs to team"):
        store_given_key(engine, given, DEFAULT_TEAM, Role.AUDITOR)
    KeyStore(engine).revoke(key_id)
    with pytest.raises(KeySetupError, match="revoked"):
        store_given_key(engine, given, DEFAULT_TEAM, Role.USER)


def test_the_ready_line_of_a_model_whose_directory_name_holds_spaces_keeps_the_whole_name():
    """A worker names its model after its directory; ``My Model`` read as ``My`` gave the gateway a
    route the worker refuses, and ward up waited for readiness until its start-up timeout."""
    from ward.up import _ready_fields

    line = "WARD_WORKER_READY port=44687 model=My Model task=generate"
    assert _ready_fields(line) == {"port": "44687", "model": "My Model", "task": "generate"}
    assert _ready_fields("WARD_WORKER_READY port=1 model=m task=embed") == {"port": "1", "model": "m", "task": "embed"}
