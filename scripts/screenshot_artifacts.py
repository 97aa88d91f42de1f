"""Screenshot what a person sees in the Prefect UI after a stack-file flow run.

Starts a real Prefect server (free loopback port, temporary home, telemetry off) and
the Atomscale sandbox, runs `stack_from_file` on an example (the 20-period superlattice
by default), then opens the run's pages in headless Chromium and saves screenshots:

    <out>              the flow run's Artifacts tab
    <out>-stack.png    the stack picture (markdown artifact)
    <out>-layers.png   the layer table (table artifact)
    <out>-block.png    the credentials block's page: description, docs link, masked key
    <out>-block-edit.png   its edit form, with a description under every field
    <out>-block-new.png    the form for a new block: plain key and URL inputs, the logo
    <out>-block-catalog.png    the block catalog, with the logo
    <out>-failed.png           a failed stack run's Artifacts tab (2 of 42 layers refused)
    <out>-failed-stack.png     its picture: failed layers hatched red, a legend
    <out>-failed-layers.png    its layer table, with a status per layer
    <out>-folder.png           a failed folder run's table: status, reason, run id per file
    <out>-folder-runs.png      the same as markdown, with links to each file's run

The failed stack: the superlattice's target material made first with its first two
layers, then the whole file with two layers the service refuses (a space group longer
than its 32 characters; the sandbox answers 422, as the service does). The folder: a
good file, that failed stack under another name (one request, refused whole), and a
file with a typo.

    python scripts/screenshot_artifacts.py --out /tmp/shots/artifacts.png

Needs Debian's `chromium` (`apt-get install chromium`) and no network beyond loopback.
Screenshots use Prefect's newer UI (under /v2), whose run pages accept `?tab=`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import cast

from _screenshots import (  # scripts/ beside this file
    ROOT,
    artifacts_of,
    find_chromium,
    prefect_server,
    screenshot,
    work_folder,
)

DEFAULT_EXAMPLE = ROOT / "flows" / "examples" / "bto_sto_superlattice.yaml"


def _superlattice(path: Path, name: str, upto: int | None = None) -> Path:
    """The 42-layer superlattice written out, L4 and L30 refused by the service.

    Their space group is longer than the service stores. With `upto`, only the first
    `upto` layers (both fine).
    """
    formulas = ["SrRuO3", *["BaTiO3", "SrTiO3"] * 20, "SrRuO3"][:upto]
    lines = [f"name: {name}", "substrate: SrTiO3", "layers:"]
    for position, formula in enumerate(formulas, start=1):
        refused = f", space_group: {'P4mm' * 10}" if position in (4, 30) else ""
        lines.append(f"  - {{composition: {formula}, orientation: '001'{refused}}}")
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Start a server, run the flow, save the screenshots; return 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.mkdtemp(prefix="atomscale-ui-")) / "artifacts-screenshot.png",
        help="where to save the main screenshot; the others go beside it",
    )
    parser.add_argument("--example", type=Path, default=DEFAULT_EXAMPLE, help="stack file to run")
    args = parser.parse_args(argv)
    chromium = find_chromium()

    with work_folder() as work, prefect_server(work) as base:
        # This process is the client: set it up before Prefect is imported.
        (work / "client").mkdir()
        os.environ.update(
            PREFECT_API_URL=f"{base}/api",
            PREFECT_HOME=str(work / "client"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
        )
        from offline_logo import serve_logo  # scripts/ beside this file; imports Prefect
        from prefect.client.orchestration import get_client

        from atomscale_sandbox import run_sandbox
        from prefect_atomscale import AtomscaleCredentials
        from prefect_atomscale.flows import stack_from_file, stacks_from_folder

        with run_sandbox() as sandbox:
            block = "atomscale"
            AtomscaleCredentials(api_key=sandbox.api_key, base_url=sandbox.url).save(block)
            credentials = cast(AtomscaleCredentials, AtomscaleCredentials.load(block))
            state = stack_from_file(str(args.example), credentials, return_state=True)
            print(f"The flow run finished {state.name}: {state.result()}")
            # A stack two of whose layers the service refuses, on a target material
            # that already has its first two layers.
            _superlattice(work / "partial.yaml", "Refused layers demo", upto=2)
            stack_from_file(str(work / "partial.yaml"), credentials)
            failed = stack_from_file(
                str(_superlattice(work / "sl_refused.yaml", "Refused layers demo")),
                credentials,
                return_state=True,
            )
            print(f"The failed run finished {failed.name}: {failed.message}")
            folder = work / "stacks"
            folder.mkdir()
            shutil.copy(ROOT / "flows" / "examples" / "bto_film_on_sto.csv", folder)
            _superlattice(folder / "sl_refused.yaml", "Refused layers, new material")
            (folder / "typo.yaml").write_text(
                "name: BTO film with a typo\nsubstrate: SrTiO3\nlayers:\n  - composition: BaTiO4x\n"
            )
            folder_run = stacks_from_folder(str(folder), credentials, return_state=True)
            print(f"The folder run finished {folder_run.name}: {folder_run.message}")
        with get_client(sync_client=True) as client:
            document = client.read_block_document_by_name(block, "atomscale-credentials")
        by_type = artifacts_of(state.state_details.flow_run_id)
        failed_by_type = artifacts_of(failed.state_details.flow_run_id)
        folder_by_type = artifacts_of(folder_run.state_details.flow_run_id)
        flow_run_id = state.state_details.flow_run_id

        args.out.parent.mkdir(parents=True, exist_ok=True)
        stem = args.out.with_suffix("")
        profile = work / "chromium"
        pages = [
            (args.out, f"{base}/v2/runs/flow-run/{flow_run_id}?tab=Artifacts"),
            (Path(f"{stem}-stack.png"), f"{base}/v2/artifacts/artifact/{by_type['markdown']}"),
            (Path(f"{stem}-layers.png"), f"{base}/v2/artifacts/artifact/{by_type['table']}"),
            (Path(f"{stem}-block.png"), f"{base}/v2/blocks/block/{document.id}"),
            (Path(f"{stem}-block-edit.png"), f"{base}/v2/blocks/block/{document.id}/edit"),
            (
                Path(f"{stem}-block-new.png"),
                f"{base}/v2/blocks/catalog/atomscale-credentials/create",
            ),
            (Path(f"{stem}-block-catalog.png"), f"{base}/v2/blocks/catalog"),
            (
                Path(f"{stem}-failed.png"),
                f"{base}/v2/runs/flow-run/{failed.state_details.flow_run_id}?tab=Artifacts",
            ),
            (
                Path(f"{stem}-failed-stack.png"),
                f"{base}/v2/artifacts/artifact/{failed_by_type['markdown']}",
            ),
            (
                Path(f"{stem}-failed-layers.png"),
                f"{base}/v2/artifacts/artifact/{failed_by_type['table']}",
            ),
            (Path(f"{stem}-folder.png"), f"{base}/v2/artifacts/artifact/{folder_by_type['table']}"),
            (
                Path(f"{stem}-folder-runs.png"),
                f"{base}/v2/artifacts/artifact/{folder_by_type['markdown']}",
            ),
        ]
        # The block type's logo URL is on GitHub; serve the shipped SVG in its place.
        with serve_logo() as logo_flags:
            for path, url in pages:
                screenshot(chromium, url, path, profile, logo_flags)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
