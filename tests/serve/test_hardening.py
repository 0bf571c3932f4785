"""The HTTP service against hostile or clumsy clients, on a real uvicorn over real sockets: bodies that
stall (408 after --body-timeout, feature requests answered meanwhile), uploads in transfer bounded
apart from the inference queue, multipart edge cases (two files, RFC 5987 ``filename*``), bodies
without a JSON Content-Type, oversized bodies sent slowly, stale uploads of a killed server."""

from __future__ import annotations

import os
import socket
import time

import httpx
import pytest

from vidcls.cli import main
from vidcls.errors import ConfigError
from vidcls.serve import ServeSettings, create_app

BOUNDARY = "hardeningboundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def part(field: str, disposition_tail: str, data: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"{disposition_tail}\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + b"\r\n"
    )


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def stalled(
    port: int, path: str, content_type: str, declared: int, sent: bytes, headers: str = ""
) -> socket.socket:
    """A client that sends its headers and the first bytes of a ``declared``-byte body, then stops."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {declared}\r\n{headers}\r\n".encode()
        + sent
    )
    return s


def status_of(s: socket.socket, timeout: float = 30) -> tuple[int, bytes]:
    """(status code, whole response) of what the server answers on ``s`` before it closes it."""
    s.settimeout(timeout)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return int(data.split(b" ", 2)[1]), data


def has_answered(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return bool(s.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    finally:
        s.setblocking(True)


FEATURES = {"features": [[0.1, 0.2, 0.3, 0.4]] * 3}


def test_stalled_uploads_get_408_and_feature_requests_are_answered_meanwhile(fake, serve_app, clip, tmp_path):
    app = create_app(fake(), ServeSettings(tmp_dir=str(tmp_path), max_queue=8, body_timeout_s=2.0))
    head = part("file", '; filename="stall.mp4"', b"\0" * 1024)
    with serve_app(app) as url:
        t0 = time.monotonic()
        clients = [stalled(port_of(url), "/v1/predict", MULTIPART, 100_000, head) for _ in range(8)]
        time.sleep(0.3)
        with httpx.Client(base_url=url, timeout=30) as c:
            answers = [c.post("/v1/predict/features", json=FEATURES) for _ in range(3)]
        assert [r.status_code for r in answers] == [200] * 3, [r.text for r in answers]
        assert not any(has_answered(s) for s in clients)  # they were still stalled meanwhile
        results = [status_of(s) for s in clients]
        waited = time.monotonic() - t0
        assert [code for code, _ in results] == [408] * 8, results[0][1]
        assert all(b"--body-timeout" in raw for _, raw in results)
        assert 1.9 < waited < 10
        with open(clip, "rb") as f:  # the service is whole again
            assert (
                httpx.post(url + "/v1/predict", files={"file": ("c.mp4", f)}, timeout=30).status_code == 200
            )
    assert list(tmp_path.iterdir()) == []


def test_a_stalled_feature_body_gets_408(fake, serve_app):
    app = create_app(fake(), ServeSettings(body_timeout_s=1.0))
    with serve_app(app) as url:
        t0 = time.monotonic()
        s = stalled(port_of(url), "/v1/predict/features", "application/json", 1000, b'{"features": [[')
        assert status_of(s)[0] == 408 and 0.9 < time.monotonic() - t0 < 8
        assert httpx.post(url + "/v1/predict/features", json=FEATURES).status_code == 200


def test_a_refused_body_that_stalls_still_gets_its_answer(fake, serve_app):
    """401 (no key) is answered once the body is read and discarded; a body that stops arriving is given up
    after --body-timeout, and the client gets the 401 rather than waiting forever."""
    app = create_app(fake(), ServeSettings(api_key="k3y", body_timeout_s=1.0))
    with serve_app(app) as url:
        s = stalled(
            port_of(url), "/v1/predict", MULTIPART, 100_000, part("file", '; filename="a.mp4"', b"1" * 1024)
        )
        code, raw = status_of(s, timeout=15)
        assert code == 401 and b"X-API-Key" in raw


def test_uploads_in_transfer_are_bounded_apart_from_the_queue(fake, serve_app, clip, tmp_path):
    app = create_app(
        fake(), ServeSettings(tmp_dir=str(tmp_path), max_queue=8, max_uploads=2, body_timeout_s=3.0)
    )
    head = part("file", '; filename="stall.mp4"', b"\0" * 1024)
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        clients = [stalled(port_of(url), "/v1/predict", MULTIPART, 100_000, head) for _ in range(2)]
        time.sleep(0.3)
        with open(clip, "rb") as f:
            r = c.post("/v1/predict", files={"file": ("c.mp4", f)})
        assert r.status_code == 503 and "uploads" in r.json()["error"] and int(r.headers["Retry-After"]) >= 1
        assert c.post("/v1/predict/features", json=FEATURES).status_code == 200
        assert [status_of(s)[0] for s in clients] == [408, 408]
        with open(clip, "rb") as f:
            assert c.post("/v1/predict", files={"file": ("c.mp4", f)}).status_code == 200
    assert list(tmp_path.iterdir()) == []


def test_the_body_timeout_is_an_idle_timeout_not_a_deadline(fake, serve_app, clip, tmp_path):
    """A body that keeps arriving, each piece within the timeout, is received however long it takes."""
    app = create_app(fake(), ServeSettings(tmp_dir=str(tmp_path), body_timeout_s=2.0))
    body = form(part("file", '; filename="slow.mp4"', clip.read_bytes()))
    pieces = [body[i * len(body) // 6 : (i + 1) * len(body) // 6] for i in range(6)]

    def slowly():
        for piece in pieces:
            time.sleep(0.5)
            yield piece

    with serve_app(app) as url:
        t0 = time.monotonic()
        r = httpx.post(url + "/v1/predict", content=slowly(), headers={"content-type": MULTIPART}, timeout=30)
        assert r.status_code == 200 and r.json()["input"] == "slow.mp4" and time.monotonic() - t0 > 2.9
    assert list(tmp_path.iterdir()) == []


def test_an_oversized_upload_sent_slowly_gets_413_and_leaves_no_file(fake, serve_app, tmp_path):
    app = create_app(fake(), ServeSettings(tmp_dir=str(tmp_path), max_upload_mb=0.25, body_timeout_s=2.0))
    body = form(part("file", '; filename="big.mp4"', b"\1" * 600_000))

    def slowly():
        for i in range(0, len(body), 32768):
            time.sleep(0.02)
            yield body[i : i + 32768]

    with serve_app(app) as url:
        r = httpx.post(url + "/v1/predict", content=slowly(), headers={"content-type": MULTIPART}, timeout=30)
        assert r.status_code == 413 and "limit of 0.25 MB" in r.json()["error"]
        # the same with a declared length, stalling: refused before a byte of the body is stored, and the
        # answer waits for the rest of the body (so that the client reads it) only while the body arrives
        t0 = time.monotonic()
        s = stalled(port_of(url), "/v1/predict", MULTIPART, len(body), body[:1024])
        assert status_of(s)[0] == 413 and time.monotonic() - t0 < 8
        assert httpx.get(url + "/health").status_code == 200
    assert list(tmp_path.iterdir()) == []


def test_a_huge_content_length_on_features_is_refused_at_once(fake, serve_app):
    app = create_app(fake(), ServeSettings(body_timeout_s=5.0))
    with serve_app(app) as url:
        for declared in (10**19, 600 * 2**20):  # (h11 itself answers 400 to 21 digits and more)
            t0 = time.monotonic()
            s = stalled(
                port_of(url), "/v1/predict/features", "application/json", declared, b'{"features": [['
            )
            code, raw = status_of(s)
            assert code == 413 and b"limit" in raw and time.monotonic() - t0 < 2


def test_a_features_body_over_its_own_limit_gets_413(fake, serve_app):
    """Frame features are parsed in memory: their body has a smaller limit than uploads, so that one request
    cannot hold the server for seconds and gigabytes; the message says to send fewer frames."""
    app = create_app(fake(), ServeSettings(max_upload_mb=500))
    with serve_app(app) as url:
        model = httpx.get(url + "/v1/model").json()
        limit = model["limits"]["max_features_mb"]
        assert 1 <= limit < 500
        row = "[" + ",".join(["0.1234567"] * 4) + "],"
        body = '{"features": [' + row * int(limit * 2**20 / len(row) + 10) + "[0,0,0,0]]}"
        r = httpx.post(
            url + "/v1/predict/features",
            content=body,
            headers={"content-type": "application/json"},
            timeout=60,
        )
        assert r.status_code == 413 and "fewer frames" in r.json()["error"]
        assert httpx.post(url + "/v1/predict/features", json=FEATURES).status_code == 200


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_features_without_a_json_content_type_get_415_saying_so(fake, serve_app, content_type):
    headers = {} if content_type is None else {"content-type": content_type}
    with serve_app(create_app(fake())) as url:
        r = httpx.post(url + "/v1/predict/features", content=b'{"features": [[1, 2, 3, 4]]}', headers=headers)
        assert r.status_code == 415 and "Content-Type: application/json" in r.json()["error"], r.text
        r = httpx.post(url + "/v1/predict", content=b"hello", headers=headers)
        assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]


def test_two_files_in_one_upload_get_422(fake, serve_app, clip, tmp_path):
    pred = fake()
    app = create_app(pred, ServeSettings(tmp_dir=str(tmp_path)))
    data = clip.read_bytes()
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        for files in (
            [("file", ("a.mp4", data)), ("file", ("b.mp4", data))],
            [("file", ("a.mp4", data)), ("other", ("b.mp4", data))],
            [("other", ("b.mp4", data)), ("file", ("a.mp4", data))],
        ):
            r = c.post("/v1/predict", files=files)
            assert r.status_code == 422 and "one file per request" in r.json()["error"], r.text
        # a text field beside the file is no second file
        r = c.post("/v1/predict", files={"file": ("a.mp4", data)}, data={"note": "hi"})
        assert r.status_code == 200
    assert pred.calls == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "tail, name",
    [
        ("; filename*=UTF-8''na%C3%AFve%20clip.mp4", "naïve clip.mp4"),
        ("; filename=\"fallback.mp4\"; filename*=UTF-8''pr%C3%A9f%C3%A9r%C3%A9.mp4", "préféré.mp4"),
        ("; filename*=\"UTF-8''quoted.mp4\"", "quoted.mp4"),
        ("; filename*=iso-8859-1'fr'%E9t%E9.mp4", "été.mp4"),
        ('; filename="plain; filename*=no.mp4"', "plain; filename*=no.mp4"),
    ],
)
def test_rfc5987_file_names_are_accepted(fake, serve_app, clip, tmp_path, tail, name):
    app = create_app(fake(), ServeSettings(tmp_dir=str(tmp_path)))
    body = form(part("file", tail, clip.read_bytes()))
    with serve_app(app) as url:
        r = httpx.post(url + "/v1/predict", content=body, headers={"content-type": MULTIPART}, timeout=30)
    assert r.status_code == 200 and r.json()["input"] == name, r.text
    assert list(tmp_path.iterdir()) == []


def test_a_missing_file_field_lists_what_was_sent(fake, serve_app, tmp_path):
    app = create_app(fake(), ServeSettings(tmp_dir=str(tmp_path)))
    body = form(part("video", "; filename*=UTF-8''a.mp4", b"1"), part("note", "", b"hi"))
    text = form(part("file", "", b"not a file"))
    with serve_app(app) as url:
        r = httpx.post(url + "/v1/predict", content=body, headers={"content-type": MULTIPART})
        assert r.status_code == 422
        assert "'video' (file), 'note' (text)" in r.json()["error"], r.text
        r = httpx.post(url + "/v1/predict", content=text, headers={"content-type": MULTIPART})
        assert r.status_code == 422 and "'file' (text)" in r.json()["error"], r.text
    assert list(tmp_path.iterdir()) == []


def test_oversized_part_headers_and_endless_fields_are_refused_in_bounded_memory(fake, serve_app, tmp_path):
    app = create_app(fake(), ServeSettings(tmp_dir=str(tmp_path)))
    long_header = form(part("file", f'; filename="{"a" * 100_000}.mp4"', b"1"))
    many = form(*[part(f"f{i}", "", b"x") for i in range(5000)])
    with serve_app(app) as url:
        r = httpx.post(url + "/v1/predict", content=long_header, headers={"content-type": MULTIPART})
        assert r.status_code == 400 and "header size" in r.json()["error"], r.text
        r = httpx.post(url + "/v1/predict", content=many, headers={"content-type": MULTIPART}, timeout=60)
        message = r.json()["error"]
        assert r.status_code == 422 and "'f0' (text)" in message and "'f9' (text), 4990 more" in message
        assert len(message) < 400
    assert list(tmp_path.iterdir()) == []


def test_stale_uploads_of_a_killed_server_are_swept_at_start(fake, serve_app, tmp_path):
    start = time.time()
    old = start - 3600
    dead_pid = 2**22 + 17  # above Linux's pid_max: no such process
    ours_stale = [
        "vidcls-upload-abcd_123.mp4",
        "vidcls-upload-x9y8z7w6.webm",
        f"vidcls-upload-{dead_pid}-k2j3h4g5.mkv",
    ]
    kept = [
        "vidcls-upload-fresh123.mp4",  # written after this process started (mtime now)
        f"vidcls-upload-{os.getppid()}-live1234.mp4",  # a running server's upload (its pid is alive)
        "vidcls-upload-notes.txt",
        "vidcls-upload-abcd1234.mp4.part",
        "vidcls-upload-abcd1234.txt",
        "my-vidcls-upload-abcd1234.mp4",
        "vidcls-upload-ABCD1234.mp4",
        "vidcls-upload-abc.mp4",
        "vidcls-uploads-abcd1234.mp4",
    ]
    for name in ours_stale + kept:
        (tmp_path / name).write_bytes(b"x")
        if name != "vidcls-upload-fresh123.mp4":
            os.utime(tmp_path / name, (old, old))
    (tmp_path / "vidcls-upload-dir12345.mp4").mkdir()  # a directory, not our file
    os.utime(tmp_path / "vidcls-upload-dir12345.mp4", (old, old))
    target = tmp_path / "precious.mp4"
    target.write_bytes(b"keep me")
    (tmp_path / "vidcls-upload-link1234.mp4").symlink_to(target)  # a link: neither it nor its target goes
    os.utime(tmp_path / "vidcls-upload-link1234.mp4", (old, old), follow_symlinks=False)
    app = create_app(fake(), ServeSettings(tmp_dir=str(tmp_path)))
    with serve_app(app) as url:
        assert httpx.get(url + "/health").status_code == 200
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(kept + ["vidcls-upload-dir12345.mp4", "precious.mp4", "vidcls-upload-link1234.mp4"])
    assert target.read_bytes() == b"keep me"


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_a_bad_body_timeout_is_refused_before_loading(value, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("VIDCLS_API_KEY", raising=False)
    assert main(["serve", str(tmp_path / "no-run"), f"--body-timeout={value}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--body-timeout must be a positive number of seconds" in err, err
    assert "no-run" not in err  # refused before the run is looked at


def test_settings_check_their_limits():
    assert ServeSettings().body_timeout_s == 30.0
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="--body-timeout"):
            ServeSettings(body_timeout_s=bad)
    with pytest.raises(ConfigError, match="--max-uploads"):
        ServeSettings(max_uploads=0)
