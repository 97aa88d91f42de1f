"""Errors raised by prefect-atomscale, one class per thing a user must do differently.

Every error is an `AtomscaleError`; catch that to handle them all. The tree:

```
AtomscaleError                      base: .status_code, .detail, .transient, .reason, ...
├── AtomscaleConfigurationError     credentials or base URL cannot be used (no request sent)
├── AtomscaleValidationError        the request is invalid: found locally, or a 400/413/422
│   ├── InvalidCompositionError     a chemical formula that cannot be parsed
│   ├── InvalidOrientationError     Miller indices that cannot be read
│   └── InvalidStackFileError       a stack file that cannot be used (.problems: where, what)
├── AtomscaleAuthError              401/403: the key is wrong, expired or lacks the scope
├── AtomscaleNotFoundError          404: e.g. a sample_id that does not exist for this key
├── AtomscaleConflictError          409, or a different record where one would be written
│   ├── StackConflictError          a stack file's name is taken by another stack
│   ├── GrowthRunLinkedError        a growth run is linked to another target material
│   └── AtomscaleLockLostError      a lock's lease ran out before a write (transient)
├── AtomscaleRateLimitError         429: too many requests (transient; .retry_after)
├── AtomscaleServerError            408/5xx: the service failed (transient)
├── AtomscaleConnectionError        no reply: refused, dropped connection (transient)
│   └── AtomscaleTimeoutError       no reply in time (transient)
└── AtomscaleProtocolError          a reply we cannot use: not JSON, wrong shape, a redirect
```

`transient` is what the tasks' retry condition reads: only transient errors are
retried, everything else fails at once. `AtomscaleValidationError` is also a
`ValueError`, so code that validates input the usual way catches it too.

Messages say what went wrong, for which sample or layer, and what to do. They never
contain the API key: the client builds them from the URL path, the status and the
server's `detail`, never from request headers. What code needs of an error travels in
declared fields (the request, what the service said, the reason in a few words, each
layer's outcome), so that nothing ever reads it back out of a message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # at run time only an annotation: importing the errors stays cheap
    from prefect_atomscale._models import Layer

__all__ = [
    "AtomscaleAuthError",
    "AtomscaleConfigurationError",
    "AtomscaleConflictError",
    "AtomscaleConnectionError",
    "AtomscaleError",
    "AtomscaleLockLostError",
    "AtomscaleNotFoundError",
    "AtomscaleProtocolError",
    "AtomscaleRateLimitError",
    "AtomscaleServerError",
    "AtomscaleTimeoutError",
    "AtomscaleValidationError",
    "GrowthRunLinkedError",
    "InvalidCompositionError",
    "InvalidOrientationError",
    "InvalidStackFileError",
    "LayerDifference",
    "StackConflictError",
    "StackFileProblem",
]


class AtomscaleError(Exception):
    """Base class of every error raised by prefect-atomscale.

    Every field survives pickling (Prefect pickles an exception into a failed state,
    and across Dask workers), so a flow reads them from a failed run's result.

    Attributes:
        message: What went wrong and what to do about it.
        status_code: The HTTP status the service answered with, if it answered.
        detail: The service's `detail` field (string, object or list), kept as sent.
        transient: Whether trying the same request again later may succeed.
        request: The request that failed, e.g. `POST /target-materials/`; None when
            nothing was sent.
        service_said: The service's `detail` as one line of text, as the client read
            it (`space_group: String should have at most 32 characters`); None when it
            did not answer or said nothing.
        reason: What went wrong in a few words, without where or what to do next:
            what the service said and its status (`...characters (422)`), or what
            became of the request (`Could not connect to http://...: ...`). The whole
            message when nothing shorter is known.
        layer_outcomes: Set on the error `create_layers` raises after it tried every
            layer: position (1 for the first layer) -> the `Layer` in place, or the
            reason that layer failed. None when it failed before (a listing, a
            refused request), and on every other error.
        sample_id: The target material the error concerns, when known: the stack-file
            flows set it on the error of a stack that failed after its target material
            was created. None otherwise.
        stack_summary: The stack-file flows set it on the error they raise: what came
            of the whole stack in a few words (`L2 refused: ...`), as a folder run's
            table shows it. None otherwise.

    Example:
        ```python
        from prefect_atomscale import AtomscaleError, parse_composition

        try:
            parse_composition("Xx2O3")
        except AtomscaleError as exc:
            print(type(exc).__name__, exc.transient)  # InvalidCompositionError False
        ```
    """

    transient: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        detail: Any = None,
        request: str | None = None,
        service_said: str | None = None,
        reason: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.detail = detail
        self.request = request
        self.service_said = service_said
        self.reason = reason if reason is not None else message
        self.layer_outcomes: dict[int, Layer | str] | None = None
        self.sample_id: int | None = None
        self.stack_summary: str | None = None

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments do not survive the default pickling, and Prefect
        # pickles exceptions into failed states and across Dask workers.
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[AtomscaleError], state: dict[str, Any]) -> AtomscaleError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    # Fields an older pickle may lack read as their defaults.
    error.__dict__.update(
        request=None,
        service_said=None,
        reason=state.get("message", ""),
        layer_outcomes=None,
        sample_id=None,
        stack_summary=None,
    )
    error.__dict__.update(state)
    return error


class AtomscaleConfigurationError(AtomscaleError):
    """The credentials or connection settings cannot be used; nothing was sent.

    Raised for a missing or empty API key, a base URL that is not an http(s) URL, or
    plain `http://` to a host other than this machine without `allow_insecure_http`.

    Example:
        ```python
        from prefect_atomscale import AtomscaleConfigurationError, AtomscaleCredentials

        try:
            AtomscaleCredentials(api_key="k", base_url="api.atomscale.ai").get_client()
        except AtomscaleConfigurationError as exc:
            print(exc)
        ```
    """


class AtomscaleValidationError(AtomscaleError, ValueError):
    """The request is invalid: detected locally (nothing sent) or refused with 400/413/422.

    Example:
        ```python
        from prefect_atomscale import AtomscaleValidationError, parse_composition

        try:
            parse_composition("")
        except AtomscaleValidationError as exc:
            print(exc)
        ```
    """


class InvalidCompositionError(AtomscaleValidationError):
    """A chemical formula that cannot be parsed; the message names the problem and where.

    Attributes:
        formula: The formula as given.
        position: Index of the offending character in `formula`, if there is one.

    Example:
        ```python
        from prefect_atomscale import InvalidCompositionError, parse_composition

        try:
            parse_composition("Ba Ti O3")
        except InvalidCompositionError as exc:
            print(exc.position)  # 2
        ```
    """

    def __init__(self, message: str, *, formula: str, position: int | None = None):
        super().__init__(message)
        self.formula = formula
        self.position = position


class InvalidOrientationError(AtomscaleValidationError):
    """Miller indices that cannot be read, such as `abc` or `0 0 1 1 1`.

    Attributes:
        orientation: The orientation as given.

    Example:
        ```python
        from prefect_atomscale import InvalidOrientationError, normalize_orientation

        try:
            normalize_orientation("abc")
        except InvalidOrientationError as exc:
            print(exc.orientation)  # abc
        ```
    """

    def __init__(self, message: str, *, orientation: str):
        super().__init__(message)
        self.orientation = orientation


class AtomscaleAuthError(AtomscaleError):
    """401 or 403: the API key is wrong, expired, revoked or lacks the needed scope.

    Example:
        ```python
        from prefect_atomscale import AtomscaleAuthError, AtomscaleClient, AtomscaleCredentials

        revoked = AtomscaleCredentials(api_key="revoked-key")
        with AtomscaleClient.from_credentials(revoked) as client:
            try:
                client.list_rows()
            except AtomscaleAuthError as exc:
                print(exc.status_code)  # 401
                print(exc.transient)  # False: fix the key; trying again cannot help
        ```
    """


class AtomscaleNotFoundError(AtomscaleError):
    """404: the record (for example the parent target material) does not exist.

    Example:
        ```python
        from prefect_atomscale import (
            AtomscaleClient,
            AtomscaleCredentials,
            AtomscaleNotFoundError,
            LayerRequest,
        )

        with AtomscaleClient.from_credentials(AtomscaleCredentials.load("atomscale")) as client:
            try:
                client.create_layer(LayerRequest.build(sample_id=999_999, layer_id=1))
            except AtomscaleNotFoundError as exc:
                print(exc.status_code)  # 404
        ```
    """


class AtomscaleConflictError(AtomscaleError):
    """409: the service refused the write because of data that already exists.

    Example:
        ```python
        from prefect import flow
        from prefect_atomscale import (
            AtomscaleConflictError,
            AtomscaleCredentials,
            create_layer,
            create_target_material,
        )

        @flow
        def add_bto() -> None:
            credentials = AtomscaleCredentials.load("atomscale")
            sample = create_target_material(
                credentials, "SRO on STO #5", "SrTiO3", layers=[{"composition_string": "SrRuO3"}]
            )
            # Position 1 already holds SrRuO3.
            create_layer(credentials, layer_id=1, sample_id=sample.sample_id,
                         composition_string="BaTiO3")

        try:
            add_bto()
        except AtomscaleConflictError as exc:
            print(exc.transient)  # False: pass if_exists="update" or "reuse", or another layer_id
        ```
    """


class GrowthRunLinkedError(AtomscaleConflictError):
    """A growth run (physical sample) is linked to a different target material than asked.

    Raised by `create_growth_run` and `link_target_material` with `if_linked="error"`
    (the default) instead of moving the link silently; nothing was changed. Pass
    `if_linked="relink"` to move the link, `if_linked="keep"` to leave it, or choose
    another run name.

    Attributes:
        physical_sample_id: The growth run's id (a UUID).
        name: The growth run's name.
        linked_to: The target material it is linked to now.
        wanted: The target material that was asked for.

    Example:
        ```python
        from prefect_atomscale import GrowthRunLinkedError

        error = GrowthRunLinkedError("4f0c...", "PLD-0412", linked_to=7, wanted=9)
        print(error.linked_to, error.wanted, error.transient)  # 7 9 False
        ```
    """

    def __init__(self, physical_sample_id: str, name: str | None, *, linked_to: int, wanted: int):
        self.physical_sample_id = physical_sample_id
        self.name = name
        self.linked_to = linked_to
        self.wanted = wanted
        run = (
            f"Growth run {name!r} ({physical_sample_id})"
            if name
            else (f"Growth run {physical_sample_id}")
        )
        super().__init__(
            f"{run} is linked to target material {linked_to}, not {wanted}; nothing was "
            "changed. Pass if_linked='relink' to link it to the new target material, "
            "if_linked='keep' to leave it as it is, or give this run another name."
        )


class AtomscaleLockLostError(AtomscaleConflictError):
    """A lease on the lock server ran out while this run held it: another run may write now.

    Raised right before a write (nothing is sent) or when the lock is given back after
    one; transient, so the task is retried, and the retry lists the service again
    before it writes. Seen only with `PREFECT_ATOMSCALE_LOCK_URL`, when a run was paused
    (or cut off from the lock server) for longer than the lease.

    Example:
        ```python
        from prefect_atomscale import AtomscaleLockLostError

        print(AtomscaleLockLostError.transient)  # True: the task looks again, then writes
        ```
    """

    transient = True


class AtomscaleRateLimitError(AtomscaleError):
    """429: too many requests. Transient; retried after `retry_after` seconds if given.

    Attributes:
        retry_after: Seconds the service asked us to wait (`Retry-After`), if it said.

    Example:
        ```python
        from atomscale_sandbox import run_sandbox
        from prefect_atomscale import (
            AtomscaleClient,
            AtomscaleCredentials,
            AtomscaleRateLimitError,
            TargetMaterialRequest,
        )

        with run_sandbox() as sandbox:
            sandbox.faults.queue(["429"])  # the next write is refused: too many requests
            credentials = AtomscaleCredentials(api_key=sandbox.api_key, base_url=sandbox.url)
            with AtomscaleClient.from_credentials(credentials) as client:
                try:
                    client.create_target_material(
                        TargetMaterialRequest.build(sample_name="ZnO film", substrate="Al2O3")
                    )
                except AtomscaleRateLimitError as exc:
                    print(exc.retry_after)  # 1.0
        ```
    """

    transient = True

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = 429,
        detail: Any = None,
        retry_after: float | None = None,
        request: str | None = None,
        service_said: str | None = None,
        reason: str | None = None,
    ):
        super().__init__(
            message,
            status_code=status_code,
            detail=detail,
            request=request,
            service_said=service_said,
            reason=reason,
        )
        self.retry_after = retry_after


class AtomscaleServerError(AtomscaleError):
    """408 or 5xx: the service failed to handle the request. Transient.

    Example:
        ```python
        from atomscale_sandbox import run_sandbox
        from prefect_atomscale import (
            AtomscaleClient,
            AtomscaleCredentials,
            AtomscaleServerError,
            TargetMaterialRequest,
        )

        with run_sandbox() as sandbox:
            sandbox.faults.queue(["503"])  # the next write fails before it is processed
            credentials = AtomscaleCredentials(api_key=sandbox.api_key, base_url=sandbox.url)
            with AtomscaleClient.from_credentials(credentials) as client:
                try:
                    client.create_target_material(
                        TargetMaterialRequest.build(sample_name="ZnO film", substrate="Al2O3")
                    )
                except AtomscaleServerError as exc:
                    print(exc.status_code)  # 503
        ```
    """

    transient = True


class AtomscaleConnectionError(AtomscaleError):
    """No reply: the connection was refused, reset or dropped. Transient.

    Example:
        ```python
        from prefect_atomscale import (
            AtomscaleClient,
            AtomscaleConnectionError,
            AtomscaleCredentials,
        )

        # Nothing listens on port 9 here.
        nowhere = AtomscaleCredentials(api_key="k", base_url="http://127.0.0.1:9")
        with AtomscaleClient.from_credentials(nowhere) as client:
            try:
                client.list_rows()
            except AtomscaleConnectionError as exc:
                print(exc.transient)  # True: the tasks retry it
        ```
    """

    transient = True


class AtomscaleTimeoutError(AtomscaleConnectionError):
    """No reply within the configured timeout. Transient.

    Example:
        ```python
        from atomscale_sandbox import run_sandbox
        from prefect_atomscale import (
            AtomscaleClient,
            AtomscaleCredentials,
            AtomscaleTimeoutError,
            TargetMaterialRequest,
        )

        with run_sandbox() as sandbox:
            sandbox.faults.queue(["slow_after_commit"])  # the next write commits, its reply is late
            credentials = AtomscaleCredentials(
                api_key=sandbox.api_key, base_url=sandbox.url, timeout=0.2
            )
            with AtomscaleClient.from_credentials(credentials) as client:
                try:
                    client.create_target_material(
                        TargetMaterialRequest.build(sample_name="ZnO film", substrate="Al2O3")
                    )
                except AtomscaleTimeoutError as exc:
                    print(exc.transient)  # True: the tasks look before they write again
        ```
    """


class AtomscaleProtocolError(AtomscaleError):
    """A reply we cannot use: not JSON, the wrong shape, a redirect, an unexpected status.

    Usually means `base_url` points at something other than the Atomscale API (a proxy
    page, a login portal) or the API changed.

    Example:
        ```python
        from prefect_atomscale import AtomscaleProtocolError

        print(AtomscaleProtocolError.transient)  # False
        ```
    """


@dataclass(frozen=True)
class StackFileProblem:
    """One problem found in a stack file.

    Attributes:
        where: The place in words, with the line where known, e.g. `layer L5 (line 14;
            period 1 of 20, and the same in every period)`; empty if unknown.
        field: The field at fault, e.g. `orientation`, or None.
        message: What is wrong and what to write instead.
        position: The layer's position, if the problem is in a layer.
        period: The period, if the layer is in a repeat block (the first period is
            named; every period is the same).
        line: Line in the file, for YAML and CSV files.

    Example:
        ```python
        from prefect_atomscale import StackFileProblem

        problem = StackFileProblem(where="layer L2 (line 9)", field="orientation", message="bad")
        print(problem.describe())  # layer L2 (line 9), field 'orientation': bad
        ```
    """

    where: str
    field: str | None
    message: str
    position: int | None = None
    period: int | None = None
    line: int | None = None

    def describe(self) -> str:
        """Render the problem as one line, e.g. `layer L2 (line 9), field 'orientation': bad`.

        Returns:
            The problem in words.

        Example:
            ```python
            from prefect_atomscale import StackFileProblem

            problem = StackFileProblem(where="", field="name", message="is missing")
            print(problem.describe())  # field 'name': is missing
            ```
        """
        parts = [self.where] if self.where else []
        if not parts and self.line is not None:
            parts = [f"line {self.line}"]
        if self.field:
            parts.append(f"field {self.field!r}")
        head = ", ".join(parts)
        return f"{head}: {self.message}" if head else self.message


class InvalidStackFileError(AtomscaleValidationError):
    """A stack file that cannot be used; nothing was sent.

    The message names the file and, for each problem, the layer (position and, in a
    repeat block, the period), the field and what is wrong.

    Attributes:
        path: The file as given.
        problems: Every problem found.

    Example:
        ```python
        from prefect_atomscale import InvalidStackFileError, parse_stack

        try:
            parse_stack(
                {"name": "x", "substrate": "SrTiO3", "layers": [{"composition": "Xx2O3"}]},
                source="x.yaml",
            )
        except InvalidStackFileError as exc:
            print(exc.problems[0].position, exc.problems[0].field)  # 1 composition
        ```
    """

    def __init__(self, path: str, problems: Sequence[StackFileProblem]):
        self.path = path
        self.problems = list(problems)
        shown = [problem.describe() for problem in self.problems[:20]]
        if len(self.problems) > len(shown):
            shown.append(f"... and {len(self.problems) - len(shown)} more")
        if len(shown) == 1:
            message = f"{path}: {shown[0]}. Nothing was sent; fix the file and run again."
        else:
            lines = "\n".join(f"  - {line}" for line in shown)
            message = (
                f"{path} has {len(self.problems)} problems; nothing was sent. Fix the file "
                f"and run again:\n{lines}"
            )
        super().__init__(message)


@dataclass(frozen=True)
class LayerDifference:
    """A position where a target material's layer differs from what a stack file says.

    Attributes:
        sample_id: The target material.
        position: The layer's position, 1 for the first layer, on the substrate.
        there: What the target material holds there, e.g. `GaN 0001`, or `empty`.
        wanted: What the file says, e.g. `L1 AlN 0001`.

    Example:
        ```python
        from prefect_atomscale import LayerDifference

        print(LayerDifference(sample_id=7, position=1, there="GaN 0001", wanted="L1 AlN").there)
        # GaN 0001
        ```
    """

    sample_id: int
    position: int
    there: str
    wanted: str


class StackConflictError(AtomscaleConflictError):
    """The account already has a target material of this name whose stack is different.

    Raised instead of creating a second one; nothing was sent. Rename the target
    material in the file, or fix the file so that it describes what exists.

    Attributes:
        path: The stack file.
        problems: What differs, one sentence each.
        differences: The layers that differ, position by position (a different
            substrate, or more target materials of the name, are in `problems` only).

    Example:
        ```python
        from prefect_atomscale import StackConflictError

        print(StackConflictError("sl.yaml", "SL", ["L3 is SrTiO3 there"]).problems)
        # ['L3 is SrTiO3 there']
        ```
    """

    def __init__(
        self,
        path: str,
        name: str,
        problems: Sequence[str],
        differences: Sequence[LayerDifference] = (),
    ):
        self.path = path
        self.problems = list(problems)
        self.differences = list(differences)
        said = f"the account already has a target material named {name!r} with a different stack"
        super().__init__(
            f"{path}: {said}: {'; '.join(self.problems)}. Nothing was sent. Give the "
            "file a new name, or make it describe what exists.",
            reason=f"{said}: {'; '.join(self.problems)}",
        )


def checked_choice(argument: str, value: object, choices: tuple[str, ...]) -> str:
    """`value` if it is one of `choices`; else the validation error naming them.

    One wording for every argument that takes one of a few words (`if_exists`,
    `layer_events`, ...), checked before any request.
    """
    if value not in choices:
        raise AtomscaleValidationError(
            f"{argument} must be one of {', '.join(map(repr, choices))}, got {value!r}."
        )
    return str(value)
