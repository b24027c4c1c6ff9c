"""Multipart uploads: malformed bodies and part headers are 400s naming `file`, one file per request, file
names bounded, no partial (.tmp) file left behind by any failure, and any file name downloads."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from tests.unit.conftest import TRAIN, Admin, bearer, make_client

B = "llmaasboundary"


@pytest.fixture
def env(tmp_path):
    with make_client(data_dir=tmp_path, settings={"max_file_bytes": 4096}) as c:
        a = Admin(c)
        _, key = a.key(a.tenant("acme"))
        yield c, bearer(key), tmp_path


def part(name: str, value: bytes, filename: bytes | None = None, extra: bytes = b"") -> bytes:
    disp = b'form-data; name="' + name.encode() + b'"' + (b'; filename="' + filename + b'"' if filename else b"")
    return b"--" + B.encode() + b"\r\nContent-Disposition: " + disp + b"\r\n" + extra + b"\r\n" + value + b"\r\n"


def form(*parts: bytes, close: bool = True) -> bytes:
    return b"".join(parts) + (b"--" + B.encode() + b"--\r\n" if close else b"")


def post(c, h, body: bytes, boundary: str = B):
    return c.post("/v1/files", headers={**h, "content-type": f"multipart/form-data; boundary={boundary}"},
                  content=body)


def leftovers(root) -> list:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


PURPOSE = part("purpose", b"fine-tune")
FILE = part("file", TRAIN, b"t.jsonl")


@pytest.mark.parametrize(("body", "boundary"), [
    (b"this is not multipart at all", B),
    (form(PURPOSE, FILE, close=False), B),  # no closing boundary
    (form(PURPOSE, FILE[: len(FILE) // 2], close=False), B),  # cut off in the middle of the file
    (form(PURPOSE, part("file", TRAIN, "é.jsonl".encode("latin-1"))), B),  # part header not UTF-8
    (form(PURPOSE, part("file", TRAIN, b"a\x01b.jsonl")), B),  # control character in a part header
    (form(PURPOSE, part("file", TRAIN, b"t.jsonl", extra=b"X-Pad: " + b"a" * 9000 + b"\r\n")), B),
    (form(PURPOSE, *(part(f"f{i}", b"x") for i in range(16)), FILE), B),  # 18 parts
    (form(PURPOSE, part("file", TRAIN, b"a" * 10_000 + b".jsonl")), B),  # file name over 255 characters
    (form(PURPOSE, FILE, part("file", TRAIN, b"second.jsonl")), B),  # two file parts
    (b"--" + b"b" * 300 + b"\r\n", "b" * 300),  # boundary over 256 characters
    (b"", B),
])
def test_malformed_uploads_are_400_and_leave_no_partial_file(env, body, boundary):
    c, h, root = env
    r = post(c, h, body, boundary)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "file" and r.json()["error"]["type"] == "invalid_request_error"
    assert leftovers(root) == []
    assert c.get("/v1/files", headers=h).json()["data"] == []


def test_non_utf8_field_value_is_400_naming_it(env):
    c, h, root = env
    r = post(c, h, form(part("purpose", b"fine-\xfftune"), FILE))
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose", r.text
    assert leftovers(root) == []


def test_failed_uploads_never_leave_tmp_files(env):
    c, h, root = env
    # too large, invalid purpose, invalid fine-tune content, missing purpose: each after the file was streamed
    assert post(c, h, form(PURPOSE, part("file", TRAIN * 200, b"big.jsonl"))).status_code == 413
    assert post(c, h, form(part("purpose", b"nope"), FILE)).status_code == 400
    assert post(c, h, form(PURPOSE, part("file", b"not json\n", b"bad.jsonl"))).status_code == 400
    assert post(c, h, form(FILE)).status_code == 400
    assert leftovers(root) == []
    ok = post(c, h, form(PURPOSE, FILE))  # a well-formed upload (written by hand, as above) still works
    assert ok.status_code == 200, ok.text
    assert leftovers(root) == []


@pytest.mark.parametrize("name", ["日本語.jsonl", 'quote"and\\back.jsonl', "naïve résumé.jsonl", "a;b=c.jsonl"])
def test_any_file_name_downloads(env, name):
    c, h, _ = env
    up = c.post("/v1/files", headers=h, files={"file": (name, TRAIN)}, data={"purpose": "fine-tune"})
    assert up.status_code == 200, up.text
    stored = up.json()["filename"]  # httpx sends '"' as %22, the HTML5 way; the rest arrives as is
    assert stored == name.replace('"', "%22")
    r = c.get(f"/v1/files/{up.json()['id']}/content", headers=h)
    assert r.status_code == 200 and r.content == TRAIN
    cd = r.headers["content-disposition"]
    assert cd.isascii() and cd.startswith('attachment; filename="')
    assert unquote(cd.split("filename*=UTF-8''", 1)[1]) == stored
