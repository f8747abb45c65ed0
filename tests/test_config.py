"""Configuration: precedence, validation that names the setting, the token kept secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from statsd_ao import cli
from statsd_ao.config import ConfigError, build, unknown_environment
from statsd_ao.io.address import Address, parse_address
from statsd_ao.settings import GROUPS, HELP_LAYOUT, SETTINGS, parse_bytes


def test_defaults() -> None:
    config = build({}, environ={})
    assert config.udp == Address("0.0.0.0", 8125)
    assert config.flush_interval == 10
    assert config.api_url == "https://api.appoptics.com"
    assert config.batch_size <= 1000
    assert not config.posting  # no token: dry run
    assert "host" in config.global_tags
    assert config.read_pause == 0.001
    assert build({"read_pause": "0"}, environ={}).read_pause == 0
    assert build({"read_pause": "0.007"}, environ={}).read_pause == 0.007


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8125", Address("127.0.0.1", 8125)),
        ("[::1]:9125", Address("::1", 9125)),
        ("localhost:0", Address("localhost", 0)),
    ],
)
def test_addresses(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["8125", "host:", ":8125", "::1:8125", "[::1]8125", "h:70000"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError, match=":PORT"):
        parse_address(text)


def test_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    file = tmp_path / "statsd-ao.toml"
    file.write_text(
        'flush_interval = 30\nbatch_size = 100\npercentiles = [50, 99.9]\ntags = {team = "core"}\n'
    )
    env = {"STATSD_AO_FLUSH_INTERVAL": "20", "STATSD_AO_BATCH_SIZE": "200"}
    config = build({"flush_interval": "5"}, environ=env, config_file=file)
    assert config.flush_interval == 5  # flag
    assert config.batch_size == 200  # environment
    assert config.percentiles == (50.0, 99.9)  # file
    assert config.tags == {"team": "core"}


def test_repeated_tag_flags_and_env_list() -> None:
    assert build({"tags": ["a=1", "b=2"]}, environ={}).tags == {"a": "1", "b": "2"}
    env = {"STATSD_AO_TAGS": "region=us-east-1, az=b"}
    assert build({}, environ=env).tags == {"region": "us-east-1", "az": "b"}


def test_token_makes_it_post_unless_dry_run() -> None:
    assert build({}, environ={"APPOPTICS_TOKEN": "t"}).posting
    assert not build({"dry_run": True}, environ={"APPOPTICS_TOKEN": "t"}).posting


def test_token_never_described() -> None:
    config = build({"token": "s3cr3t-token"}, environ={})
    assert "s3cr3t-token" not in config.describe()
    assert "s3cr3t-token" not in repr(config)


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        ({"flush_interval": "-1"}, "--flush-interval"),
        ({"flush_interval": "0"}, "--flush-interval"),
        ({"udp": "nonsense"}, "--udp"),
        ({"tags": ["novalue"]}, "--tag"),
        ({"percentiles": "90,101"}, "--percentiles"),
        ({"percentiles": "ninety"}, "--percentiles"),
        ({"batch_size": "1001"}, "--batch-size"),
        ({"request_timeout": "nan"}, "--request-timeout"),
        ({"spool_max_bytes": "1M"}, "--spool-max-bytes: must be at least 16M"),
        ({"spool_max_bytes": "lots"}, "--spool-max-bytes: expected a size"),
        ({"read_pause": "-0.001"}, "--read-pause: must be 0 or 0.001 to 0.01 seconds"),
        ({"read_pause": "0.5"}, "--read-pause: must be 0 or 0.001 to 0.01 seconds"),
        ({"read_pause": "0.0004"}, "--read-pause: must be 0 or 0.001 to 0.01 seconds"),
        ({"read_pause": "nan"}, "--read-pause"),
        ({"read_pause": "inf"}, "--read-pause"),
        ({"read_pause": "0.0015"}, "--read-pause: .* in whole milliseconds"),
    ],
)
def test_invalid_settings_name_the_setting(flags: dict[str, str | list[str]], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        build(flags, environ={})


def test_invalid_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="STATSD_AO_FLUSH_INTERVAL"):
        build({}, environ={"STATSD_AO_FLUSH_INTERVAL": "soon"})


def test_bad_config_file(tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text("flush_intervl = 3\n")
    with pytest.raises(ConfigError, match="unknown settings flush_intervl"):
        build({}, environ={}, config_file=file)
    file.write_text("flush_interval = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        build({}, environ={}, config_file=file)
    with pytest.raises(ConfigError, match="cannot read"):
        build({}, environ={}, config_file=tmp_path / "missing.toml")


def test_cli_exits_non_zero_naming_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["--flush-interval", "-5", "--token", "s3cr3t-token"])
    err = capsys.readouterr().err
    assert status == cli.EXIT_CONFIG
    assert "--flush-interval" in err
    assert "s3cr3t-token" not in err


@pytest.mark.parametrize(("raw", "token"), [("  tok\n", "tok"), ("", None), ("  ", None)])
def test_token_is_trimmed_and_empty_means_dry_run(raw: str, token: str | None) -> None:
    config = build({}, environ={"APPOPTICS_TOKEN": raw})
    assert config.token == token
    assert config.posting is (token is not None)


@pytest.mark.parametrize("url", ["api.appoptics.com", "ftp://x", "https://", "http:/x"])
def test_api_url_needs_a_scheme_and_host(url: str) -> None:
    with pytest.raises(ConfigError, match="--api-url"):
        build({"api_url": url}, environ={})


def test_no_host_tag_and_no_tags_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="needs a tag"):
        build({"host_tag": "false"}, environ={})
    assert build({"host_tag": "false", "tags": ["env=prod"]}, environ={}).global_tags == {
        "env": "prod"
    }


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("536870912", 536870912),
        ("512M", 512 << 20),
        ("512MiB", 512 << 20),
        ("2g", 2 << 30),
        (" 64 KB ", 64 << 10),
        ("100b", 100),
    ],
)
def test_sizes_take_binary_units(text: str, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["", "M", "1.5G", "-1M", "12T", "5 M B"])
def test_what_is_not_a_size_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected a size"):
        parse_bytes(text)


def test_the_spool_is_off_unless_a_directory_is_given() -> None:
    assert build({}, environ={}).spool_dir is None
    config = build(
        {}, environ={"STATSD_AO_SPOOL_DIR": "/var/spool/x", "STATSD_AO_SPOOL_MAX_BYTES": "1G"}
    )
    assert (config.spool_dir, config.spool_max_bytes) == ("/var/spool/x", 1 << 30)
    assert build({"spool_dir": "off"}, environ={"STATSD_AO_SPOOL_DIR": "/x"}).spool_dir is None


def test_describe_names_every_setting_in_the_table_and_hides_secrets() -> None:
    config = build(
        {"token": "s3cr3t-token", "workers": "2", "global_prefix": "app"},
        environ={"STATSD_AO_EXCLUDE_METRICS": "^debug\\."},
    )
    shown = dict(part.split("=", 1) for part in config.describe().split(" "))
    assert list(shown) == [setting.name for setting in SETTINGS]
    assert shown["token"] == "<set>" and "s3cr3t" not in config.describe()
    assert (shown["workers"], shown["global_prefix"]) == ("2", "app")
    assert shown["exclude_metrics"] == "^debug\\."
    assert shown["flush_interval"] == "10s" and shown["source_regex"] == "off"


def test_log_level_is_a_setting_like_any_other(tmp_path: Path) -> None:
    file = tmp_path / "statsd-ao.toml"
    file.write_text('log_level = "debug"\n')
    assert build({}, environ={}).log_level == "INFO"
    assert build({}, environ={}, config_file=file).log_level == "DEBUG"
    assert build({}, environ={"STATSD_AO_LOG_LEVEL": "warning"}).log_level == "WARNING"
    with pytest.raises(ConfigError, match="STATSD_AO_LOG_LEVEL"):
        build({}, environ={"STATSD_AO_LOG_LEVEL": "loud"})


def test_unknown_statsd_ao_variables_are_named_with_the_nearest_setting() -> None:
    environ = {
        "STATSD_AO_FLUSH_INTERVALL": "5",
        "STATSD_AO_PURE_PYTHON": "1",
        "STATSD_AO_UDP": "127.0.0.1:0",
        "HOME": "/root",
    }
    assert unknown_environment(environ) == [
        "environment variable STATSD_AO_FLUSH_INTERVALL is not a statsd-ao setting; "
        "did you mean STATSD_AO_FLUSH_INTERVAL?"
    ]


def test_the_readme_lists_every_setting_with_its_flag_variable_and_key() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `--")]
    for setting in SETTINGS:
        row = next((r for r in rows if f"| `{setting.flag}" in r), None)
        assert row is not None, setting.flag
        assert f"`{setting.env}`" in row and f"`{setting.name}`" in row, row


def test_help_groups_every_setting_with_a_placeholder_and_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert set(HELP_LAYOUT) == {setting.name for setting in SETTINGS}
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    sections = [line for line in text.splitlines() if line.endswith(" settings:")]
    assert sections == [f"{group} settings:" for group in GROUPS]
    assert "--udp HOST:PORT|off" in text and "--host-tag true|false" in text
    assert "--self-metrics true|false" in text  # booleans written one way
    assert "default 0.0.0.0:8125]" in " ".join(text.split())
    assert "default 10s]" in " ".join(text.split())  # --flush-interval


@pytest.mark.parametrize(
    "toml",
    [
        '[token]\nsecret = "s3cr3t-token"\n',  # a table where the token belongs
        'api_url = {url = "https://api.appoptics.com"}\n',
        "percentiles = {p = 90}\n",
    ],
)
def test_a_table_where_a_single_value_belongs_is_refused(
    tmp_path: Path, toml: str, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "statsd-ao.toml"
    file.write_text(toml)
    with pytest.raises(ConfigError, match=r"\(configuration file\)"):
        build({}, environ={}, config_file=file)
    assert cli.main(["--config", str(file), "--check-config"]) == cli.EXIT_CONFIG
    assert "s3cr3t-token" not in capsys.readouterr().err


@pytest.mark.parametrize("under", [False, True])
def test_a_spool_dir_that_is_a_file_is_a_configuration_error(
    tmp_path: Path, under: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("precious")
    path = tmp_path / "file" / "spool" if under else tmp_path / "file"
    status = cli.main(["--spool-dir", str(path), "--token", "t", "--udp", "127.0.0.1:0"])
    assert status == cli.EXIT_CONFIG
    assert f"--spool-dir: '{path}' " in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "precious"
    assert build({"spool_dir": str(tmp_path / "new" / "spool")}, environ={}).spool_dir
