"""Screenshot every screen of the Prefect UI a lab user meets, runs made by a process worker.

Starts a real Prefect server (free loopback port, temporary home, telemetry off) and
the Atomscale sandbox, saves the credentials block `atomscale` pointing at the sandbox,
creates the work pool `atomscale-process` and runs `prefect deploy --all` from the
repository root, so that `prefect.yaml`'s four deployments and the automation of
`on-stack-completed` exist, and starts a process worker. Through the worker it runs:
`on-demand` on the superlattice example; `on-demand` on a brand-new file whose second
layer the service refuses (a space group over its 32 characters); `nightly` on a
temporary folder with a good file, a refused one and a file with a typo; and
`growth-run`. It then waits for the automation's `stack-report-s<id>` run of the
superlattice, and saves, each in the default UI (`-default`) and under `/v2` (`-v2`):

    01-run-form           the Custom run form of on-demand: the picker shows `atomscale`
    02-failed-artifacts   the refused new file's run: its Artifacts tab
    02-failed-table       its layer table, with a status and a reason per layer
    02-failed-table-wide  the same 2600 px wide: the reason column, right of 1600 px
    02-failed-picture     its stack picture
    02-failed-logs        its logs, 3000 px tall: the ERROR lines below the worker's
    03-created-run        the superlattice's run: name ...-s<id>, its tags
    03-created-details    its Details tab: the state message with the link to Atomscale
    03-created-table      its layer table, with the "Open in Atomscale" link
    04-automations        the Automations list: "Report each completed stack"
    04-automation         the automation's page: its trigger and action
    04-report-run         the triggered run stack-report-s<id>
    04-report-picture     its stack picture, with the material's name and substrate
    05-folder-table       the nightly run's folder table: run link and sample id first
    06-block-create       the form for a new credentials block (how the key is typed)
    06-block              the saved block's page
    06-block-catalog      the block catalog, with the Atomscale Credentials card
    06-block-type         the block type's catalog page, with its code example
    07-growth-table       the growth-run run's table artifact

02-failed-artifacts is taken under /v2 only (its artifacts' own pages follow in both
UIs). Run it from anywhere:

    python scripts/screenshot_ui.py --out /tmp/ui-shots

Needs Debian's `chromium` (`apt-get install chromium`) and no network beyond loopback;
takes about three minutes. The list of saved files is printed at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _screenshots import (  # scripts/ beside this file
    PREFECT,
    ROOT,
    artifacts_of,
    find_chromium,
    prefect_server,
    screenshot,
    started,
    without_prefect_settings,
    work_folder,
)

POOL = "atomscale-process"
BLOCK = "atomscale"
EXAMPLE = "flows/examples/bto_sto_superlattice.yaml"
REFUSED_SPACE_GROUP = "P4mm" * 10  # 40 characters; the service stores 32


def _write_stacks(work: Path) -> tuple[Path, Path]:
    """A brand-new refused file, and a folder of a good, a refused and a typo file."""
    refused = work / "new" / "pld_0412.yaml"
    refused.parent.mkdir()
    refused.write_text(
        "name: PLD-0412 BTO on SRO\nsubstrate: SrTiO3\nlayers:\n"
        "  - {composition: SrRuO3, orientation: '001'}\n"
        f"  - {{composition: BaTiO3, orientation: '001', space_group: {REFUSED_SPACE_GROUP}}}\n"
        "  - {composition: SrRuO3, orientation: '001'}\n"
    )
    folder = work / "lab"
    folder.mkdir()
    shutil.copy(ROOT / "flows" / "examples" / "bto_film_on_sto.csv", folder)
    (folder / "pld_0415.yaml").write_text(refused.read_text().replace("PLD-0412", "PLD-0415", 1))
    (folder / "typo.yaml").write_text(
        "name: BTO film with a typo\nsubstrate: SrTiO3\nlayers:\n  - composition: BaTiO4x\n"
    )
    return refused, folder


def _run(deployment: str, **parameters: Any) -> Any:
    """Start a run of a deployment for the worker and wait until it ends."""
    from prefect.deployments import run_deployment

    run = run_deployment(deployment, parameters=parameters, timeout=300)
    print(f"{deployment}: {run.name} {run.state_name}: {(run.state.message or '')[:200]}")
    if not run.state or not run.state.is_final():
        sys.exit(f"The run of {deployment} did not end within 300 s; is the worker running?")
    return run


def _report_run(deployment_id: object, sample_id: int) -> Any:
    """Wait for the automation's run `stack-report-s<sample_id>` to end (up to 120 s)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterName,
    )

    name = f"stack-report-s{sample_id}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])),
            )
        if runs and runs[0].state and runs[0].state.is_final():
            print(f"on-stack-completed: {runs[0].name} {runs[0].state_name}")
            return runs[0]
        time.sleep(2)
    sys.exit(f"The automation started no run {name} that ended within 120 s.")


def main(argv: list[str] | None = None) -> int:
    """Start the server, sandbox and worker, run the flows, save the screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the screenshots")
    args = parser.parse_args(argv)
    chromium = find_chromium()

    with work_folder() as work, prefect_server(work) as base:
        clean = without_prefect_settings()
        settings = {
            "PREFECT_API_URL": f"{base}/api",
            "PREFECT_UI_URL": base,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        for home in ("client", "deploy", "worker"):
            (work / home).mkdir()
        # This process is a client too: set it up before Prefect is imported.
        os.environ.update(settings, PREFECT_HOME=str(work / "client"))
        from offline_logo import serve_logo  # scripts/ beside this file; imports Prefect
        from prefect.client.orchestration import get_client

        from atomscale_sandbox import run_sandbox
        from prefect_atomscale import AtomscaleCredentials

        refused, folder = _write_stacks(work)
        with run_sandbox() as sandbox:
            AtomscaleCredentials(api_key=sandbox.api_key, base_url=sandbox.url).save(BLOCK)
            # prefect.yaml's pull step is `{{ $PWD }}`: deploy from the repository root.
            deploy_env = clean | settings | {"PREFECT_HOME": str(work / "deploy"), "PWD": str(ROOT)}
            for command in (
                ["work-pool", "create", POOL, "--type", "process"],
                ["--no-prompt", "deploy", "--all"],
            ):
                done = subprocess.run(
                    [*PREFECT, *command], cwd=ROOT, env=deploy_env, capture_output=True, text=True
                )
                if done.returncode:
                    sys.exit(f"prefect {' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
            print("Deployed prefect.yaml's deployments.")
            worker_env = clean | settings
            worker_env |= {
                "PREFECT_HOME": str(work / "worker"),
                "PREFECT_WORKER_QUERY_SECONDS": "1",
            }
            worker_command = [*PREFECT, "worker", "start", "--pool", POOL, "--type", "process"]
            with started(worker_command, env=worker_env, log=work / "worker.log", cwd=ROOT):
                created = _run("stack-from-file/on-demand", path=EXAMPLE)
                match = re.search(r"-s(\d+)$", created.name)
                if match is None:
                    sys.exit(f"The run's name {created.name!r} does not end in -s<sample_id>.")
                failed = _run("stack-from-file/on-demand", path=str(refused))
                nightly = _run("stacks-from-folder/nightly", folder=str(folder))
                growth = _run("growth-run-from-file/growth-run", path=EXAMPLE)
                with get_client(sync_client=True) as client:
                    report_deployment = client.read_deployment_by_name(
                        "stack-report/on-stack-completed"
                    )
                    on_demand = client.read_deployment_by_name("stack-from-file/on-demand")
                    automation = client.read_resource_related_automations(
                        f"prefect.deployment.{report_deployment.id}"
                    )[0]
                    document = client.read_block_document_by_name(BLOCK, "atomscale-credentials")
                print(f"Automation: {automation.name!r}: {automation.description}")
                report = _report_run(report_deployment.id, int(match.group(1)))

        created_a = artifacts_of(created.id)
        failed_a = artifacts_of(failed.id)
        pages: list[tuple[str, str, list[str]]] = []

        def both(name: str, path: str, v2_path: str | None = None, *flags: str) -> None:
            """The page in the default UI and under /v2 (`v2_path` if it differs)."""
            # The default UI fades pages in: 10 s of virtual time can catch them dimmed.
            slow = "--virtual-time-budget=20000"
            pages.append((f"{name}-default", f"{base}{path}", [slow, *flags]))
            pages.append((f"{name}-v2", f"{base}/v2{v2_path or path}", list(flags)))

        tall = "--window-size=1600,1600"
        both("01-run-form", f"/deployments/deployment/{on_demand.id}/run", None, tall)
        pages.append(
            (
                "02-failed-artifacts-v2",
                f"{base}/v2/runs/flow-run/{failed.id}?tab=Artifacts",
                [],
            )
        )
        both("02-failed-table", f"/artifacts/artifact/{failed_a['table']}")
        # The refused space group widens its column: the reason column is right of 1600 px.
        wide = "--window-size=2600,1000"
        both("02-failed-table-wide", f"/artifacts/artifact/{failed_a['table']}", None, wide)
        both("02-failed-picture", f"/artifacts/artifact/{failed_a['markdown']}", None, tall)
        both(
            "02-failed-logs",
            f"/runs/flow-run/{failed.id}",
            f"/runs/flow-run/{failed.id}?tab=Logs",
            "--window-size=1600,3000",
            "--virtual-time-budget=20000",
        )
        both("03-created-run", f"/runs/flow-run/{created.id}")
        both("03-created-details", f"/runs/flow-run/{created.id}?tab=Details")
        both("03-created-table", f"/artifacts/artifact/{created_a['table']}")
        both("04-automations", "/automations")
        both("04-automation", f"/automations/automation/{automation.id}")
        both("04-report-run", f"/runs/flow-run/{report.id}")
        both("04-report-picture", f"/artifacts/artifact/{artifacts_of(report.id)['markdown']}")
        both("05-folder-table", f"/artifacts/artifact/{artifacts_of(nightly.id)['table']}")
        both("06-block-create", "/blocks/catalog/atomscale-credentials/create")
        both("06-block", f"/blocks/block/{document.id}")
        both("06-block-catalog", "/blocks/catalog")
        both("06-block-type", "/blocks/catalog/atomscale-credentials")
        both("07-growth-table", f"/artifacts/artifact/{artifacts_of(growth.id)['table']}")

        args.out.mkdir(parents=True, exist_ok=True)
        saved: list[Path] = []
        # The block type's logo URL is on GitHub; serve the shipped SVG in its place.
        with serve_logo() as logo_flags:
            for name, url, flags in pages:
                path = args.out / f"{name}.png"
                screenshot(
                    chromium,
                    url,
                    path,
                    work / "chromium",
                    [*logo_flags, "--window-size=1600,1000", *flags],
                )
                saved.append(path)
        print(f"\n{len(saved)} screenshots in {args.out}:")
        for path in saved:
            print(f"  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
