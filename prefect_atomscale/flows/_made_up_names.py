"""The public form of `_run_names._generated`, for flows outside the package that name runs."""

from prefect_atomscale.flows._run_names import _generated

__all__ = ["is_made_up_run_name"]


def is_made_up_run_name(name: str | None) -> bool:
    """Whether a flow run's name was made up by Prefect or its UI, not typed by a person.

    For a flow's `flow_run_name` callable that names runs after what they do, as the
    stack-file flows and `flows/stack_report.py` do, but keeps a name a person typed.
    Made up: no name; Prefect's two-word names (`smart-dugong`), which runs of a
    deployment and runs an Automation starts get; the names the UI's Custom run form
    proposes (`Small-Jacana`, `xi309-emila-manifold`). Any other name counts as typed.

    Args:
        name: The run's name, e.g. `prefect.runtime.flow_run.get_name()`.

    Returns:
        True if the name is of a shape Prefect or its UI makes up.

    Example:
        ```python
        from prefect_atomscale.flows import is_made_up_run_name

        print(is_made_up_run_name("Small-Jacana"), is_made_up_run_name("Lab check 12"))
        # True False
        ```
    """
    return _generated(name)
