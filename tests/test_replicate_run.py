"""prep.replicate_run against the real `replicate` client and a stub on 127.0.0.1: one billed
prediction per key, whatever fails in between."""

from __future__ import annotations


import pytest

pytest.importorskip("replicate")

from prep.remote import RateLimiter, RemoteError, RetryPolicy, StateStore  # noqa: E402
from prep.replicate_run import FileInput, make_client, output_text, read_output, run_prediction  # noqa: E402
from stubs.replicate_stub import ReplicateStub  # noqa: E402

FAST = RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.05)
TOKEN = "r8_fake_token_for_tests_123456"


def _img(n: int = 2000, seed: int = 1) -> FileInput:
    return FileInput(bytes([seed % 256]) * n, "a.jpg", "image/jpeg")


def _run(stub, state, key="a.jpg", img=None, **kw):
    client = make_client(TOKEN, base_url=stub.url, timeout=kw.pop("timeout_s", 10.0))
    return run_prediction(client, "lucataco/florence-2-large", {"image": img or _img(), "task_input": "More Detailed Caption"},
                          key=key, state=state, limiter=RateLimiter(concurrency=2), policy=FAST, poll_interval=0.01, **kw)


def test_success_uploads_through_files_api_and_polls(tmp_path):
    with ReplicateStub(polls_before_done=3) as stub:
        res = _run(stub, StateStore(tmp_path / "s.jsonl"))
    assert res.ok and not res.resumed
    assert "red coat" in output_text(res.output)
    assert len(stub.files) == 1  # uploaded, not inlined
    pred = next(iter(stub.preds.values()))
    assert pred["input"]["image"].startswith(stub.url + "/v1/files/")
    assert sum(1 for r in stub.log if r["method"] == "GET" and r["path"].startswith("/v1/predictions/")) == 3
    assert all(r["auth"] for r in stub.log)


def test_rerun_reloads_and_never_creates_again(tmp_path):
    state = StateStore(tmp_path / "s.jsonl")
    with ReplicateStub() as stub:
        first = _run(stub, state)
        again = _run(stub, StateStore(tmp_path / "s.jsonl"))  # a new process reading the same file
        assert stub.create_count() == 1 and len(stub.files) == 1
    assert again.resumed and again.id == first.id and again.ok


def test_create_429_then_503_is_retried_once_billed(tmp_path):
    with ReplicateStub(fail_plan={"POST /v1/models/": [429, 503]}) as stub:
        res = _run(stub, StateStore(tmp_path / "s.jsonl"))
        assert res.ok and stub.create_count() == 1


def test_lost_create_response_is_recovered_not_recreated(tmp_path):
    # the create reaches the server (billed) but the answer comes too late: the client times out
    with ReplicateStub(fail_plan={"POST /v1/models/": ["hang"]}, hang_seconds=1.5) as stub:
        res = _run(stub, StateStore(tmp_path / "s.jsonl"), timeout_s=0.5)
        assert res.ok
        assert stub.create_count() == 1, stub.log
        assert any(r["method"] == "GET" and r["path"] == "/v1/predictions" for r in stub.log)  # it looked before paying again


def test_model_failure_is_a_result_and_rerun_recreates(tmp_path):
    state = StateStore(tmp_path / "s.jsonl")
    with ReplicateStub(fail_if=lambda b: True) as stub:
        res = _run(stub, state)
        assert res.status == "failed" and "out of memory" in res.error
        stub.fail_if = None
        res2 = _run(stub, state)
        assert res2.ok and stub.create_count() == 2


def test_missing_model_is_not_retried(tmp_path):
    with ReplicateStub(missing_models=("lucataco/florence-2-large",)) as stub:
        with pytest.raises(RemoteError) as ei:
            _run(stub, StateStore(tmp_path / "s.jsonl"))
        assert ei.value.status == 404 and "check the model" in str(ei.value)
        assert sum(1 for r in stub.log if r["method"] == "POST" and "predictions" in r["path"]) == 1


def test_token_never_in_state_or_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)
    state = StateStore(tmp_path / "s.jsonl")
    with ReplicateStub(fail_plan={"POST /v1/models/": [401]}) as stub:
        with pytest.raises(RemoteError) as ei:
            _run(stub, state)
    assert TOKEN not in str(ei.value)
    assert TOKEN not in (tmp_path / "s.jsonl").read_text()


def test_small_inline_and_read_output():
    assert read_output("data:image/png;base64,aGVsbG8=") == b"hello"
    assert output_text(["a ", "b"]) == "a b"
    assert output_text({"caption": "x"}) == "x"


def test_make_client_without_token(monkeypatch):
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    with pytest.raises(RemoteError) as ei:
        make_client()
    assert ei.value.kind == "auth" and "REPLICATE_API_TOKEN" in str(ei.value)


def test_lost_create_found_when_list_omits_inputs(tmp_path):
    # the real list endpoint may return predictions without their input: fetch candidates
    with ReplicateStub(fail_plan={"POST /v1/models/": ["hang"]}, hang_seconds=1.2) as stub:
        orig = stub.handle

        def handle(method, path, headers, raw):
            code, obj, hdrs = orig(method, path, headers, raw)
            if method == "GET" and path.split("?")[0] == "/v1/predictions":
                obj = {**obj, "results": [{k: v for k, v in r.items() if k != "input"} for r in obj["results"]]}
            return code, obj, hdrs

        stub.handle = handle
        res = _run(stub, StateStore(tmp_path / "s.jsonl"), timeout_s=0.4)
        assert res.ok and stub.create_count() == 1
        assert sum(1 for r in stub.log if r["method"] == "POST" and "predictions" in r["path"]) == 1
