"""Identity through the real processes: ``ward gateway`` serving HTTPS with optional client
certificates, its database on PostgreSQL (WARD_DATABASE_URL), OIDC configured by the WARD_OIDC_*
variables against a real OpenID provider, and a generation worker reached over mutual TLS.
"""
from __future__ import annotations

import ssl
import uuid

import grpc
import httpx
import openai
import pytest
from auth_support import postgres_url
from auth_tls_certs import TestPKI
from e2e_support import (
    GENERATE_MODEL,
    ProcessStack,
    clean_env,
    free_port,
    health,
    load_stats,
    make_keys,
    wait_for_gateway,
)
from oidc_provider.provider import OIDCProvider, new_signing_key
from oidc_provider.provider import TestClient as IdPClient

AUDIENCE = "https://ward.test/v1"
ADMIN_KEY = "e2e-platform-admin-key-0123456789"
IDP_CLIENTS = [
    IdPClient("svc-radiology", "secret-radiology-0123456789", {"ward_team": "radiology", "ward_roles": ["user"]}),
    IdPClient("svc-audit", "secret-audit-0123456789", {"ward_team": "radiology", "ward_roles": ["auditor"]}),
    IdPClient("svc-stranger", "secret-stranger-0123456789", {"ward_team": "no-such-team", "ward_roles": ["user"]}),
]
NOTE = [{"role": "user", "content": "Summarise the handover."}]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e-identity")
    pki = TestPKI(workdir / "pki")
    lab = pki.ca.issue("lab-system", client=True, dns=("lab.ward.test",))
    procs = ProcessStack(workdir)
    idp = None
    try:
        with postgres_url() as database_url:
            worker = procs.start_worker("generate-tls", "--tls-cert", str(pki.server.cert), "--tls-key",
                                        str(pki.server.key), "--client-ca", str(pki.ca.ca_file))
            idp = OIDCProvider(workdir, AUDIENCE, IDP_CLIENTS, [new_signing_key("k1")]).start()
            keys = make_keys(database_url, {
                "radiology": ("radiology", "user"), "cardiology": ("cardiology", "user"),
                "auditor": ("radiology", "auditor"), "team_admin": ("cardiology", "team_admin"),
                "laboratory": ("laboratory", "user"),
                # used by the prefix-cache test only, so no earlier request of theirs warmed the cache
                "oncology": ("oncology", "user"), "neurology": ("neurology", "user"),
            })
            procs.wait_ready(worker)
            gateway_env = clean_env(
                WARD_DATABASE_URL=database_url, WARD_AUTH__ADMIN_KEY=ADMIN_KEY, WARD_OIDC_ISSUER=idp.issuer,
                WARD_OIDC_AUDIENCE=AUDIENCE, WARD_OIDC_TEAM_CLAIM="ward_team", WARD_OIDC_ROLES_CLAIM="ward_roles",
            )
            config = {"auth": {
                "worker_tls": {"ca_file": str(pki.ca.ca_file), "cert_file": str(pki.gateway.cert),
                               "key_file": str(pki.gateway.key)},
                "mtls": {"identities": [{"san_dns": "lab.ward.test", "team": "laboratory"}]},
                "api_key_cache_ttl_s": 0,
            }}
            tls_args = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
                        "--client-ca", str(pki.ca.ca_file), "--client-cert", "optional"]
            trust = ssl.create_default_context(cafile=str(pki.ca.ca_file))
            gateway = procs.start_gateway({GENERATE_MODEL: [worker.address]}, config=config,
                                          args=tls_args, env=gateway_env, scheme="https", wait=False)
            wait_for_gateway(gateway, verify=trust)
            yield {"url": gateway.url, "keys": keys, "pki": pki, "lab": lab, "trust": trust, "idp": idp,
                   "worker": worker.address}
            procs.close()  # before the database is dropped
    finally:
        procs.close()
        if idp is not None:
            idp.stop()


def gateway_tls_credentials(pki) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(pki.ca.ca_file.read_bytes(), pki.gateway.key_pem(), pki.gateway.cert_pem())


def openai_client(env, key: str) -> openai.OpenAI:
    http = httpx.Client(verify=env["trust"], timeout=120)
    return openai.OpenAI(base_url=env["url"] + "/v1", api_key=key, max_retries=0, http_client=http)


def call(env, method: str, path: str, key: str | None = None, **kwargs) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(verify=env["trust"], timeout=120, cert=kwargs.pop("cert", None)) as client:
        return client.request(method, env["url"] + path, headers=headers, **kwargs)


def chat_body(max_tokens: int = 2) -> dict:
    return {"model": GENERATE_MODEL, "messages": NOTE, "max_tokens": max_tokens}


def test_role_matrix_on_the_real_gateway(env):
    keys = env["keys"]
    for who in ("radiology", "team_admin"):
        assert call(env, "POST", "/v1/chat/completions", keys[who], json=chat_body()).status_code == 200, who
    assert call(env, "POST", "/v1/chat/completions", ADMIN_KEY, json=chat_body()).status_code == 200
    for path, method in (("/v1/chat/completions", "POST"), ("/v1/models", "GET")):
        refused = call(env, method, path, keys["auditor"], json=chat_body())
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
    teams = call(env, "GET", "/admin/teams", ADMIN_KEY)
    assert teams.status_code == 200
    assert {"radiology", "cardiology", "laboratory", "platform"} <= {t["name"] for t in teams.json()["data"]}
    own = call(env, "GET", "/admin/teams", keys["team_admin"])
    assert own.status_code == 200 and [t["name"] for t in own.json()["data"]] == ["cardiology"]
    assert call(env, "GET", "/admin/teams", keys["radiology"]).status_code == 403
    anonymous = call(env, "POST", "/v1/chat/completions", json=chat_body())
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == 'Bearer realm="ward"'
    wrong = call(env, "POST", "/v1/chat/completions", "ward-0123456789abcdef." + "q" * 43, json=chat_body())
    assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]


def test_a_second_team_gets_no_prefix_cache_hit_from_the_first_teams_blocks(env):
    credentials = gateway_tls_credentials(env["pki"])
    prompt = [{"role": "user", "content": f"Case {uuid.uuid4().hex}: " + "the patient reports mild pain. " * 30}]

    def ask(team: str) -> tuple[int, int]:
        before = load_stats(env["worker"], credentials).prefix_cache_hits
        with openai_client(env, env["keys"][team]) as client:
            answer = client.chat.completions.create(model=GENERATE_MODEL, messages=prompt, max_tokens=1)
        hits = load_stats(env["worker"], credentials).prefix_cache_hits - before
        return hits, answer.usage.prompt_tokens_details.cached_tokens

    assert ask("oncology") == (0, 0)
    assert ask("neurology") == (0, 0)  # same prompt, other team: none of oncology's blocks
    hits, cached = ask("oncology")  # same team again: its own blocks are reused
    assert hits >= 16 * 10 and cached == hits


def test_the_tls_worker_refuses_callers_without_the_gateway_certificate_while_the_gateway_works(env):
    no_certificate = grpc.ssl_channel_credentials(env["pki"].ca.ca_file.read_bytes())
    with pytest.raises(grpc.RpcError) as err:
        health(env["worker"], no_certificate, timeout=3)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError):
        health(env["worker"], timeout=3)  # plaintext
    with openai_client(env, env["keys"]["radiology"]) as client:
        answer = client.chat.completions.create(model=GENERATE_MODEL, messages=NOTE, max_tokens=2,
                                                extra_body={"ignore_eos": True})
    assert answer.usage.completion_tokens == 2


def test_oidc_tokens_follow_the_claims_named_by_the_environment(env):
    idp = env["idp"]
    user = call(env, "POST", "/v1/chat/completions", idp.token("svc-radiology"), json=chat_body())
    assert user.status_code == 200, user.text
    auditor = call(env, "POST", "/v1/chat/completions", idp.token("svc-audit"), json=chat_body())
    assert auditor.status_code == 403 and auditor.json()["error"]["code"] == "permission_denied"
    stranger = call(env, "POST", "/v1/chat/completions", idp.token("svc-stranger"), json=chat_body())
    assert stranger.status_code == 403 and stranger.json()["error"]["code"] == "team_unknown"


def test_a_client_certificate_is_a_principal_over_the_gateways_own_https(env):
    lab = env["lab"]
    answer = call(env, "POST", "/v1/chat/completions", cert=(str(lab.cert), str(lab.key)), json=chat_body())
    assert answer.status_code == 200, answer.text
    unmapped = env["pki"].ca.issue("unknown-system", client=True, dns=("unknown.ward.test",))
    refused = call(env, "POST", "/v1/chat/completions", cert=(str(unmapped.cert), str(unmapped.key)),
                   json=chat_body())
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "certificate_not_mapped"


def test_an_unreachable_identity_provider_is_503_with_retry_after(env, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from gateway.cli import build_app
    from gateway.settings import GatewaySettings

    for name in ("WARD_DATABASE_URL", "WARD_OIDC_ISSUER", "WARD_OIDC_AUDIENCE"):
        monkeypatch.delenv(name, raising=False)
    nobody = f"http://127.0.0.1:{free_port()}"  # no provider listens here: its keys cannot be fetched
    settings = GatewaySettings(data_dir=tmp_path, auth={"oidc": {"issuer": nobody, "audience": [AUDIENCE]}})
    with TestClient(build_app(settings)) as client:
        response = client.post("/v1/chat/completions", json=chat_body(),
                               headers={"authorization": f"Bearer {env['idp'].token('svc-radiology')}"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "identity_provider_unavailable"
    assert response.headers["retry-after"] == "5"
