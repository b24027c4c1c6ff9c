"""`llmaas admin deployments`: each loaded model's deployment on a running server, its replicas and, in Ray
mode, replica counts, autoscaling and per-replica settings (applied to the running application)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from llmaas.cli.models import DEFAULT_URL, ApiKey, AsJson, ModelArg, Url, _call

deployments_app = typer.Typer(no_args_is_help=True, help=(
    "Deployments of a running server: list them, show one with its replicas, change replicas and autoscaling "
    "(Ray mode), remove one (= unload the model)."))


def _show(d: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    c = d["config"]
    typer.echo(f"{d['id']}  [{d.get('status')}]  mode {d['mode']}  replicas {c['min_replicas']}..{c['max_replicas']}"
               f" (target {d.get('target_replicas')})")
    typer.echo(f"  per replica: {c['threads']} threads, {c['max_seqs']} sequences, {c['max_adapters']} adapters; "
               f"target load {c['target_ongoing_requests']:g}; delays up {c['upscale_delay_s']:g} s, down "
               f"{c['downscale_delay_s']:g} s, to zero {c['downscale_to_zero_delay_s']}")
    for r in d.get("replicas") or []:
        typer.echo(f"  - {r['id']}  {r['state']}  running {r['running']}  waiting {r['waiting']}  adapters "
                   f"{', '.join(r['adapters']) or '-'}")


@deployments_app.command("list")
def list_(url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Every deployment, with its replicas."""
    out = _call(url, api_key, "GET", "/deployments")
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    for d in out["data"]:
        _show(d, False)


@deployments_app.command()
def show(model: ModelArg, url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """One deployment and its replicas (id, state, running and waiting sequences, adapters held)."""
    _show(_call(url, api_key, "GET", f"/deployments/{model}"), as_json)


Opt = typer.Option


@deployments_app.command()
def update(
    model: ModelArg,
    min_replicas: Annotated[int | None, Opt(help="Fewest replicas; 0 lets the model scale to zero.")] = None,
    max_replicas: Annotated[int | None, Opt(help="Most replicas.")] = None,
    initial_replicas: Annotated[int | None, Opt(help="Replicas at deploy time.")] = None,
    target_ongoing_requests: Annotated[float | None, Opt(help="Running + waiting sequences per replica.")] = None,
    upscale_delay_s: Annotated[float | None, Opt(help="Sustained load before adding a replica.")] = None,
    downscale_delay_s: Annotated[float | None, Opt(help="Sustained low load before removing one.")] = None,
    downscale_to_zero_delay_s: Annotated[float | None, Opt(help="Idle time before the last replica stops.")] = None,
    threads: Annotated[int | None, Opt(help="CPU threads per replica (replaces the replicas).")] = None,
    max_seqs: Annotated[int | None, Opt(help="Sequence slots per replica (replaces the replicas).")] = None,
    max_adapters: Annotated[int | None, Opt(help="LoRA adapters held per replica (replaces the replicas).")] = None,
    url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False,
) -> None:
    """Change a deployment on the running application (Ray mode; single-process mode refuses with 409)."""
    body = {k: v for k, v in dict(
        min_replicas=min_replicas, max_replicas=max_replicas, initial_replicas=initial_replicas,
        target_ongoing_requests=target_ongoing_requests, upscale_delay_s=upscale_delay_s,
        downscale_delay_s=downscale_delay_s, downscale_to_zero_delay_s=downscale_to_zero_delay_s, threads=threads,
        max_seqs=max_seqs, max_adapters=max_adapters).items() if v is not None}
    if not body:
        raise typer.BadParameter("give at least one setting to change, e.g. --max-replicas 4")
    _show(_call(url, api_key, "PUT", f"/deployments/{model}", body), as_json)


@deployments_app.command()
def delete(model: ModelArg, url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Remove a model's deployment (the same as `llmaas admin models unload`)."""
    _call(url, api_key, "DELETE", f"/deployments/{model}")
    typer.echo(f"deployment {model} removed")
