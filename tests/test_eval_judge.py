"""Win rate by an OpenAI-compatible judge endpoint (a small stdlib HTTP server stands in for the judge model,
spoken to through the real openai client), and the gate row it becomes."""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.config import UserError
from app.eval.gate import GateConfig, decide
from app.eval.judge import JudgeConfig, wins
from app.registry import Registry


def judge_server(rule):
    """A judge at http://127.0.0.1:<port>/v1 answering rule(prompt text) to every chat completion."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            reply = rule(body["messages"][-1]["content"])
            data = json.dumps({"id": "j", "object": "chat.completion", "created": 0, "model": body["model"],
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def prefers_polite(text: str) -> str:
    a = text.split("Reply A:")[1].split("Reply B:")[0]
    b = text.split("Reply B:")[1]
    return "tie" if ("thank" in a) == ("thank" in b) else "A" if "thank" in a else "B"


PROMPTS = [[{"role": "user", "content": f"question {i}"}] for i in range(6)]
NEW = ["thank you, done", "thank you", "no", "thank you!", "no", "ok"]
OLD = ["no", "no", "thank you", "no", "no", "ok"]


def test_endpoint_judge_sees_both_orders_and_counts_wins_ties_losses():
    server, url = judge_server(prefers_polite)
    try:
        result, unreadable = wins(JudgeConfig(base_url=url), PROMPTS, NEW, OLD)
    finally:
        server.shutdown()
    assert result == [1.0, 1.0, 0.0, 1.0, 0.5, 0.5] and unreadable == 0


def test_unreadable_replies_are_ties_and_a_dead_judge_is_a_clear_error():
    server, url = judge_server(lambda text: "hmm, hard to say")
    try:
        result, unreadable = wins(JudgeConfig(base_url=url), PROMPTS[:2], NEW[:2], OLD[:2])
    finally:
        server.shutdown()
    assert result == [0.5, 0.5] and unreadable == 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match=f"judge endpoint http://127.0.0.1:{port}/v1 did not answer"):
        wins(JudgeConfig(base_url=f"http://127.0.0.1:{port}/v1", timeout_s=2), PROMPTS[:1], NEW[:1], OLD[:1])
    with pytest.raises(ValueError, match="exactly one of judge.reward_model and judge.base_url"):
        JudgeConfig()


def test_win_rate_is_a_gate_key(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    base = {"id": reg.register("base", "m", {}), "data_sha256": None}
    items = [{"id": f"t{i}", "set": "test", "rougeL": 0.5} for i in range(40)]
    cfg = GateConfig(keys=["rougeL", "win_rate"], mode="improvement")
    decision = decide(cfg, items, base, items, reg, None, wins=[1.0] * 30 + [0.0] * 6 + [0.5] * 4)
    rows = {r["metric"]: r for r in decision["rows"]}
    assert rows["win_rate"]["verdict"] == "better" and rows["rougeL"]["verdict"] == "no significant change"
    assert decision["passed"] and rows["win_rate"]["new"] == pytest.approx(32 / 40)
    with pytest.raises(UserError, match="win_rate needs a judge"):
        decide(cfg, items, base, items, reg, None)
