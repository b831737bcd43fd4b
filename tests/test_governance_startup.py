"""``ward gateway`` refuses to start on governance it cannot run: an unreadable quota file, an audit log
whose signing key is not on this host, a database it cannot reach. It says why, and never serves
without quotas or audit."""
from __future__ import annotations

import subprocess
import sys

import yaml
from e2e_support import ROOT, clean_env, free_port


def ward_gateway(tmp_path, config: dict, **env: str) -> subprocess.CompletedProcess:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"port": free_port(), "models": {"m": {"workers": ["127.0.0.1:1"]}}, **config}))
    argv = [sys.executable, "-m", "ward", "gateway", "--config", str(path), "--data-dir", str(tmp_path / "data")]
    return subprocess.run(argv, capture_output=True, text=True, env=clean_env(**env), cwd=ROOT, timeout=60)


def test_an_invalid_quota_file_stops_the_gateway_with_its_problems(tmp_path):
    quotas = tmp_path / "quotas.yaml"
    quotas.write_text("defaults: {requests_per_minut: 10}\n")
    done = ward_gateway(tmp_path, {"quota": {"config_file": str(quotas)}})
    assert done.returncode == 2, done.stderr
    assert "defaults.requests_per_minut: Extra inputs are not permitted" in done.stderr
    missing = ward_gateway(tmp_path, {"quota": {"config_file": str(tmp_path / "nowhere.yaml")}})
    assert missing.returncode == 2 and "cannot read the quota file" in missing.stderr


def test_an_audit_log_signed_with_a_key_this_host_lacks_stops_the_gateway(tmp_path):
    import asyncio

    from gateway.audit.records import Actor
    from gateway.audit.service import build_audit_services
    from gateway.audit.settings import AuditSettings

    async def one_entry() -> None:  # a log with history, whose key then goes missing
        data = tmp_path / "data"
        data.mkdir()
        services = build_audit_services(AuditSettings(database_url=f"sqlite:///{data / 'ward.db'}"), data)
        await services.log.start()
        await services.log.record_admin_change(Actor("ops", None, "local"), "team.create", "team:x", None, {"name": "x"})
        await services.log.close()

    asyncio.run(one_entry())
    (tmp_path / "data" / "audit" / "checkpoint-key.pem").unlink()
    done = ward_gateway(tmp_path, {})
    assert done.returncode == 2, done.stderr
    assert "already holds 1 entries" in done.stderr and "Traceback" not in done.stderr


def test_an_unreachable_database_stops_the_gateway_without_a_trace(tmp_path):
    done = ward_gateway(tmp_path, {}, WARD_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    assert done.returncode == 1, done.stderr
    assert "the gateway database cannot be used" in done.stderr and "Traceback" not in done.stderr
