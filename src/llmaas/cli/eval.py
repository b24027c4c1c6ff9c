"""`llmaas eval`: run and read evals against a running llmaas server, as a tenant (HTTP client).

The key comes from --api-key, LLMAAS_API_KEY or OPENAI_API_KEY; the server from --base-url,
LLMAAS_BASE_URL or OPENAI_BASE_URL (default http://127.0.0.1:8000/v1)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

eval_app = typer.Typer(no_args_is_help=True, help=(
    "Evaluate models (base or ft:) on a labeled file through a running server: classification "
    "(accuracy, precision/recall/F1, confusion matrix, calibration), generation (exact match, token F1, "
    "ROUGE-L, BLEU) or loss (cross-entropy, perplexity). Results are stored and comparable."))

BaseUrl = Annotated[str | None, typer.Option(
    "--base-url", help="API base URL (env LLMAAS_BASE_URL or OPENAI_BASE_URL; default http://127.0.0.1:8000/v1).")]
ApiKey = Annotated[str | None, typer.Option(
    "--api-key", help="Tenant API key (env LLMAAS_API_KEY or OPENAI_API_KEY).", show_default=False)]
AsJson = Annotated[bool, typer.Option("--json", help="Print the JSON the API returns.")]
EvalId = Annotated[str, typer.Argument(help="Eval id (eval-...).")]


class _Api:
    def __init__(self, base_url: str | None, api_key: str | None) -> None:
        import httpx

        url = base_url or os.environ.get("LLMAAS_BASE_URL") or os.environ.get("OPENAI_BASE_URL") \
            or "http://127.0.0.1:8000/v1"
        key = api_key or os.environ.get("LLMAAS_API_KEY") or os.environ.get("OPENAI_API_KEY")
        if not key:
            raise typer.BadParameter("no API key: pass --api-key or set LLMAAS_API_KEY", param_hint="--api-key")
        self.http = httpx.Client(base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {key}"}, timeout=120)

    def call(self, method: str, path: str, **kw: Any) -> dict:
        import httpx

        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise SystemExit(f"error: cannot reach {self.http.base_url}: {e}. Is `llmaas serve` running?") from None
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                msg = err["message"] + (f" (param: {err['param']})" if err.get("param") else "")
            except (ValueError, KeyError, TypeError):
                msg = r.text[:500]
            raise SystemExit(f"error {r.status_code}: {msg}")
        return r.json()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def print_metrics(ev: dict) -> None:
    """The metrics of every model of an eval, as tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for model, m in (ev.get("results") or {}).items():
        t = Table(title=f"{ev['id']} · {model} · {ev['task']['type']}", title_justify="left")
        t.add_column("metric")
        t.add_column("value", justify="right")
        for k in ("rows", "rows_skipped", "accuracy", "exact_match", "token_f1", "rouge_l", "bleu", "loss",
                  "perplexity", "log_loss", "ece", "gold_label_loss", "rows_per_s"):
            if m.get(k) is not None:
                t.add_row(k, _fmt(m[k]))
        for avg in ("macro", "micro", "weighted"):
            if avg in m:
                t.add_row(f"{avg} P / R / F1", " / ".join(_fmt(m[avg][x]) for x in ("precision", "recall", "f1")))
        console.print(t)
        if "per_class" in m:
            pc = Table(title="per class", title_justify="left")
            for col in ("label", "precision", "recall", "f1", "support"):
                pc.add_column(col, justify="left" if col == "label" else "right")
            for label, v in m["per_class"].items():
                pc.add_row(label, *(_fmt(v[x]) for x in ("precision", "recall", "f1", "support")))
            console.print(pc)
            cm = m["confusion_matrix"]
            ct = Table(title="confusion matrix (rows: true, columns: predicted)", title_justify="left")
            ct.add_column("")
            for lb in cm["labels"]:
                ct.add_column(lb, justify="right")
            for lb, row in zip(cm["labels"], cm["matrix"], strict=True):
                ct.add_row(lb, *map(str, row))
            console.print(ct)
    if ev.get("error"):
        console.print(f"[red]error:[/red] {ev['error']['message']}")


def print_comparison(cmp: dict, columns: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    cols = columns or cmp["columns"]
    t = Table(title="evals side by side", title_justify="left")
    for c in ("eval", "model", *cols):
        t.add_column(c, justify="left" if c in ("eval", "model") else "right")
    for r in cmp["rows"]:
        t.add_row(r["name"] or r["eval_id"], r["model"], *(_fmt(r["metrics"].get(c)) for c in cols))
    Console().print(t)


def wait(api: _Api, eval_id: str, poll_s: float = 1.0) -> dict:
    """Poll an eval to its end with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task(f"{eval_id} queued", total=None)
        while True:
            ev = api.call("GET", f"/evals/{eval_id}")
            p = ev["progress"]
            bar.update(task, total=p["rows_total"], completed=p["rows_done"] or 0,
                       description=f"{eval_id} {ev['status']}" + (f" · {p['model']}" if p.get("model") else ""))
            if ev["status"] in ("succeeded", "failed", "cancelled"):
                return ev
            time.sleep(poll_s)


@eval_app.command("run")
def run(
    model: Annotated[list[str], typer.Option("--model", "-m", help="Model to evaluate (repeat for several).")],
    file: Annotated[str, typer.Option("--file", "-f", help="A local .jsonl file (uploaded with purpose 'evals') "
                                      "or the id of an uploaded file.")],
    task: Annotated[str, typer.Option(help="classification, generation or loss.")] = "classification",
    labels: Annotated[str | None, typer.Option(help="Comma-separated label set (default: the file's labels).")] = None,
    template: Annotated[str | None, typer.Option(help="Classification prompt template; {text} and other row "
                                                 "fields are substituted. (default '{text}')")] = None,
    system: Annotated[str | None, typer.Option(help="A system message put before every row.")] = None,
    max_rows: Annotated[int | None, typer.Option(help="Evaluate the file's first N rows.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Generation: max tokens per answer (default 256).")] = None,
    name: Annotated[str | None, typer.Option(help="A name shown in comparisons.")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Print the eval id and return at once.")] = False,
    base_url: BaseUrl = None, api_key: ApiKey = None, as_json: AsJson = False,
) -> None:
    """Create an eval run, follow it with a progress bar and print its metrics."""
    api = _Api(base_url, api_key)
    file_id = file
    if Path(file).is_file():
        with open(file, "rb") as fh:
            file_id = api.call("POST", "/files", files={"file": (Path(file).name, fh)}, data={"purpose": "evals"})["id"]
    spec: dict[str, Any] = {"type": task}
    if task == "classification":
        spec.update({k: v for k, v in {"labels": labels.split(",") if labels else None, "prompt_template": template,
                                       "system": system}.items() if v is not None})
    else:
        spec.update({k: v for k, v in {"system": system, "max_tokens": max_tokens}.items() if v is not None})
    body = {"model": model, "file_id": file_id, "task": spec, "name": name, "max_rows": max_rows}
    ev = api.call("POST", "/evals", json={k: v for k, v in body.items() if v is not None})
    if no_wait:
        typer.echo(ev["id"])
        return
    ev = wait(api, ev["id"])
    typer.echo(json.dumps(ev, indent=2)) if as_json else print_metrics(ev)
    if ev["status"] != "succeeded":
        raise typer.Exit(1)


@eval_app.command("show")
def show(eval_id: EvalId, base_url: BaseUrl = None, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Print an eval's status and metrics."""
    ev = _Api(base_url, api_key).call("GET", f"/evals/{eval_id}")
    typer.echo(json.dumps(ev, indent=2)) if as_json else (typer.echo(f"{ev['id']}: {ev['status']}"), print_metrics(ev))


@eval_app.command("list")
def list_(limit: Annotated[int, typer.Option(help="How many (newest first).")] = 20,
          base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """List evals, newest first."""
    for ev in _Api(base_url, api_key).call("GET", "/evals", params={"limit": limit})["data"]:
        typer.echo(f"{ev['id']}  {ev['status']:<10} {ev['task']['type']:<15} {', '.join(ev['model'])}"
                   + (f"  ({ev['name']})" if ev.get("name") else ""))


@eval_app.command("compare")
def compare(eval_ids: Annotated[list[str], typer.Argument(help="Eval ids to put side by side.")],
            base_url: BaseUrl = None, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Print evals side by side: one row per (eval, model), one column per metric."""
    cmp = _Api(base_url, api_key).call("GET", "/evals/compare", params={"ids": ",".join(eval_ids)})
    typer.echo(json.dumps(cmp, indent=2)) if as_json else print_comparison(cmp)


@eval_app.command("items")
def items(eval_id: EvalId, model: Annotated[str | None, typer.Option(help="Which model's rows.")] = None,
          limit: Annotated[int, typer.Option(help="Rows to print.")] = 20, base_url: BaseUrl = None,
          api_key: ApiKey = None) -> None:
    """Print per-row results (JSON lines)."""
    params = {"limit": limit, **({"model": model} if model else {})}
    for it in _Api(base_url, api_key).call("GET", f"/evals/{eval_id}/items", params=params)["data"]:
        typer.echo(json.dumps(it))


@eval_app.command("cancel")
def cancel(eval_id: EvalId, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Cancel a queued or running eval."""
    typer.echo(_Api(base_url, api_key).call("POST", f"/evals/{eval_id}/cancel")["status"])
