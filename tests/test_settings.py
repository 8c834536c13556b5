"""Settings: flags > environment > TOML file > defaults; every bad value names its option."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from pathlib import Path

import pytest

from asyncsync._config import DEFAULT_LIMITS, DEFAULT_RETRY
from asyncsync._exceptions import ConfigError
from asyncsync.auth._file_store import FileTokenStore
from asyncsync.auth._manager import DEFAULT_MAX_FETCH_TIME
from asyncsync.auth._redis_store import RedisTokenStore
from asyncsync.cli._main import build_parser, main
from asyncsync.cli._run import open_run_token_store, open_tokens, token_fetch_timeout
from asyncsync.cli._settings import (
    DEFAULT_LOGIN_BODY,
    OPTIONS,
    Secret,
    Settings,
    parse_header,
    parse_shard,
    parse_size,
    settings_from_argv,
)

URL = "https://api.example.com/ingest"
TOKEN_URL = "https://auth.example.com/oauth/token"
SECRET = "s3cr3t-client-value"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() reads os.environ: no ASYNCSYNC_* variable of the caller's may leak in."""
    import os

    for name in list(os.environ):
        if name.startswith("ASYNCSYNC_"):
            monkeypatch.delenv(name)


def settings(*argv: str, env: dict[str, str] | None = None, source: str = "data.jsonl"):
    return settings_from_argv([source, "--url", URL, *argv], env or {})


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "asyncsync.toml"
    path.write_text(text)
    return str(path)


# --- defaults and precedence ---------------------------------------------------------------


def test_defaults() -> None:
    """With only SOURCE and --url, every setting has its documented default."""
    s = settings()
    assert s.auth == "none"
    assert s.origins["auth"] == "auto"
    assert s.batch_size == DEFAULT_LIMITS.max_records == 200
    assert s.max_batch_bytes == DEFAULT_LIMITS.max_bytes
    assert s.max_attempts == DEFAULT_RETRY.max_attempts
    assert s.max_retry_time == DEFAULT_RETRY.max_retry_time
    assert (s.concurrency, s.queue_size, s.rate, s.timeout) == (16, None, None, 60.0)
    assert (s.body, s.wrap, s.gzip, s.headers) == ("json", None, False, ())
    assert (s.client_auth, s.token_field, s.expires_field) == (
        "basic",
        "access_token",
        "expires_in",
    )
    assert s.login_body == DEFAULT_LOGIN_BODY
    assert s.token_skew == 300.0
    assert (s.resume, s.progress, s.verbosity, s.insecure) == (True, None, 0, False)
    assert s.failed == Path("data.jsonl.failed.jsonl")
    assert s.origins["batch_size"] == "default"


def test_default_failed_path_for_stdin() -> None:
    """Without --failed: SOURCE.failed.jsonl beside a file, ./asyncsync-failed.jsonl for stdin."""
    assert settings(source="-").failed == Path("asyncsync-failed.jsonl")
    assert settings(source="dir/x.csv").failed == Path("dir/x.csv.failed.jsonl")


@pytest.mark.parametrize(
    ("flag", "env", "config", "want", "origin"),
    [
        (None, None, None, 200, "default"),
        (None, None, "30", 30, "config"),
        (None, "20", "30", 20, "env"),
        ("10", "20", "30", 10, "flag"),
        ("10", None, "30", 10, "flag"),
    ],
)
def test_precedence(tmp_path, flag, env, config, want, origin) -> None:
    """flags > environment > TOML file > defaults, for each layer present."""
    argv: list[str] = []
    environ: dict[str, str] = {}
    if flag is not None:
        argv += ["--batch-size", flag]
    if env is not None:
        environ["ASYNCSYNC_BATCH_SIZE"] = env
    if config is not None:
        argv += ["--config", toml(tmp_path, f"batch_size = {config}\n")]
    s = settings(*argv, env=environ)
    assert s.batch_size == want
    assert s.origins["batch_size"] == origin


def test_precedence_every_kind_of_value(tmp_path) -> None:
    """Strings, numbers, choices, booleans and the URL itself follow the same order."""
    path = toml(
        tmp_path,
        'url = "https://file.example/ingest"\nbody = "ndjson"\ngzip = true\n'
        "timeout = 5\nconcurrency = 3\nrate = 7.5\nresume = false\n",
    )
    env = {"ASYNCSYNC_TIMEOUT": "6", "ASYNCSYNC_GZIP": "no", "ASYNCSYNC_URL": "http://env/x"}
    s = settings_from_argv(["d.jsonl", "--config", path, "--concurrency", "4"], env)
    assert s.url == "http://env/x"
    assert s.origins["url"] == "env"
    assert s.body == "ndjson"
    assert s.origins["body"] == "config"
    assert s.gzip is False
    assert s.origins["gzip"] == "env"
    assert s.timeout == 6.0
    assert s.concurrency == 4
    assert s.origins["concurrency"] == "flag"
    assert s.rate == 7.5
    assert s.resume is False
    # --no-X on the command line beats a true in the file
    assert settings_from_argv(["d.jsonl", "--config", path, "--no-gzip"], {}).gzip is False
    assert settings_from_argv(["d.jsonl", "--config", path, "--resume"], {}).resume is True


def test_toml_keys_with_dashes_or_underscores(tmp_path) -> None:
    """TOML keys are the long option names, dashes or underscores."""
    s = settings("--config", toml(tmp_path, 'max-batch-bytes = "1MiB"\nmax_attempts = 3\n'))
    assert (s.max_batch_bytes, s.max_attempts) == (2**20, 3)


def test_auth_retry_time_from_flag_env_and_toml(tmp_path) -> None:
    """--auth-retry-time (default 120 s) bounds token-endpoint retries; it reaches the
    TokenManager the CLI builds (its max_fetch_time: the manager owns its retry budget, the
    batches' RetryPolicy has none) and sizes the token store's lock."""
    assert settings().auth_retry_time == DEFAULT_MAX_FETCH_TIME == 120.0
    assert built_retry_time(settings()) == 120.0
    s = settings("--auth-retry-time", "300")
    assert (s.auth_retry_time, built_retry_time(s), s.origins["auth_retry_time"]) == (
        300.0,
        300.0,
        "flag",
    )
    s = settings(env={"ASYNCSYNC_AUTH_RETRY_TIME": "45.5"})
    assert (s.auth_retry_time, s.origins["auth_retry_time"]) == (45.5, "env")
    s = settings("--config", toml(tmp_path, "auth-retry-time = 90\n"))
    assert (s.auth_retry_time, s.origins["auth_retry_time"]) == (90.0, "config")
    s = settings("--config", toml(tmp_path, "auth_retry_time = 15\n"))
    assert s.auth_retry_time == 15.0
    # the batch retry budget is a separate option
    assert s.max_retry_time == DEFAULT_RETRY.max_retry_time
    assert not hasattr(s.retry, "auth_retry_time")


def built_retry_time(s: Settings) -> float:
    """The max_fetch_time of the TokenManager cli/_run.open_tokens builds for ``s``."""
    s = dataclasses.replace(
        s, auth="oauth2", token_url=TOKEN_URL, client_id="c", client_secret=Secret(SECRET)
    )

    async def build() -> float:
        async with open_tokens(s, store=None, ssl=None) as tokens:
            assert tokens is not None
            return tokens.max_fetch_time

    return asyncio.run(build())


@pytest.mark.parametrize(
    ("argv", "span"),
    [
        ((), 180.0),  # 120 s of retries + a 30 s request + 30 s for the store's own I/O
        (("--auth-retry-time", "300"), 360.0),
        (("--timeout", "10"), 140.0),
        (("--timeout", "1", "--auth-retry-time", "5"), 60.0),  # never below 60 s
    ],
)
def test_token_store_locks_outlast_the_worst_token_fetch(
    tmp_path: Path, argv: tuple[str, ...], span: float
) -> None:
    """A store's lock is held for a whole fetch, retries included: the file lock wait and the
    Redis lease are longer than --auth-retry-time plus one token request (min(--timeout, 30))."""
    pytest.importorskip("redis")
    for spec in (f"file:{tmp_path}/tokens.json", "redis://127.0.0.1:6379/15"):
        s = settings(
            "--token-url", TOKEN_URL, "--client-id", "c", "--token-store", spec, *argv,
            env={"ASYNCSYNC_CLIENT_SECRET": SECRET},
        )  # fmt: skip
        store = open_run_token_store(s)
        worst = s.auth_retry_time + token_fetch_timeout(s)
        if isinstance(store, FileTokenStore):
            assert store.wait_timeout == span > worst
        else:
            assert isinstance(store, RedisTokenStore)
            assert store.lease == span > worst
            assert store.wait_timeout > store.lease


def test_config_path_from_environment(tmp_path) -> None:
    """ASYNCSYNC_CONFIG names the file when --config is not given."""
    path = toml(tmp_path, "concurrency = 2\n")
    assert settings(env={"ASYNCSYNC_CONFIG": path}).concurrency == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("batchsize = 3\n", "unknown key 'batchsize'"),
        ("batch_size = 3\nbatch-size = 4\n", "set twice"),
        ("config = 'x.toml'\n", "unknown key 'config'"),
        ("batch_size = [\n", "not valid TOML"),
        ("batch_size = 0\n", "--batch-size (from "),
        ("gzip = 'maybe'\n", "--gzip (from "),
    ],
)
def test_bad_config_file(tmp_path, text, message) -> None:
    """A config file with an unknown, duplicate or bad key is a one-line ConfigError."""
    with pytest.raises(ConfigError) as info:
        settings("--config", toml(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_environment_names_every_option() -> None:
    """Every option except --header has its ASYNCSYNC_ variable."""
    for opt in OPTIONS:
        if opt.name != "header":
            assert opt.env_var == "ASYNCSYNC_" + opt.name.upper().replace("-", "_")


# --- bad values ----------------------------------------------------------------------------

BAD_VALUES = [
    ("--url", "ftp://x", "url"),
    ("--url", "not a url", "url"),
    ("--auth", "kerberos", "auth"),
    ("--token-url", "nope", "token_url"),
    ("--client-auth", "digest", "client_auth"),
    ("--token-skew", "-1", "token_skew"),
    ("--revoke-url", "://", "revoke_url"),
    ("--batch-size", "0", "batch_size"),
    ("--batch-size", "ten", "batch_size"),
    ("--max-batch-bytes", "1x", "max_batch_bytes"),
    ("--max-batch-bytes", "8", "max_batch_bytes"),
    ("--concurrency", "0", "concurrency"),
    ("--queue-size", "-3", "queue_size"),
    ("--rate", "0", "rate"),
    ("--rate", "nan", "rate"),
    ("--timeout", "0", "timeout"),
    ("--max-attempts", "0", "max_attempts"),
    ("--max-retry-time", "-5", "max_retry_time"),
    ("--auth-retry-time", "0", "auth_retry_time"),
    ("--auth-retry-time", "soon", "auth_retry_time"),
    ("--body", "xml", "body"),
    ("--wrap", "  ", "wrap"),
    ("--checkpoint", "/no/such/dir/ck", "checkpoint"),
    ("--failed", "/no/such/dir/f.jsonl", "failed"),
    ("--summary-json", "/no/such/dir/s.json", "summary_json"),
    ("--ca-bundle", "/no/such/ca.pem", "ca_bundle"),
    ("--client-secret-file", "/no/such/secret", "client_secret_file"),
    ("--token-file", "/no/such/token", "token_file"),
    ("--config", "/no/such/config.toml", "config"),
    ("--token-store", "memcached://x", "token_store"),
    ("--processes", "0", "processes"),
    ("--shard", "4/4", "shard"),
    ("--db", "oracle://x/y", "db"),
]


@pytest.mark.parametrize(("flag", "value", "field"), BAD_VALUES)
def test_bad_value_names_the_option(flag, value, field) -> None:
    """A bad value raises ConfigError whose one line starts with the option's name."""
    with pytest.raises(ConfigError) as info:
        settings(flag, value)
    message = str(info.value)
    assert message.startswith(flag), message
    assert "\n" not in message
    assert info.value.field == field


@pytest.mark.parametrize(("flag", "value", "field"), BAD_VALUES[:12])
def test_bad_value_exits_2(capsys, flag, value, field) -> None:
    """At the CLI the same bad values exit 2 with one line naming the option."""
    code = main(["upload", "data.jsonl", "--url", URL, flag, value])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("asyncsync: error: ConfigError: ")
    assert flag in lines[0]


def test_bad_value_from_environment_says_where(capsys) -> None:
    """An environment value that fails names the option and the variable."""
    with pytest.raises(ConfigError, match=r"^--concurrency \(from ASYNCSYNC_CONCURRENCY\)"):
        settings(env={"ASYNCSYNC_CONCURRENCY": "many"})
    with pytest.raises(ConfigError, match=r"--gzip \(from ASYNCSYNC_GZIP\): expected true or"):
        settings(env={"ASYNCSYNC_GZIP": "maybe"})


def test_environment_booleans() -> None:
    """1/true/yes/on and 0/false/no/off, any case."""
    for text, want in [("1", True), ("YES", True), ("on", True), ("0", False), ("off", False)]:
        assert settings(env={"ASYNCSYNC_GZIP": text}).gzip is want


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--wrap", "records", "--body", "ndjson"], "--wrap: only applies to --body json"),
        (["--insecure", "--ca-bundle", __file__], "exclude each other"),
        (["--query", "select 1"], "--query: only applies with --db"),
        (["--auth", "oauth2"], "--auth oauth2 needs --token-url"),
        (["--token-url", TOKEN_URL], "--auth oauth2 needs --client-id"),
        (["--token-url", TOKEN_URL, "--client-id", "c"], "needs the client secret"),
        (["--auth", "bearer"], "--auth bearer needs the token in ASYNCSYNC_TOKEN"),
        (["--auth", "login"], "--auth login needs --token-url"),
        (["--auth", "login", "--token-url", TOKEN_URL], "ASYNCSYNC_PASSWORD, ASYNCSYNC_USERNAME"),
    ],
)
def test_inconsistent_settings(argv, message) -> None:
    """Combinations that cannot work are refused before anything runs."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        settings(*argv)


def test_source_and_url_are_required() -> None:
    with pytest.raises(ConfigError, match="SOURCE is required"):
        settings_from_argv(["--url", URL], {})
    with pytest.raises(ConfigError, match="--url is required"):
        settings_from_argv(["data.jsonl"], {})


def test_ca_bundle_that_is_not_pem(tmp_path) -> None:
    """--ca-bundle pointing at a file that holds no certificate fails naming the option."""
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"^--ca-bundle: cannot load"):
        settings("--ca-bundle", str(bad)).ssl_context()
    assert settings("--insecure").ssl_context() is False
    assert settings().ssl_context() is None


# --- secrets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["--client-secret", SECRET], "ASYNCSYNC_CLIENT_SECRET"),
        ([f"--client-secret={SECRET}"], "ASYNCSYNC_CLIENT_SECRET"),
        (["--secret", SECRET], "--client-secret-file"),
        (["--password", SECRET], "ASYNCSYNC_PASSWORD"),
        (["--token", SECRET], "ASYNCSYNC_TOKEN"),
        (["-H", f"Authorization: Bearer {SECRET}"], "ASYNCSYNC_TOKEN"),
        (
            ["--auth", "login", "--token-url", TOKEN_URL, "--login-body",
             f'{{"user": "u", "password": "{SECRET}"}}'],
            "${VAR}",
        ),
    ],
)  # fmt: skip
def test_secret_on_argv_is_refused(capsys, argv, hint) -> None:
    """A secret where ps would show it exits 2 with a hint, and is never echoed."""
    code = main(["upload", "data.jsonl", "--url", URL, *argv])
    captured = capsys.readouterr()
    assert code == 2
    assert hint in captured.err
    assert SECRET not in captured.err + captured.out


def test_unrecognized_option_values_are_not_echoed(capsys) -> None:
    """A misspelt secret flag is an error that does not repeat its value."""
    code = main(["upload", "data.jsonl", "--url", URL, "--client-secrt", SECRET])
    err = capsys.readouterr().err
    assert code == 2
    assert "--client-secrt" in err
    assert SECRET not in err


@pytest.mark.parametrize("key", ["client_secret", "client-secret", "password", "token", "secret"])
def test_secret_in_config_file_is_refused(tmp_path, key) -> None:
    """Secrets do not belong in the TOML file either; the value is never echoed."""
    with pytest.raises(ConfigError) as info:
        settings("--config", toml(tmp_path, f'{key} = "{SECRET}"\n'))
    assert "refusing key" in str(info.value)
    assert "ASYNCSYNC_" in str(info.value)
    assert SECRET not in str(info.value)


def test_authorization_header_in_config_file_is_refused(tmp_path) -> None:
    path = toml(tmp_path, f'[header]\nAuthorization = "Bearer {SECRET}"\n')
    with pytest.raises(ConfigError, match="refusing an Authorization header") as info:
        settings("--config", path)
    assert SECRET not in str(info.value)


def test_client_secret_sources(tmp_path) -> None:
    """--client-secret-file beats ASYNCSYNC_CLIENT_SECRET, which beats a file from the config."""
    flag_file = tmp_path / "flag-secret"
    flag_file.write_text("from-flag-file\n")
    conf_file = tmp_path / "conf-secret"
    conf_file.write_text("  from-config-file  \n")
    base = ["--token-url", TOKEN_URL, "--client-id", "me"]
    env = {"ASYNCSYNC_CLIENT_SECRET": "from-env"}
    config = toml(tmp_path, f'client-secret-file = "{conf_file}"\n')

    def secret(*argv: str, env: dict[str, str]) -> str:
        s = settings(*base, *argv, env=env)
        assert s.auth == "oauth2"
        assert s.client_secret is not None
        return s.client_secret.reveal()

    assert secret("--client-secret-file", str(flag_file), env=env) == "from-flag-file"
    assert secret("--config", config, env=env) == "from-env"
    assert secret("--config", config, env={}) == "from-config-file"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=r"^--client-secret-file: .* is empty"):
        secret("--client-secret-file", str(empty), env={})


def test_bearer_token_sources_and_auto_auth(tmp_path) -> None:
    """Default --auth: oauth2 with --token-url, else bearer when a token is there, else none."""
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    s = settings(env={"ASYNCSYNC_TOKEN": "env-token"})
    assert s.auth == "bearer"
    assert s.token == Secret("env-token")
    s = settings("--token-file", str(token_file), env={"ASYNCSYNC_TOKEN": "env-token"})
    assert s.token == Secret("file-token")
    s = settings(
        "--token-url", TOKEN_URL, "--client-id", "c",
        env={"ASYNCSYNC_TOKEN": "t", "ASYNCSYNC_CLIENT_SECRET": "x" * 8},
    )  # fmt: skip
    assert s.auth == "oauth2"
    assert settings("--auth", "none", env={"ASYNCSYNC_TOKEN": "t"}).auth == "none"


def test_secrets_never_in_repr(tmp_path) -> None:
    """repr(Settings) shows no secret; secret_values() lists them for the log filter."""
    env = {
        "ASYNCSYNC_CLIENT_SECRET": SECRET,
        "ASYNCSYNC_TOKEN": "static-token-value",
    }
    s = settings("--token-url", TOKEN_URL, "--client-id", "c", env=env)
    assert SECRET not in repr(s)
    assert "static-token-value" not in repr(s)
    assert set(s.secret_values()) == {SECRET, "static-token-value"}


def test_login_body_template() -> None:
    """The template's variables must be set; those in secret fields are known secrets."""
    env = {"ASYNCSYNC_USERNAME": "etl", "ASYNCSYNC_PASSWORD": "pw-from-env"}
    s = settings("--auth", "login", "--token-url", TOKEN_URL, env=env)
    assert s.auth == "login"
    assert s.secret_values() == ["pw-from-env"]
    body = '{"Username": "${U}", "Credentials": {"Password": "${P}"}}'
    s = settings(
        "--auth", "login", "--token-url", TOKEN_URL, "--login-body", body,
        "--token-field", "session_token", "--expires-field", "session_token_expiration",
        env={"U": "etl", "P": "pw2-from-env"},
    )  # fmt: skip
    assert s.secret_values() == ["pw2-from-env"]
    assert (s.token_field, s.expires_field) == ("session_token", "session_token_expiration")
    with pytest.raises(ConfigError, match=r"^--login-body: expected a JSON object"):
        settings("--auth", "login", "--token-url", TOKEN_URL, "--login-body", "[1, 2]")


# --- headers, sizes, shards, verbosity -----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("X-Tenant: acme", ("X-Tenant", "acme")),
        ("X-Empty:", ("X-Empty", "")),
        ("  X-Sp  :  a: b  ", ("X-Sp", "a: b")),
    ],
)
def test_parse_header(raw, want) -> None:
    assert parse_header(raw) == want


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("NoColon", "with a colon"),
        (": value", "header name"),
        ("Bad Name: v", "header name"),
        ("Authorization: Basic abc", "refusing an Authorization header"),
        ("authorization: x", "refusing an Authorization header"),
    ],
)
def test_bad_header(raw, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_header(raw)
    with pytest.raises(ConfigError, match=r"^--header: "):
        settings("--header", raw)


def test_headers_merge_file_then_flags(tmp_path) -> None:
    """Config headers (a table or a list) come first; a flag replaces one of the same name."""
    path = toml(tmp_path, '[header]\nX-Tenant = "acme"\nX-Run = "file"\n')
    s = settings("--config", path, "-H", "x-run: flag", "--header", "X-New: 1")
    assert dict(s.headers) == {"X-Tenant": "acme", "x-run": "flag", "X-New": "1"}
    path = toml(tmp_path, 'header = ["X-A: 1", "X-B: 2"]\n')
    assert settings("--config", path).headers == (("X-A", "1"), ("X-B", "2"))


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (1048576, 1048576),
        ("1048576", 1048576),
        ("512KiB", 512 * 1024),
        ("5MiB", 5 * 2**20),
        ("5MB", 5_000_000),
        ("1.5 k", 1500),
        ("2GiB", 2 * 2**30),
    ],
)
def test_parse_size(raw, want) -> None:
    assert parse_size(raw) == want


@pytest.mark.parametrize(
    ("raw", "want"),
    [("0/4", (0, 4)), ("3/4", (3, 4)), (" 1 / 2 ", (1, 2)), ("0/1", (0, 1))],
)
def test_parse_shard(raw, want) -> None:
    """--shard K/N is 0-based, as Kubernetes indexed Jobs number their pods."""
    assert parse_shard(raw) == want
    assert settings("--shard", raw).shard == want


@pytest.mark.parametrize("raw", ["4/4", "1/0", "a/b", "1", "-1/4", "1/2/3", ""])
def test_bad_shard(raw) -> None:
    with pytest.raises(ValueError, match="K/N"):
        parse_shard(raw)


def test_scale_out_options_are_checked() -> None:
    """The scale-out options parse and validate: SQL needs a key and one of query/table."""
    s = settings_from_argv(
        ["--url", URL, "--db", "sqlite:///x.db", "--query", "select * from t", "--key", "id",
         "--token-store", "redis://127.0.0.1:6379/0", "--shard", "0/2"],
        {},
    )  # fmt: skip
    assert s.source is None and s.db == "sqlite:///x.db" and s.key == "id"
    assert s.failed == Path("asyncsync-failed.jsonl")
    assert s.shard == (0, 2)
    assert settings("--token-store", "file:/tmp/tok").token_store == "file:/tmp/tok"
    with pytest.raises(ConfigError, match="either SOURCE or --db"):
        settings("--db", "sqlite:///x.db", "--table", "t")
    with pytest.raises(ConfigError, match="exactly one of --query or --table"):
        settings_from_argv(["--url", URL, "--db", "sqlite:///x.db"], {})
    with pytest.raises(ConfigError, match="--db needs --key"):
        settings_from_argv(["--url", URL, "--db", "sqlite:///x.db", "--query", "q"], {})
    with pytest.raises(ConfigError, match="--db needs --key"):
        settings_from_argv(["--url", URL, "--db", "sqlite:///x.db", "--table", "t"], {})


def test_sql_source_problems_exit_2_at_the_cli(tmp_path: Path, capsys) -> None:
    """A missing database or table is exit 2 naming it, before any request."""
    db = tmp_path / "x.db"
    code = main(["upload", "--url", URL, "--db", f"sqlite:///{db}", "--table", "t", "--key", "id"])
    assert code == 2
    assert "SourceError" in capsys.readouterr().err


def test_replay_checks_options_and_its_input(capsys) -> None:
    """replay takes upload's options and checks them; a missing dead-letter file exits 2."""
    assert main(["replay", "x.failed.jsonl", "--url", URL, "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert main(["replay", "x.failed.jsonl", "--url", URL]) == 2
    assert "SourceError: x.failed.jsonl: no such file" in capsys.readouterr().err


def test_verbosity() -> None:
    """-v/-vv raise the log level, -q lowers it; a flag beats the environment."""
    assert settings("-v").verbosity == 1
    assert settings("-vvv").verbosity == 2
    assert settings("-q").verbosity == -1
    assert settings(env={"ASYNCSYNC_QUIET": "1"}).verbosity == -1
    assert settings("-v", env={"ASYNCSYNC_QUIET": "1"}).verbosity == 1
    with pytest.raises(ConfigError, match="not allowed with"):
        settings("-v", "-q")
    with pytest.raises(ConfigError, match="-v and -q exclude each other"):
        settings(env={"ASYNCSYNC_QUIET": "1", "ASYNCSYNC_VERBOSE": "1"})


# --- the contract's flags ------------------------------------------------------------------

CONTRACT_FLAGS = [
    "--auth",
    "--token-url",
    "--client-id",
    "--client-secret-file",
    "--scope",
    "--client-auth",
    "--login-body",
    "--token-field",
    "--expires-field",
    "--token-skew",
    "--revoke-url",
    "--batch-size",
    "--max-batch-bytes",
    "--concurrency",
    "--queue-size",
    "--rate",
    "--timeout",
    "--max-attempts",
    "--max-retry-time",
    "--body",
    "--wrap",
    "--gzip",
    "--header",
    "--checkpoint",
    "--resume",
    "--no-resume",
    "--failed",
    "--summary-json",
    "--progress",
    "--no-progress",
    "-v",
    "-q",
    "--config",
    "--token-store",
    "--processes",
    "--shard",
    "--db",
    "--query",
    "--key",
    "--table",
    "--url",
    "--token-file",
    "--ca-bundle",
    "--insecure",
    "--version",
]


def test_every_contract_flag_exists() -> None:
    """upload accepts every option the DESIGN.md contract lists."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    upload = sub.choices["upload"]  # type: ignore[attr-defined]
    known = {s for a in [*upload._actions, *parser._actions] for s in a.option_strings}
    assert set(CONTRACT_FLAGS) - known == set()


def test_default_state_files_fall_back_to_the_working_directory(tmp_path, monkeypatch) -> None:
    """Exports on a read-only mount: default checkpoint and dead-letter files go to the CWD."""
    from asyncsync._paths import writable_default

    readonly = tmp_path / "exports"
    readonly.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if Path(p) == readonly else real_access(p, mode)
    )
    assert writable_default(readonly / "a.jsonl.asyncsync") == work / "a.jsonl.asyncsync"
    assert writable_default(work / "b.failed.jsonl") == work / "b.failed.jsonl"
    assert writable_default(None) is None
