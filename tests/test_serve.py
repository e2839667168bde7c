"""xmr serve: answers equal direct search, bad input gets a 4xx with a message, limits and timeouts hold; the page
works in headless Chromium; several worker processes answer from one memory-mapped folder."""

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import xmr  # noqa: E402
from xmr.serve import Limits, create_app  # noqa: E402

QUERIES = ["python data engineer", "cook food in a kitchen", "repair hydraulic machine", "teach music to children"]
CHROMIUM = Path(os.environ.get("XMR_CHROMIUM", "/usr/bin/chromium"))


@pytest.fixture(scope="module")
def index_folder(tmp_path_factory, tiny_encoder):
    from conftest import label_records

    folder = tmp_path_factory.mktemp("serve")
    labels = folder / "labels.jsonl"
    labels.write_text("".join(json.dumps(record) + "\n" for record in label_records()))
    xmr.build_index(labels, tiny_encoder, folder / "index", factory="IVF8,Flat", search_params={"nprobe": 2})
    return folder / "index"


@pytest.fixture(scope="module")
def client(index_folder):
    return TestClient(create_app(index_folder, Limits(max_queries=8, max_k=50, max_text_chars=200,
                                                      max_body_bytes=20_000)))


def test_answers_equal_direct_search(client, index_folder):
    direct = xmr.load_index(index_folder)
    response = client.post("/search", json={"queries": QUERIES, "k": 7})
    assert response.status_code == 200
    expected = direct.predict(QUERIES, k=7).to_records()
    answered = response.json()["results"]
    assert [[hit["id"] for hit in hits] for hits in answered] == [[hit["id"] for hit in hits] for hits in expected]
    assert [[hit["text"] for hit in hits] for hits in answered] == [[hit["text"] for hit in hits] for hits in expected]
    for got, want in zip(answered, expected, strict=True):
        assert [hit["score"] for hit in got] == pytest.approx([hit["score"] for hit in want], abs=1e-5)
    # a search knob per request reaches the index: every list probed is exact search
    exact = direct.predict(QUERIES[:1], k=7, nprobe=8).to_records()[0]
    probed = client.post("/search", json={"queries": QUERIES[:1], "k": 7, "params": {"nprobe": 8}}).json()
    assert [hit["id"] for hit in probed["results"][0]] == [hit["id"] for hit in exact]


def test_text_and_object_queries_answer_alike(client):
    plain = client.post("/search", json={"queries": ["sales customer service"], "k": 3}).json()
    wrapped = client.post("/search", json={"queries": [{"text": "sales customer service"}], "k": 3}).json()
    assert plain == wrapped and len(plain["results"][0]) == 3


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"queries": ["python"], "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ({"queries": ["python"], "k": 51}, 422, "k: 51 is above this service's limit of 50"),
    ({"queries": [], "k": 3}, 422, "queries: List should have at least 1 item"),
    ({"queries": ["python"] * 9, "k": 3}, 422, "queries: 9 queries, at most 8 per request"),
    ({"queries": ["python " * 40], "k": 3}, 422, "queries.0: 280 characters, at most 200"),
    ({"queries": ["python", "  "], "k": 3}, 400, "query 2 has no text (blank) and no image"),
    ({"queries": [3], "k": 3}, 422, "queries.0.str: Input should be a valid string"),
    ({"queries": ["python"], "k": 3, "top": 5}, 422, "top: Extra inputs are not permitted"),
    ({"queries": ["python"], "k": 3, "params": {"efSearch": 64}}, 400, "search parameter(s) ['efSearch'] do not "
                                                                        "apply"),
    ({"queries": [{"text": "python", "image": base64.b64encode(b"png").decode()}], "k": 3}, 400,
     "reads text only; a query image would be ignored"),
])
def test_bad_input_gets_a_4xx_naming_the_problem(client, body, status, message):
    response = client.post("/search", json=body)
    assert response.status_code == status
    assert message in response.json()["detail"]


def test_malformed_json_and_oversized_bodies_are_refused(client):
    broken = client.post("/search", content=b'{"queries": [', headers={"Content-Type": "application/json"})
    assert broken.status_code == 422 and "JSON decode error" in broken.json()["detail"]
    large = client.post("/search", json={"queries": ["python " * 5000], "k": 3})
    assert large.status_code == 413 and "at most 20000" in large.json()["detail"]


def test_a_search_over_the_timeout_answers_504_and_the_service_stays_up(index_folder):
    index = xmr.load_index(index_folder)
    original = index.predict

    def slow_predict(*args, **kwargs):
        time.sleep(1.0)
        return original(*args, **kwargs)

    index.predict = slow_predict
    slow = TestClient(create_app(index, Limits(timeout_s=0.2)))
    response = slow.post("/search", json={"queries": ["python"], "k": 3})
    assert response.status_code == 504 and "longer than 0.2 s" in response.json()["detail"]
    assert slow.get("/health").json() == {"status": "ok", "labels": 300}


class HeldPredictor:
    """An index whose first ``predict`` waits until released, recording the queries of every call."""

    def __init__(self, index, fail_on: str | None = None) -> None:
        self.index, self.fail_on, self.calls = index, fail_on, []
        self.started, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.index, name)

    def predict(self, items, k=10, **knobs):
        self.calls.append(([item if isinstance(item, str) else item["text"] for item in items], k, knobs))
        if len(self.calls) == 1:
            self.started.set()
            assert self.release.wait(30)
        if self.fail_on in self.calls[-1][0]:
            raise xmr.errors.XMRError(f"refused {self.fail_on!r}")
        return self.index.predict(items, k=k, **knobs)


def _searcher(index_folder, batch_queries, fail_on=None):
    from xmr.serve.app import Searcher

    held = HeldPredictor(xmr.load_index(index_folder), fail_on)
    return held, Searcher(held, Limits(), batch_queries)


def _queued(held, searcher, requests):
    """Futures of ``requests`` submitted while the first search (of ``first``) is held, then released."""
    from xmr.serve.app import SearchRequest

    first = searcher.submit(SearchRequest(queries=["held first"], k=3))
    assert held.started.wait(30)
    futures = [searcher.submit(SearchRequest(**request)) for request in requests]
    return first, futures


def test_requests_that_wait_together_are_answered_by_one_search(index_folder):
    waiting = [{"queries": [query], "k": 5} for query in QUERIES[:3]] + [{"queries": [QUERIES[3]], "k": 2},
                                                                         {"queries": QUERIES[:2], "k": 5}]
    held, searcher = _searcher(index_folder, batch_queries=64)
    first, futures = _queued(held, searcher, waiting)
    held.release.set()
    answers = [future.result(timeout=30) for future in futures]
    # the held search, then one search for every waiting k=5 request, then the k=2 one
    assert held.calls == [(["held first"], 3, {}), ([*QUERIES[:3], *QUERIES[:2]], 5, {}), ([QUERIES[3]], 2, {})]
    direct = xmr.load_index(index_folder)
    for request, answer in zip(waiting, answers, strict=True):
        expected = direct.predict(request["queries"], k=request["k"]).to_records()
        assert [[hit["id"] for hit in hits] for hits in answer] == [[hit["id"] for hit in hits] for hits in expected]
    assert len(first.result(timeout=30)[0]) == 3


def test_batch_queries_caps_a_batch_and_one_turns_batching_off(index_folder):
    for batch_queries, expected_calls in ((2, [["held first"], QUERIES[:2], QUERIES[2:]]),
                                          (1, [["held first"], *([query] for query in QUERIES)])):
        held, searcher = _searcher(index_folder, batch_queries)
        _, futures = _queued(held, searcher, [{"queries": [query], "k": 5} for query in QUERIES])
        held.release.set()
        [future.result(timeout=30) for future in futures]
        assert [texts for texts, _, _ in held.calls] == expected_calls


def test_an_error_in_a_merged_search_reaches_only_the_request_that_caused_it(index_folder):
    held, searcher = _searcher(index_folder, batch_queries=64, fail_on="poison")
    _, futures = _queued(held, searcher, [{"queries": [QUERIES[0]], "k": 5}, {"queries": ["poison"], "k": 5},
                                          {"queries": [QUERIES[1]], "k": 5}])
    held.release.set()
    with pytest.raises(xmr.errors.XMRError, match="refused 'poison'"):
        futures[1].result(timeout=30)
    direct = xmr.load_index(index_folder)
    for future, query in ((futures[0], QUERIES[0]), (futures[2], QUERIES[1])):
        expected = direct.predict([query], k=5).to_records()[0]
        assert [hit["id"] for hit in future.result(timeout=30)[0]] == [hit["id"] for hit in expected]


def test_a_request_given_up_before_its_search_is_never_searched(index_folder):
    held, searcher = _searcher(index_folder, batch_queries=64)
    _, futures = _queued(held, searcher, [{"queries": [QUERIES[0]], "k": 5}, {"queries": [QUERIES[1]], "k": 5}])
    assert futures[0].cancel()  # what asyncio does when its waiter times out
    held.release.set()
    futures[1].result(timeout=30)
    assert [texts for texts, _, _ in held.calls] == [["held first"], [QUERIES[1]]]


def test_a_query_image_is_on_disk_while_its_search_runs_and_removed_after():
    from types import SimpleNamespace

    from xmr.serve.app import Searcher, SearchRequest

    class ImageReader:  # a predictor of an image-reading encoder that records what its searches found on disk
        encoder = SimpleNamespace(modalities=frozenset({"text", "image"}), type_name="fake")
        seen: list = []

        def predict(self, items, k=10, **knobs):
            self.seen += [(Path(item["images"][0]), Path(item["images"][0]).read_bytes()) for item in items]
            return SimpleNamespace(to_records=lambda: [[{"id": 0, "text": "x", "score": 1.0}] for _ in items])

    reader = ImageReader()
    searcher = Searcher(reader, Limits())
    job = searcher.submit(SearchRequest(queries=[{"text": "a", "image": base64.b64encode(b"pixels").decode()}], k=1))
    assert job.result(timeout=30) == [[{"id": 0, "text": "x", "score": 1.0}]]
    (path, content), = reader.seen
    assert content == b"pixels"
    deadline = time.time() + 10  # the folder goes in the future's done callback
    while path.parent.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert not path.parent.exists()


def test_fast_queries_serve_the_folders_fast_encoder(index_folder, tiny_encoder, tmp_path):
    from test_fast_queries import static_from

    with pytest.raises(xmr.errors.XMRError, match="no fast query encoder"):
        create_app(index_folder, fast_queries=True)
    index = xmr.load_index(index_folder)
    static = static_from(tiny_encoder, tmp_path / "static")
    index.attach_fast_queries(static)
    folder = index.save(tmp_path / "fast")
    answered = TestClient(create_app(folder, fast_queries=True)).post("/search", json={"queries": QUERIES, "k": 5})
    expected = index.search_embeddings(static.encode_queries(QUERIES), k=5).to_records()
    plain = index.predict(QUERIES, k=5).to_records()
    ids = [[hit["id"] for hit in hits] for hits in answered.json()["results"]]
    assert ids == [[hit["id"] for hit in hits] for hits in expected]
    assert ids != [[hit["id"] for hit in hits] for hits in plain]


def test_health_info_schema_and_page(client):
    assert client.get("/health").json() == {"status": "ok", "labels": 300}
    info = client.get("/info").json()
    assert info["predictor"]["labels"] == 300 and info["limits"]["max_k"] == 50 and info["pid"] == os.getpid()
    schema = client.get("/openapi.json").json()
    assert "/search" in schema["paths"] and "SearchRequest" in schema["components"]["schemas"]
    page = client.get("/")
    assert page.status_code == 200 and '<form id="form">' in page.text and 'fetch("search"' in page.text


def test_xmr_serve_refuses_bad_options_in_one_line(index_folder, capsys):
    from xmr.cli import main

    assert main(["serve", str(index_folder), "--workers", "0"]) == 2
    assert capsys.readouterr().err == "xmr: error: --workers must be at least 1, got 0\n"
    assert main(["serve", str(index_folder.parent / "missing")]) == 2
    assert capsys.readouterr().err.startswith("xmr: error: ")
    assert main(["serve", str(index_folder), "--batch-queries", "0"]) == 2
    assert capsys.readouterr().err == "xmr: error: --batch-queries must be positive, got 0\n"
    assert main(["serve", str(index_folder), "--fast-queries"]) == 2  # refused before any worker starts
    assert "has no fast query encoder" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs a Chromium at /usr/bin/chromium (or $XMR_CHROMIUM)")
def test_the_page_shows_the_top_k_in_headless_chromium(index_folder):
    playwright = pytest.importorskip("playwright.sync_api")
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(index_folder), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.fill("#query", QUERIES[0])
            page.fill("#k", "5")
            page.click("#go")
            page.wait_for_selector("#results[data-done='1']")
            shown = page.eval_on_selector_all("#results li", "items => items.map(item => item.dataset.id)")
            page.fill("#k", "5000")  # over the service's max_k: the answer's message is shown
            page.click("#go")
            page.wait_for_function("document.getElementById('error').textContent.length > 0")
            error = page.text_content("#error")
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    expected = xmr.load_index(index_folder).predict([QUERIES[0]], k=5).label_ids(0)
    assert shown == [str(label_id) for label_id in expected]
    assert error == "k: 5000 is above this service's limit of 1000"


@pytest.mark.slow
def test_several_workers_answer_from_one_memory_mapped_folder(index_folder, tmp_path):
    import httpx

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(xmr.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "xmr.cli", "serve", str(index_folder), "--port", str(port),
                                "--workers", "2", "--threads", "1"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        pids, answers = set(), []
        deadline = time.time() + 120
        fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection each time: any worker may take it
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, limits=fresh) as http:
            while time.time() < deadline and len(pids) < 2 and process.poll() is None:
                try:
                    pids.add(http.get("/info").json()["pid"])
                    answers.append(http.post("/search", json={"queries": QUERIES[:2], "k": 5}).json())
                except httpx.TransportError:
                    time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert len(pids) == 2, f"one worker answered {len(answers)} requests: {process.stderr.read().decode()[-2000:]}"
    expected = xmr.load_index(index_folder).predict(QUERIES[:2], k=5).to_records()
    for answer in answers:
        assert [[h["id"] for h in hits] for hits in answer["results"]] == [[h["id"] for h in hits] for hits in expected]
