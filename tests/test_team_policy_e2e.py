"""A team's scheduling policy end to end: set with `ward quotas` through a running gateway, audited, and
carried on every Generate the team sends (the client's priority only beside it, never instead)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from e2e_support import ProcessStack, clean_env, make_keys, wait_until

MODEL = "fake-chat"


@pytest.fixture
def stack(tmp_path):
    procs = ProcessStack(tmp_path)
    try:
        yield procs
    finally:
        procs.close()


def ward_quotas(*args: str, key: str, url: str) -> subprocess.CompletedProcess:
    env = clean_env(WARD_ADMIN_KEY=key)
    return subprocess.run([sys.executable, "-m", "ward", "quotas", *args, "--url", url], env=env,
                          capture_output=True, text=True, timeout=60)


def test_ward_quotas_sets_a_teams_class_and_weight_which_every_generate_of_the_team_carries(stack):
    worker = stack.start_fake_worker("fake", MODEL, "--log-requests")
    gateway = stack.start_gateway({MODEL: [worker.address]})
    keys = make_keys(gateway.database_url, {"admin": ("platform", "platform_admin"),
                                             "lead": ("radiology", "team_admin"), "user": ("radiology", "user")})

    done = ward_quotas("set", "radiology", "--priority", "-1", "--weight", "3", key=keys["admin"], url=gateway.url)
    assert done.returncode == 0, done.stderr
    assert "priority class -1, weight 3.0" in done.stdout
    refused = ward_quotas("set", "radiology", "--weight", "100", key=keys["lead"], url=gateway.url)
    assert refused.returncode == 1 and "403" in refused.stderr  # a team cannot raise its own share
    bad = ward_quotas("set", "radiology", "--weight", "0", key=keys["admin"], url=gateway.url)
    assert bad.returncode == 1
    shown = ward_quotas("show", "radiology", "--json", key=keys["admin"], url=gateway.url)
    assert json.loads(shown.stdout)["scheduling"] == {"priority": -1, "weight": 3.0}

    r = httpx.post(gateway.url + "/v1/chat/completions", timeout=30, headers={"Authorization": f"Bearer {keys['user']}"},
                   json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "priority": 7})
    assert r.status_code == 200, r.text
    log = worker.child.log_path
    assert wait_until(lambda: "GENERATE" in log.read_text(), 5)
    assert "GENERATE team=radiology team_priority=-1 team_weight=3 priority=7" in log.read_text()

    from sqlalchemy import create_engine, text

    engine = create_engine(gateway.database_url)
    with engine.connect() as conn:
        admin_entries = [json.loads(d) for (d,) in conn.execute(text("SELECT data FROM audit_entries WHERE kind = 'admin'"))]
    engine.dispose()
    weights = [e for e in admin_entries if '"weight": 3.0' in json.dumps(e)]
    assert weights, "the policy change must be in the audit log"
    verify = subprocess.run([sys.executable, "-m", "ward", "audit", "verify", "--data-dir", str(gateway.data_dir)],
                            env=clean_env(), capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert os.path.exists(gateway.data_dir / "ward.db")
