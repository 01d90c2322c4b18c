"""A test module's stack of this program on the real engine (tests/e2e/engine.py) against the test host."""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e import engine
from tests.e2e.clients import Clients
from tests.e2e.engine import Hook, Run
from tests.e2e.testhost import TestHost


@dataclass
class EngineStack:
    """One stack (its own project folder and state on the session's engine), every run it made, and the clients."""

    host: TestHost
    clients: Clients
    stack: engine.Stack
    config: dict[str, Any]
    history: list[Run] = field(default_factory=list)
    exports: dict[str, Any] = field(default_factory=dict)
    """The stack outputs after the last successful `up`, secrets in clear (as CI reads them)."""

    @classmethod
    def open(
        cls, eng: engine.Engine, name: str, host: TestHost, folder: Path, config: dict[str, Any],
        source: Path | None = None, **extra: Any,
    ) -> Any:
        s = engine.Stack(eng, name, engine.make_project(folder, source=source or engine.ROOT), config)
        return cls(host, Clients(host), s, dict(config), **extra)

    def apply(self, hook: Hook | None = None, **changes: Any) -> Run:
        """`pulumi config set` each change, then `pulumi up`."""
        self.configure(**changes)
        run = self.stack.up(hook=hook)
        self.history.append(run)
        if run.ok:
            self.exports = self.stack.outputs()
        return run

    def configure(self, **changes: Any) -> None:
        if changes:
            self.config.update(changes)
            self.stack.configure(changes)

    def drift_gate(self) -> Run:
        """CI's drift gate, as the README gives it: `pulumi refresh --preview-only --expect-no-changes`; it fails when
        anything the program owns on the host differs from what the last `up` left."""
        proc = self.stack.engine.cli(
            ["refresh", "--preview-only", "--expect-no-changes", "--diff", "--stack", self.stack.name],
            cwd=self.stack.project_dir, check=False,
        )
        run = Run("drift-gate", ok=proc.returncode == 0, printed=(proc.stdout + proc.stderr).splitlines())
        run.error = "" if run.ok else proc.stderr.strip()
        return run

    def up_refresh(self) -> Run:
        """`pulumi up --refresh`: read the host, then put back whatever drifted."""
        run = self.stack.up(refresh=True)
        self.history.append(run)
        return run

    def preview(self, **kwargs: Any) -> Run:
        return self.stack.preview(**kwargs)

    def destroy(self) -> Run:
        run = self.stack.destroy()
        self.history.append(run)
        return run

    def has_resources(self) -> bool:
        return bool(self.stack.resources())

    def cleanup(self) -> None:
        """After the module: destroy whatever a failed test left, so the next module starts from a clean host."""
        if self.has_resources():
            self.stack.destroy()

    def secrets(self) -> dict[str, str]:
        return self.stack.generated_secrets()

    def dependencies(self) -> dict[str, builtins.set[str]]:
        """resource name -> names of the resources it depends on (from the state)."""
        resources = self.stack.resources()
        return {
            name: {engine.resource_name(d) for d in entry.get("dependencies") or []}
            for name, entry in resources.items()
        }
