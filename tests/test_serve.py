"""`voxfloat serve` end to end: the real server on a free loopback port, driven over HTTP."""
from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
import soundfile as sf

from serving import CLI, start_server, stop
from voxfloat.runtime.vad import RECORDING_PER_SPEECH
from voxfloat.store import VoiceprintStore

TOKEN = "s3cret-token"
MAX_BODY_MB = 1.0
BODY_TIMEOUT = 2.0
MAX_SECONDS = 10.0


def voxfloat(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLI in a child process (as a user would) and return what it did."""
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def wav_bytes(wave: np.ndarray, rate: int = 16000, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, subtype=subtype, format=fmt)
    return buf.getvalue()


@dataclass
class Server:
    url: str
    store: Path
    process: subprocess.Popen
    log: Path

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def speakers(corpus_speakers: list[Path]) -> list[Path]:
    """Six corpus speakers: 0-2 enrolled at start, 3-5 used for enrollment races and a replaced store."""
    return corpus_speakers[:6]


def utterances(speaker: Path) -> list[Path]:
    return sorted(speaker.glob("*.flac"))


def enroll_store(model: Path, speakers: list[Path], out: Path, root: Path) -> None:
    """Enroll each speaker's first three utterances with the CLI."""
    for d in speakers:
        (root / d.name).mkdir(parents=True, exist_ok=True)
        for f in utterances(d)[:3]:
            (root / d.name / f.name).symlink_to(f)
    done = voxfloat("enroll", root, "--model", model, "--out", out)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def server(model: Path, speakers: list[Path], tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serve")
    store = tmp / "s.vxf"
    enroll_store(model, speakers[:3], store, tmp / "enroll")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    process, url = start_server("--store", store, "--token-file", token_file,
                                "--max-body-mb", MAX_BODY_MB, "--body-timeout", BODY_TIMEOUT,
                                "--max-seconds", MAX_SECONDS, "--threads", 1,
                                log=tmp / "server.log")
    yield Server(url, store, process, tmp / "server.log")
    stop(process)


def test_health_binds_loopback_and_describes_model_and_store(server: Server, model: Path) -> None:
    with server.client() as c:
        r = c.get("/health")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok" and h["count"] == 3 and h["format"] == "e4m3" and h["device"] in ("cpu", "cuda")
    assert Path(h["model"]) == model and isinstance(h["threshold"], float)
    assert f"Uvicorn running on http://127.0.0.1:{server.url.rsplit(':', 1)[1]}" in server.log.read_text()


def test_openapi_lists_every_route(server: Server) -> None:
    with server.client() as c:
        spec = c.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == {"/verify", "/identify", "/enroll", "/speakers", "/speakers/{speaker}", "/health"}


def test_speakers_lists_the_enrolled(server: Server, speakers: list[Path]) -> None:
    with server.client() as c:
        r = c.get("/speakers")
    assert r.status_code == 200
    assert r.json() == {"speakers": [d.name for d in speakers[:3]], "count": 3}


def test_verify_accepts_the_speaker_and_rejects_another(server: Server, speakers: list[Path]) -> None:
    own, other = utterances(speakers[0])[5].read_bytes(), utterances(speakers[1])[5].read_bytes()
    with server.client() as c:
        a = c.post("/verify", params={"speaker": speakers[0].name}, content=own)
        b = c.post("/verify", params={"speaker": speakers[0].name}, content=other)
    assert a.status_code == b.status_code == 200
    ra, rb = a.json(), b.json()
    assert set(ra) == {"speaker", "score", "threshold", "threshold_source", "format", "accepted"}
    assert ra["accepted"] is True and rb["accepted"] is False and ra["score"] > rb["score"]
    assert ra["speaker"] == speakers[0].name and ra["format"] == "e4m3"


def test_verify_reads_any_type_and_rate(server: Server, speakers: list[Path]) -> None:
    """A 44.1 kHz stereo OGG body is decoded from memory and resampled like a file."""
    wave, rate = sf.read(utterances(speakers[1])[6], dtype="float32")
    import soxr
    stereo = np.stack([soxr.resample(wave, rate, 44100)] * 2, axis=1)
    body = wav_bytes(stereo, 44100, subtype="VORBIS", fmt="OGG")
    with server.client() as c:
        r = c.post("/verify", params={"speaker": speakers[1].name}, content=body)
    assert r.status_code == 200 and r.json()["accepted"] is True


def test_identify_ranks_the_true_speaker_first(server: Server, speakers: list[Path]) -> None:
    with server.client() as c:
        r = c.post("/identify", params={"top": 3}, content=utterances(speakers[2])[6].read_bytes())
    assert r.status_code == 200
    d = r.json()
    assert [c["speaker"] for c in d["candidates"]][0] == speakers[2].name and len(d["candidates"]) == 3
    assert d["decision"] == speakers[2].name
    scores = [c["score"] for c in d["candidates"]]
    assert scores == sorted(scores, reverse=True)


def test_enroll_adds_utterances_replaces_and_delete_removes(server: Server, speakers: list[Path]) -> None:
    new, files = speakers[3].name, utterances(speakers[3])
    with server.client() as c:
        first = c.post("/enroll", params={"speaker": new}, content=files[0].read_bytes())
        assert first.status_code == 200, first.text
        assert new in c.get("/speakers").json()["speakers"]
        score_one = c.post("/verify", params={"speaker": new}, content=files[6].read_bytes()).json()["score"]
        for f in files[1:4]:
            assert c.post("/enroll", params={"speaker": new}, content=f.read_bytes()).status_code == 200
        assert VoiceprintStore.open(server.store).n_utterances[-1] == 4
        score_four = c.post("/verify", params={"speaker": new}, content=files[6].read_bytes()).json()["score"]
        assert score_four > score_one  # more enrolment speech, a closer voiceprint
        replaced = c.post("/enroll", params={"speaker": new, "replace": "true"}, content=files[0].read_bytes())
        assert replaced.status_code == 200
        assert VoiceprintStore.open(server.store).n_utterances[-1] == 1
        gone = c.delete(f"/speakers/{new}")
        assert gone.status_code == 200 and gone.json()["removed"] == new
        assert new not in c.get("/speakers").json()["speakers"]
        again = c.delete(f"/speakers/{new}")
    assert again.status_code == 404 and new in again.json()["error"]
    assert os.stat(server.store).st_mode & 0o777 == 0o600


def bad_requests(speakers: list[Path]) -> list[tuple[str, str, dict | list | None, bytes, int, str]]:
    """(name, path, params, body, status, word the error names) for every kind of bad input."""
    ok = utterances(speakers[0])[4].read_bytes()
    speaker = {"speaker": speakers[0].name}
    # past the recording cap (speech trimming on, the default: RECORDING_PER_SPEECH x --max-seconds)
    long_silence = np.zeros(int((MAX_SECONDS * RECORDING_PER_SPEECH + 5) * 8000), np.int16)
    return [
        ("empty body", "/verify", speaker, b"", 400, "empty"),
        ("not audio", "/verify", speaker, b"this is not audio" * 100, 422, "unreadable"),
        ("too short", "/verify", speaker, wav_bytes(np.full(1600, 0.1, np.float32)), 422, "too short"),
        ("silent", "/verify", speaker, wav_bytes(np.zeros(32000, np.float32)), 422, "silent"),
        ("too long", "/verify", speaker, wav_bytes(long_silence, 8000, fmt="FLAC"), 422, "too long"),
        ("too large", "/verify", speaker, bytes(int(MAX_BODY_MB * 2**20) + 1), 413, "too large"),
        ("far too large", "/verify", speaker, bytes(int(3 * MAX_BODY_MB * 2**20)), 413, "too large"),
        ("unknown speaker", "/verify", {"speaker": "nobody"}, ok, 404, "nobody"),
        ("no speaker", "/verify", {}, ok, 400, "speaker"),
        ("bad top", "/identify", {"top": "x"}, ok, 400, "top"),
        ("zero top", "/identify", {"top": "0"}, ok, 400, "top"),
        ("top with an underscore", "/identify", {"top": "1_0"}, ok, 400, "top"),
        ("top in fullwidth digits", "/identify", {"top": "\uff11"}, ok, 400, "top"),
        ("speaker twice", "/verify", [("speaker", speakers[0].name), ("speaker", "b")], ok, 400, "more than once"),
        ("id not UTF-8", "/enroll?speaker=%ff%fe", None, ok, 400, "UTF-8"),
        ("bad replace", "/enroll", {**speaker, "replace": "maybe"}, ok, 400, "replace"),
        ("bad speaker id", "/enroll", {"speaker": " padded "}, ok, 400, "speaker id"),
        ("enroll silence", "/enroll", {"speaker": "quiet"}, wav_bytes(np.zeros(32000, np.float32)), 422, "silent"),
    ]


def test_bad_input_gets_a_4xx_naming_the_problem(server: Server, speakers: list[Path]) -> None:
    cases = bad_requests(speakers)
    with server.client() as c:
        for name, path, params, body, status, word in cases:
            r = c.post(path, params=params, content=body)
            assert r.status_code == status, (name, r.text)
            assert word in r.json()["error"], (name, r.json())
        r = c.delete("/speakers/%ff")  # Starlette would read it as U+FFFD, another speaker's id
        assert r.status_code == 400 and "UTF-8" in r.json()["error"]
        assert c.get("/health").json()["count"] == 3  # nothing was enrolled by the bad requests
    assert "Traceback" not in server.log.read_text()


def test_body_limit_holds_while_streaming(server: Server) -> None:
    """A chunked body (no Content-Length) is cut off once it passes the limit."""
    def chunks() -> Iterator[bytes]:
        for _ in range(int(MAX_BODY_MB * 16) + 8):
            yield bytes(65536)

    with server.client() as c:
        r = c.post("/verify", params={"speaker": "x"}, content=chunks())
    assert r.status_code == 413 and "too large" in r.json()["error"]


def test_a_body_that_does_not_arrive_gets_408_and_others_are_served(server: Server) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST /verify?speaker=x HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Content-Length: 100000\r\n\r\n".encode() + bytes(100))
        with server.client() as c:
            assert c.get("/health").status_code == 200
        start, reply = time.monotonic(), b""
        while b"}" not in reply and (chunk := sock.recv(65536)):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408") and b"not received within" in reply
    assert time.monotonic() - start < BODY_TIMEOUT + 10


def test_token_scheme_is_case_insensitive(server: Server) -> None:
    for header in (f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer  {TOKEN}"):
        with httpx.Client(base_url=server.url, headers={"Authorization": header}) as c:
            assert c.get("/health").status_code == 200, header
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Basic {TOKEN}"}) as c:
        assert c.get("/health").status_code == 401


def test_routes_methods_and_token(server: Server) -> None:
    with server.client() as c:
        assert c.get("/nowhere").status_code == 404 and "error" in c.get("/nowhere").json()
        wrong = c.get("/verify")
        assert wrong.status_code == 405 and "error" in wrong.json()
    for token in (None, "wrong-token"):
        with server.client(token) as c:
            for r in (c.get("/health"), c.get("/speakers"), c.post("/verify", params={"speaker": "x"}, content=b"1")):
                assert r.status_code == 401 and "token" in r.json()["error"]
                assert r.headers["www-authenticate"] == "Bearer"


def longest_number_run(value: object) -> int:
    """The longest list of numbers anywhere inside a decoded JSON value."""
    if isinstance(value, dict):
        return max(map(longest_number_run, value.values()), default=0)
    if isinstance(value, list):
        numbers = len(value) if value and all(isinstance(v, (int, float)) for v in value) else 0
        return max([numbers, *map(longest_number_run, value)])
    return 0


def test_no_voiceprint_or_embedding_in_responses_or_log(server: Server, speakers: list[Path]) -> None:
    body = utterances(speakers[0])[7].read_bytes()
    with server.client() as c:
        answers = [c.post("/verify", params={"speaker": speakers[0].name}, content=body),
                   c.post("/identify", params={"top": 3}, content=body), c.get("/health"), c.get("/speakers"),
                   c.post("/enroll", params={"speaker": "leak-check"}, content=body),
                   c.delete("/speakers/leak-check")]
    assert all(r.status_code == 200 for r in answers)
    assert max(longest_number_run(r.json()) for r in answers) < 16  # a 256-dim vector would be a run of 256
    assert not re.search(r"(-?\d+\.\d+[,\s]+){16}", server.log.read_text())


@pytest.mark.parity  # slow tier: more processes, several seconds
def test_concurrent_cli_enroll_loses_nothing(server: Server, model: Path, speakers: list[Path], tmp_path: Path) -> None:
    """Service enrolls race a CLI enroll of other speakers into the same store: every speaker survives."""
    root = tmp_path / "cli"
    for d in speakers[4:6]:
        (root / d.name).mkdir(parents=True)
        for f in utterances(d)[:2]:
            (root / d.name / f.name).symlink_to(f)
    cli = subprocess.Popen([*CLI, "enroll", str(root), "--model", str(model), "--out", str(server.store)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ids: list[str] = []
    body = utterances(speakers[3])[0].read_bytes()

    def enroll_one(c: httpx.Client) -> None:
        ids.append(f"race-{len(ids)}")
        r = c.post("/enroll", params={"speaker": ids[-1]}, content=body)
        assert r.status_code == 200, r.text

    with server.client() as c:
        deadline = time.monotonic() + 120
        while cli.poll() is None and time.monotonic() < deadline:
            enroll_one(c)
        _, err = cli.communicate(timeout=60)
        assert cli.returncode == 0, err
        enroll_one(c)  # after the CLI's write: built on the store as the CLI left it
        assert len(ids) >= 3
        listed = set(c.get("/speakers").json()["speakers"])
        expected = {d.name for d in speakers[:3]} | {d.name for d in speakers[4:6]} | set(ids)
        assert listed == expected
        assert set(VoiceprintStore.open(server.store).speakers) == expected
        for speaker in [*ids, *(d.name for d in speakers[4:6])]:
            assert c.delete(f"/speakers/{speaker}").status_code == 200


def test_store_replaced_on_disk_is_served_without_restart(server: Server, model: Path, speakers: list[Path],
                                                          tmp_path: Path) -> None:
    other = tmp_path / "other.vxf"
    enroll_store(model, speakers[3:5], other, tmp_path / "enroll")
    before = server.store.read_bytes()
    body = utterances(speakers[3])[6].read_bytes()
    with server.client() as c:
        assert c.post("/verify", params={"speaker": speakers[3].name}, content=body).status_code == 404
        os.replace(other, server.store)  # what an atomic writer does
        try:
            assert c.get("/speakers").json()["speakers"] == [d.name for d in speakers[3:5]]
            r = c.post("/verify", params={"speaker": speakers[3].name}, content=body)
            assert r.status_code == 200 and r.json()["accepted"] is True
            assert c.get("/health").json()["count"] == 2
            junk = server.store.with_suffix(".junk")
            junk.write_bytes(b"not a store")
            os.replace(junk, server.store)
            for r in (c.get("/speakers"), c.post("/verify", params={"speaker": speakers[3].name}, content=body)):
                assert r.status_code == 409 and str(server.store) in r.json()["error"]
            # a store of the same model enrolled without speech trimming: every route refuses it, none writes it
            untrimmed = tmp_path / "untrimmed.vxf"
            done = voxfloat("enroll", tmp_path / "enroll", "--model", model, "--out", untrimmed, "--no-vad")
            assert done.returncode == 0, done.stderr
            os.replace(untrimmed, server.store)
            kept = server.store.read_bytes()
            for r in (c.get("/speakers"), c.get("/health"), c.delete(f"/speakers/{speakers[3].name}"),
                      c.post("/verify", params={"speaker": "nobody"}, content=body),
                      c.post("/enroll", params={"speaker": "new"}, content=body)):
                assert r.status_code == 409 and "vad=off" in r.json()["error"], (r.request.url, r.text)
            assert server.store.read_bytes() == kept
            # a deleted store: 409 everywhere, and an enroll does not start a new one
            os.remove(server.store)
            for r in (c.get("/speakers"), c.post("/enroll", params={"speaker": "new"}, content=body),
                      c.post("/enroll", params={"speaker": "new"}, content=wav_bytes(np.zeros(32000, np.float32)))):
                assert r.status_code == 409 and "no such" in r.json()["error"], r.text
            assert not server.store.exists()
        finally:
            restore = server.store.with_suffix(".restore")
            restore.write_bytes(before)
            os.replace(restore, server.store)
        assert c.get("/health").json()["count"] == 3


@pytest.mark.parity  # slow tier: more processes, several seconds
def test_workers_serve_the_same_store(model: Path, speakers: list[Path], server: Server, tmp_path: Path) -> None:
    """--workers 2: two processes, each with the model and the store; no token file means no token needed."""
    process, url = start_server("--store", server.store, "--model", model, "--workers", 2, "--threads", 1,
                                log=tmp_path / "workers.log")
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            body = utterances(speakers[0])[6].read_bytes()
            with ThreadPoolExecutor(4) as pool:
                rs = list(pool.map(lambda _: c.post("/verify", params={"speaker": speakers[0].name}, content=body),
                                   range(8)))
        assert all(r.status_code == 200 and r.json()["accepted"] for r in rs)
        assert len({r.json()["score"] for r in rs}) == 1
    finally:
        stop(process)


@pytest.mark.parity  # slow tier: more processes, several seconds
def test_bad_setup_stops_before_listening_with_one_line(server: Server, tmp_path: Path) -> None:
    (tmp_path / "empty-token").write_text("\n")
    cases = [(["--store", tmp_path / "missing.vxf"], 4, "missing.vxf"),
             (["--store", server.store, "--token-file", tmp_path / "no-token"], 2, "no-token"),
             (["--store", server.store, "--token-file", tmp_path / "empty-token"], 2, "one token")]
    for args, code, word in cases:
        done = voxfloat("serve", *args, timeout=120)
        assert done.returncode == code, (args, done.stderr)
        assert word in done.stderr and "Traceback" not in done.stderr, done.stderr


def raw_request(port: int, head: str, body: bytes = b"") -> socket.socket:
    """A connection that has sent `head` (and the start of a body) and waits."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    sock.sendall(head.encode() + b"\r\n\r\n" + body)
    return sock


@pytest.mark.parity  # slow tier: its own server, with a long body timeout
def test_stalled_and_oversized_uploads_do_not_hold_up_others(server: Server, speakers: list[Path],
                                                             tmp_path: Path) -> None:
    """Clients that stall mid-body (more of them than bodies a worker holds) do not delay a complete request; a
    Content-Length over the limit is refused at once; a client that hangs up mid-body leaves one log line at most."""
    log = tmp_path / "server.log"
    process, url = start_server("--store", server.store, "--body-timeout", 60, "--max-body-mb", 1, log=log)
    port = int(url.rsplit(":", 1)[1])
    head = "POST /verify?speaker={} HTTP/1.1\r\nHost: t\r\nContent-Length: {}"
    body = utterances(speakers[0])[5].read_bytes()
    try:
        stalled = [raw_request(port, head.format(speakers[0].name, 100_000), bytes(10)) for _ in range(12)]
        with httpx.Client(base_url=url, timeout=120) as c:
            r = c.post("/verify", params={"speaker": speakers[0].name}, content=body)
            assert r.status_code == 200 and r.json()["accepted"]
            for sock in stalled:  # still waiting for their bodies: nothing answered them yet
                sock.setblocking(False)
                with pytest.raises(BlockingIOError):
                    sock.recv(1)
            huge = raw_request(port, head.format("x", 10**12), bytes(100))
            reply = b""
            while b"}" not in reply and (chunk := huge.recv(65536)):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 413") and b"953674.3 MB or more" in reply
            waiting = raw_request(port, head.format("x", 10**9) + "\r\nExpect: 100-continue")
            assert waiting.recv(65536).startswith(b"HTTP/1.1 413")  # no 100 Continue for a body to be refused
            gone = raw_request(port, head.format("x", 100_000), bytes(1000))
            gone.close()
            for sock in [*stalled, huge, waiting]:
                sock.close()
            # complete bodies near the limit, more at once than the byte budget holds: all answered, none refused
            wave = np.tile(sf.read(utterances(speakers[0])[5])[0], 20)[:int(0.95 * 2**20 / 2)]
            full = wav_bytes(wave.astype(np.float32))
            with ThreadPoolExecutor(20) as pool:
                codes = list(pool.map(lambda _: c.post("/verify", params={"speaker": speakers[0].name},
                                                       content=full).status_code, range(20)))
            assert codes == [200] * 20, codes
            assert c.get("/health").status_code == 200
    finally:
        stop(process)
    text = log.read_text()
    assert "Traceback" not in text and "Exception in ASGI application" not in text, text[-3000:]


def worker_pids(parent: int) -> list[int]:
    """uvicorn's worker processes under `parent` (the ones that import voxfloat.serve)."""
    pids = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    return [p for p in pids if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


@pytest.mark.parity  # slow tier: two workers, one killed and restarted
def test_a_restarted_worker_serves_the_same_token_and_waits_out_a_bad_store(server: Server, model: Path,
                                                                            speakers: list[Path], tmp_path: Path) -> None:
    store, token = tmp_path / "s.vxf", tmp_path / "token"
    store.write_bytes(server.store.read_bytes())
    token.write_text("first-token\n")
    process, url = start_server("--store", store, "--model", model, "--workers", 2, "--token-file", token,
                                log=tmp_path / "workers.log")
    try:
        token.write_text("second-token\n")  # read once, at start: a restarted worker keeps the first
        good = store.read_bytes()
        store.write_bytes(b"not a store")
        pids = worker_pids(process.pid)
        assert len(pids) == 2, pids
        os.kill(pids[0], 9)
        deadline = time.monotonic() + 60  # uvicorn restarts the worker; it starts although the store is unusable now
        while len(set(worker_pids(process.pid)) - {pids[0]}) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(5)  # the new worker loads the model
        assert process.poll() is None
        headers = {"Authorization": "Bearer first-token"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            assert {c.get("/health").status_code for _ in range(6)} == {409}
            store.write_bytes(good)
            assert {c.get("/health").status_code for _ in range(6)} == {200}
        with httpx.Client(base_url=url, headers={"Authorization": "Bearer second-token"}, timeout=60) as c:
            assert {c.get("/health").status_code for _ in range(6)} == {401}
    finally:
        stop(process)
    text = (tmp_path / "workers.log").read_text()
    assert "answering 409 until the store is usable" in text and "Traceback" not in text, text[-3000:]


def test_a_full_byte_budget_is_a_429_never_a_5xx() -> None:
    """8 full-size bodies waiting for slow inference fill a worker's budget: the next request waits, then gets 429
    (in-process: the Service with a stand-in for inference, so that the bodies stay held long enough)."""
    from starlette.requests import Request

    from voxfloat.serve import ApiError, ServeConfig, Service

    service = Service(ServeConfig(store="unused.vxf", max_body_mb=1, body_seconds=0.2), verifier=None)
    slow = [0.6]  # the first inference is slow; the 7 other bodies queue behind it, held

    def infer(body: bytes) -> int:
        time.sleep(slow.pop() if slow else 0)
        return len(body)

    def request(size: int) -> Request:
        async def receive() -> dict:
            return {"type": "http.request", "body": bytes(size), "more_body": False}
        return Request({"type": "http", "method": "POST", "path": "/verify", "query_string": b"",
                        "headers": [(b"content-length", str(size).encode())]}, receive)

    async def scenario() -> list:
        results: list = []

        async def one(size: int) -> None:
            try:
                results.append(await service.with_audio(request(size), infer))
            except ApiError as e:
                results.append((e.status, str(e), e.headers))

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(one, 2**20)
            await anyio.sleep(0.1)
            tg.start_soon(one, 1000)
        return results

    results = anyio.run(scenario)
    refused = [r for r in results if isinstance(r, tuple)]
    assert results.count(2**20) == 8 and len(refused) == 1, results
    assert refused[0][0] == 429 and "busy" in refused[0][1] and refused[0][2] == {"Retry-After": "1"}
    assert service.budget.used == 0  # every reservation given back
