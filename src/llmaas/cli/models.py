"""`llmaas admin models`: the run-time model catalog of a running server (register, load, unload, change,
delete). Unlike the rest of `llmaas admin` it talks to the server's HTTP admin API: loading a model is
something the serving process does, so the server must be up."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

models_app = typer.Typer(no_args_is_help=True, help=(
    "The model catalog of a running server: register a bundled model or a GGUF file, load it, unload it, "
    "change it, delete it. Talks to the server at --url with an admin API key."))

Url = Annotated[str, typer.Option("--url", envvar="LLMAAS_URL", help="The running server (default local).")]
ApiKey = Annotated[str | None, typer.Option(
    "--api-key", envvar=["LLMAAS_API_KEY", "LLMAAS_ADMIN_KEY"], help="A platform admin API key.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON, exactly as the HTTP admin API returns it.")]
ModelArg = Annotated[str, typer.Argument(help="The model's id in the catalog.")]
Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the load ends (ready or failed).")]
DEFAULT_URL = "http://127.0.0.1:8000"


def _call(url: str, key: str | None, method: str, path: str, body: dict | None = None) -> dict:
    import httpx

    if not key:
        raise typer.BadParameter("an admin API key is needed: pass --api-key or set LLMAAS_ADMIN_KEY")
    try:
        r = httpx.request(method, f"{url.rstrip('/')}/v1/admin{path}", json=body, timeout=120,
                          headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as e:
        typer.echo(f"error: cannot reach the server at {url} ({e}); is `llmaas serve` running? (--url)", err=True)
        raise typer.Exit(1) from e
    if r.status_code != 200:
        try:
            err = r.json()["error"]
            msg = err["message"] + (f" (field: {err['param']})" if err.get("param") else "")
        except (ValueError, KeyError, TypeError):
            msg = r.text[:500]
        typer.echo(f"error ({r.status_code}): {msg}", err=True)
        raise typer.Exit(1)
    return r.json()


def _show(m: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(m, indent=2))
        return
    source = m.get("package") or m.get("gguf_path") or "-"
    typer.echo(f"{m['id']}  [{m['status']}]  {source}")
    if m.get("error"):
        typer.echo(f"  error: {m['error']}")
    if m.get("description"):
        typer.echo(f"  {m['description']}")
    typer.echo(f"  capabilities: {', '.join(m.get('capabilities') or [])}; tenants: "
               f"{', '.join(m['tenants']) if m.get('tenants') is not None else 'all'}; load at start: "
               f"{m.get('load_at_start')}")
    if m.get("loaded"):
        typer.echo(f"  loaded: context {m['loaded']['context_length']}, {m['loaded']['max_seqs']} sequences")


def _wait(url: str, key: str | None, model: str, m: dict) -> dict:
    while m.get("status") == "loading":
        time.sleep(1)
        m = _call(url, key, "GET", f"/models/{model}")
    return m


def _fields(description: str | None, context_length: int | None, max_seqs: int | None,
            capabilities: str | None, tenants: str | None, prices: tuple[str | None, str | None, str | None]) -> dict:
    body: dict[str, Any] = {"description": description, "context_length": context_length, "max_seqs": max_seqs,
                            "capabilities": capabilities.split(",") if capabilities else None,
                            "tenants": tenants.split(",") if tenants else None,
                            "input_usd_per_mtok": prices[0], "output_usd_per_mtok": prices[1],
                            "training_usd_per_mtok": prices[2]}
    return {k: v for k, v in body.items() if v is not None}


Description = Annotated[str | None, typer.Option(help="What the model is for (shown in /v1/models).")]
ContextLength = Annotated[int | None, typer.Option(help="Tokens per sequence (default: the server's).")]
MaxSeqs = Annotated[int | None, typer.Option(help="Sequences decoded together (default: the server's).")]
Capabilities = Annotated[str | None, typer.Option(
    help="Comma-separated: chat,completions,embeddings,fine_tuning (default: what the model can do).")]
Tenants = Annotated[str | None, typer.Option(help="Comma-separated tenant ids that may see it (default: all).")]
Input = Annotated[str | None, typer.Option("--input", help="USD per million prompt tokens.")]
Output = Annotated[str | None, typer.Option("--output", help="USD per million completion tokens.")]
Training = Annotated[str | None, typer.Option("--training", help="USD per million trained tokens.")]


@models_app.command("register")
def register(
    package: Annotated[str | None, typer.Option(help="Bundled model: smollm2, gemma3-270m, all-minilm-l6-v2.")] = None,
    gguf_path: Annotated[str | None, typer.Option(help="An absolute path to a .gguf file on the server.")] = None,
    model_id: Annotated[str | None, typer.Option("--id", help="Served id (default: the model's own).")] = None,
    description: Description = None, context_length: ContextLength = None, max_seqs: MaxSeqs = None,
    capabilities: Capabilities = None, tenants: Tenants = None, input_price: Input = None,
    output_price: Output = None, training_price: Training = None,
    load: Annotated[bool, typer.Option("--load/--no-load", help="Start loading it now.")] = True,
    wait: Wait = True, url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False,
) -> None:
    """Add a model to the catalog (and load it, unless --no-load)."""
    body = {"package": package, "gguf_path": gguf_path, "id": model_id, "load": load,
            **_fields(description, context_length, max_seqs, capabilities, tenants,
                      (input_price, output_price, training_price))}
    m = _call(url, api_key, "POST", "/models", {k: v for k, v in body.items() if v is not None})
    _show(_wait(url, api_key, m["id"], m) if wait else m, as_json)


@models_app.command("list")
def list_models(url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Every model in the catalog with its status."""
    data = _call(url, api_key, "GET", "/models")["data"]
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    for m in data:
        _show(m, False)


@models_app.command("show")
def show(model: ModelArg, url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """One model: source, status, capabilities, prices."""
    _show(_call(url, api_key, "GET", f"/models/{model}"), as_json)


@models_app.command("load")
def load(model: ModelArg, wait: Wait = True, url: Url = DEFAULT_URL, api_key: ApiKey = None,
         as_json: AsJson = False) -> None:
    """Load a registered model onto the running server (it also loads at the next start)."""
    m = _call(url, api_key, "POST", f"/models/{model}/load")
    _show(_wait(url, api_key, model, m) if wait else m, as_json)


@models_app.command("unload")
def unload(model: ModelArg, url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Unload a model (running streams finish first); it stays in the catalog."""
    _show(_call(url, api_key, "POST", f"/models/{model}/unload"), as_json)


@models_app.command("update")
def update(model: ModelArg, description: Description = None, context_length: ContextLength = None,
           max_seqs: MaxSeqs = None, capabilities: Capabilities = None, tenants: Tenants = None,
           input_price: Input = None, output_price: Output = None, training_price: Training = None,
           url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Change a model's description, limits, capabilities, tenants or prices (context and slots apply at the
    next load)."""
    body = _fields(description, context_length, max_seqs, capabilities, tenants,
                   (input_price, output_price, training_price))
    _show(_call(url, api_key, "PATCH", f"/models/{model}", body), as_json)


@models_app.command("delete")
def delete(model: ModelArg, url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Unload a model and remove it from the catalog."""
    _call(url, api_key, "DELETE", f"/models/{model}")
    typer.echo(f"deleted {model}")

