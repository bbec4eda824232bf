"""Settings: defaults, YAML, environment and keyword precedence, errors that explain."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.errors import ConfigError
from cluster.settings import (
    Settings,
    export_settings,
    load_settings,
    redact_url,
    settings_from_export,
)


@pytest.fixture(autouse=True)
def _clean_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No configs/datapunk.yaml of the repository is read unless a test writes one."""
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def config_error(**kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)  # type: ignore[arg-type]
    return info.value


def test_defaults_are_the_embedded_laptop_setup(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.data_dir == Path(".datapunk")
    assert settings.data_path == tmp_path / ".datapunk"
    assert settings.log_level == "INFO"
    assert (settings.database_url, settings.redis_url, settings.amqp_url) == (None, None, None)
    assert settings.consul_url is None
    assert (settings.ray.port, settings.ray.node_ip_address) == (6390, "127.0.0.1")
    assert settings.ray.address is None
    assert (settings.gateway.host, settings.gateway.port) == ("127.0.0.1", 8000)
    assert settings.pools.lake == settings.pools.forge == 1
    assert settings.platform_db_url() == f"sqlite+aiosqlite:///{tmp_path}/.datapunk/platform.db"
    assert settings.state_path == tmp_path / ".datapunk" / "platform.json"
    assert settings.ray_token_path == tmp_path / ".datapunk" / "ray" / "auth_token"


def test_yaml_file_values_are_read(tmp_path: Path) -> None:
    config = write(
        tmp_path / "custom.yaml",
        "log_level: DEBUG\nray:\n  port: 16500\ngateway:\n  port: 18500\n  replicas: 3\n"
        "pools:\n  lake: 4\nredis_url: redis://127.0.0.1:6379/2\n",
    )
    settings = load_settings(config)
    assert settings.log_level == "DEBUG"
    assert settings.ray.port == 16500
    assert (settings.gateway.port, settings.gateway.replicas) == (18500, 3)
    assert settings.gateway.host == "127.0.0.1"  # keys the file leaves out keep defaults
    assert settings.pools.lake == 4
    assert settings.secret("redis_url") == "redis://127.0.0.1:6379/2"


def test_configs_datapunk_yaml_in_cwd_is_the_default_file(tmp_path: Path) -> None:
    write(tmp_path / "configs" / "datapunk.yaml", "gateway:\n  port: 18501\n")
    assert load_settings().gateway.port == 18501


def test_datapunk_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "configs" / "datapunk.yaml", "gateway:\n  port: 18501\n")
    other = write(tmp_path / "elsewhere.yaml", "gateway:\n  port: 18502\n")
    monkeypatch.setenv("DATAPUNK_CONFIG", str(other))
    assert load_settings().gateway.port == 18502


def test_empty_yaml_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path / "empty.yaml", "")).gateway.port == 8000


def test_empty_url_in_yaml_means_the_embedded_default(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path / "c.yaml", "database_url:\nredis_url: ''\n"))
    assert settings.database_url is None and settings.redis_url is None


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path / "c.yaml", "gateway:\n  port: 18500\n  replicas: 2\n")
    monkeypatch.setenv("DATAPUNK_GATEWAY__PORT", "18600")
    monkeypatch.setenv("DATAPUNK_LOG_LEVEL", "WARNING")
    settings = load_settings(config)
    assert settings.gateway.port == 18600
    assert settings.gateway.replicas == 2  # a nested env var replaces one key, not the group
    assert settings.log_level == "WARNING"


def test_keywords_override_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path / "c.yaml", "log_level: DEBUG\n")
    monkeypatch.setenv("DATAPUNK_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("DATAPUNK_DATA_DIR", str(tmp_path / "from-env"))
    settings = load_settings(config, log_level="ERROR")
    assert settings.log_level == "ERROR"
    assert settings.data_path == tmp_path / "from-env"


@pytest.mark.parametrize(
    ("env", "value", "key", "allowed"),
    [
        ("DATAPUNK_GATEWAY__PORT", "70000", "gateway.port", "less than or equal to 65535"),
        ("DATAPUNK_GATEWAY__PORT", "0", "gateway.port", "greater than or equal to 1"),
        ("DATAPUNK_GATEWAY__PORT", "abc", "gateway.port", "valid integer"),
        ("DATAPUNK_RAY__PORT", "6379", "ray.port", "6379 is Redis's port"),
        ("DATAPUNK_LOG_LEVEL", "LOUD", "log_level", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ("DATAPUNK_REDIS_URL", "http://h:1/0", "redis_url", "one of redis, rediss, unix"),
        ("DATAPUNK_AMQP_URL", "localhost:5672", "amqp_url", "one of amqp, amqps"),
        ("DATAPUNK_DATABASE_URL", "mysql://h/db", "database_url", "postgresql+asyncpg"),
    ],
)
def test_bad_environment_value_names_key_env_value_and_what_is_allowed(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, key: str, allowed: str
) -> None:
    monkeypatch.setenv(env, value)
    error = config_error()
    assert f"invalid setting {key} (env {env})={value!r}" in error.message
    assert allowed in error.message
    assert "\n" not in error.message


def test_bad_keyword_value_is_a_config_error() -> None:
    error = config_error(gateway={"port": 99999})
    assert "gateway.port" in error.message and "99999" in error.message


def test_bad_yaml_value_names_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", "ray:\n  port: 6379\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert "ray.port" in info.value.message
    assert "6379" in info.value.message
    assert str(config) in info.value.message


@pytest.mark.parametrize(
    ("text", "key"),
    [("colour: blue\n", "colour"), ("gateway:\n  prot: 8001\n", "gateway.prot")],
)
def test_unknown_yaml_key_is_refused(tmp_path: Path, text: str, key: str) -> None:
    """A misspelt key must not be silently ignored, at the top level or in a group."""
    config = write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert f"invalid setting {key} " in info.value.message
    assert "Extra inputs are not permitted" in info.value.message


def test_unknown_nested_environment_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAPUNK_GATEWAY__PROT", "8001")
    assert "gateway.prot" in config_error().message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gateway: [\n", "line 2"),
        ("gateway:\n  port: 1\n bad indent: 2\n", "line 3"),
        ("- 1\n- 2\n", "YAML mapping"),
        ("just a string\n", "YAML mapping"),
    ],
)
def test_malformed_yaml_is_one_line_config_error(tmp_path: Path, text: str, expected: str) -> None:
    config = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    message = info.value.message
    assert message.startswith(f"invalid setting config file={str(config)!r}")
    assert expected in message
    assert "\n" not in message


def test_missing_config_named_by_datapunk_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.yaml"
    monkeypatch.setenv("DATAPUNK_CONFIG", str(missing))
    error = config_error()
    assert "DATAPUNK_CONFIG" in error.message
    assert str(missing) in error.message
    assert "existing YAML file" in error.message


def test_empty_datapunk_config_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAPUNK_CONFIG", "")
    assert load_settings().gateway.port == 8000


def test_missing_config_path_argument(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="existing YAML file"):
        load_settings(tmp_path / "nope.yaml")


def test_a_failed_load_does_not_leak_its_yaml_into_the_next(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", "gateway:\n  port: 70000\n")
    with pytest.raises(ConfigError):
        load_settings(config)
    assert Settings().gateway.port == 8000


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ("DATAPUNK_REDIS_URL", "http://admin:hunter2@cache:6379/0"),
        ("DATAPUNK_DATABASE_URL", "mysql://app:hunter2@db/x"),
        ("DATAPUNK_AMQP_URL", "http://guest:hunter2@mq/"),
    ],
)
def test_url_password_is_redacted_in_error_messages(
    monkeypatch: pytest.MonkeyPatch, env: str, url: str
) -> None:
    monkeypatch.setenv(env, url)
    error = config_error()
    assert "hunter2" not in error.message
    assert "hunter2" not in repr(error.fields)
    assert ":***@" in error.message


def test_url_password_in_yaml_is_redacted_too(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", "redis_url: http://u:hunter2@h/0\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert "hunter2" not in info.value.message


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("postgresql://user:pw@host:5432/db", "postgresql://user:***@host:5432/db"),
        ("redis://:pw@host/0", "redis://:***@host/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("amqp://guest@host/", "amqp://guest@host/"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_secrets_do_not_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAPUNK_REDIS_URL", "redis://u:hunter2@h/0")
    settings = load_settings()
    assert "hunter2" not in repr(settings)
    assert settings.secret("redis_url") == "redis://u:hunter2@h/0"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:pw@db:5432/dp", "postgresql+asyncpg://u:pw@db:5432/dp"),
        ("postgresql+asyncpg://u@db/dp", "postgresql+asyncpg://u@db/dp"),
        ("sqlite:////var/dp.db", "sqlite+aiosqlite:////var/dp.db"),
        ("sqlite+aiosqlite:///rel.db", "sqlite+aiosqlite:///rel.db"),
    ],
)
def test_platform_db_url_normalises_to_async_drivers(given: str, expected: str) -> None:
    assert load_settings(database_url=given).platform_db_url() == expected


def test_platform_db_url_default_is_sqlite_in_data_dir(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "state")
    assert settings.platform_db_url() == f"sqlite+aiosqlite:///{tmp_path}/state/platform.db"


def test_export_round_trip_keeps_secrets_and_makes_data_dir_absolute(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir="relative/state",
        database_url="postgresql://u:hunter2@db/dp",
        redis_url="redis://:hunter2@cache/1",
        amqp_url="amqp://g:hunter2@mq/",
        ray={"port": 16501, "num_cpus": 2},
        gateway={"port": 18501, "ha_proxy": False},
        pools={"cortex": 0},
    )
    exported = export_settings(settings)
    assert exported["data_dir"] == str(tmp_path / "relative" / "state")
    assert exported["redis_url"] == "redis://:hunter2@cache/1"  # plain: it crosses to Ray

    rebuilt = settings_from_export(exported)
    assert rebuilt.data_path == tmp_path / "relative" / "state"
    assert rebuilt.platform_db_url() == "postgresql+asyncpg://u:hunter2@db/dp"
    assert rebuilt.secret("redis_url") == "redis://:hunter2@cache/1"
    assert rebuilt.secret("amqp_url") == "amqp://g:hunter2@mq/"
    assert rebuilt.secret("consul_url") is None
    assert rebuilt.ray == settings.ray
    assert rebuilt.gateway == settings.gateway
    assert rebuilt.pools == settings.pools


def test_export_survives_a_change_of_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported = export_settings(load_settings())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert settings_from_export(exported).data_path == tmp_path / ".datapunk"


def test_settings_from_export_does_not_read_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exported = export_settings(load_settings())
    monkeypatch.setenv("DATAPUNK_GATEWAY__PORT", "18777")
    assert settings_from_export(exported).gateway.port == 8000


def test_bad_export_is_a_config_error() -> None:
    exported = export_settings(load_settings())
    exported["gateway"]["port"] = -1
    with pytest.raises(ConfigError, match=r"gateway\.port.*exported settings"):
        settings_from_export(exported)
