"""Gateway settings: YAML file, WARD_* environment overrides, validation, and the CLI's handling."""

from __future__ import annotations

import argparse

import pytest
from pydantic import ValidationError

from gateway import cli
from gateway.app import create_app
from gateway.settings import ConfigFileError, GatewaySettings
from gateway.workers.channels import InsecureWorkerChannel

CONFIG = """
port: 9100
models:
  chat-model:
    workers: ["127.0.0.1:7001", "127.0.0.1:7002"]
api_keys:
  sk-radiology-key: radiology
routing:
  poll_interval_s: 0.25
quota:
  redis_url: redis://127.0.0.1:6379/0
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("WARD_"):
            monkeypatch.delenv(name)


def test_defaults_bind_localhost_and_serve_nothing():
    s = GatewaySettings.load()
    assert (s.host, s.port, s.models, s.api_keys) == ("127.0.0.1", 8000, {}, {})
    assert s.routing.poll_interval_s == 0.5 and s.routing.max_attempts == 3


def test_yaml_file_is_read_with_the_sections_of_other_layers(config_file):
    s = GatewaySettings.load(config_file)
    assert s.port == 9100
    assert s.models["chat-model"].workers == ["127.0.0.1:7001", "127.0.0.1:7002"]
    assert {k.get_secret_value(): v for k, v in s.api_keys.items()} == {"sk-radiology-key": "radiology"}
    assert s.routing.poll_interval_s == 0.25
    assert s.quota.redis_url == "redis://127.0.0.1:6379/0"
    assert "sk-radiology-key" not in repr(s)  # secrets stay out of logs


def test_environment_overrides_the_file_and_arguments_override_both(config_file, monkeypatch):
    monkeypatch.setenv("WARD_PORT", "9200")
    monkeypatch.setenv("WARD_ROUTING__MAX_ATTEMPTS", "5")
    monkeypatch.setenv("WARD_MODELS", '{"other": {"workers": ["127.0.0.1:7100"]}}')
    s = GatewaySettings.load(config_file)
    assert s.port == 9200 and s.routing.max_attempts == 5 and s.routing.poll_interval_s == 0.25
    assert sorted(s.models) == ["chat-model", "other"]  # mappings merge across sources
    assert GatewaySettings.load(config_file, port=9300).port == 9300


@pytest.mark.parametrize(
    "text",
    [
        "models:\n  m:\n    workers: []\n",
        "models:\n  m:\n    workers: ['no-port']\n",
        "models:\n  m:\n    workers: ['127.0.0.1:1', '127.0.0.1:1']\n",
        "api_keys:\n  short: team\n",
        "routing:\n  poll_interval_s: 0\n",
        "prot: 80\n",  # a typo is an error, not a silent default
    ],
)
def test_invalid_values_are_refused(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValidationError):
        GatewaySettings.load(path)


def test_missing_or_non_mapping_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigFileError):
        GatewaySettings.load(tmp_path / "absent.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigFileError):
        GatewaySettings.load(path)


def test_cli_reports_a_bad_config_and_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("port: -5\n")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["--config", str(path)])) == 2
    assert "invalid configuration" in capsys.readouterr().err


def test_plaintext_to_a_remote_worker_is_refused_unless_allowed():
    remote = {"m": {"workers": ["10.1.2.3:7000"]}}
    with pytest.raises(InsecureWorkerChannel):
        create_app(GatewaySettings(models=remote))
    create_app(GatewaySettings(models=remote, auth={"insecure_worker_channel": True}))
    create_app(GatewaySettings(models={"m": {"workers": ["localhost:7000", "[::1]:7001"]}}))


def test_tls_settings_become_uvicorn_options():
    import ssl

    plain = GatewaySettings()
    assert cli.uvicorn_tls_options(plain) == {}
    tls = GatewaySettings(auth={"tls": {"cert_file": "c.pem", "key_file": "k.pem", "client_ca_file": "ca.pem"}})
    assert cli.uvicorn_tls_options(tls) == {
        "ssl_certfile": "c.pem",
        "ssl_keyfile": "k.pem",
        "ssl_ca_certs": "ca.pem",
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
    }
    optional = GatewaySettings(
        auth={"tls": {"cert_file": "c", "key_file": "k", "client_ca_file": "a", "client_cert": "optional"}}
    )
    assert cli.uvicorn_tls_options(optional)["ssl_cert_reqs"] == ssl.CERT_OPTIONAL


def test_server_takes_httptools_and_asyncio_unless_the_environment_says_otherwise(monkeypatch):
    import asyncio

    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from gateway.auth.tls_server import PeerCertH11Protocol

    assert cli.server_options(GatewaySettings()) == {"loop": "asyncio", "http": "auto"}
    assert AutoHTTPProtocol is HttpToolsProtocol  # "auto": httptools, installed with the project's dependencies
    loop = uvicorn.Config(object(), **cli.server_options(GatewaySettings())).get_loop_factory()()
    try:
        assert isinstance(loop, asyncio.SelectorEventLoop)  # not uvloop
    finally:
        loop.close()
    monkeypatch.setenv("WARD_LOOP", "uvloop")
    monkeypatch.setenv("WARD_HTTP", "h11")
    assert cli.server_options(GatewaySettings()) == {"loop": "uvloop", "http": "h11"}
    tls = GatewaySettings(auth={"tls": {"cert_file": "c", "key_file": "k", "client_ca_file": "a"}})
    assert cli.server_options(tls)["http"] is PeerCertH11Protocol  # client certificates need the h11 protocol
    with pytest.raises(ValidationError):
        GatewaySettings(loop="trio")
