"""/v1/files through the official SDK: upload (streamed, validated, encrypted at rest), list, retrieve,
content, delete; size limit; tenant isolation."""

from __future__ import annotations

import stat

import openai
import pytest
from openai import OpenAI

from tests.unit.conftest import DEEP, TRAIN, Admin, make_client


@pytest.fixture
def env(tmp_path):
    with make_client(data_dir=tmp_path, settings={"max_file_bytes": 4096}) as c:
        a = Admin(c)
        t1, t2 = a.tenant("one"), a.tenant("two")
        sdk = {n: OpenAI(base_url="http://testserver/v1", api_key=a.key(t)[1], http_client=c, max_retries=0)
               for n, t in (("one", t1), ("two", t2))}
        yield c, sdk, tmp_path


def test_upload_list_retrieve_content_delete(env):
    c, sdk, tmp = env
    f = sdk["one"].files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    assert f.id.startswith("file-") and f.bytes == len(TRAIN) and f.filename == "train.jsonl"
    assert f.purpose == "fine-tune" and f.status == "processed"
    assert [x.id for x in sdk["one"].files.list().data] == [f.id]
    assert sdk["one"].files.retrieve(f.id).bytes == len(TRAIN)
    assert sdk["one"].files.content(f.id).content == TRAIN
    stored = (tmp / "artifacts" / "files" / f"{f.id}.enc").read_bytes()
    assert b"alpha" not in stored and b"messages" not in stored and len(stored) > len(TRAIN)
    key = tmp / "master.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert sdk["one"].files.delete(f.id).deleted
    assert not (tmp / "artifacts" / "files" / f"{f.id}.enc").exists()
    with pytest.raises(openai.NotFoundError):
        sdk["one"].files.retrieve(f.id)


def test_invalid_fine_tune_file_names_the_lines(env):
    _, sdk, tmp = env
    bad = (TRAIN + b'{"messages": [{"role": "user", "content": "hi"}]}\n' + b"not json\n"
           + b'{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}\n')
    with pytest.raises(openai.BadRequestError) as e:
        sdk["one"].files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    msg = e.value.message
    assert "line 4: no assistant message" in msg and "line 5: invalid JSON" in msg and "line 6: messages[0].role" in msg
    assert e.value.code == "invalid_file_format" and e.value.param == "file"
    assert sdk["one"].files.list().data == []
    assert list((tmp / "artifacts" / "files").glob("*")) == []  # nothing half-written kept
    # the same bytes are fine for a purpose that is not fine-tuning
    assert sdk["one"].files.create(file=("b.jsonl", bad), purpose="batch").status == "processed"


def test_size_limit_is_413_and_keeps_nothing(env):
    _, sdk, tmp = env
    with pytest.raises(openai.APIStatusError) as e:
        sdk["one"].files.create(file=("big.jsonl", TRAIN * 100), purpose="fine-tune")
    assert e.value.status_code == 413 and e.value.code == "file_too_large"
    assert list((tmp / "artifacts" / "files").glob("*")) == []


def test_bad_purpose_and_missing_file_are_400(env):
    c, sdk, _ = env
    with pytest.raises(openai.BadRequestError) as e:
        sdk["one"].files.create(file=("t.jsonl", TRAIN), purpose="nonsense")  # type: ignore[arg-type]
    assert e.value.param == "purpose"
    r = c.post("/v1/files", data={"purpose": "fine-tune"}, files={})
    assert r.status_code == 400


def test_files_are_invisible_to_other_tenants(env):
    _, sdk, _ = env
    f = sdk["one"].files.create(file=("t.jsonl", TRAIN), purpose="fine-tune")
    other = sdk["two"]
    assert other.files.list().data == []
    for call in (lambda: other.files.retrieve(f.id), lambda: other.files.content(f.id),
                 lambda: other.files.delete(f.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert sdk["one"].files.content(f.id).content == TRAIN


def test_a_line_nested_thousands_deep_is_a_format_error_not_a_500(env):
    _, sdk, tmp = env
    with pytest.raises(openai.BadRequestError) as e:
        sdk["one"].files.create(file=("deep.jsonl", DEEP), purpose="fine-tune")
    assert e.value.param == "file" and "nested too deeply" in e.value.message
    assert list((tmp / "artifacts" / "files").glob("*")) == []
