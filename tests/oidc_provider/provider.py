"""Starts and drives the test OpenID provider (server.js) as a real process on loopback."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field

import httpx
from joserfc.jwk import RSAKey

HERE = pathlib.Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_signing_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "alg": "RS256", "use": "sig"}, private=True)


@dataclass
class TestClient:
    __test__ = False  # an OpenID client of the provider, not a pytest test class

    client_id: str
    client_secret: str
    claims: dict = field(default_factory=dict)


@dataclass
class WebClient:
    """A client that signs people in (authorization code + PKCE), e.g. Ward's web console."""

    client_id: str
    client_secret: str
    redirect_uris: list[str]


@dataclass
class User:
    """A person the provider knows: the login typed on its page (any password) and the claims of their tokens."""

    login: str
    claims: dict = field(default_factory=dict)


class OIDCProvider:
    """One provider process. `keys[0]` signs; `restart(keys)` rotates them like an IdP would."""

    def __init__(self, workdir: pathlib.Path, audience: str, clients: list[TestClient], keys: list[RSAKey],
                 web_clients: list[WebClient] = (), users: list[User] = ()):
        if shutil.which("node") is None:
            raise RuntimeError("Node.js is required for the OIDC tests (apt-get install nodejs npm)")
        if not (HERE / "node_modules" / "oidc-provider").is_dir():
            raise RuntimeError(f"run `npm install` in {HERE} first (./ward.sh test does it)")
        self.workdir = workdir
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.audience = audience
        self.clients = clients
        self.keys = keys
        self.web_clients = list(web_clients)
        self.users = list(users)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "OIDCProvider":
        cfg = {
            "issuer": self.issuer,
            "port": self.port,
            "audience": self.audience,
            "jwks": [k.as_dict(private=True) for k in self.keys],
            "clients": [c.__dict__ for c in self.clients],
            "web_clients": [c.__dict__ for c in self.web_clients],
            "users": [u.__dict__ for u in self.users],
        }
        path = self.workdir / "oidc-config.json"
        path.write_text(json.dumps(cfg))
        log = open(self.workdir / "oidc-provider.log", "ab")
        self.proc = subprocess.Popen(["node", str(HERE / "server.js"), str(path)], cwd=HERE, stdout=log, stderr=log,
                                     env={**os.environ, "NODE_ENV": "test"})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the OIDC provider exited: " + (self.workdir / "oidc-provider.log").read_text()[-2000:])
            try:
                if httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the OIDC provider did not start in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, keys: list[RSAKey]) -> None:
        self.stop()
        self.keys = keys
        self.start()

    def token(self, client_id: str) -> str:
        """An access token for a client, by the client-credentials grant."""
        client = next(c for c in self.clients if c.client_id == client_id)
        resp = httpx.post(
            f"{self.issuer}/token",
            data={"grant_type": "client_credentials", "resource": self.audience, "scope": "inference"},
            auth=(client.client_id, client.client_secret),
            timeout=10,
        )
        resp.raise_for_status()
        return resp.json()["access_token"]
