"""An HTTP app (Starlette) serving a trained reward model; `python -m jaxrlhf.serve` runs it under uvicorn.

Routes (JSON in, JSON out; every error is `{"error": "<one line>"}` with its status, never a traceback):

- `POST /score` `{"texts": [str, ...]}` or `{"pairs": [{"prompt": str, "response": str}, ...]}` ("prompt"
  optional) -> `{"rewards": [float, ...]}`, plus `"normalised": [...]` when the export has reward statistics
  ((reward - reward_mean) / reward_std). Texts are tokenised as given, as `python -m jaxrlhf.score` reads
  them (`RewardScorer.encode_raw`: give them in the model's training format), and score the same, unrounded.
- `GET /health` -> `{"status": "ok", "model": name, "normalised": bool, "max_batch", "max_wait_ms",
  "max_length", "spec": {reward_model.json}, "batching": {BatchStats counters}}`.
- `POST /get_reward`: the remote reward model of OpenRLHF's PPO (`--remote_rm_url http://HOST:PORT/get_reward`).
  Shape matched against OpenRLHF/OpenRLHF `openrlhf/utils/remote_rm_utils.py` (the client:
  `requests.post(url, json={"query": queries, "prompts": prompts, "labels": labels})`, queries being prompt +
  response as one string; older clients send only "query" and read `response.json()["rewards"]`) and
  `openrlhf/cli/serve_rm.py` (their server: `{"rewards": r, "scores": r, "extra_logs": {...}}`). Request
  `{"query": [str], "prompts": [str] (optional), "labels": [...] (optional, ignored)}`, other fields ignored;
  answer `{"rewards": [float], "scores": [float], "extra_logs": {}}`, raw rewards as /score's. A query that
  starts with its prompt is scored as (prompt, rest); the tokenizer's pad and EOS strings at its ends are
  dropped first (the encoder adds the EOS the model was trained with, as OpenRLHF's own server does).

Safety: an optional bearer token (`Authorization: Bearer T`, or `?token=T` in the URL for OpenRLHF, whose
client sends no headers), compared in constant time -> 401; a body over `max_request_bytes` -> 413 (checked
against Content-Length before reading and again while reading); malformed input -> 400. The model runs
only in the batcher's worker thread (`rm.batcher`), so requests arriving together share forward passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from jaxrlhf.infra.http_body import HttpError as BadRequest
from jaxrlhf.infra.http_body import first_line as _first_line
from jaxrlhf.infra.http_body import read_json_object
from jaxrlhf.rm.batcher import Batcher
from jaxrlhf.rm.load import TrainedRM

PROMPT_CACHE_LIMIT = 10_000  # TextEncoder caches every prompt's tokens: a long-running server must forget them


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def make_score_fn(rm: TrainedRM, max_length: int, max_batch: int):
    """(prompt, response) rows -> float32 rewards, through the scorer `jaxrlhf.score` uses; its batch size is
    `max_batch`, so every forward pass has one shape per width bucket (few compilations)."""
    scorer = rm.scorer(max_length, batch_size=max_batch)

    def score(rows):
        if len(scorer.encoder._prompt_cache) > PROMPT_CACHE_LIMIT:
            scorer.encoder._prompt_cache.clear()
        return scorer.score_encoded(scorer.encode_raw([p for p, _ in rows], [r for _, r in rows]))

    return score


def _text(value, name: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise BadRequest(400, f"{name} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise BadRequest(400, f"{name} is empty")
    return value


def _texts(value, field: str, allow_empty: bool = False) -> list[str]:
    if not isinstance(value, list) or not value:
        raise BadRequest(400, f"'{field}' must be a non-empty list of strings")
    return [_text(text, f"{field}[{i}]", allow_empty) for i, text in enumerate(value)]


def score_rows(data: dict) -> list[tuple[str, str]]:
    """The (prompt, response) rows of a /score body."""
    fields = set(data)
    usage = "give 'texts' (a list of strings) or 'pairs' (a list of {\"prompt\", \"response\"} objects)"
    if unknown := sorted(fields - {"texts", "pairs"}):
        raise BadRequest(400, f"unknown field {unknown[0]!r}: {usage}")
    if len(fields) != 1:
        raise BadRequest(400, ("both 'texts' and 'pairs': " if fields else "no texts: ") + usage)
    if "texts" in data:
        return [("", t) for t in _texts(data["texts"], "texts")]
    pairs = data["pairs"]
    if not isinstance(pairs, list) or not pairs:
        raise BadRequest(400, "'pairs' must be a non-empty list of {\"prompt\", \"response\"} objects")
    rows = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, dict):
            raise BadRequest(400, f"pairs[{i}] must be an object with 'prompt' and 'response'")
        if unknown := sorted(set(pair) - {"prompt", "response"}):
            raise BadRequest(400, f"pairs[{i}]: unknown field {unknown[0]!r} (expected 'prompt' and 'response')")
        rows.append((_text(pair.get("prompt", ""), f"pairs[{i}].prompt", allow_empty=True),
                     _text(pair.get("response"), f"pairs[{i}].response")))
    return rows


def _strip_special(text: str, tokenizer) -> str:
    pads = [t for t in (tokenizer.pad_token,) if t]
    ends = [t for t in (tokenizer.pad_token, tokenizer.eos_token) if t]
    while any(text.startswith(t) for t in pads):
        text = text[len(next(t for t in pads if text.startswith(t))):]
    while any(text.endswith(t) for t in ends):
        text = text[:-len(next(t for t in ends if text.endswith(t)))]
    return text


def openrlhf_rows(data: dict, tokenizer) -> list[tuple[str, str]]:
    """The (prompt, response) rows of an OpenRLHF /get_reward body."""
    queries = _texts(data.get("query"), "query")
    prompts = data.get("prompts")
    if prompts is None:
        prompts = [""] * len(queries)
    elif len(_texts(prompts, "prompts", allow_empty=True)) != len(queries):
        raise BadRequest(400, f"'prompts' has {len(prompts)} entries for {len(queries)} queries")
    rows = []
    for query, prompt in zip(queries, prompts):
        query, prompt = _strip_special(query, tokenizer), _strip_special(prompt, tokenizer)
        rows.append((prompt, query[len(prompt):]) if prompt and query.startswith(prompt) else ("", query))
    return rows


def create_app(rm: TrainedRM, *, model_name: str = "", max_batch: int = 32, max_wait_ms: float = 10.0,
               max_length: int = 512, max_request_bytes: int = 1_000_000, token: str | None = None,
               warmup: bool = False) -> Starlette:
    """The app; `app.state.batcher` holds the worker (its `snapshot()` counts batches). `warmup` compiles the
    smallest shape before the first request."""
    if max_request_bytes < 1:
        raise ValueError(f"max_request_bytes={max_request_bytes} must be >= 1")
    score = make_score_fn(rm, max_length, max_batch)
    if warmup:
        score([("", "warm up")])
    batcher = Batcher(score, max_batch, max_wait_ms / 1000.0)
    stats = rm.stats if rm.stats.get("reward_std") else None
    expected = token.encode() if token else None

    def authorise(request: Request) -> None:
        if expected is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else request.query_params.get("token", "")
        if not hmac.compare_digest(given.encode(), expected):
            raise BadRequest(401, "missing or wrong token (send 'Authorization: Bearer <token>')")

    async def read_json(request: Request) -> dict:
        return await read_json_object(request, max_request_bytes)

    async def rewards_of(rows) -> list[float]:
        try:
            rewards = await asyncio.wrap_future(batcher.submit(rows))
        except Exception as e:  # noqa: BLE001 - the scorer's failure, as one line
            raise BadRequest(500, f"scoring failed: {type(e).__name__}: {_first_line(e)}") from None
        return [float(r) for r in np.asarray(rewards, np.float64)]

    async def score_route(request: Request) -> JSONResponse:
        authorise(request)
        rewards = await rewards_of(score_rows(await read_json(request)))
        out = {"rewards": rewards}
        if stats is not None:
            out["normalised"] = [(r - stats["reward_mean"]) / stats["reward_std"] for r in rewards]
        return JSONResponse(out)

    async def openrlhf_route(request: Request) -> JSONResponse:
        authorise(request)
        rewards = await rewards_of(openrlhf_rows(await read_json(request), rm.tokenizer))
        return JSONResponse({"rewards": rewards, "scores": rewards, "extra_logs": {}})

    async def health(request: Request) -> JSONResponse:
        authorise(request)
        return JSONResponse({"status": "ok", "model": model_name, "normalised": stats is not None,
                             "max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_length": max_length,
                             "spec": rm.spec.to_json(), "batching": batcher.snapshot()})

    async def bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return _error(exc.status, exc.message)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:  # 404, 405: JSON too
        return _error(exc.status_code, str(exc.detail))

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error: {type(exc).__name__}")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(batcher.close)  # finishes queued work off the event loop

    app = Starlette(routes=[Route("/score", score_route, methods=["POST"]),
                            Route("/get_reward", openrlhf_route, methods=["POST"]),
                            Route("/health", health, methods=["GET"])],
                    exception_handlers={BadRequest: bad_request, HTTPException: http_error, Exception: server_error},
                    lifespan=lifespan)
    app.state.batcher = batcher
    return app
