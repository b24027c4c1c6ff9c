"""`llmaas ray`: Ray mode's config, for `serve deploy`, a KubeRay RayService or review."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from llmaas.control.model_catalog import Entry
    from llmaas.core.config import Settings

ray_app = typer.Typer(no_args_is_help=True, help="Ray mode: write the Ray Serve config of these settings.")


@ray_app.command()
def config(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Shared data dir (env LLMAAS_DATA_DIR).")] = None,
    model: Annotated[list[str] | None, typer.Option(help="Models to deploy, as for `serve` (default: the "
                                                         "catalog's loaded models, else smollm2).")] = None,
    host: Annotated[str | None, typer.Option(help="HTTP host of Serve's proxy. (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port of Serve's proxy. (default 8000)")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads per engine replica.")] = None,
    max_seqs: Annotated[int | None, typer.Option(help="Sequence slots per engine replica. (default 16)")] = None,
    ctx_size: Annotated[int | None, typer.Option(help="Context window per sequence. (default 2048)")] = None,
    workers: Annotated[int | None, typer.Option(help="Job workers, as given to `serve` (the driver starts them; "
                                                     "recorded so the config matches a running one).")] = None,
    from_catalog: Annotated[bool, typer.Option(
        "--from-catalog/--no-catalog", help="Read the loaded models from the database (LLMAAS_DATABASE_URL).")] = False,
) -> None:
    """Print the `serve deploy`-able YAML for the current settings: the ingress application and one engine
    application per model. Secrets and the database/Redis URLs stay out of it: every node reads them from its
    environment (LLMAAS_*)."""
    from llmaas.cluster.ray_env import RayModeError, require_ray

    try:
        require_ray()  # the config names Ray Serve's import paths; PyYAML comes with Ray
    except RayModeError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    import yaml

    from llmaas.cluster.config import serve_config
    from llmaas.core.config import load_settings

    overrides = {k: v for k, v in dict(
        host=host, port=port, data_dir=data_dir.resolve() if data_dir else None, models=model or None,
        threads=threads, max_seqs=max_seqs, context_size=ctx_size, workers=workers).items() if v is not None}
    settings = load_settings(**overrides)
    if from_catalog:
        from llmaas.cluster.run import prepare

        entries = prepare(settings)
    else:
        entries = _entries(settings)
    text = yaml.safe_dump(serve_config(settings, overrides, entries), sort_keys=False)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output}", err=True)


def _entries(settings: Settings) -> list[Entry]:
    """Catalog entries for the --model specs, without a database (what a fresh cluster will register)."""
    from llmaas.control.model_catalog import Entry
    from llmaas.core.model_files import bundled, model_id_for

    out = []
    for spec in settings.models:
        b = bundled(spec)
        source_type, source = ("package", b.spec) if b else ("gguf_path", str(Path(spec).resolve()))
        out.append(Entry(model_id_for(spec), source_type, source, "", None, None, (), None, True, 0))
    return out
