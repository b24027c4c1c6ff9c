"""Tool calling: the share of valid calls (parse + schema) on a fixed set of 50 tool prompts, with and without
constrained decoding, for `tool_choice` "auto" and "required".

Five tools (bench/data/tools.json: enums, number and integer types, required fields, `pattern`, `minimum`) and
50 user prompts for which a call is the right answer, each with the tool it should call
(bench/data/tool_prompts.jsonl). Both arms go through the API of a live `llmaas serve`, as a user would:

- **constrained**: `tools=...`, `tool_choice` "required" or "auto"; the server's grammar decides the output's shape.
- **unconstrained**: exactly the messages the server renders for such a request (`ToolPlan.of(...).messages`: the
  tools in the system message) sent as a plain chat completion without tools, so without a grammar; the output is
  parsed with the server's own parser (`ToolCallStream`). The rendering does not depend on `tool_choice`, so one
  request per prompt serves both rows: "required" scores it as a call that had to come, "auto" as one that may.

A call is valid when its JSON parses, it names one of the tools and its arguments validate (`jsonschema`) against
that tool's `parameters`; a `<tool_call>` block the parser could not read is a call, and invalid. Per arm:
prompts with a call, prompts valid (≥ 1 call, every call valid), valid calls / calls, right tool (the first call
names the expected tool) and the mean latency per request. Prints a table; writes bench/results/tool_calls.json.

    python bench/tool_calls.py --quick                        # 10 prompts, temperature 0
    python bench/tool_calls.py --threads 1                    # 50 prompts, temperature 0, concurrency 4
    python bench/tool_calls.py --temperatures 0,0.7 --seed 0  # a second, sampled pass
    python bench/tool_calls.py --url http://127.0.0.1:8000 --api-key sk-llmaas-…   # a running server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jsonschema
import openai
from finetune_quality import ADMIN_KEY, MODEL, new_tenant, start_server
from openai import AsyncOpenAI

from llmaas.core.chat_jsonl import model_role
from llmaas.protocol.openai import ChatCompletionRequest
from llmaas.serving.tools import OPEN, ToolCallStream, ToolPlan

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
RESULTS = ROOT / "bench" / "results"
# Room for a call with every argument (~60 tokens) and a second, parallel one; a call cut short is invalid.
MAX_TOKENS = 128
ARMS = (("constrained", "required"), ("constrained", "auto"), ("unconstrained", "required"),
        ("unconstrained", "auto"))


def load_tools() -> list[dict]:
    return json.loads((DATA / "tools.json").read_text())


def load_prompts(quick: bool) -> list[dict]:
    rows = [json.loads(x) for x in (DATA / "tool_prompts.jsonl").read_text().splitlines() if x.strip()]
    return rows[::5] if quick else rows  # the file is grouped by tool: every 5th row keeps all five tools


@dataclass
class OwnServer:
    """The `llmaas serve` this bench started, restarted (same data dir and key) when a request kills it."""

    data_dir: Path
    port: int
    threads: int | None
    proc: object = None
    restarts: int = 0

    def start(self) -> str:
        self.proc, url = start_server(self.data_dir, self.port, self.threads,
                                      serve_args=("--max-seqs", "8", "--workers", "0"))
        return url

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def restart(self) -> None:
        self.stop()
        self.restarts += 1  # start_server overwrites server.log: keep the one that says why it died
        (self.data_dir / "server.log").rename(self.data_dir / f"server.{self.restarts}.log")
        self.start()


@dataclass
class Call:
    name: str | None
    arguments: str
    error: str | None  # None: valid


@dataclass
class Outcome:
    """One request's output, scored."""

    prompt: str
    expected: str
    calls: list[Call]
    content: str
    finish_reason: str | None
    latency_s: float
    crashed: bool = False  # the request took the server down (no answer)
    valid: bool = field(init=False)

    def __post_init__(self) -> None:
        self.valid = bool(self.calls) and all(c.error is None for c in self.calls)

    @property
    def right_tool(self) -> bool:
        return bool(self.calls) and self.calls[0].name == self.expected


def check(name: str, arguments: str, schemas: dict[str, dict]) -> Call:
    """A parsed call, validated as a client would: the name is a tool, the arguments its parameters."""
    if name not in schemas:
        return Call(name, arguments, f"unknown tool {name!r}")
    try:
        args = json.loads(arguments)
    except ValueError as e:
        return Call(name, arguments, f"arguments are not JSON: {e}")
    try:
        jsonschema.validate(args, schemas[name])
    except jsonschema.ValidationError as e:
        return Call(name, arguments, f"schema: {e.message}")
    return Call(name, arguments, None)


def unparsed(content: str) -> list[Call]:
    """`<tool_call>` blocks left in the content: the parser could not read them (bad JSON, cut short)."""
    return [Call(None, block, "unparsed <tool_call> block") for block in content.split(OPEN)[1:]]


def score_text(text: str, schemas: dict[str, dict]) -> tuple[list[Call], str]:
    """Raw model output through the server's parser: (calls, the content left)."""
    stream = ToolCallStream()
    content, _ = stream.feed(text)
    content += stream.finish()
    calls = [check(c["name"], c["arguments"], schemas) for c in stream.calls]
    return calls + unparsed(content), content


def rendered(prompt: str, tools: list[dict]) -> list[dict]:
    """The messages the model sees for a request with these tools (the server's own rendering)."""
    body = ChatCompletionRequest.model_validate({"model": MODEL, "messages": [{"role": "user", "content": prompt}],
                                                 "tools": tools})
    return [{"role": m.role, "content": m.content} for m in ToolPlan.of(body, model_role).messages]


async def run_arm(client: AsyncOpenAI, arm: tuple[str, str], rows: list[dict], tools: list[dict],
                  temperature: float, seed: int, concurrency: int, max_tokens: int,
                  own: OwnServer | None) -> list[Outcome]:
    mode, choice = arm
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    sem = asyncio.Semaphore(concurrency)

    async def one(row: dict) -> Outcome | None:
        common = {"model": MODEL, "max_tokens": max_tokens, "temperature": temperature, "seed": seed}
        async with sem:
            t0 = time.monotonic()
            try:
                if mode == "constrained":
                    r = await client.chat.completions.create(messages=[{"role": "user", "content": row["prompt"]}],
                                                             tools=tools, tool_choice=choice, **common)
                else:
                    r = await client.chat.completions.create(messages=rendered(row["prompt"], tools), **common)
            except openai.APIConnectionError:
                return None  # the server died: this request or another one in flight killed it
            latency = time.monotonic() - t0
        c = r.choices[0]
        if mode == "constrained":
            content = c.message.content or ""
            calls = [check(t.function.name, t.function.arguments, schemas) for t in c.message.tool_calls or []]
            calls += unparsed(content)
        else:
            calls, content = score_text(c.message.content or "", schemas)
        return Outcome(row["prompt"], row["tool"], calls, content, c.finish_reason, latency)

    outcomes = list(await asyncio.gather(*[one(r) for r in rows]))
    if all(o is not None for o in outcomes):
        return outcomes
    if own is None:
        raise SystemExit("the server went away (see its log); a running server cannot be restarted by the bench")
    # Which of the requests in flight killed it? Rerun those left unanswered one at a time.
    own.restart()
    for i, row in enumerate(rows):
        if outcomes[i] is None:
            outcomes[i] = await one(row)
            if outcomes[i] is None:
                print(f"  server crash ({mode}/{choice}): {row['prompt']!r}", file=sys.stderr)
                outcomes[i] = Outcome(row["prompt"], row["tool"], [], "", None, 0.0, crashed=True)
                own.restart()
    return outcomes


def summary(outcomes: list[Outcome]) -> dict:
    n = len(outcomes)
    calls = [c for o in outcomes for c in o.calls]
    answered = [o for o in outcomes if not o.crashed]
    return {"prompts": n,
            "with_call": sum(bool(o.calls) for o in outcomes) / n,
            "prompts_valid": sum(o.valid for o in outcomes) / n,
            "calls": len(calls),
            "calls_valid": sum(c.error is None for c in calls) / len(calls) if calls else None,
            "right_tool": sum(o.right_tool for o in outcomes) / n,
            "cut_short": sum(o.finish_reason == "length" for o in outcomes),
            "server_crashes": sum(o.crashed for o in outcomes),
            "mean_latency_s": sum(o.latency_s for o in answered) / len(answered) if answered else None}


def table(results: dict) -> str:
    head = ("temp", "arm", "tool_choice", "with call", "prompts valid", "valid calls / calls", "right tool",
            "cut short", "server crashes", "mean s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for temp, arms in results.items():
        for key, s in arms.items():
            mode, choice = key.split("/")
            cv = f"{s['calls_valid']:.2f} ({s['calls']})" if s["calls_valid"] is not None else f"— ({s['calls']})"
            lines.append(f"| {temp} | {mode} | {choice} | {s['with_call']:.2f} | {s['prompts_valid']:.2f} | {cv} | "
                         f"{s['right_tool']:.2f} | {s['cut_short']} | {s['server_crashes']} | "
                         f"{s['mean_latency_s'] or 0:.2f} |")
    return "\n".join(lines)


def errors(outcomes: list[Outcome], limit: int = 8) -> list[str]:
    """The first few invalid calls, for the log: what went wrong, not just how often."""
    bad = [f"{o.prompt!r}: {c.name} {c.arguments[:120]!r} -> {c.error}" for o in outcomes for c in o.calls
           if c.error is not None]
    return bad[:limit]


async def bench(url: str, key: str, rows: list[dict], temperatures: list[float], seed: int,
                concurrency: int, max_tokens: int, own: OwnServer | None) -> tuple[dict, dict]:
    tools = load_tools()
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key=key, timeout=1200, max_retries=0)  # a retry would redo the work
    results: dict[str, dict] = {}
    detail: dict[str, dict] = {}
    try:
        for temp in temperatures:
            results[str(temp)], detail[str(temp)] = {}, {}
            unconstrained: list[Outcome] | None = None
            for arm in ARMS:
                if arm[0] == "unconstrained" and unconstrained is not None:
                    outcomes = unconstrained  # the same request; only the scoring of a missing call differs
                else:
                    t0 = time.monotonic()
                    outcomes = await run_arm(client, arm, rows, tools, temp, seed, concurrency, max_tokens,
                                             own)
                    print(f"temperature {temp}, {'/'.join(arm)}: {len(rows)} requests in "
                          f"{time.monotonic() - t0:.0f} s", file=sys.stderr)
                    if arm[0] == "unconstrained":
                        unconstrained = outcomes
                name = "/".join(arm)
                results[str(temp)][name] = summary(outcomes)
                detail[str(temp)][name] = [asdict(o) for o in outcomes]
                for line in errors(outcomes) if arm[1] == "required" else []:
                    print(f"  invalid ({name}): {line}", file=sys.stderr)
    finally:
        await client.close()
    return results, detail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 prompts (two per tool), the first temperature only")
    ap.add_argument("--temperatures", default="0", help="comma-separated, e.g. 0,0.7; each is a full pass")
    ap.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--url", help="an already running llmaas (its --api-key is used as is)")
    ap.add_argument("--api-key", help="a key for --url (default: a new tenant made with the bench's admin key)")
    ap.add_argument("--port", type=int, default=8937)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--output", type=Path, default=RESULTS / "tool_calls.json")
    args = ap.parse_args()

    rows = load_prompts(args.quick)
    temps = [float(t) for t in args.temperatures.split(",")][:1 if args.quick else None]
    own = None if args.url else OwnServer(Path(tempfile.mkdtemp(prefix="llmaas-tools-")), args.port, args.threads)
    url = args.url or own.start()
    t0 = time.monotonic()
    try:
        key = args.api_key or new_tenant(url, ADMIN_KEY)[0]
        results, detail = asyncio.run(bench(url, key, rows, temps, args.seed, args.concurrency,
                                              args.max_tokens, own))
    finally:
        if own is not None:
            own.stop()
    wall = time.monotonic() - t0
    print(table(results))
    print(f"{len(rows)} prompts, max_tokens {args.max_tokens}, seed {args.seed}, concurrency {args.concurrency}, "
          f"{wall:.0f} s", file=sys.stderr)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "model": MODEL, "prompts": len(rows), "max_tokens": args.max_tokens, "seed": args.seed,
        "concurrency": args.concurrency, "threads": args.threads, "wall_s": wall,
        "server_restarts": own.restarts if own else 0, "machine": platform.platform(),
        "results": results, "outcomes": detail}, indent=1))


if __name__ == "__main__":
    main()
