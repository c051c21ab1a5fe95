"""OperatorConfig from TOKENBRIDGE_* variables, and the `tokenbridge operator` command line mapped onto kopf's."""

import ipaddress

import pytest

from tokenbridge_operator.config import OperatorConfig
from tokenbridge_operator.run import kopf_args, parser


def test_defaults():
    config = OperatorConfig.from_env({})
    assert config == OperatorConfig()
    assert config.token_endpoint is None
    assert (config.signing_secret_namespace, config.signing_secret_name) == ("tokenbridge", "tokenbridge-signing-keys")
    assert config.signing_algorithm == "ES256" and config.cluster_identity_providers is True
    assert config.metrics_port == 9090
    assert config.fetch_policy.allowed_networks == () and not config.fetch_policy.allow_http


def test_every_variable_is_read():
    config = OperatorConfig.from_env(
        {
            "TOKENBRIDGE_PUBLIC_ISSUER": "https://tokens.example/",
            "TOKENBRIDGE_ALLOWED_NETWORKS": "10.0.0.1/32",
            "TOKENBRIDGE_ALLOW_INSECURE_HTTP": "true",
            "TOKENBRIDGE_IDP_REFRESH_INTERVAL": "2m",
            "TOKENBRIDGE_APP_RECHECK_INTERVAL": "30s",
            "TOKENBRIDGE_RETRY_BACKOFF": "2s",
            "TOKENBRIDGE_SECRET_ROTATION_GRACE": "1h",
            "TOKENBRIDGE_SIGNING_SECRET_NAMESPACE": "ns",
            "TOKENBRIDGE_SIGNING_SECRET_NAME": "keys",
            "TOKENBRIDGE_SIGNING_ALGORITHM": "EdDSA",
            "TOKENBRIDGE_SIGNING_ROTATION_PERIOD": "48h",
            "TOKENBRIDGE_SIGNING_PUBLISH_LEAD": "2h",
            "TOKENBRIDGE_MAX_TOKEN_LIFETIME": "1h",
            "TOKENBRIDGE_SIGNING_CHECK_INTERVAL": "10s",
            "TOKENBRIDGE_WATCH_TIMEOUT": "1m",
            "TOKENBRIDGE_REQUEST_TIMEOUT": "10s",
            "TOKENBRIDGE_PEERING": "tokenbridge",
            "TOKENBRIDGE_CLUSTER_IDENTITY_PROVIDERS": "false",
            "TOKENBRIDGE_METRICS_PORT": "0",
        }
    )
    assert config.token_endpoint == "https://tokens.example/oauth2/token"
    assert config.fetch_policy.allowed_networks == (ipaddress.ip_network("10.0.0.1/32"),)
    assert config.fetch_policy.allow_http
    assert (config.idp_refresh_interval, config.app_recheck_interval, config.retry_backoff) == (120, 30, 2)
    assert (config.secret_rotation_grace, config.signing_rotation_period, config.signing_publish_lead) == (
        3600,
        48 * 3600,
        7200,
    )
    assert (config.max_token_lifetime, config.signing_check_interval) == (3600, 10)
    assert (config.watch_timeout, config.request_timeout) == (60, 10)
    assert (config.signing_secret_namespace, config.signing_secret_name, config.signing_algorithm) == (
        "ns",
        "keys",
        "EdDSA",
    )
    assert config.peering == "tokenbridge" and config.cluster_identity_providers is False
    assert config.metrics_port == 0


@pytest.mark.parametrize(
    "env, name",
    [
        ({"TOKENBRIDGE_IDP_REFRESH_INTERVAL": "5 minutes"}, "TOKENBRIDGE_IDP_REFRESH_INTERVAL"),
        ({"TOKENBRIDGE_PUBLIC_ISSUER": "tokens.example"}, "TOKENBRIDGE_PUBLIC_ISSUER"),
        ({"TOKENBRIDGE_SIGNING_ALGORITHM": "HS256"}, "TOKENBRIDGE_SIGNING_ALGORITHM"),
        (
            {"TOKENBRIDGE_SIGNING_ROTATION_PERIOD": "1h", "TOKENBRIDGE_SIGNING_PUBLISH_LEAD": "2h"},
            "TOKENBRIDGE_SIGNING_PUBLISH_LEAD",
        ),
        ({"TOKENBRIDGE_CLUSTER_IDENTITY_PROVIDERS": "maybe"}, "TOKENBRIDGE_CLUSTER_IDENTITY_PROVIDERS"),
        ({"TOKENBRIDGE_METRICS_PORT": "http"}, "TOKENBRIDGE_METRICS_PORT"),
        ({"TOKENBRIDGE_METRICS_PORT": "65536"}, "TOKENBRIDGE_METRICS_PORT"),
        ({"TOKENBRIDGE_METRICS_PORT": "-1"}, "TOKENBRIDGE_METRICS_PORT"),
    ],
)
def test_malformed_values_name_the_variable(env, name):
    with pytest.raises(ValueError, match=name):
        OperatorConfig.from_env(env)


def test_backoff_doubles_up_to_the_refresh_interval():
    config = OperatorConfig(retry_backoff=5, idp_refresh_interval=60)
    assert [config.backoff(r) for r in range(6)] == [5, 10, 20, 40, 60, 60]
    assert config.backoff(10_000) == 60


def test_command_line_maps_to_kopf():
    assert kopf_args(parser().parse_args([]), {}) == [
        "run",
        "-m",
        "tokenbridge_operator.main",
        "--log-format",
        "json",
        "--all-namespaces",
        "--standalone",
    ]
    argv = kopf_args(
        parser().parse_args(
            ["-n", "a", "-n", "b", "--liveness", "http://0.0.0.0:8081/healthz", "--peering", "tb", "--verbose"]
        ),
        {},
    )
    assert argv == [
        "run",
        "-m",
        "tokenbridge_operator.main",
        "--log-format",
        "json",
        "--namespace=a",
        "--namespace=b",
        "--liveness",
        "http://0.0.0.0:8081/healthz",
        "--peering",
        "tb",
        "--verbose",
    ]
    assert "--peering" in kopf_args(parser().parse_args([]), {"TOKENBRIDGE_PEERING": "tb"})


def test_namespace_and_all_namespaces_exclude_each_other():
    with pytest.raises(SystemExit):
        parser().parse_args(["-n", "a", "-A"])


def test_bad_environment_stops_the_command_before_kopf_starts(monkeypatch, capsys):
    from tokenbridge_operator.run import main

    monkeypatch.setenv("TOKENBRIDGE_SIGNING_ALGORITHM", "HS256")
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2 and "TOKENBRIDGE_SIGNING_ALGORITHM" in capsys.readouterr().err
