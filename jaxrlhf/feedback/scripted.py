"""A scripted annotator: labels through the same HTTP API as a person's browser, so the feedback loop and
the load test run without people. Its judge is a reward model (with per-annotator noise, so annotators
disagree as people do) or any function of the item.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable

import numpy as np


class ApiError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class Client:
    """The annotation API with a bearer token (no cookie, so no CSRF token is needed)."""

    def __init__(self, url: str, token: str, timeout: float = 60.0):
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    def call(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="GET" if body is None else "POST",
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", e.reason)
            except ValueError:
                message = str(e.reason)
            raise ApiError(e.code, message) from None

    def next(self) -> dict:
        return self.call("/api/next")

    def label(self, body: dict) -> dict:
        return self.call("/api/label", body)


Judge = Callable[[dict], dict]  # item as /api/next gives it -> the label's fields (order, or choice)


def verdict_from_scores(item: dict, scores: np.ndarray, tie_margin: float = 0.0) -> dict:
    """The label a judge with these scores (one per shown response, higher is better) gives."""
    if item["kind"] == "ab":
        gap = float(scores[1] - scores[0])
        return {"choice": "tie" if abs(gap) <= tie_margin else ("2" if gap > 0 else "1")}
    return {"order": [int(i) + 1 for i in np.argsort(-scores, kind="stable")]}


def reward_model_judge(rm_path: str, noise: float = 0.0, seed: int = 0, tie_margin: float = 0.0,
                       max_length: int = 512) -> Judge:
    """Ranks by the reward model's scores plus Gaussian noise of std `noise` (in reward units)."""
    from jaxrlhf.data.prompts import Prompt
    from jaxrlhf.rm.load import load_trained_rm

    scorer = load_trained_rm(rm_path).scorer(max_length, batch_size=8)
    rng = np.random.default_rng(seed)

    def judge(item: dict) -> dict:
        prompt = Prompt(item["prompt"], tuple(tuple(t) for t in item["turns"]))
        rewards = scorer.score_texts([prompt] * len(item["responses"]), item["responses"])
        scores = np.asarray(rewards, np.float64) + noise * rng.standard_normal(len(rewards))
        return verdict_from_scores(item, scores, tie_margin)

    return judge


def annotate_all(client: Client, judge: Judge, limit: int = 0) -> int:
    """Labels items until none is left for this annotator (or `limit` labels); returns how many it stored."""
    stored = 0
    while not limit or stored < limit:
        item = client.next()["item"]
        if item is None:
            break
        try:
            client.label({"assignment": item["assignment"], **judge(item)})
        except ApiError as e:
            if e.status != 409:  # 409: the lease ran out while judging; the next call hands out another
                raise
            continue
        stored += 1
    return stored
