"""`retrieve model`: export the configured model to ONNX ahead of time, list the exports.

The onnx and openvino backends export on first use anyway; `retrieve model export` lets
a deployment do it at build time (a container image, say), so that no serving process
ever imports torch.
"""

from __future__ import annotations

import click

from retrieval.cli.common import CliState, echo_json, json_option, pass_state
from retrieval.errors import RetrievalError


@click.group("model")
def model() -> None:
    """Export the model for the onnx/openvino backends and list the cached exports.

    \b
        retrieve model export --precision int8
        retrieve model list
    """


@model.command("export")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "int8", "bf16"]),
              help="Precision to prepare (repeatable; default fp32). bf16 runs on the openvino backend.")
@click.option("--force", is_flag=True, help="Export again even if the cache holds this model.")
@click.option("--json", "as_json", is_flag=True, help="Print the export as JSON.")
@pass_state
def export_cmd(state: CliState, precisions: tuple[str, ...], force: bool, as_json: bool) -> None:
    """Export the configured model to ONNX (checked against torch) into the cache.

    \b
        retrieve model export
        retrieve --model ./my-model model export --precision int8
    """
    from retrieval.embed.choice import check_backend
    from retrieval.embed.export import ensure_export, read_meta, record_agreement
    from retrieval.embed.model import resolve_model

    info = resolve_model(state.settings.encoder.model)
    if not info.is_language_model:
        what = "the caller's vectors" if info.kind == "external" else "the test encoder"
        raise RetrievalError(f"{info.name} is {what}: it has no weights and nothing to export")
    wanted = precisions or ("fp32",)
    folder = ensure_export(info, "fp32", force=force)
    for precision in wanted:
        if precision == "int8":
            ensure_export(info, "int8")
        elif precision == "bf16":
            check_backend(info, "openvino", "bf16")
            record_agreement(info, folder, "openvino", "bf16")
    meta = read_meta(folder) or {}
    if as_json:
        echo_json({"path": str(folder), **meta})
        return
    click.echo(f"Exported {info.name} to {folder}")
    for name, cosine in sorted(meta.get("agreement", {}).items()):
        click.echo(f"  {name:<14} smallest cosine to torch fp32 on the check sample: {cosine:.5f}")


@model.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """Show the models exported to ONNX in the cache.

    \b
        retrieve model list
    """
    from retrieval.embed.export import cache_root, list_exports

    rows = list_exports()
    if as_json:
        for row in rows:
            echo_json(row)
        return
    if not rows:
        click.echo(f"No exports in {cache_root()} (run `retrieve model export`).")
        return
    for row in rows:
        agreement = ", ".join(f"{k} {v:.4f}" for k, v in sorted(row["agreement"].items()))
        click.echo(f"{row['model']}  [{row['model_key']}]")
        click.echo(f"  precisions {', '.join(row['precisions'])}; {row['bytes'] / 2**20:.1f} MiB; {row['path']}")
        if agreement:
            click.echo(f"  agreement with torch fp32 (smallest cosine): {agreement}")


COMMANDS = [model]
