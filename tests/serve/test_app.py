"""The HTTP service on a real uvicorn (loopback port) with a fake predictor: every endpoint, bad
uploads, limits, the queue, the API key, errors without tracebacks, no temporary file left."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from vidcls.cli import main
from vidcls.errors import ConfigError
from vidcls.serve import ServeSettings, create_app, resolve_api_key
from vidcls.serve.limits import UPLOAD_PREFIX


def leftovers(tmp_dir) -> list:
    return sorted(p.name for p in tmp_dir.iterdir())


def test_endpoints(fake, serve_app, clip, tmp_path):
    app = create_app(fake(), ServeSettings(tmp_dir=str(tmp_path), run_dir=None))
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        assert c.get("/health").json() == {"status": "ok"}
        model = c.get("/v1/model").json()
        assert model["classes"] == ["slides", "animation", "camera"] and model["feature_dim"] == 4
        assert model["limits"]["max_upload_mb"] == 500.0
        paths = c.get("/openapi.json").json()["paths"]
        assert {"/health", "/v1/model", "/v1/predict", "/v1/predict/features"} <= set(paths)
        assert "multipart/form-data" in paths["/v1/predict"]["post"]["requestBody"]["content"]
        docs = c.get("/docs")  # Swagger UI from the installed bundle: works without internet
        assert docs.status_code == 200 and "/docs-static/swagger-ui-bundle.js" in docs.text
        assert "http://" not in docs.text and "https://" not in docs.text
        assert c.get("/docs-static/swagger-ui-bundle.js").status_code == 200
        assert c.get("/docs-static/swagger-ui.css").status_code == 200

        page = c.get("/")
        assert page.status_code == 200 and 'id="file"' in page.text and "<script>" in page.text
        assert "script-src 'sha256-" in page.headers["content-security-policy"]
        assert "http://" not in page.text and "https://" not in page.text  # no CDN

        with open(clip, "rb") as f:
            r = c.post("/v1/predict", files={"file": ("holiday clip.mp4", f, "video/mp4")})
        rec = r.json()
        assert r.status_code == 200 and rec["input"] == "holiday clip.mp4" and rec["error"] is None
        assert rec["label"] in model["classes"] and len(rec["top_k"]) == 3 and "thumbnails" not in rec

        with open(clip, "rb") as f:
            rec = c.post(
                "/v1/predict", params={"thumbnails": 1, "top_k": 1}, files={"file": ("c.mp4", f)}
            ).json()
        assert len(rec["top_k"]) == 1 and len(rec["thumbnails"]) == len(rec["frames"]) == 10
        assert all(t.startswith("data:image/jpeg;base64,") for t in rec["thumbnails"])

        r = c.post("/v1/predict/features", json={"features": [[0.1, 0.2, 0.3, 0.4]] * 5})
        assert r.status_code == 200 and r.json()["input"] == "features[0]" and len(r.json()["frames"]) == 5
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "body, message",
    [
        ({"features": [[1.0, 2.0, 3.0]] * 4}, "D = 3, but the run was trained on D = 4"),
        ({"features": []}, "no frames"),
        ({"features": [[1.0, 2.0, 3.0, 4.0], [1.0]]}, "rows of different lengths"),
        ({"features": [[1e39, 0, 0, 0]]}, "float32"),
        ({"features": [["a", 0, 0, 0]]}, "features.0.0"),
        ({"frames": [[0, 0, 0, 0]]}, "features: Field required"),
        ('{"features": [[0, 0, 0, NaN]]}', "NaN or infinite"),
        ("{not json", "JSON"),
    ],
)
def test_bad_feature_requests_get_422_with_a_message(fake, serve_app, body, message):
    with serve_app(create_app(fake())) as url:
        if isinstance(body, str):
            r = httpx.post(
                url + "/v1/predict/features", content=body, headers={"content-type": "application/json"}
            )
        else:
            r = httpx.post(url + "/v1/predict/features", json=body)
    assert r.status_code == 422 and message in r.json()["error"], r.text


def multipart(field: str, filename: str, data: bytes, boundary: str = "vidclsboundary") -> tuple[bytes, dict]:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), {
        "content-type": f"multipart/form-data; boundary={boundary}"
    }


def test_bad_uploads_get_4xx_with_a_message_and_leave_no_file(fake, serve_app, clip, tmp_path):
    up = tmp_path / "uploads"
    up.mkdir()
    data = clip.read_bytes()
    pred = fake()
    app = create_app(pred, ServeSettings(max_upload_mb=0.25, tmp_dir=str(up)))
    big = data * (300_000 // len(data) + 1)
    cases = {
        "text file": (
            {"files": {"file": ("notes.txt", b"just some text\n" * 50, "text/plain")}},
            {415},
            "FFmpeg",
        ),
        "features file": (
            {"files": {"file": ("x.npy", b"\x93NUMPY" + b"\0" * 90, "application/octet-stream")}},
            {415},
            "x.npy: a .npy file holds features, not a video; send them as JSON",
        ),
        "truncated mp4": (
            {"files": {"file": ("cut.mp4", data[: len(data) // 3], "video/mp4")}},
            {415, 422},
            "cut.mp4",
        ),
        "empty": ({"files": {"file": ("empty.mp4", b"", "video/mp4")}}, {422}, "empty"),
        "wrong field": ({"files": {"video": ("clip.mp4", data, "video/mp4")}}, {422}, "field named 'file'"),
        "text field": (
            {"data": {"file": "not a file"}, "files": {"x": ("x.mp4", b"1")}},
            {422},
            "field named 'file'",
        ),
        "not multipart": (
            {"content": data, "headers": {"content-type": "video/mp4"}},
            {415},
            "multipart/form-data",
        ),
        "oversize": ({"files": {"file": ("big.mp4", big, "video/mp4")}}, {413}, "limit of 0.25 MB"),
    }
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        for name, (kwargs, codes, message) in cases.items():
            r = c.post("/v1/predict", **kwargs)
            assert r.status_code in codes and message in r.json()["error"], (name, r.status_code, r.text)
            assert str(up) not in r.text, name  # the temporary path is not shown
        # a body without Content-Length (chunked) is stopped once it passes the limit
        body, headers = multipart("file", "big.mp4", big)
        r = c.post(
            "/v1/predict",
            content=iter([body[i : i + 8192] for i in range(0, len(body), 8192)]),
            headers=headers,
        )
        assert r.status_code == 413 and "limit" in r.json()["error"]
        assert c.get("/health").status_code == 200  # still serving
    assert pred.calls == 0  # nothing broken reached the model
    assert leftovers(up) == []


def test_load_of_feature_requests_and_uploads(fake, serve_app, clip, tmp_path):
    """200 feature requests and 24 uploads (a third of them broken), 8 at a time: no 5xx, no file left."""
    app = create_app(fake(), ServeSettings(max_queue=8, tmp_dir=str(tmp_path)))
    data = clip.read_bytes()
    with (
        serve_app(app) as url,
        httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=8)) as c,
    ):

        def features(i):
            return c.post(
                "/v1/predict/features", json={"features": [[i, 0.5, 0.25, 1.0]] * (1 + i % 7)}
            ).status_code

        def upload(i):
            return c.post(
                "/v1/predict", files={"file": (f"c{i}.mp4", data if i % 3 else data[:200])}
            ).status_code

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(features, range(200))) + list(pool.map(upload, range(24)))
    assert codes[:200] == [200] * 200
    assert sorted(set(codes[200:])) == [200, 415] or sorted(set(codes[200:])) == [200, 415, 422]
    assert leftovers(tmp_path) == []


def test_full_queue_gets_503_with_retry_after(fake, serve_app, clip, tmp_path):
    gate = threading.Event()
    app = create_app(fake(gate=gate), ServeSettings(max_queue=2, tmp_dir=str(tmp_path)))
    with serve_app(app) as url:
        with ThreadPoolExecutor(2) as pool:
            busy = [
                pool.submit(
                    httpx.post, url + "/v1/predict/features", json={"features": [[0, 0, 0, 0]]}, timeout=60
                )
                for _ in range(2)
            ]
            deadline = time.monotonic() + 30
            while app.state.queue.held < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            r = httpx.post(url + "/v1/predict/features", json={"features": [[0, 0, 0, 0]]})
            # refused before its body is read, which is still read to its end: the client gets the 503
            r2 = httpx.post(url + "/v1/predict", files={"file": ("c.mp4", bytes(16 * 2**20))}, timeout=60)
            gate.set()
            assert [f.result().status_code for f in busy] == [200, 200]
        assert httpx.get(url + "/health").status_code == 200
    for resp in (r, r2):
        assert resp.status_code == 503 and int(resp.headers["Retry-After"]) >= 1
        assert "busy" in resp.json()["error"]
    assert leftovers(tmp_path) == []


def test_an_unexpected_error_is_a_bare_500_and_is_logged(fake, serve_app, clip, tmp_path, caplog):
    app = create_app(fake(fail=RuntimeError("secret internal detail")), ServeSettings(tmp_dir=str(tmp_path)))
    with serve_app(app) as url:
        r = httpx.post(url + "/v1/predict/features", json={"features": [[0, 0, 0, 0]]})
        with open(clip, "rb") as f:
            r2 = httpx.post(url + "/v1/predict", files={"file": ("c.mp4", f)})
    for resp in (r, r2):
        assert resp.status_code == 500 and resp.json() == {"error": "internal error (logged on the server)"}
        assert "Traceback" not in resp.text and "secret" not in resp.text
    assert "secret internal detail" in caplog.text
    assert leftovers(tmp_path) == []


def test_api_key_guards_v1_only(fake, serve_app):
    app = create_app(fake(), ServeSettings(api_key="s3cret"))
    with serve_app(app) as url, httpx.Client(base_url=url) as c:
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200
        r = c.post("/v1/predict", files={"file": ("c.mp4", bytes(16 * 2**20))})
        assert r.status_code == 401
        for headers in ({}, {"X-API-Key": "wrong"}):
            r = c.get("/v1/model", headers=headers)
            assert r.status_code == 401 and "X-API-Key" in r.json()["error"]
            r = c.post("/v1/predict/features", json={"features": [[0, 0, 0, 0]]}, headers=headers)
            assert r.status_code == 401
        ok = {"X-API-Key": "s3cret"}
        assert c.get("/v1/model", headers=ok).status_code == 200
        assert (
            c.post("/v1/predict/features", json={"features": [[0, 0, 0, 0]]}, headers=ok).status_code == 200
        )


def test_binding_beyond_loopback_needs_an_api_key(monkeypatch, capsys):
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert resolve_api_key(host, {}) is None
    assert resolve_api_key("127.0.0.1", {"VIDCLS_API_KEY": "k"}) == "k"
    assert resolve_api_key("0.0.0.0", {"VIDCLS_API_KEY": "k"}) == "k"
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.org"):
        with pytest.raises(ConfigError, match="VIDCLS_API_KEY"):
            resolve_api_key(host, {"VIDCLS_API_KEY": ""})
    monkeypatch.delenv("VIDCLS_API_KEY", raising=False)
    assert main(["serve", "no-such-run", "--host", "0.0.0.0"]) == 2
    assert "set VIDCLS_API_KEY" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--max-queue"):
        ServeSettings(max_queue=0)


def test_upload_file_names_are_cleaned():
    from vidcls.serve.limits import clean_filename

    assert clean_filename("C:\\Users\\me\\clip.mp4") == "clip.mp4"
    assert clean_filename("../../etc/passwd") == "passwd"
    assert clean_filename("a\x00b\nc.mp4") == "abc.mp4"
    assert clean_filename("") == "upload" and len(clean_filename("x" * 1000)) == 255
    assert UPLOAD_PREFIX.startswith("vidcls")


def test_thumbnails_show_the_frame_on_screen_at_each_time(tmp_path):
    import base64
    import io

    import numpy as np
    from PIL import Image

    import videos as V
    from vidcls.serve.thumbnails import frame_thumbnails

    def index_of(uri):
        rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))
        return V.frame_index(rgb)

    short = V.write_clip(tmp_path / "short.mp4", V.shapes_frames(20))
    thumbs = frame_thumbnails(short, [0.0, 500.0, 1900.0, None, 1550.0, 9000.0], height=V.H)
    assert thumbs[3] is None
    assert [index_of(t) for i, t in enumerate(thumbs) if i != 3] == [0, 5, 19, 15, 19]
    # a long clip with keyframes every second: far times are reached by seeking
    long = V.write_clip(tmp_path / "long.mp4", V.shapes_frames(300), gop=10)
    assert [index_of(t) for t in frame_thumbnails(long, [25000.0, 100.0, 10000.0], height=V.H)] == [
        250 % 32,
        1,
        100 % 32,
    ]
    assert frame_thumbnails(tmp_path / "missing.mp4", [0.0]) == [None]


def test_a_bad_port_or_an_unsendable_key_is_refused_before_loading(monkeypatch, capsys, tmp_path):
    """Both are checked before the run is loaded: the run directory here does not even exist."""
    from vidcls.serve.app import check_port, service_url

    monkeypatch.delenv("VIDCLS_API_KEY", raising=False)
    for port in ("99999", "0", "-1", "http"):
        with pytest.raises(ConfigError, match="--port must be an integer from 1 to 65535"):
            check_port(port)
    assert main(["serve", str(tmp_path / "no-run"), "--port", "99999"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--port must be an integer from 1 to 65535, got 99999" in err
    assert check_port(8000) == 8000 and check_port("65535") == 65535
    for key in ("schlüssel", "two words", "tab\tkey", "nul\x00"):
        with pytest.raises(ConfigError, match="HTTP header cannot carry"):
            resolve_api_key("127.0.0.1", {"VIDCLS_API_KEY": key})
    monkeypatch.setenv("VIDCLS_API_KEY", "clé")
    assert main(["serve", str(tmp_path / "no-run")]) == 2
    assert "HTTP header cannot carry" in capsys.readouterr().err
    assert service_url("::1", 8000) == "http://[::1]:8000/" and service_url("[::1]", 80) == "http://[::1]:80/"
    assert service_url("127.0.0.1", 8000) == "http://127.0.0.1:8000/"


def test_a_port_in_use_or_a_foreign_address_is_refused_before_loading(monkeypatch, capsys, tmp_path):
    """uvicorn would find these only after the run is loaded (and exit 3 with its own log line)."""
    import socket

    monkeypatch.setenv("VIDCLS_API_KEY", "a-long-enough-secret")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(tmp_path / "no-run"), "--port", str(port)]) == 2
        assert f"cannot listen on 127.0.0.1 port {port} (Address already in use)" in capsys.readouterr().err
    for host, says in (
        ("192.0.2.1", "choose an address of this machine"),  # TEST-NET-1: never ours
        ("no.such.host.invalid", "not an address or name this machine resolves"),
    ):
        assert main(["serve", str(tmp_path / "no-run"), "--host", host, "--port", "8000"]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
