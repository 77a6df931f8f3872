"""No secret is written or printed: saves and failures with secrets of every shape, then a
grep of every stored object, pointer, record, log line, exception message and CLI output."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

import dask.array as da
import numpy as np
import pytest

import cpr_zarr
from cpr_zarr.core.provenance import record_for_task

if TYPE_CHECKING:
    from tests.s3_server import S3Server

BUCKET = "cpr-zarr-tests"
CLI = str(Path(sys.executable).with_name("cpr-zarr"))
# one secret per shape: plain, with '/', '+' (AWS secret keys), '@', ':', percent-escapes
URL_USER = "AKIAURLUSER7788"
URL_SECRET = "url/Secret+with/slash99"
AT_SECRET = "p@ss@word-with-ats"
COLON_SECRET = "colon:sep:secret:77"
PERCENT_SECRET = "pct%2Fencoded%40secret"
OPTION_KEY = "AKIAOPTIONKEY4242"
OPTION_SECRET = "option-secret-value-1234"
TOKEN = "tok-en-value-9876543"
PASSWORD = "hunter2-is-my-password"
NESTED = "nested-credential-value-55"


def secrets(s3_server: S3Server) -> list[str]:
    raw = [
        URL_USER, URL_SECRET, AT_SECRET, COLON_SECRET, PERCENT_SECRET, OPTION_KEY,
        OPTION_SECRET, TOKEN, PASSWORD, NESTED, s3_server.SECRET_KEY, s3_server.ACCESS_KEY,
    ]  # fmt: skip
    return sorted({v for s in raw for v in (s, urllib.parse.unquote(s))})


def assert_clean(texts: dict[str, str], s3_server: S3Server) -> None:
    leaks = [
        f"{secret!r} in {where}: ...{text[max(0, text.find(secret) - 80) : text.find(secret) + 40]}..."
        for where, text in texts.items()
        for secret in secrets(s3_server)
        if secret in text
    ]
    assert not leaks, "\n".join(leaks)


def task_function(image: np.ndarray, token: str, password: str, **options: object) -> None:
    """A task's signature: secrets as top-level parameters, nested ones, in URLs."""


def test_secrets_of_every_shape_never_reach_storage_messages_logs_or_cli(
    s3_server: S3Server, s3_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = s3_url.removeprefix("s3://")
    secret_url = f"s3://{URL_USER}:{URL_SECRET}@{prefix}"
    texts: dict[str, str] = {}
    errors: list[BaseException] = []
    with caplog.at_level(logging.DEBUG, logger="cpr_zarr"):
        store = cpr_zarr.ResultStore(
            secret_url,
            key=OPTION_KEY,  # moto accepts any credentials
            secret=OPTION_SECRET,
            client_kwargs={"region_name": "us-east-1"},
        )
        data = np.arange(2000, dtype=np.uint16).reshape(20, 100)
        parameters = {
            "image": data,
            "token": TOKEN,
            "password": PASSWORD,
            "aws_secret_access_key": s3_server.SECRET_KEY,
            "config": {"credentials": {"value": NESTED}, "note": f"reads {secret_url}"},
            "source": f"s3://x:{AT_SECRET}@bucket/in.zarr",
            "other": f"https://u:{COLON_SECRET}@host/a and s3://k:{PERCENT_SECRET}@b/c",
            "copied_by_value": OPTION_SECRET,  # a storage option's value under a plain name
        }
        record = record_for_task(task_function, parameters)
        target = store.save(data, name="plain", provenance=record)
        streamed = store.save(
            da.from_array(data + 1, chunks=(10, 50)),
            name="lazy",
            provenance={"password": PASSWORD, "env": os.environ["AWS_SECRET_ACCESS_KEY"]},
        )
        logging.getLogger("cpr_zarr").warning("opening %s with %s", secret_url, OPTION_SECRET)
        texts["pointers"] = target.to_json() + streamed.to_json() + repr(target) + repr(store)
        texts["provenance"] = json.dumps(store.provenance(target) + store.provenance(streamed))

        # failures: a missing bucket, references outside the store, a bad value
        missing = f"s3://{URL_USER}:{URL_SECRET}@no-such-bucket-cpr/x/results.zarr"
        for attempt in (
            lambda: cpr_zarr.ResultStore(missing, mode="r", secret=OPTION_SECRET),
            lambda: store.open(f"x-{'0' * 32}/../../{secret_url}"),
            lambda: store.open("nothing-like-this"),
            lambda: store.save(object(), name="bad", provenance={"token": TOKEN}),
        ):
            with pytest.raises(cpr_zarr.CprZarrError) as info:
                attempt()
            errors.append(info.value)
    texts["exceptions"] = "\n".join(f"{e!r} {e}" for e in errors)
    texts["log"] = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "opening s3://" in texts["log"]  # the line is there, redacted

    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    outputs = []
    for args in (
        ["ls", secret_url],
        ["info", secret_url, target.content_hash],
        ["info", secret_url, "--json", streamed.content_hash],
        ["verify", secret_url],
        ["ls", missing],
        ["info", secret_url, f"plain-{target.content_hash}/../../x"],
    ):
        proc = subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=120)
        outputs.append(proc.stdout + proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
    texts["cli"] = "\n".join(outputs)
    assert "parameters" in outputs[1]  # info printed the (redacted) parameters

    objects = s3_server.all_objects(BUCKET)
    texts["objects"] = "\n".join(
        v.decode(errors="replace")
        for k, v in objects.items()
        if k.startswith(prefix[len(BUCKET) + 1 :])
    )
    assert texts["objects"]
    assert_clean(texts, s3_server)
    # the redacted record still says what was there
    params = store.provenance(target)[0]["parameters"]
    assert params["token"] == params["password"] == params["aws_secret_access_key"] == "<redacted>"
    assert params["config"]["credentials"] == "<redacted>"
    assert "s3://bucket/in.zarr" in params["source"]


def test_secrets_known_after_a_first_redaction_are_redacted_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cpr_zarr.redact import REDACTED, redact_text, redact_value, register_secret

    # the secrets are looked up once per change, not per call: every change must count
    assert redact_text("plain words") == "plain words"
    monkeypatch.setenv("CPR_ZARR_TEST_API_TOKEN", "env-set-later-5150")
    assert redact_text("uses env-set-later-5150") == f"uses {REDACTED}"
    monkeypatch.setenv("CPR_ZARR_TEST_API_TOKEN", "env-changed-later-6160")
    assert redact_value({"note": ["env-changed-later-6160"]}) == {"note": [REDACTED]}
    assert redact_text("env-set-later-5150") == "env-set-later-5150"  # no longer a secret
    register_secret("registered-later-7170")
    assert redact_value({"a": ("registered-later-7170 and env-changed-later-6160",)}) == {
        "a": (f"{REDACTED} and {REDACTED}",)
    }
