"""vLLM's CPU build with the deployment's arguments (tests/vllm_server.py): start-up time, then
what the LLM bridge gets from it for one turn at a time and for several at once.

Start-up = from starting the server to its /health answering 200. Per reply, through the bridge's
own client (OpenAICompatibleChat): time to first token (request sent -> first text delta) and
tokens per second after the first (vLLM streams one token per delta). Batched: ``--sessions``
replies streamed at once, their tokens per second added up. Needs scripts/bootstrap.sh
--with-test-tools (the vLLM environment and converted weights).
Run: python -m benchmarks.vllm_turn [--runs 5] [--sessions 4] [--tokens 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from fleet.settings import Settings
from tests.vllm_server import VllmServer, running_vllm
from workers.llm_bridge.chat import OpenAICompatibleChat

QUESTION = "Please tell me a long story about a brave knight and a friendly dragon."


async def one_reply(server: VllmServer, tokens: int, seed: int) -> tuple[float, float, int]:
    """(time to first token in s, tokens per second after the first, tokens) of one reply."""
    messages = [
        {"role": "system", "content": Settings().llm_system_prompt},
        {"role": "user", "content": QUESTION},
    ]
    first_token: list[float] = []
    started = time.perf_counter()
    async with OpenAICompatibleChat(
        server.url, server.served_model_name, server.api_key, 120
    ) as chat:
        count = 0
        async for _ in chat.stream(
            messages,
            max_tokens=tokens,
            temperature=0.3,
            seed=seed,
            on_first_token=first_token.append,
        ):
            count += 1
    elapsed = time.perf_counter() - started
    return first_token[0], (count - 1) / (elapsed - first_token[0]), count


async def measure(server: VllmServer, runs: int, sessions: int, tokens: int) -> None:
    await one_reply(server, tokens, seed=0)  # warm-up
    alone = [await one_reply(server, tokens, seed=run + 1) for run in range(runs)]
    ttft = [r[0] * 1000 for r in alone]
    rate = [r[1] for r in alone]
    print(
        f"one at a time ({runs} replies of up to {tokens} tokens): time to first token "
        f"median {statistics.median(ttft):.0f} ms (min {min(ttft):.0f}, max {max(ttft):.0f}); "
        f"{statistics.median(rate):.1f} tokens/s median (min {min(rate):.1f}, max {max(rate):.1f})"
    )
    started = time.perf_counter()
    together = await asyncio.gather(
        *(one_reply(server, tokens, seed=100 + n) for n in range(sessions))
    )
    elapsed = time.perf_counter() - started
    ttft = [r[0] * 1000 for r in together]
    print(
        f"{sessions} at once: time to first token median {statistics.median(ttft):.0f} ms "
        f"(max {max(ttft):.0f}); {sum(r[2] for r in together) / elapsed:.1f} tokens/s in all, "
        f"{statistics.median(r[1] for r in together):.1f} per reply"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        with running_vllm(Path(scratch) / "vllm.log") as server:
            print(f"start-up: {time.perf_counter() - started:.1f} s to /health")
            asyncio.run(measure(server, args.runs, args.sessions, args.tokens))
    print(f"load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
