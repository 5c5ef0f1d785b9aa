"""The CLI: help, and one clear message with a stable exit code for each bad argument."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from voicefleet.flows.cli import app
from voicefleet.flows.commands.exits import EXIT_BAD_INPUT, EXIT_NOT_FOUND

runner = CliRunner()
STRONG_KEY = "5d0f1c3a8e7b2946f0a1d3c5e7b9f2a4c6e8d0b2a4f6e8c1d3b5a7f9e2c4d6b8"  # hex of 32 random bytes


@pytest.fixture(autouse=True)
def local_mode(monkeypatch):
    """These commands run as `--as NAME --local`: a single-user machine (no principal key, the switch on)."""
    monkeypatch.setenv("VOICEFLEET_LOCAL_MODE", "1")
    monkeypatch.delenv("VOICEFLEET_PRINCIPAL_KEY", raising=False)


def run(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


@pytest.mark.parametrize("cmd", [[], ["demo"], ["enroll"], ["render"], ["voices"], ["voices", "list"], ["jobs", "show"],
                                 ["voices", "grant"], ["voices", "revoke"], ["voices", "withdraw"], ["audit"],
                                 ["watermark", "detect"], ["consent"], ["consent", "approve"], ["consent", "reinstate"]])
def test_help_for_every_command(cmd):
    r = run(*cmd, "--help")
    assert r.exit_code == 0 and "--store" in r.output or cmd in ([], ["voices"], ["consent"])


def _script(tmp_path, text: str, name="script.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_missing_script_file(tmp_path):
    r = run("render", str(tmp_path / "nope.csv"), "--as", "user:a", "--local", "--store", str(tmp_path / "s"))
    assert r.exit_code == EXIT_BAD_INPUT and "script not found" in r.output


def test_unreadable_script(tmp_path):
    p = tmp_path / "bad.parquet"
    p.write_bytes(b"\x00\x01 definitely not parquet")
    r = run("render", str(p), "--as", "user:a", "--local", "--store", str(tmp_path / "s"))
    assert r.exit_code == EXIT_BAD_INPUT and "cannot read script" in r.output


def test_unsupported_script_format(tmp_path):
    r = run("render", _script(tmp_path, "x", "script.txt"), "--as", "user:a", "--local")
    assert r.exit_code == EXIT_BAD_INPUT and "unsupported script format" in r.output


def test_unknown_column(tmp_path):
    s = _script(tmp_path, "line_id,voice_id,text,language,mood\n1,v,hi,en,happy\n")
    r = run("render", s, "--as", "user:a", "--local", "--store", str(tmp_path / "s"))
    assert r.exit_code == EXIT_BAD_INPUT and "unknown column(s) mood" in r.output


def test_missing_column(tmp_path):
    s = _script(tmp_path, "line_id,voice_id,text\n1,v,hi\n")
    r = run("render", s, "--as", "user:a", "--local", "--store", str(tmp_path / "s"))
    assert r.exit_code == EXIT_BAD_INPUT and "lacks required column(s) language" in r.output


def test_duplicate_and_unsafe_line_ids(tmp_path):
    dup = _script(tmp_path, "line_id,voice_id,text,language\n1,v,a,en\n1,v,b,en\n")
    r = run("render", dup, "--as", "user:a", "--local", "--store", str(tmp_path / "s"))
    assert r.exit_code == EXIT_BAD_INPUT and "appears more than once" in r.output
    bad = _script(tmp_path, "line_id,voice_id,text,language\n../etc,v,a,en\n", "bad.csv")
    r = run("render", bad, "--as", "user:a", "--local", "--store", str(tmp_path / "s"))
    assert r.exit_code == EXIT_BAD_INPUT and "line_id" in r.output


def test_unknown_voice_in_render(tmp_path):
    s = _script(tmp_path, "line_id,voice_id,text,language\n1,nobody,hi,en\n")
    r = run("render", s, "--as", "user:a", "--local", "--store", str(tmp_path / "s"))
    assert r.exit_code == EXIT_NOT_FOUND and "unknown voice(s) nobody" in r.output


def test_empty_principal(tmp_path):
    s = _script(tmp_path, "line_id,voice_id,text,language\n1,v,hi,en\n")
    r = run("render", s, "--as", "  ", "--local", "--store", str(tmp_path / "s"))
    assert r.exit_code == EXIT_BAD_INPUT and "principal" in r.output


def test_unknown_voice_show(tmp_path):
    r = run("voices", "show", "nobody", "--store", str(tmp_path / "s"))
    assert r.exit_code == EXIT_NOT_FOUND and "unknown voice" in r.output


def test_unknown_job(tmp_path):
    r = run("jobs", "show", "job-123", "--store", str(tmp_path / "s"))
    assert r.exit_code == EXIT_NOT_FOUND and "no render job job-123" in r.output


def test_enroll_missing_source_and_pretrained(tmp_path):
    r = run("enroll", str(tmp_path / "missing"), "--store", str(tmp_path / "s"))
    assert r.exit_code == EXIT_BAD_INPUT and "does not exist" in r.output
    (tmp_path / "src").mkdir()
    r = run("enroll", str(tmp_path / "src"), "--pretrained", str(tmp_path / "none"))
    assert r.exit_code == EXIT_BAD_INPUT and "--pretrained folder" in r.output
    r = run("enroll", str(tmp_path / "src"), "--recipe", str(tmp_path / "r.json"))
    assert r.exit_code == EXIT_BAD_INPUT and "--recipe" in r.output


def test_enroll_bad_qc_options(tmp_path):
    (tmp_path / "src").mkdir()
    r = run("enroll", str(tmp_path / "src"), "--min-speech", "0")
    assert r.exit_code == EXIT_BAD_INPUT and "--min-speech must be > 0 seconds, got 0" in r.output
    r = run("enroll", str(tmp_path / "src"), "--asr-model", str(tmp_path / "whisper"))
    assert r.exit_code == EXIT_BAD_INPUT and "--asr-model folder" in r.output


def test_voices_list_on_empty_store(tmp_path):
    r = run("voices", "list", "--store", str(tmp_path / "s"))
    assert r.exit_code == 0


def test_plain_principal_needs_local_mode(tmp_path, monkeypatch):
    monkeypatch.delenv("VOICEFLEET_LOCAL_MODE", raising=False)
    monkeypatch.delenv("VOICEFLEET_TOKEN", raising=False)
    s = _script(tmp_path, "line_id,voice_id,text,language\n1,v,hi,en\n")
    r = run("render", s, "--as", "user:a", "--store", str(tmp_path / "s"))
    assert r.exit_code == EXIT_BAD_INPUT and "accepted only in local mode" in r.output
    r = run("render", s, "--as", "user:a", "--local", "--store", str(tmp_path / "s"))
    assert r.exit_code == EXIT_BAD_INPUT and "accepted only in local mode" in r.output   # --local cannot switch it on
    r = run("render", s, "--store", str(tmp_path / "s"))
    assert r.exit_code == EXIT_BAD_INPUT and "no principal" in r.output


def test_forged_principal_token_is_refused(tmp_path, monkeypatch):
    import datetime as dt

    from voicefleet.tasks.safety.principal import mint_token

    monkeypatch.setenv("VOICEFLEET_PRINCIPAL_KEY", STRONG_KEY)
    token = mint_token("user:a", dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1))
    head, name, token_id, issued, expiry, mac = token.split(".")
    forged = ".".join([head, "dXNlcjpyb290", token_id, issued, expiry, mac])  # "user:root" with user:a's signature
    s = _script(tmp_path, "line_id,voice_id,text,language\n1,v,hi,en\n")
    r = run("render", s, "--token", forged, "--store", str(tmp_path / "s"))
    assert r.exit_code == EXIT_BAD_INPUT and "signature does not verify" in r.output
    r = run("render", s, "--token", token, "--store", str(tmp_path / "s"))   # a good token gets past it
    assert r.exit_code == EXIT_NOT_FOUND and "unknown voice(s) v" in r.output
